"""Optimise the SFT policy against the reward model with GRPO (no value model): an alternative to PPO.

Usage:
    # one CPU (or GPU) process, starting from an SFT output and a reward model output
    python recipes/grpo.py --config recipes/tiny/grpo/config.yaml --model_name_or_path runs/tiny/sft \
        --reward_model_path runs/tiny/reward
    # many GPUs
    accelerate launch --config_file recipes/accelerate/ddp.yaml recipes/grpo.py --config <config.yaml>

Any config key can be overridden on the command line. The same stage runs as `hf-instruct grpo --config ...`.
"""

from hf_instruct.stages import GRPOStageConfig, parse_config, run_grpo

if __name__ == "__main__":
    # ---- parse config: YAML + command-line overrides
    config = parse_config(GRPOStageConfig)
    # ---- prompts -> SFT policy + reward model -> GRPOTrainer -> save -> card
    run_grpo(config)
