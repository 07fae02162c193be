"""The metrics hf-instruct ships as `evaluate` modules, loaded by path so that they work offline (no Hub lookup).

Each lives in `metrics/<name>/<name>.py`, the layout `evaluate.load(folder)` expects.
"""

from pathlib import Path

import evaluate

METRICS = ("exact_match", "rouge_l", "win_rate", "perplexity", "instruction_accuracy")
METRICS_DIR = Path(__file__).resolve().parent / "metrics"


def metric_path(name: str) -> str:
    """Folder of a shipped metric, for evaluate.load(metric_path(name))."""
    if name not in METRICS:
        raise ValueError(f"Unknown metric {name!r}; hf-instruct ships: {', '.join(METRICS)}.")
    return str(METRICS_DIR / name)


def load_metric(name: str, **kwargs) -> evaluate.EvaluationModule:
    """`evaluate.load` of a shipped metric; kwargs (cache_dir, keep_in_memory, experiment_id...) go to it."""
    return evaluate.load(metric_path(name), **kwargs)
