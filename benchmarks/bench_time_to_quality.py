"""Time to quality of midtraining: today's recipe against Muon with a warmup-stable-decay schedule, in one run.

On development draws of the embedded suite (`recipes/default/development.yaml`, one suite seed per `--seeds` value,
its development phrasings and stand-in compositions), each seed pretrains the default base once, then midtrains it
with both recipes, in turn (which recipe goes first alternates from seed to seed), and scores every midtrained model
on the development splits (`evaluate_model`, chat format, like the pipeline's `midtrain` row):

- **today**: the default midtrain settings (AdamW, cosine), one run per budget, since a cosine schedule is shaped by
  its length (`--today_steps`; the last is the default's own `max_steps`, whose accuracy is "today's accuracy");
- **new**: `NEW_RECIPE` (Muon + warmup-stable-decay). One run holds the stable learning rate, saving a checkpoint
  where each budget's decay begins; each budget then resumes from its checkpoint and decays over its last
  `--decay_share` of the steps. A budget's time is the stable run's time up to its checkpoint plus its decay's.

Reported per recipe and budget (mean over seeds, and each seed in the JSON): training tokens, training wall time (the
Trainer's own, saving and evaluation left out), accuracy on each development split and their mean; and how long the
new recipe takes to reach today's mean accuracy (linear between its budgets) against today's default, as a ratio.
Writes `time_to_quality.{json,md,png}` into `--output_dir`.

    python benchmarks/bench_time_to_quality.py --seeds 7 8 9    # the README figures (see its estimate of the time)
    python benchmarks/bench_time_to_quality.py --quick           # tiny sizes, one seed, about 2 minutes: it runs
"""

import argparse
import dataclasses
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import datasets
import torch
import yaml
from transformers import TrainerCallback

from hf_instruct.evaluation import evaluate_model
from hf_instruct.evaluation.evaluator import SUITE_SPLITS
from hf_instruct.pipeline import STAGE_DEFAULTS, PipelineConfig, data_files, prepare_data, run_inputs, stage_config
from hf_instruct.precision import default_bf16
from hf_instruct.stages import PretrainStageConfig, run_pretrain
from hf_instruct.stages.parsing import parse_fields
from hf_instruct.utils import markdown_table

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "default" / "development.yaml"
QUICK_RECIPE = REPO / "recipes" / "smoke" / "pipeline.yaml"
# The new midtraining recipe: Muon for the hidden matrices, AdamW at today's 3e-3 for embeddings and norms, today's
# batch of 16 x 128 tokens, a short warmup, then a stable lr and a decay over each budget's last `--decay_share` of
# the steps. Muon's lr was tuned on suite seed 7 alone, 750 steps against today's 0.348 mean accuracy (one run each,
# docs/research-log.md): 0.05 -> 0.277, 0.02 (nanochat's) -> 0.356, 0.01 -> 0.382, 0.005 -> 0.390, 0.0025 -> 0.383.
NEW_RECIPE = dict(
    optim="muon",
    muon_learning_rate=0.005,
    muon_momentum=0.95,
    learning_rate=3e-3,
    weight_decay=0.1,
    lr_scheduler_type="warmup_stable_decay",
    warmup_steps=20,
)
QUICK = dict(today_steps=[20, 40], new_steps=[20, 40], limit=20, suite=dict(held_out_examples=20), warmup_steps=4)


class StepClock(TrainerCallback):
    """Wall time since training began at each of `steps` (the stable run's checkpoints)."""

    def __init__(self, steps: list[int]):
        self.steps, self.times, self.start = set(steps), {}, 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step in self.steps:
            self.times[state.global_step] = time.perf_counter() - self.start


def midtrain(config: PipelineConfig, data: dict, output_dir: Path, run: str, callbacks=(), **fields) -> float:
    """One midtraining run named `run`: the recipe's midtrain fields with `fields` over them. Returns its training
    wall time (the Trainer's `train_runtime`)."""
    place = dict(
        seed=config.seed, output_dir=str(output_dir / run), **run_inputs("midtrain", config, data, output_dir)
    )
    settings = {**STAGE_DEFAULTS, "disable_tqdm": True, "logging_steps": 50, "save_strategy": "no", **place}
    settings = {**settings, **config.stages["midtrain"], **fields}
    stage = parse_fields(PretrainStageConfig, settings, f"bench_time_to_quality: {run}")
    run_pretrain(stage, callbacks=list(callbacks))
    return json.loads((output_dir / run / "all_results.json").read_text())["train_runtime"]


def accuracy(model_dir: Path, splits: dict, limit: int | None) -> dict[str, float]:
    """Accuracy on each development split and their mean."""
    scores = evaluate_model(model_dir, splits, max_new_tokens=32, batch_size=32, limit=limit)["splits"]
    result = {split: scores[split]["accuracy"] for split in SUITE_SPLITS}
    return {**result, "mean": statistics.fmean(result.values())}


