"""Collect comparisons as InstructGPT did (between SFT and the reward model): the SFT model answers each prompt K
times and the simulated labeler ranks the answers into pairs: `hf-instruct collect_comparisons` as a script.

Usage:
    python recipes/collect_comparisons.py --model_name_or_path runs/tiny/sft \\
        --train_files data/comparisons.jsonl --output_dir runs/tiny/comparisons --max_prompts 200
    # then: hf-instruct reward --config recipes/tiny/reward/config.yaml \\
    #     --train_files runs/tiny/comparisons/comparisons.jsonl

Any field of the config can be set on the command line (`--help` lists them).
"""

import sys

from hf_instruct.cli import main

if __name__ == "__main__":
    sys.exit(main(["collect_comparisons", *sys.argv[1:]]))
