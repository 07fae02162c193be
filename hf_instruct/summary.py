"""Several pipeline runs (seeds) read as one result: each figure's mean, spread and per-seed values.

One seed's comparison can be a lucky draw; a claim is worth stating when it holds on every seed. This reads the
`comparison.json` of each run folder (schema 5, written by `hf-instruct pipeline`) and gives, for every model that
all runs compared, the mean and sample standard deviation over seeds of each split's accuracy, its floor, the
pooled paired difference against SFT (with on how many seeds its 95 % interval lies above 0) and the verifier's win
rate. `hf-instruct summarize runs/reported-42 runs/reported-1 runs/reported-2` prints it as markdown.
"""

import json
import statistics
from pathlib import Path

from .pipeline import COMPARISON_SCHEMA, SUITE_SPLITS, short
from .utils import markdown_table


def read_comparisons(run_dirs: list[str | Path]) -> dict[str, dict]:
    """{run folder: its comparison.json}, refusing a folder without one or with another schema."""
    comparisons = {}
    for run_dir in map(Path, run_dirs):
        path = run_dir / "comparison.json"
        if not path.is_file():
            raise ValueError(f"{run_dir}: no comparison.json (run `hf-instruct pipeline --output_dir {run_dir}`).")
        comparison = json.loads(path.read_text())
        if comparison.get("schema") != COMPARISON_SCHEMA:
            raise ValueError(
                f"{path}: schema {comparison.get('schema')}, this reads schema {COMPARISON_SCHEMA}: run the pipeline "
                "again into that folder (only the comparison is redone)."
            )
        comparisons[str(run_dir)] = comparison
    return comparisons


def spread(values: list[float]) -> dict:
    """{"mean", "sd" (sample standard deviation; 0 for one value), "values"}."""
    return {
        "mean": statistics.fmean(values),
        "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
        "values": values,
    }


def summarize_runs(comparisons: dict[str, dict]) -> dict:
    """{"runs": [folders], "floors": {split: spread}, "models": {model: {"splits": {split: spread of accuracy},
    "pooled_vs_sft": spread of the difference plus "above_zero" (seeds whose interval is above 0) and "intervals",
    "win_rate_vs_sft": spread, "perplexity": spread}}} for the models every run compared, in the first run's order.
    A split's floor is the same for every model of a run (the trivial rules answer from the examples alone)."""
    if not comparisons:
        raise ValueError("summarize_runs: no runs given.")
    results = [comparison["results"] for comparison in comparisons.values()]
    models = [name for name in results[0] if all(name in result for result in results)]
    floors = {s: spread([next(iter(r.values()))["splits"][s]["floor"] for r in results]) for s in SUITE_SPLITS}
    summary = {"runs": list(comparisons), "floors": floors, "models": {}}
    for name in models:
        per_run = [result[name] for result in results]
        model = {
            "splits": {s: spread([m["splits"][s]["accuracy"] for m in per_run]) for s in SUITE_SPLITS},
            "perplexity": spread([m["perplexity"] for m in per_run]),
        }
        if name != "sft":  # SFT against itself says nothing
            pooled = [m["pooled"]["vs_sft"] for m in per_run]
            model["pooled_vs_sft"] = spread([p["difference"] for p in pooled]) | {
                "above_zero": sum(p["interval"][0] > 0 for p in pooled),
                "intervals": [p["interval"] for p in pooled],
            }
            model["win_rate_vs_sft"] = spread([m["pooled"]["win_rate_vs_sft"] for m in per_run])
        summary["models"][name] = model
    return summary


def summary_markdown(summary: dict) -> list[str]:
    """The summary as a markdown table, mean ± sd over the runs, with the pooled difference's per-seed values."""
    runs = len(summary["runs"])
    header = ["model", *map(short, SUITE_SPLITS), "pooled vs SFT", "verifier win rate", "perplexity"]
    rows = [["floor", *(_mean_sd(summary["floors"][s]) for s in SUITE_SPLITS), "", "", ""]]
    for name, model in summary["models"].items():
        pooled, win_rate = model.get("pooled_vs_sft"), model.get("win_rate_vs_sft")
        rows.append(
            [
                name,
                *(_mean_sd(model["splits"][s]) for s in SUITE_SPLITS),
                f"{_mean_sd(pooled, signed=True)} ({pooled['above_zero']}/{runs} above 0)" if pooled else "",
                _mean_sd(win_rate) if win_rate else "",
                _mean_sd(model["perplexity"]),
            ]
        )
    lines = [f"Mean ± sd over {runs} runs: {', '.join(summary['runs'])}.", ""]
    lines += markdown_table(header, rows)
    lines += ["", "Pooled difference against SFT per run, with its paired 95 % interval:", ""]
    for name, model in summary["models"].items():
        if pooled := model.get("pooled_vs_sft"):
            values = "; ".join(
                f"{value:+.3f} [{low:+.3f}, {high:+.3f}]"
                for value, (low, high) in zip(pooled["values"], pooled["intervals"], strict=True)
            )
            lines.append(f"- {name}: {values}")
    return lines


def _mean_sd(figure: dict, signed: bool = False) -> str:
    sign = "+" if signed else ""
    return f"{figure['mean']:{sign}.3f} ± {figure['sd']:.3f}"
