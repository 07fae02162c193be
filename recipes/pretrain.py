"""Pretrain a causal LM on raw text (stage 0 of InstructGPT): `hf-instruct pretrain` as a script, for launchers.

Usage:
    # one CPU (or GPU) process
    python recipes/pretrain.py --config recipes/tiny/pretrain/config.yaml
    # many GPUs: DDP, FSDP or DeepSpeed through accelerate
    accelerate launch --config_file recipes/accelerate/ddp.yaml recipes/pretrain.py \\
        --config recipes/gpu-125m/pretrain/config.yaml
    # 2-process DDP on CPU (gloo)
    torchrun --nproc_per_node 2 recipes/pretrain.py --config recipes/tiny/pretrain/config.yaml

Any field of the config can be set on the command line (`--help` lists them), e.g. `--max_steps 10`.
"""

import sys

from hf_instruct.cli import main

if __name__ == "__main__":
    sys.exit(main(["pretrain", *sys.argv[1:]]))
