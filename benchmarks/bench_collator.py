"""Padded vs padding-free SFT batches from DataCollatorForInstructionTuning, on the Dolly file, in one run; then
our SFT path against the fastest one TRL offers.

Part 1 trains our tiny model on the same batches of Dolly open-QA examples (../shared/data/sft/dolly_open_qa.jsonl)
in both modes, alternating batch by batch, and reports trained (non-pad) tokens per second, the collator's share of
the step time (raw chat examples in, tensors out, tokenisation included) and peak training memory (fresh process
each).

Part 2 runs the alternative a user would pick, TRL's `SFTTrainer` with `packing: true, padding_free: true`, against
a stock `Trainer` with our padding-free collator (`sft_backend: collator, padding_free: true`): the same model
initialisation, the same examples, the same number of optimiser steps, runs alternated and repeated; it reports
tokens per second (every token of the batches: both paths train on the assistant turns only) and the mean loss.

    python benchmarks/bench_collator.py               # the README tables (about 5 minutes on 2 CPU cores)
"""

import argparse
import os
import random
import statistics
import sys
import time

import torch
from common import peak_rss_growth_mib, print_table, run_memory_probe, summarise

from hf_instruct import DataCollatorForInstructionTuning, InstructGPTConfig, InstructGPTForCausalLM, train_tokenizer
from hf_instruct.data import load_instruction_dataset

DOLLY = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "sft", "dolly_open_qa.jsonl")
BATCH_SIZE, MAX_LENGTH = 16, 512
MODES = ("padding-free", "padded")


def setup(seed: int = 0):
    """The tokenizer, model, collators and a fixed list of raw example batches."""
    random.seed(seed)
    torch.manual_seed(seed)
    examples = load_instruction_dataset(DOLLY).to_list()
    tokenizer = train_tokenizer(
        (m["content"] for example in examples for m in example["messages"]), vocab_size=4096, show_progress=False
    )
    config = InstructGPTConfig(vocab_size=len(tokenizer), max_position_embeddings=BATCH_SIZE * MAX_LENGTH)
    model = InstructGPTForCausalLM(config)
    collators = {
        mode: DataCollatorForInstructionTuning(tokenizer, max_length=MAX_LENGTH, padding_free=mode == "padding-free")
        for mode in MODES
    }
    random.shuffle(examples)
    batches = [examples[i : i + BATCH_SIZE] for i in range(0, len(examples) - BATCH_SIZE, BATCH_SIZE)]
    return model, collators, batches


def make_train_step(model: torch.nn.Module):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(batch: dict) -> float:
        model.train()
        start = time.perf_counter()
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    return step


def non_pad_tokens(batch: dict) -> int:
    return int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()


