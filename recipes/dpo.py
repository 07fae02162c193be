"""Align the SFT model directly on comparisons with DPO (no reward model, no RL): an alternative to PPO.

Usage:
    # one CPU (or GPU) process, starting from an SFT output
    python recipes/dpo.py --config recipes/tiny/dpo/config.yaml --model_name_or_path runs/tiny/sft
    # many GPUs
    accelerate launch --config_file recipes/accelerate/ddp.yaml recipes/dpo.py --config <config.yaml>

Any config key can be overridden on the command line. The same stage runs as `hf-instruct dpo --config ...`.
"""

from hf_instruct.stages import DPOStageConfig, parse_config, run_dpo

if __name__ == "__main__":
    # ---- parse config: YAML + command-line overrides
    config = parse_config(DPOStageConfig)
    # ---- comparisons -> tokenizer -> SFT policy (+ reference reloaded from disk) -> DPOTrainer -> save -> card
    run_dpo(config)
