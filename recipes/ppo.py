"""Optimise the SFT policy against the reward model with PPO-ptx (InstructGPT step 3).

Usage:
    # one CPU (or GPU) process, starting from an SFT output and a reward model output
    python recipes/ppo.py --config recipes/tiny/ppo/config.yaml --model_name_or_path runs/tiny/sft \
        --reward_model_path runs/tiny/reward
    # many GPUs (DDP)
    accelerate launch --config_file recipes/accelerate/ddp.yaml recipes/ppo.py --config <config.yaml>

Any config key can be overridden on the command line, e.g. `--ptx_coef 0 --kl_target 6`. The same stage runs as
`hf-instruct ppo --config ...`.
"""

from hf_instruct.stages import PPOStageConfig, parse_config, run_ppo

if __name__ == "__main__":
    # ---- parse config: YAML + command-line overrides
    config = parse_config(PPOStageConfig)
    # ---- prompts -> policy/reference (SFT), reward/value (reward model), pretraining blocks -> PPOTrainer -> card
    run_ppo(config)
