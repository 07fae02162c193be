"""Model cards: the Hub page of every saved model, rendered from what its folder says about it.

A folder that one of our stages wrote has a run record, `hf_instruct_run.json`: each stage appends a record of itself
(data, steps, hyper-parameters, hardware, time, versions, metrics) to the history it inherits from its base model, so a
PPO model's card describes pretraining, SFT and PPO alike. Any other saved model (`save_pretrained`, a stock
`Trainer`/`SFTTrainer` run) gets its page from the files every HF tool writes: `config.json`, the safetensors headers,
the tokenizer and chat template, `generation_config.json`, the Trainer's `trainer_state.json` and
`all_results.json`/`eval_results.json`. What no file says is left out, never invented; the run record, when present,
wins. `hf-instruct push` re-renders the card with the repo id in the quick-start snippet, and `use_model_card(trainer)`
makes `trainer.push_to_hub()` publish it instead of transformers' generic one.
"""

import io
import json
import math
import os
import platform
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import torch
import transformers
import trl
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.repocard import metadata_load
from safetensors import safe_open

from ._version import __version__
from .utils import is_hub_id, markdown_table, table_cell

# The card templates live in the top-level model_cards/ folder. A wheel installs them inside the package (see
# pyproject.toml); an editable install and a source checkout (e.g. `python -m pytest` from the repository root, which
# imports this source tree even when a wheel is installed) read them where they lie, beside the package.
TEMPLATES = Path(__file__).parent / "model_cards"
if not TEMPLATES.is_dir():
    TEMPLATES = Path(__file__).parents[1] / "model_cards"
TEMPLATE = TEMPLATES / "model_card.md.jinja"
RUN_FILE = "hf_instruct_run.json"
PLOT_FILE = "training_curves.png"
STATE_FILE = "trainer_state.json"  # what `Trainer.save_state()` writes: the log history, steps and epochs
RESULTS_FILES = ("all_results.json", "eval_results.json")  # what `Trainer.save_metrics()` writes
# The first line of every card we render: a README.md without it (and not a Trainer draft) is the user's, and kept.
CARD_MARKER = "<!-- hf-instruct model card"
# What a training plot shows unless its stage declares otherwise (`hf_instruct.stages.Stage.plotted`).
PLOTTED_BY_DEFAULT = ("loss", "eval_loss")
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
TASKS = {"causal-lm": "text-generation", "adapter": "text-generation", "reward": "text-classification"}
# The decoding settings of generation_config.json a reader needs (the rest is token ids and bookkeeping).
GENERATION_DEFAULTS = (
    "do_sample",
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "repetition_penalty",
    "num_beams",
    "max_new_tokens",
    "max_length",
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


def plot_training_curves(
    log_history: list[dict], stage: str, output_dir: str | os.PathLike, plotted: Sequence[str] = PLOTTED_BY_DEFAULT
) -> Path | None:
    """`training_curves.png`: the logged quantities `plotted` (the loss, the stage's reward or KL) against steps (None
    when nothing was logged)."""
    png = training_curves_png(log_history, stage, plotted)
    if png is None:
        return None
    path = Path(output_dir) / PLOT_FILE
    path.write_bytes(png)
    return path


def training_curves_png(
    log_history: list[dict], stage: str, plotted: Sequence[str] = PLOTTED_BY_DEFAULT
) -> bytes | None:
    """The plot of `plot_training_curves` as PNG bytes, for a push, which must not write into the user's folder."""
    series = {
        name: [(entry["step"], entry[name]) for entry in log_history if name in entry and "step" in entry]
        for name in plotted
    }
    series = {name: points for name, points in series.items() if len(points) >= 2}  # a curve needs two points
    if not series:
        return None
    import matplotlib  # only now: importing it takes seconds

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(series), figsize=(4 * len(series), 3), squeeze=False)
    for axis, (name, points) in zip(axes[0], series.items(), strict=True):
        axis.plot(*zip(*points, strict=True), marker="o" if len(points) < 20 else None)
        axis.set_title(name)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    figure.suptitle(f"hf-instruct {stage}")
    figure.tight_layout()
    png = io.BytesIO()
    figure.savefig(png, format="png", dpi=100)
    plt.close(figure)
    return png.getvalue()


