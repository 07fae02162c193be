"""Train a reward model on human comparisons (stage 2 of InstructGPT), starting from the SFT model: `hf-instruct
reward` as a script, for launchers.

Usage:
    # one CPU (or GPU) process, starting from an SFT output
    python recipes/reward.py --config recipes/tiny/reward/config.yaml --model_name_or_path runs/tiny/sft
    # many GPUs
    accelerate launch --config_file recipes/accelerate/ddp.yaml recipes/reward.py \\
        --config recipes/gutenberg-dolly/reward/config.yaml

Any field of the config can be set on the command line (`--help` lists them).
"""

import sys

from hf_instruct.cli import main

if __name__ == "__main__":
    sys.exit(main(["reward", *sys.argv[1:]]))
