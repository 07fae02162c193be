"""Pretraining with and without `keep_freed_memory` (hf_instruct.allocator), in one run.

The default pipeline's pretraining (recipes/default/pipeline.yaml: a 2-layer, 128-wide model, ~2 k tokenizer,
batch 16 x 128 tokens) on the embedded suite's corpus, as `recipes/pretrain.py` runs it, each run in a fresh
process, alternating `--keep_freed_memory true` and `false`. glibc's default (`false`) is what a user of the stock
`Trainer` gets. Reported: training steps/s (the Trainer's own `train_runtime`) and the process's minor page faults.

    python benchmarks/bench_allocator.py    # the README table (about 5 minutes on 2 cores)
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile

import yaml
from common import print_table, summarise

from hf_instruct.data.suite import SuiteConfig, build_suite

RECIPE = os.path.join(os.path.dirname(__file__), "..", "recipes", "default", "pipeline.yaml")
PRETRAIN = os.path.join(os.path.dirname(__file__), "..", "recipes", "pretrain.py")


def pretrain_run(config: str, output_dir: str, keep: bool) -> tuple[float, float]:
    """Steps/s and minor page faults of one pretraining run in a fresh process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt
    command = [sys.executable, PRETRAIN, "--config", config, "--output_dir", output_dir]
    subprocess.run([*command, "--keep_freed_memory", str(keep).lower()], check=True, capture_output=True)
    faults = resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt - before
    with open(os.path.join(output_dir, "all_results.json")) as f:
        results = json.load(f)
    return results["train_steps_per_second"], faults


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150, help="Pretraining steps per run.")
    parser.add_argument("--repeats", type=int, default=3, help="Runs per setting, alternated.")
    args = parser.parse_args()

    with open(RECIPE) as f:
        stage = yaml.safe_load(f)["stages"]["pretrain"]
    with tempfile.TemporaryDirectory() as tmp:
        corpus = os.path.join(tmp, "corpus.jsonl")
        build_suite(SuiteConfig(sft_examples=10, comparisons=10, held_out_examples=10))["pretrain"].to_json(corpus)
        config = os.path.join(tmp, "pretrain.yaml")
        with open(config, "w") as f:
            fields = dict(stage, train_files=[corpus], max_steps=args.steps, save_strategy="no", report_to="none")
            yaml.safe_dump(fields, f)
        kept, default = {"rate": [], "faults": []}, {"rate": [], "faults": []}
        for repeat in range(args.repeats):
            for keep, samples in ((True, kept), (False, default)):
                rate, faults = pretrain_run(config, os.path.join(tmp, f"run-{keep}-{repeat}"), keep)
                samples["rate"].append(rate)
                samples["faults"].append(faults / 1e6)
                print(f"run {repeat + 1}, keep_freed_memory {keep}: {rate:.2f} steps/s, {faults / 1e6:.2f} M faults")
    rows = [
        ("training steps/s", summarise(kept["rate"], default["rate"])),
        ("minor page faults (millions)", summarise(kept["faults"], default["faults"], best=min)),
    ]
    print_table(rows, "keep_freed_memory", "glibc default")


if __name__ == "__main__":
    main()
