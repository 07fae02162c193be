"""Instruction-tune a causal LM (stage 1 of InstructGPT: supervised fine-tuning on demonstrations).

Usage:
    # one CPU (or GPU) process, starting from a pretrain output
    python recipes/sft.py --config recipes/tiny/sft/config.yaml --model_name_or_path runs/tiny/pretrain
    # many GPUs: DDP, FSDP or DeepSpeed through accelerate
    accelerate launch --config_file recipes/accelerate/ddp.yaml recipes/sft.py \\
        --config recipes/gpu-125m/sft/config.yaml

Any config key can be overridden on the command line, e.g. `--use_peft true --sft_backend collator`.
The same stage runs as `hf-instruct sft --config ...`.
"""

from hf_instruct.stages import SFTStageConfig, parse_config, run_sft

if __name__ == "__main__":
    # ---- parse config: YAML + command-line overrides
    config = parse_config(SFTStageConfig)
    # ---- data -> tokenizer -> model (+LoRA) -> SFTTrainer -> train/resume -> save -> card -> push (see run_sft)
    run_sft(config)