def memory_probe(mode: str) -> None:
    model, collators, batches = setup()
    step = make_train_step(model)
    step(collators[mode](batches[0]))  # warm-up: optimizer state
    batch = collators[mode](batches[1])
    print(peak_rss_growth_mib(lambda: step(batch)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12, help="batches per mode")
    parser.add_argument("--trl_steps", type=int, default=20, help="optimiser steps per run in the TRL comparison")
    parser.add_argument("--repeats", type=int, default=4, help="runs per path in the TRL comparison")
    parser.add_argument("--memory-probe", metavar="MODE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_probe:
        return memory_probe(args.memory_probe)
    if not os.path.exists(DOLLY):
        sys.exit(f"{DOLLY} not found: this benchmark reads the shared Dolly file.")

    model, collators, batches = setup()
    step = make_train_step(model)
    step(collators["padded"](batches[-1]))  # warm-up
    rates = {mode: [] for mode in MODES}
    collate_share = {mode: [] for mode in MODES}
    padding = []
    for index in range(args.steps):
        order = MODES if index % 2 == 0 else MODES[::-1]
        for mode in order:
            start = time.perf_counter()
            batch = collators[mode](batches[index])
            collate_seconds = time.perf_counter() - start
            step_seconds = step(batch)
            rates[mode].append(non_pad_tokens(batch) / step_seconds)
            collate_share[mode].append(100 * collate_seconds / (collate_seconds + step_seconds))
            if mode == "padded":
                padding.append(100 * (1 - non_pad_tokens(batch) / batch["input_ids"].numel()))
        print(f"batch {index + 1}/{args.steps} done", file=sys.stderr, flush=True)

    rows = [
        ("trained (non-pad) tokens/s", summarise(rates["padding-free"], rates["padded"])),
        ("collation, % of step time", summarise(collate_share["padding-free"], collate_share["padded"], best=min)),
        (
            "peak train memory MiB",
            summarise([run_memory_probe(__file__, "padding-free")], [run_memory_probe(__file__, "padded")], best=min),
        ),
    ]
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    print(
        f"\nDataCollatorForInstructionTuning on Dolly open-QA: {n_params:.1f} M-param InstructGPT model, batches of "
        f"{BATCH_SIZE} examples (max_length {MAX_LENGTH}), {args.steps} batches per mode, padded batches "
        f"{sum(padding) / len(padding):.0f} % padding, torch {torch.__version__}, {torch.get_num_threads()} threads\n"
    )
    print_table(rows, "padding-free", "padded")
    compare_with_trl(args.trl_steps, args.repeats)


def train_once(path: str, model: torch.nn.Module, tokenizer, examples: list, steps: int) -> tuple[float, float]:
    """(tokens per second of training, mean training loss) of `steps` optimiser steps on one SFT path."""
    import copy
    import tempfile

    from datasets import Dataset
    from transformers import Trainer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    common = dict(output_dir=tempfile.mkdtemp(), max_steps=steps, learning_rate=1e-4, logging_steps=1)
    common.update(save_strategy="no", report_to="none", use_cpu=True, bf16=False, disable_tqdm=True, seed=0)
    common.update(gradient_checkpointing=False)  # TRL turns it on by default; it only slows a model this small
    dataset = Dataset.from_list([{"messages": example["messages"]} for example in examples])
    model = copy.deepcopy(model)
    if path == "trl":  # packs examples into rows of max_length tokens, padding-free
        config = SFTConfig(
            per_device_train_batch_size=1,
            max_length=BATCH_SIZE * MAX_LENGTH // 4,
            packing=True,
            padding_free=True,
            assistant_only_loss=True,
            **common,
        )
        trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
    else:
        config = SFTConfig(per_device_train_batch_size=BATCH_SIZE, remove_unused_columns=False, **common)
        collator = DataCollatorForInstructionTuning(  # as `sft_backend: collator` builds it
            tokenizer, max_length=MAX_LENGTH, padding_free=True, trained_logits_only=True
        )
        trainer = Trainer(model=model, args=config, train_dataset=dataset, data_collator=collator)
    tokens, collate = [0], trainer.data_collator

    def counting(features):
        batch = collate(features)
        tokens[0] += batch["input_ids"].numel()
        return batch

    trainer.data_collator = counting

    class Clock(TrainerCallback):  # time from the first optimiser step, so dataset preparation is not counted
        def on_step_begin(self, args, state, control, **kwargs):
            self.start = getattr(self, "start", None) or time.perf_counter()

    clock = Clock()
    trainer.add_callback(clock)
    trainer.train()
    seconds = time.perf_counter() - clock.start
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return tokens[0] / seconds, sum(losses) / len(losses)


def compare_with_trl(steps: int, repeats: int) -> None:
    model, collators, batches = setup()
    tokenizer = collators["padded"].tokenizer
    examples = [example for batch in batches for example in batch]
    rates, losses = {"ours": [], "trl": []}, {"ours": [], "trl": []}
    for repeat in range(repeats):
        for path in ("ours", "trl") if repeat % 2 == 0 else ("trl", "ours"):
            rate, loss = train_once(path, model, tokenizer, examples, steps)
            rates[path].append(rate)
            losses[path].append(loss)
            print(f"{path} run {repeat + 1}/{repeats}: {rate:.0f} tokens/s, mean loss {loss:.3f}", file=sys.stderr)
    print(
        f"\nSFT on Dolly open-QA, {steps} optimiser steps per run, {repeats} runs per path: stock Trainer + our "
        "padding-free collator (batches of 16 examples) against TRL SFTTrainer (packing, padding-free, rows of "
        f"{BATCH_SIZE * MAX_LENGTH // 4} tokens)\n"
    )
    print_table([("tokens/s", summarise(rates["ours"], rates["trl"]))], "ours", "TRL packed")
    ours, trl = statistics.mean(losses["ours"]), statistics.mean(losses["trl"])
    print(f"\nmean training loss: ours {ours:.3f}, TRL {trl:.3f}")


if __name__ == "__main__":
    main()
