"""Model cards: the Hub page of every model a stage saves, rendered from what the run recorded.

Each stage appends a record of itself (data, steps, hyper-parameters, hardware, time, versions, metrics) to the
history it inherits from its base model, in `hf_instruct_run.json`; the card is rendered from that file, the config
and the training-curve plot, so a PPO model's card describes pretraining, SFT and PPO alike, and `hf-instruct push`
can re-render it with the repo id in the quick-start snippet.
"""

import json
import math
import os
import platform
from datetime import datetime, timezone
from importlib.resources import files
from pathlib import Path

import torch
import transformers
import trl
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from . import __version__

TEMPLATE = files("hf_instruct.model_cards") / "model_card.md.jinja"
RUN_FILE = "hf_instruct_run.json"
PLOT_FILE = "training_curves.png"
# What each stage's plot shows: the training loss and the quantities the stage optimises.
PLOTTED = {
    "ppo": ("objective/scores", "objective/kl", "loss/ptx"),
    "grpo": ("reward", "kl"),
    "dpo": ("loss", "rewards/margins"),
    "reward": ("loss", "accuracy"),
}
ARCHITECTURE_FIELDS = (
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "vocab_size",
    "max_position_embeddings",
    "tie_word_embeddings",
)


def read_history(model_name_or_path: str | None) -> list[dict]:
    """The stage records of a local hf-instruct model (empty for any other model)."""
    path = Path(model_name_or_path or "") / RUN_FILE
    if not model_name_or_path or not path.is_file():
        return []
    return json.loads(path.read_text()).get("history", [])


def stage_record(
    *,
    stage: str,
    model: torch.nn.Module,
    base_model: str | None,
    data: list[str] | str | None,
    steps: int,
    wall_time_s: float,
    hyperparameters: dict,
    metrics: dict,
) -> dict:
    """What a reader needs to know about one stage, JSON-ready."""
    return {
        "stage": stage,
        "base_model": base_model,
        "data": [data] if isinstance(data, str) else list(data or []),
        "steps": steps,
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "hardware": hardware(),
        "wall_time_s": round(wall_time_s, 1),
        "finished": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "versions": {
            "hf-instruct": __version__,
            "transformers": transformers.__version__,
            "trl": trl.__version__,
            "torch": torch.__version__,
        },
        "hyperparameters": hyperparameters,
        "metrics": {name: value for name, value in metrics.items() if _is_number(value)},
    }


def write_run_record(output_dir: str | os.PathLike, history: list[dict]) -> None:
    """`hf_instruct_run.json`: the final stage and the history of every stage that made the model."""
    record = {"stage": history[-1]["stage"], "history": history}
    (Path(output_dir) / RUN_FILE).write_text(json.dumps(record, indent=2) + "\n")


