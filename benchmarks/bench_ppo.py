"""Our PPO (hf_instruct.PPOTrainer) against TRL's GRPOTrainer at equal work, in one run.

Equal work: the same randomly initialised policy, reference and reward model (a sequence classifier of the policy's
shape), 16 sampled answers of 24 tokens per iteration (PPO: 16 prompts; GRPO: 4 prompts × 4 generations), one
optimisation pass over them (PPO: `num_ppo_epochs 1`, one minibatch, `ptx_coef 0`, and it trains its value model
too; GRPO: one iteration, `beta` = PPO's KL coefficient, so both run the reference model). An iteration is rollout +
scoring + update: the time from the Trainer's step begin to its step end. Runs of `--steps` iterations alternate
between the trainers, `--repeats` runs each, and the first iteration of every run is left out (warm-up). Beside them:
PPO-ptx (`ptx_coef 0.5`, 8 pretraining blocks of 128 tokens per update, as the default pipeline) and PPO's
recommended settings (4 epochs × 2 minibatches). Peak memory is the growth of the resident set (RSS, sampled every
millisecond) while the trainer is built and runs `--steps` iterations, each trainer in a fresh process.

Models: "0.66M", the default pipeline's (recipes/default/pipeline.yaml: hidden 128, 2 layers, its ~2 k tokenizer
trained on the embedded suite's corpus); "5.3M", the gutenberg-dolly shape (hidden 256, 4 layers, 8 k tokenizer
trained on ../shared/data/pretrain/tinyshakespeare.txt). Prompts are the embedded suite's instructions.

    OMP_NUM_THREADS=1 python benchmarks/bench_ppo.py          # the README table (about 17 minutes on 2 cores)
    PYTHONPATH=<other checkout> python benchmarks/bench_ppo.py   # another version of hf_instruct, e.g. an older commit

One thread per process: on a 2-core machine shared with other jobs, two threads per process measured several times
slower and far noisier.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings

import datasets
import torch
from common import peak_rss_growth_mib, run_memory_probe
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
from transformers.trainer_callback import PrinterCallback
from transformers.utils import logging as transformers_logging
from trl import GRPOConfig, GRPOTrainer

import hf_instruct
from hf_instruct import (
    InstructGPTConfig,
    InstructGPTForCausalLM,
    InstructGPTForSequenceClassification,
    PPOConfig,
    PPOTrainer,
    train_tokenizer,
)
from hf_instruct.data import pack_texts
from hf_instruct.data.suite import SuiteConfig, build_suite
from hf_instruct.utils import markdown_table

SHAKESPEARE = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "pretrain", "tinyshakespeare.txt")
MODELS = {  # name: (model_config, tokenizer vocab_size, tokenizer corpus)
    "0.66M": (
        dict(
            hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
        ),
        2048,
        "suite",
    ),
    "5.3M": (
        dict(
            hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4
        ),
        8192,
        "shakespeare",
    ),
}
ANSWERS, RESPONSE_LENGTH, GENERATIONS, KL_COEF, LEARNING_RATE = 16, 24, 4, 0.05, 1e-5
RUNS = {  # name: PPOConfig settings (GRPO has its own)
    "PPO": dict(num_ppo_epochs=1, num_mini_batches=1),
    "GRPO": None,
    "PPO-ptx": dict(num_ppo_epochs=1, num_mini_batches=1, ptx_coef=0.5, ptx_batch_size=8),
    "PPO 4 epochs × 2 minibatches": dict(num_ppo_epochs=4, num_mini_batches=2),
}


def prepare(model: str, directory: str) -> None:
    """Tokenizer, policy, reward model, prompts and pretraining blocks of one model size, saved under `directory`."""
    model_config, vocab_size, corpus = MODELS[model]
    suite = build_suite(SuiteConfig(corpus_mb=1.0, sft_examples=400, comparisons=10, held_out_examples=10))
    if corpus == "shakespeare":
        if not os.path.exists(SHAKESPEARE):
            sys.exit(f"{SHAKESPEARE} not found: the {model} model's tokenizer is trained on it.")
        with open(SHAKESPEARE) as f:
            texts = f.read().split("\n\n")
    else:
        texts = suite["pretrain"]["text"]
    tokenizer = train_tokenizer(texts, vocab_size=vocab_size, show_progress=False)
    config = InstructGPTConfig(
        **model_config,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    InstructGPTForCausalLM(config).save_pretrained(os.path.join(directory, "policy"))
    reward_config = InstructGPTConfig(**config.to_dict() | {"num_labels": 1})
    InstructGPTForSequenceClassification(reward_config).save_pretrained(os.path.join(directory, "reward"))
    for name in ("policy", "reward"):
        tokenizer.save_pretrained(os.path.join(directory, name))
    prompts = datasets.Dataset.from_dict({"prompt": [messages[:-1] for messages in suite["sft"]["messages"]]})
    prompts.save_to_disk(os.path.join(directory, "prompts"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a last block that does not fill
        blocks = pack_texts(datasets.Dataset.from_dict({"text": texts[:2000]}), tokenizer, block_size=128)
    blocks.save_to_disk(os.path.join(directory, "ptx"))


def build(run: str, directory: str, steps: int) -> PPOTrainer | GRPOTrainer:
    """A fresh trainer of `run` over the models and data in `directory`, for `steps` iterations."""
    common = dict(
        output_dir=tempfile.mkdtemp(dir=directory),
        max_steps=steps,
        learning_rate=LEARNING_RATE,
        temperature=1.0,
        logging_steps=1000,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    tokenizer = AutoTokenizer.from_pretrained(os.path.join(directory, "policy"))
    prompts = datasets.load_from_disk(os.path.join(directory, "prompts"))
    if run == "GRPO":  # the reference is reloaded from the policy's folder; bf16 and checkpointing are TRL defaults
        args = GRPOConfig(
            per_device_train_batch_size=ANSWERS,
            num_generations=GENERATIONS,
            beta=KL_COEF,
            max_completion_length=RESPONSE_LENGTH,
            bf16=False,
            gradient_checkpointing=False,
            **common,
        )
        return GRPOTrainer(
            model=os.path.join(directory, "policy"),
            reward_funcs=os.path.join(directory, "reward"),
            args=args,
            train_dataset=prompts,
            processing_class=tokenizer,
        )
    args = PPOConfig(
        per_device_train_batch_size=ANSWERS,
        response_length=RESPONSE_LENGTH,
        kl_coef=KL_COEF,
        num_sample_completions=0,
        **RUNS[run],
        **common,
    )
    return PPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(os.path.join(directory, "policy")),
        args=args,
        processing_class=tokenizer,
        train_dataset=prompts,
        reward_model=AutoModelForSequenceClassification.from_pretrained(os.path.join(directory, "reward")),
        ptx_dataset=datasets.load_from_disk(os.path.join(directory, "ptx")) if args.ptx_coef > 0 else None,
    )


class StepClock(TrainerCallback):
    """Seconds of every training step: rollout + scoring + update."""

    def __init__(self):
        self.seconds = []

    def on_step_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds.append(time.perf_counter() - self.start)


def iterations_per_second(run: str, directory: str, steps: int) -> float:
    trainer = build(run, directory, steps + 1)
    trainer.remove_callback(PrinterCallback)  # no metrics printed at the end of a run
    clock = StepClock()
    trainer.add_callback(clock)
    trainer.train()
    return steps / sum(clock.seconds[1:])  # the first step warms up


def memory_probe(run: str, directory: str, steps: int) -> None:
    print(peak_rss_growth_mib(lambda: build(run, directory, steps).train()))


def spread(values: list[float]) -> str:
    mean = statistics.mean(values)
    return f"{mean:.2f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--steps", type=int, default=3, help="timed iterations per run (after one warm-up)")
    parser.add_argument("--repeats", type=int, default=5, help="runs per trainer and model")
    parser.add_argument("--memory-probe", nargs=3, metavar=("RUN", "DIR", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    transformers_logging.set_verbosity_error()
    datasets.disable_progress_bars()
    if args.memory_probe:
        run, directory, steps = args.memory_probe
        return memory_probe(run, directory, int(steps))

    tables = []
    for model in args.models:
        with tempfile.TemporaryDirectory(prefix=f"bench-ppo-{model}-") as directory:  # models, data, run folders
            prepare(model, directory)
            rates = {run: [] for run in RUNS}
            for repeat in range(args.repeats):
                order = list(RUNS)[repeat % len(RUNS) :] + list(RUNS)[: repeat % len(RUNS)]  # rotate who goes first
                for run in order:
                    rates[run].append(iterations_per_second(run, directory, args.steps))
                measured = ", ".join(f"{run} {rates[run][-1]:.2f} it/s" for run in RUNS)
                print(f"{model} repeat {repeat + 1}/{args.repeats}: {measured}", file=sys.stderr, flush=True)
            memory = {run: run_memory_probe(__file__, run, directory, str(args.steps)) for run in RUNS}
            policy = InstructGPTForCausalLM.from_pretrained(os.path.join(directory, "policy"))
            tables.append((model, sum(p.numel() for p in policy.parameters()), rates, memory))

    print(
        f"\nPPO against GRPO at equal work ({ANSWERS} answers of {RESPONSE_LENGTH} tokens per iteration, one pass): "
        f"hf_instruct from {os.path.dirname(hf_instruct.__file__)}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {args.repeats} runs of {args.steps} iterations each; mean ± sd, × GRPO "
        "within each repeat\n"
    )
    rows = []
    for model, params, rates, memory in tables:
        for run in RUNS:
            ratios = [rate / grpo for rate, grpo in zip(rates[run], rates["GRPO"], strict=True)]  # within each repeat
            rows.append(
                [
                    f"{model} ({params / 1e6:.2f} M)",
                    run,
                    spread(rates[run]),
                    spread(ratios),
                    f"{memory[run]:.0f}",
                    f"{memory[run] / memory['GRPO']:.2f}",
                ]
            )
    header = ["model", "trainer", "iterations/s", "× GRPO", "peak RSS growth MiB", "× GRPO"]
    print(*markdown_table(header, rows), sep="\n")


if __name__ == "__main__":
    main()
