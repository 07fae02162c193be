"""Optimise the SFT policy against the reward model with GRPO (no value model), an alternative to PPO:
`hf-instruct grpo` as a script, for launchers.

Usage:
    # one CPU (or GPU) process, starting from an SFT output and a reward model output
    python recipes/grpo.py --config recipes/tiny/grpo/config.yaml --model_name_or_path runs/tiny/sft \\
        --reward_model_path runs/tiny/reward
    # many GPUs
    accelerate launch --config_file recipes/accelerate/ddp.yaml recipes/grpo.py \\
        --config recipes/gutenberg-dolly/grpo/config.yaml

Any field of the config can be set on the command line (`--help` lists them).
"""

import sys

from hf_instruct.cli import main

if __name__ == "__main__":
    sys.exit(main(["grpo", *sys.argv[1:]]))