def run_seed(seed: int, args: argparse.Namespace, work: Path, new_first: bool) -> list[dict]:
    """Every budget of both recipes on suite seed `seed`: rows of recipe, steps, tokens, seconds, accuracies."""
    config = PipelineConfig.from_yaml(args.recipe, output_dir=str(work / f"seed-{seed}"))
    config.seed, config.suite = seed, {**config.suite, "seed": seed, "development": True, **args.suite}
    output_dir = Path(config.output_dir)
    data = data_files(output_dir / "data")
    prepare_data(config, data)
    splits = {
        split: datasets.load_dataset("json", data_files=str(data[split]), split="train") for split in SUITE_SPLITS
    }
    run_pretrain(stage_config("pretrain", config, data, output_dir))
    new_recipe = {**NEW_RECIPE, "warmup_steps": args.warmup_steps, **args.new}
    tokens_per_step = {
        recipe: fields["per_device_train_batch_size"] * fields["block_size"]
        for recipe, fields in (
            ("today", config.stages["midtrain"]),
            ("new", {**config.stages["midtrain"], **new_recipe}),
        )
    }
    rows = []

    def row(recipe: str, steps: int, seconds: float, run: str) -> None:
        scores = accuracy(output_dir / run, splits, args.limit)
        rows.append(
            dict(
                seed=seed,
                recipe=recipe,
                steps=steps,
                tokens=steps * tokens_per_step[recipe],
                seconds=seconds,
                **scores,
            )
        )
        print(f"seed {seed}, {recipe}, {steps} steps: {seconds:.0f} s, mean accuracy {scores['mean']:.3f}", flush=True)

    def today() -> None:
        for steps in args.today_steps:
            row(
                "today", steps, midtrain(config, data, output_dir, f"today-{steps}", max_steps=steps), f"today-{steps}"
            )

    def new() -> None:
        decays = {steps: max(1, round(args.decay_share * steps)) for steps in args.new_steps}
        starts = sorted(steps - decay for steps, decay in decays.items())
        clock = StepClock(starts)
        midtrain(
            config,
            data,
            output_dir,
            "new-stable",
            [clock],
            **new_recipe,
            max_steps=starts[-1],
            lr_scheduler_kwargs={"num_decay_steps": 0},  # stable to the end: its decays branch off it
            save_strategy="steps",
            save_steps=math.gcd(*starts),
            save_total_limit=None,
        )
        for steps, decay in decays.items():
            start, run = steps - decay, f"new-{steps}"
            checkpoint = output_dir / "new-stable" / f"checkpoint-{start}"
            seconds = midtrain(
                config,
                data,
                output_dir,
                run,
                **new_recipe,
                max_steps=steps,
                lr_decay_steps=decay,
                resume_from_checkpoint=str(checkpoint),
            )
            row("new", steps, clock.times[start] + seconds, run)

    for recipe in (new, today) if new_first else (today, new):
        recipe()
    return rows


def summary(rows: list[dict]) -> list[dict]:
    """Per recipe and budget, the mean over seeds (and their spread where there are several)."""
    keys = sorted({(r["recipe"], r["steps"]) for r in rows}, key=lambda key: (key[0] != "today", key[1]))
    means = []
    for recipe, steps in keys:
        chosen = [r for r in rows if (r["recipe"], r["steps"]) == (recipe, steps)]
        mean = {
            name: statistics.fmean(r[name] for r in chosen) for name in ("tokens", "seconds", *SUITE_SPLITS, "mean")
        }
        spread = statistics.stdev(r["mean"] for r in chosen) if len(chosen) > 1 else 0.0
        means.append(dict(recipe=recipe, steps=steps, seeds=len(chosen), mean_spread=spread, **mean))
    return means


def time_to_reach(points: list[dict], target: float) -> float | None:
    """Seconds at which the curve (by budget) first reaches `target`, linear between budgets; None if it never does."""
    previous = None
    for point in points:
        if point["mean"] >= target:
            if previous is None or point["mean"] == previous["mean"]:
                return point["seconds"]
            share = (target - previous["mean"]) / (point["mean"] - previous["mean"])
            return previous["seconds"] + share * (point["seconds"] - previous["seconds"])
        previous = point
    return None


def speedup(points: list[dict]) -> tuple[float, float, float | None]:
    """Today's accuracy (at its largest budget), its time, and the new recipe's time to reach it, for one curve of
    each recipe (points sorted by budget)."""
    today = [p for p in points if p["recipe"] == "today"]
    target, today_seconds = today[-1]["mean"], today[-1]["seconds"]
    if target <= 0:  # nothing to reach (the quick mode's tiny model)
        return target, today_seconds, None
    return target, today_seconds, time_to_reach([p for p in points if p["recipe"] == "new"], target)