def render_model_card(
    folder: str | os.PathLike,
    model_id: str | None = None,
    *,
    plot: bool | None = None,
    license: str | None = None,
    base_model: str | None = None,
    datasets: Sequence[str] = (),
    tags: Sequence[str] = (),
) -> ModelCard:
    """The card of a saved model folder; `model_id` goes into the snippets (default: the folder), `plot` says whether
    it shows `training_curves.png` (default: when the folder has one). The other arguments are what a user or a
    trainer declares and no file records; local paths among them are left out (the Hub links only Hub ids)."""
    folder = Path(folder)
    model_id = model_id or str(folder)
    history = read_history(folder)
    final = history[-1] if history else None
    adapter = _read_json(folder / "adapter_config.json")
    # a LoRA adapter is described by its base model's config, when that is a local folder
    config_folder = Path(adapter.get("base_model_name_or_path") or folder) if adapter else folder
    config = _read_json(config_folder / "config.json")
    kind = _kind(final, adapter, config)
    task = TASKS.get(kind)
    if final:  # an hf-instruct stage: its run record wins over what the Trainer left in the folder
        run, metrics, eval_data = None, final["metrics"], final["data"]
        parameters, trainable = final["parameters"], final["trainable_parameters"]
    else:
        run = _trainer_run(folder)
        metrics, eval_data = run["metrics"] if run else {}, list(datasets)
        stored = _stored_parameters(folder)
        parameters, trainable = (None, stored) if adapter else (stored, None)  # an adapter holds no base weights
    base_model = base_model or (final or {}).get("base_model") or adapter.get("base_model_name_or_path")
    model_type = config.get("model_type")
    stages = [record["stage"] for record in history]
    card_tags = ["hf-instruct", "instructgpt" if final else None, model_type, *stages, *tags]
    hub_datasets = sorted({name for name in [*(d for r in history for d in r["data"]), *datasets] if is_hub_id(name)})
    card_data = ModelCardData(
        model_name=model_id,
        library_name="peft" if adapter else "transformers",
        pipeline_tag=task,
        license=license or ("apache-2.0" if final else "unknown"),
        base_model=base_model if is_hub_id(base_model) else None,
        datasets=hub_datasets or None,
        tags=list(dict.fromkeys(tag for tag in card_tags if tag)),
        eval_results=_eval_results(metrics, task, eval_data, split="held-out" if final else None) or None,
    )
    tokenizer = _tokenizer(folder)
    if plot is None:
        plot = (folder / PLOT_FILE).is_file()
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE),
        model_id=model_id,
        kind=kind,
        model_type=model_type,
        remote_code=", trust_remote_code=True" if "auto_map" in config else "",
        quick_start=kind is not None and tokenizer is not None,  # the snippets load the tokenizer from the repo
        chat=tokenizer is not None and tokenizer["chat"],
        stage=final["stage"] if final else None,
        base_model=card_data.base_model,
        model=_table(["", ""], _model_rows(folder, config_folder, config, adapter, parameters, trainable, tokenizer)),
        history=[_presented(number, record) for number, record in enumerate(history, start=1)],
        training=_table(["", ""], run["rows"]) if run else None,
        results=_table(["metric", "value"], {name: _format(value) for name, value in metrics.items()}),
        plot=PLOT_FILE if plot else None,
    )


def model_card_files(folder: str | os.PathLike, model_id: str | None = None, **metadata) -> dict[str, bytes]:
    """`README.md` and, for a Trainer run without a plot yet, `training_curves.png`: the files of the card, which
    `write_model_card` writes into the folder and `push_to_hub` uploads (leaving the folder as it is)."""
    folder = Path(folder)
    files = {}
    if not (folder / PLOT_FILE).is_file() and not read_history(folder):
        png = training_curves_png(_read_json(folder / STATE_FILE).get("log_history", []), "training")
        if png is not None:
            files[PLOT_FILE] = png
    plot = PLOT_FILE in files or (folder / PLOT_FILE).is_file()
    files["README.md"] = str(render_model_card(folder, model_id, plot=plot, **metadata)).encode()
    return files


