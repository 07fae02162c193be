"""Pretrain a causal LM on raw text (stage 0 of InstructGPT).

Usage:
    # one CPU (or GPU) process
    python recipes/pretrain.py --config recipes/tiny/pretrain/config.yaml
    # many GPUs: DDP, FSDP or DeepSpeed through accelerate
    accelerate launch --config_file recipes/accelerate/ddp.yaml recipes/pretrain.py \\
        --config recipes/gpu-125m/pretrain/config.yaml

Any config key can be overridden on the command line, e.g. `--max_steps 10 --output_dir runs/try`.
The same stage runs as `hf-instruct pretrain --config ...`.
"""

from hf_instruct.stages import PretrainStageConfig, parse_config, run_pretrain

if __name__ == "__main__":
    # ---- parse config: YAML + command-line overrides
    config = parse_config(PretrainStageConfig)
    # ---- data -> tokenizer -> model -> Trainer -> train/resume -> save -> card -> push (see run_pretrain)
    run_pretrain(config)