def plot_training_curves(log_history: list[dict], stage: str, output_dir: str | os.PathLike) -> Path | None:
    """`training_curves.png`: the stage's logged loss/reward/KL against steps (None when nothing was logged)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {
        name: [(entry["step"], entry[name]) for entry in log_history if name in entry and "step" in entry]
        for name in PLOTTED.get(stage, ("loss", "eval_loss"))
    }
    series = {name: points for name, points in series.items() if len(points) >= 2}  # a curve needs two points
    if not series:
        return None
    figure, axes = plt.subplots(1, len(series), figsize=(4 * len(series), 3), squeeze=False)
    for axis, (name, points) in zip(axes[0], series.items(), strict=True):
        axis.plot(*zip(*points, strict=True), marker="o" if len(points) < 20 else None)
        axis.set_title(name)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    figure.suptitle(f"hf-instruct {stage}")
    figure.tight_layout()
    path = Path(output_dir) / PLOT_FILE
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def render_model_card(folder: str | os.PathLike, model_id: str | None = None) -> ModelCard:
    """The card of a saved model folder, from its run record, config and plot; `model_id` goes into the snippets
    (default: the folder). Fields that are unknown are left out, never rendered as "None"."""
    folder = Path(folder)
    history = json.loads((folder / RUN_FILE).read_text())["history"]
    final = history[-1]
    model_id = model_id or str(folder)
    is_adapter = (folder / "adapter_config.json").is_file()
    kind = "adapter" if is_adapter else "reward" if final["stage"] == "reward" else "causal-lm"
    task = "text-classification" if kind == "reward" else "text-generation"
    base_model = final.get("base_model")
    card_data = ModelCardData(
        model_name=model_id,
        library_name="peft" if is_adapter else "transformers",
        pipeline_tag=task,
        license="apache-2.0",
        base_model=base_model if is_hub_id(base_model) else None,
        datasets=sorted({d for record in history for d in record["data"] if is_hub_id(d)}) or None,
        tags=["hf-instruct", "instructgpt", *dict.fromkeys(record["stage"] for record in history)],
        eval_results=_eval_results(final, task) or None,
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE),
        model_id=model_id,
        kind=kind,
        stage=final["stage"],
        architecture=_architecture(folder),
        parameters=_count(final["parameters"]),
        trainable=_count(final["trainable_parameters"]) if is_adapter else None,
        history=[_presented(number, record) for number, record in enumerate(history, start=1)],
        results={name: _format(value) for name, value in final["metrics"].items()},
        plot=PLOT_FILE if (folder / PLOT_FILE).is_file() else None,
    )


def write_model_card(folder: str | os.PathLike) -> Path:
    path = Path(folder) / "README.md"
    render_model_card(folder).save(path)
    return path


def _eval_results(record: dict, task: str) -> list[EvalResult]:
    dataset = record["data"][0] if record["data"] else "local"
    return [
        EvalResult(
            task_type=task,
            dataset_type=dataset if is_hub_id(dataset) else Path(dataset).stem,
            dataset_name=", ".join(record["data"]) or "local data",
            dataset_split="held-out",
            metric_type=name.removeprefix("eval_"),
            metric_value=value,
        )
        for name, value in record["metrics"].items()
        if name.startswith("eval_") and not name.endswith(("_runtime", "_per_second"))
    ]


def _presented(number: int, record: dict) -> dict:
    """One stage as the template shows it: only known values, formatted."""
    rows = {
        "base model": record.get("base_model"),
        "data": ", ".join(record["data"]) or None,
        "steps": record["steps"],
        **record["hyperparameters"],
        "hardware": record["hardware"],
        "wall time": f"{record['wall_time_s'] / 60:.1f} min",
        "finished": record.get("finished"),
        "framework versions": ", ".join(f"{name} {version}" for name, version in record["versions"].items()),
    }
    return {
        "number": number,
        "stage": record["stage"],
        "rows": {name: _format(value) for name, value in rows.items() if value is not None},
        "metrics": {name: _format(value) for name, value in record["metrics"].items()},
    }


def _architecture(folder: Path) -> dict:
    """The config's shape fields; for a LoRA adapter, its base model's (when that is a local folder) and the LoRA."""
    adapter_file, lora = folder / "adapter_config.json", {}
    if adapter_file.is_file():
        adapter = json.loads(adapter_file.read_text())
        targets = adapter.get("target_modules")
        targets = ", ".join(sorted(targets)) if isinstance(targets, list) else targets
        lora = {"adapter": f"LoRA r={adapter.get('r')}, alpha={adapter.get('lora_alpha')}, on {targets}"}
        folder = Path(adapter.get("base_model_name_or_path") or folder)
    if not (folder / "config.json").is_file():
        return lora
    config = transformers.AutoConfig.from_pretrained(folder)
    values = {name: getattr(config, name, None) for name in ARCHITECTURE_FIELDS}
    return {**{name: value for name, value in values.items() if value is not None}, **lora}


def is_hub_id(name: str | None) -> bool:
    """A Hub repo id ("org/name") rather than a local path."""
    return bool(name) and not os.path.exists(name) and name.count("/") == 1 and not name.startswith((".", "/"))


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _format(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _count(count: int) -> str:
    return f"{count / 1e6:.1f} M" if count >= 1e6 else f"{count:,}"


def hardware() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    return f"CPU ({platform.machine()}, {os.cpu_count()} cores)"
