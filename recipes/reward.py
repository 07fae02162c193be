"""Train a reward model on human comparisons (stage 2 of InstructGPT), starting from the SFT model.

Usage:
    # one CPU (or GPU) process, starting from an SFT output
    python recipes/reward.py --config recipes/tiny/reward/config.yaml --model_name_or_path runs/tiny/sft
    # many GPUs
    accelerate launch --config_file recipes/accelerate/ddp.yaml recipes/reward.py --config <config.yaml>

Any config key can be overridden on the command line. The same stage runs as `hf-instruct reward --config ...`.
"""

from hf_instruct.stages import RewardStageConfig, parse_config, run_reward

if __name__ == "__main__":
    # ---- parse config: YAML + command-line overrides
    config = parse_config(RewardStageConfig)
    # ---- comparisons -> tokenizer -> SFT backbone + score head -> RewardTrainer -> reward shift -> save -> card
    run_reward(config)
