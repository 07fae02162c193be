"""Instruction-tune a causal LM (stage 1 of InstructGPT: supervised fine-tuning on demonstrations): `hf-instruct sft`
as a script, for launchers.

Usage:
    # one CPU (or GPU) process, starting from a pretrain output
    python recipes/sft.py --config recipes/tiny/sft/config.yaml --model_name_or_path runs/tiny/pretrain
    # many GPUs: DDP, FSDP or DeepSpeed through accelerate
    accelerate launch --config_file recipes/accelerate/ddp.yaml recipes/sft.py \\
        --config recipes/gpu-125m/sft/config.yaml

Any field of the config can be set on the command line (`--help` lists them), e.g. `--use_peft true`.
"""

import sys

from hf_instruct.cli import main

if __name__ == "__main__":
    sys.exit(main(["sft", *sys.argv[1:]]))