def write_model_card(folder: str | os.PathLike, model_id: str | None = None, **metadata) -> Path:
    """Render the card into the folder: `README.md` (and the plot of a Trainer run)."""
    for name, content in model_card_files(folder, model_id, **metadata).items():
        (Path(folder) / name).write_bytes(content)
    return Path(folder) / "README.md"


def is_generated_card(path: str | os.PathLike) -> bool:
    """Whether a README.md was written by a program, ours or the Trainer's and TRL's drafts (which they tag
    `generated_from_trainer`), so that re-rendering it loses nothing; any other card is the user's."""
    tags = (metadata_load(path) or {}).get("tags") or []
    return CARD_MARKER in Path(path).read_text(encoding="utf-8") or "generated_from_trainer" in tags


def use_model_card(trainer: transformers.Trainer) -> transformers.Trainer:
    """Make `trainer.push_to_hub()` publish the hf-instruct card instead of transformers' generic one.

    `Trainer.push_to_hub` saves the model, calls `trainer.create_model_card(...)`, which overwrites `README.md` in
    `output_dir`, and uploads the folder: no callback runs between the last two, so this replaces that method on this
    trainer (TRL trainers also call it at every checkpoint). What its callers pass still counts (`license`, `tags`,
    `finetuned_from`, `dataset_tags`/`dataset_name`); the base model defaults to the Hub model the model was loaded
    from. The Trainer state is saved first: the card's steps, curves and final metrics come from it.
    """

    def create_model_card(
        license=None, tags=None, finetuned_from=None, dataset_tags=None, dataset_name=None, **_other_card_fields
    ) -> None:
        if not trainer.is_world_process_zero():
            return
        trainer.save_state()
        write_model_card(
            trainer.args.output_dir,
            trainer.hub_model_id,
            license=license,
            base_model=finetuned_from or trainer.model.config.name_or_path,
            datasets=_as_list(dataset_tags) + _as_list(dataset_name),
            tags=_as_list(tags),
        )

    trainer.create_model_card = create_model_card
    return trainer


def _kind(final: dict | None, adapter: dict, config: dict) -> str | None:
    """What the quick start loads: "adapter", "reward" (a sequence classifier), "causal-lm", or None (another head)."""
    if adapter:
        return "adapter"
    if final:
        return "reward" if final["stage"] == "reward" else "causal-lm"
    architecture = (config.get("architectures") or [""])[0]
    if architecture.endswith("ForSequenceClassification"):
        return "reward"
    return "causal-lm" if architecture.endswith(("ForCausalLM", "LMHeadModel")) else None


def _trainer_run(folder: Path) -> dict | None:
    """What a Trainer left in the folder: steps, epochs, batch size, and the final metrics (the last logged value of
    each, then `all_results.json`/`eval_results.json`); None when it left nothing."""
    state = _read_json(folder / STATE_FILE)
    metrics = {}
    for entry in [*state.get("log_history", []), *(_read_json(folder / name) for name in RESULTS_FILES)]:
        metrics.update({name: value for name, value in entry.items() if _is_result(name) and _is_number(value)})
    rows = {
        "steps": state.get("global_step"),
        "epochs": round(state["epoch"], 2) if state.get("epoch") else None,
        "batch size per device": state.get("train_batch_size"),
        "tokens seen": state.get("num_input_tokens_seen") or None,
    }
    rows = {name: _format(value) for name, value in rows.items() if value is not None}
    return {"rows": rows, "metrics": metrics} if rows or metrics else None


def _is_result(name: str) -> bool:
    """A final metric worth reporting: losses and evaluation results, not timings, sample counts or optimiser state."""
    return name in ("loss", "train_loss") or (
        name.startswith("eval_") and not name.endswith(("_runtime", "_per_second", "_samples"))
    )


