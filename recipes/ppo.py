"""Optimise the SFT policy against the reward model with PPO-ptx (stage 3 of InstructGPT): `hf-instruct ppo` as a
script, for launchers.

Usage:
    # one CPU (or GPU) process, starting from an SFT output and a reward model output
    python recipes/ppo.py --config recipes/tiny/ppo/config.yaml --model_name_or_path runs/tiny/sft \\
        --reward_model_path runs/tiny/reward
    # many GPUs
    accelerate launch --config_file recipes/accelerate/ddp.yaml recipes/ppo.py \\
        --config recipes/gutenberg-dolly/ppo/config.yaml

Any field of the config can be set on the command line (`--help` lists them), e.g. `--ptx_coef 0 --kl_target 6`.
"""

import sys

from hf_instruct.cli import main

if __name__ == "__main__":
    sys.exit(main(["ppo", *sys.argv[1:]]))
