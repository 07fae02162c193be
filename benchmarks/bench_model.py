"""InstructGPTForCausalLM vs stock LlamaForCausalLM with identical hyper-parameters and weights, in one run.

Measures training tokens/s (forward + backward + AdamW, fp32 and bf16 autocast), greedy generation new tokens/s
(batch 1 and 8, dynamic and static cache) and peak training memory. The two models alternate within every repeat,
so machine stalls hit both alike; the table reports the best and the median sample and the ratio of medians
(ours / Llama: higher is better for speed, lower for memory).

    python benchmarks/bench_model.py                # the README table (about 3 minutes on 2 CPU cores)
    python benchmarks/bench_model.py --repeats 3    # quicker
"""

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable

import torch
import transformers
from common import peak_rss_growth_mib, print_table, run_memory_probe, summarise
from transformers import LlamaConfig, LlamaForCausalLM

from hf_instruct import InstructGPTConfig, InstructGPTForCausalLM

# The model size used throughout the project's notes: ~6.3 M parameters.
SHAPE = dict(
    vocab_size=8192,
    hidden_size=256,
    intermediate_size=1024,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=8,
    max_position_embeddings=512,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
TRAIN_BATCH, TRAIN_SEQ = 8, 256
PROMPT_LEN, NEW_TOKENS = 16, 64


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    ours = InstructGPTForCausalLM(InstructGPTConfig(**SHAPE))
    if name == "ours":
        return ours
    llama = LlamaForCausalLM(LlamaConfig(**SHAPE))
    llama.load_state_dict(ours.state_dict())
    return llama


def make_train_step(model: torch.nn.Module) -> Callable[[str], float]:
    """A closure that runs one AdamW training step in the given precision and returns its wall time in seconds."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = torch.randint(3, SHAPE["vocab_size"], (TRAIN_BATCH, TRAIN_SEQ))

    def step(precision: str) -> float:
        model.train()
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    return step


@torch.no_grad()
def generate_seconds(model: torch.nn.Module, batch_size: int, cache: str, new_tokens: int = NEW_TOKENS) -> float:
    model.eval()
    prompt = torch.randint(3, SHAPE["vocab_size"], (batch_size, PROMPT_LEN))
    start = time.perf_counter()
    model.generate(
        prompt,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        cache_implementation=cache,
        pad_token_id=0,
        eos_token_id=None,
    )
    return time.perf_counter() - start


def peak_training_memory_mib(name: str, precision: str) -> float:
    """Peak resident-memory growth of one training step after a warm-up step, in a fresh process per model."""
    return run_memory_probe(__file__, name, precision)


def memory_probe(name: str, precision: str) -> None:
    step = make_train_step(build(name))
    step(precision)  # warm-up: optimizer state, allocator
    print(peak_rss_growth_mib(lambda: step(precision)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--memory-probe", nargs=2, metavar=("MODEL", "PRECISION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_probe:
        return memory_probe(*args.memory_probe)

    models = {name: build(name) for name in ("ours", "llama")}
    train_steps = {name: make_train_step(model) for name, model in models.items()}
    n_params = sum(p.numel() for p in models["ours"].parameters())
    cases = {  # label -> (tokens per sample, function of the model name returning seconds)
        f"train tok/s, {precision} (batch {TRAIN_BATCH} x {TRAIN_SEQ})": (
            TRAIN_BATCH * TRAIN_SEQ,
            lambda name, precision=precision: train_steps[name](precision),
        )
        for precision in ("fp32", "bf16")
    }
    for batch in (1, 8):
        for cache in ("dynamic", "static"):
            cases[f"generate new tok/s, batch {batch}, {cache} cache"] = (
                batch * NEW_TOKENS,
                lambda name, batch=batch, cache=cache: generate_seconds(models[name], batch, cache),
            )
    for _, run in cases.values():  # warm-up every path once
        for name in models:
            run(name)

    # Interleave at the finest grain (one sample of each model in turn, alternating who goes first) so that the
    # machine's stalls fall on both models alike.
    rates = {label: {"ours": [], "llama": []} for label in cases}
    for repeat in range(args.repeats):
        order = ("ours", "llama") if repeat % 2 == 0 else ("llama", "ours")
        for label, (tokens, run) in cases.items():
            for name in order:
                rates[label][name].append(tokens / run(name))
        print(f"repeat {repeat + 1}/{args.repeats} done", file=sys.stderr, flush=True)

    rows = [(label, summarise(values["ours"], values["llama"])) for label, values in rates.items()]
    for precision in ("fp32", "bf16"):
        ours_mib = peak_training_memory_mib("ours", precision)
        llama_mib = peak_training_memory_mib("llama", precision)
        rows.append((f"peak train memory MiB, {precision}", summarise([ours_mib], [llama_mib], best=min)))

    print(
        f"\nInstructGPTForCausalLM vs LlamaForCausalLM, {n_params / 1e6:.1f} M params, {args.repeats} repeats; "
        f"torch {torch.__version__}, transformers {transformers.__version__}, {os.cpu_count()} CPU cores "
        f"({platform.processor() or platform.machine()}), {torch.get_num_threads()} threads\n"
    )
    print_table(rows, "ours", "Llama")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(rows), f, indent=2)


if __name__ == "__main__":
    main()