def report(rows: list[dict], args: argparse.Namespace, output_dir: Path) -> None:
    means = summary(rows)
    target, today_seconds, reached = speedup(means)
    ratio = today_seconds / reached if reached else None
    per_seed = {}
    for seed in args.seeds:
        _, seconds, seed_reached = speedup(sorted((r for r in rows if r["seed"] == seed), key=lambda r: r["steps"]))
        per_seed[seed] = seconds / seed_reached if seed_reached else None
    header = ["recipe", "steps", "tokens (M)", "train s", *(s.removeprefix("held_out_") for s in SUITE_SPLITS), "mean"]
    cells = [
        [
            m["recipe"],
            str(m["steps"]),
            f"{m['tokens'] / 1e6:.2f}",
            f"{m['seconds']:.0f}",
            *(f"{m[s]:.3f}" for s in SUITE_SPLITS),
            f"{m['mean']:.3f} ± {m['mean_spread']:.3f}",
        ]
        for m in means
    ]
    verdict = (
        f"The new recipe reaches today's mean accuracy {target:.3f} in {reached:.0f} s against {today_seconds:.0f} s: "
        f"**{ratio:.2f}×** as fast."
        if reached
        else "Today's recipe scores 0 here: no time to compare."
        if target <= 0
        else f"The new recipe does not reach today's mean accuracy {target:.3f} within its budgets."
    )
    each = ", ".join(f"seed {seed} {f'{r:.2f}×' if r else 'not reached'}" for seed, r in per_seed.items())
    lines = [*markdown_table(header, cells), "", verdict, f"Each seed against its own today's accuracy: {each}."]
    (output_dir / "time_to_quality.md").write_text("\n".join(lines) + "\n")
    machine = dict(
        torch=torch.__version__,
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
        threads=torch.get_num_threads(),
        bf16=dataclasses.asdict(default_bf16()),
    )
    record = dict(
        recipe=str(args.recipe),
        new_recipe={**NEW_RECIPE, "warmup_steps": args.warmup_steps, **args.new},
        decay_share=args.decay_share,
        seeds=args.seeds,
        machine=machine,
        runs=rows,
        means=means,
        today_accuracy=target,
        seconds_to_reach=dict(today=today_seconds, new=reached),
        ratio=ratio,
        ratio_per_seed=per_seed,
    )
    (output_dir / "time_to_quality.json").write_text(json.dumps(record, indent=2) + "\n")
    plot(means, target, output_dir / "time_to_quality.png")
    print("\n".join(lines))


def plot(means: list[dict], target: float, path: Path) -> None:
    """Mean accuracy against training wall time and against tokens, one curve per recipe."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(9, 3.5), sharey=True)
    for axis, x, label in ((axes[0], "seconds", "training wall time (s)"), (axes[1], "tokens", "training tokens")):
        for recipe in ("today", "new"):
            points = [m for m in means if m["recipe"] == recipe]
            axis.errorbar(
                [m[x] for m in points],
                [m["mean"] for m in points],
                yerr=[m["mean_spread"] for m in points],
                marker="o",
                capsize=2,
                label={"today": "today's recipe", "new": "new (Muon, WSD)"}[recipe],
            )
        axis.axhline(target, color="black", linestyle="--", linewidth=0.8, label="today's default")
        axis.set_xlabel(label)
    axes[0].set_ylabel("mean accuracy, development splits")
    axes[0].set_ylim(0, 1)
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[7, 8, 9], help="Development suite seeds.")
    parser.add_argument("--today_steps", type=int, nargs="+", default=[1125, 2250, 4500], help="Today's budgets.")
    parser.add_argument("--new_steps", type=int, nargs="+", default=[750, 1500, 2250, 3000], help="New budgets.")
    parser.add_argument("--decay_share", type=float, default=0.2, help="Share of a new budget spent decaying.")
    parser.add_argument("--warmup_steps", type=int, default=NEW_RECIPE["warmup_steps"], help="The new warmup.")
    parser.add_argument(
        "--new",
        nargs="+",
        default=[],
        metavar="FIELD=VALUE",
        help="Midtrain fields of the new recipe over NEW_RECIPE's, to tune it: --new muon_learning_rate=0.03 "
        "per_device_train_batch_size=32",
    )
    parser.add_argument("--limit", type=int, default=None, help="Rows scored per split (default: every row).")
    parser.add_argument("--output_dir", type=Path, default=REPO / "benchmarks" / "results", help="Results go here.")
    parser.add_argument("--work_dir", type=Path, default=None, help="Keep the runs here (default: a temporary dir).")
    parser.add_argument("--quick", action="store_true", help="Tiny suite and model, one seed, ~2 minutes.")
    args = parser.parse_args()
    args.recipe, args.suite = RECIPE, {}
    args.new = {name: yaml.safe_load(value) for name, value in (item.split("=", 1) for item in args.new)}
    if args.quick:
        args.recipe, args.seeds = QUICK_RECIPE, args.seeds[:1]
        args.today_steps, args.new_steps, args.limit = QUICK["today_steps"], QUICK["new_steps"], QUICK["limit"]
        args.suite, args.warmup_steps = QUICK["suite"], QUICK["warmup_steps"]
    args.output_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as temporary:
        work = args.work_dir or Path(temporary)
        rows = []
        for index, seed in enumerate(args.seeds):
            rows += run_seed(seed, args, work, new_first=index % 2 == 1)
        report(rows, args, args.output_dir)


if __name__ == "__main__":
    main()