def _eval_results(metrics: dict, task: str | None, data: list[str], split: str | None) -> list[EvalResult]:
    """The `model-index` entries, one per evaluation metric; the data by its Hub id, else by its file's name (the
    Hub page shows no local path)."""
    if task is None:
        return []
    names = [name if is_hub_id(name) else Path(name).name for name in data]
    first = data[0] if data else None
    return [
        EvalResult(
            task_type=task,
            dataset_type=first if is_hub_id(first) else Path(first).stem if first else "unknown",
            dataset_name=", ".join(names) or "evaluation data",
            dataset_split=split,
            metric_type=name.removeprefix("eval_"),
            metric_value=value,
        )
        for name, value in metrics.items()
        if name.startswith("eval_") and _is_result(name)
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
        "rows": _table(["", ""], {name: _format(value) for name, value in rows.items() if value is not None}),
        "metrics": _table(["metric", "value"], {name: _format(value) for name, value in record["metrics"].items()}),
    }


def _model_rows(
    folder: Path,
    config_folder: Path,
    config: dict,
    adapter: dict,
    parameters: int | None,
    trainable: int | None,
    tokenizer: dict | None,
) -> dict[str, str]:
    """The Model table: architecture and shape, parameters, the LoRA, tokenizer, generation defaults (known ones)."""
    if config.get("model_type") in transformers.CONFIG_MAPPING:  # read as the Auto classes do (GPT-2's n_embd...)
        auto_config = transformers.AutoConfig.from_pretrained(config_folder)
        shape = {name: getattr(auto_config, name, None) for name in ARCHITECTURE_FIELDS}
    else:  # a remote-code type this process does not know (or no config): the fields as config.json names them
        shape = {name: config.get(name) for name in ARCHITECTURE_FIELDS}
    generation = _read_json(folder / "generation_config.json")
    generation = ", ".join(f"{name}={value}" for name, value in generation.items() if name in GENERATION_DEFAULTS)
    targets = adapter.get("target_modules")
    targets = ", ".join(sorted(targets)) if isinstance(targets, list) else targets
    rows = {
        "architecture": (config.get("architectures") or [None])[0],
        **shape,
        "parameters": _count(parameters) if parameters else None,
        "adapter": f"LoRA r={adapter.get('r')}, alpha={adapter.get('lora_alpha')}, on {targets}" if adapter else None,
        "trainable (adapter) parameters": _count(trainable) if adapter and trainable else None,
        "tokenizer": tokenizer["class"] if tokenizer else None,
        "chat template": ("yes" if tokenizer["chat"] else "no") if tokenizer else None,
        "generation defaults": generation or None,
    }
    return {name: _format(value) for name, value in rows.items() if value is not None}


def _tokenizer(folder: Path) -> dict | None:
    """The tokenizer's class and whether it has a chat template; None when the folder has no tokenizer."""
    config = _read_json(folder / "tokenizer_config.json")
    if not config:
        return None
    chat = (folder / "chat_template.jinja").is_file() or bool(config.get("chat_template"))
    return {"class": config.get("tokenizer_class"), "chat": chat}


def _stored_parameters(folder: Path) -> int | None:
    """The parameters in the folder's safetensors files (all shards, or an adapter's), counted from their headers
    without loading a weight (tied weights are stored once); None when there are none."""
    files = sorted(folder.glob("*.safetensors"))
    total = 0
    for path in files:
        with safe_open(path, framework="pt") as weights:
            total += sum(math.prod(weights.get_slice(name).get_shape()) for name in weights.keys())
    return total if files else None


def _table(header: list[str], rows: dict[str, str]) -> str | None:
    """A table of `name | value` rows for the template (a value may hold a pipe: a regex of LoRA target modules);
    None when there are none."""
    if not rows:
        return None
    return "\n".join(markdown_table(header, [[name, table_cell(value, width=None)] for name, value in rows.items()]))


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _as_list(value: str | Sequence[str] | None) -> list[str]:
    return [value] if isinstance(value, str) else list(value or [])


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
