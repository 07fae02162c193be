"""Align the SFT model directly on comparisons with DPO (no reward model, no RL), an alternative to PPO:
`hf-instruct dpo` as a script, for launchers.

Usage:
    # one CPU (or GPU) process, starting from an SFT output
    python recipes/dpo.py --config recipes/tiny/dpo/config.yaml --model_name_or_path runs/tiny/sft
    # many GPUs
    accelerate launch --config_file recipes/accelerate/ddp.yaml recipes/dpo.py \\
        --config recipes/gutenberg-dolly/dpo/config.yaml

Any field of the config can be set on the command line (`--help` lists them).
"""

import sys

from hf_instruct.cli import main

if __name__ == "__main__":
    sys.exit(main(["dpo", *sys.argv[1:]]))
