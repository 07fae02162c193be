"""Is a saved model or a checkpoint complete? A run killed while writing leaves folders that look like one.

A stage resumes only from a checkpoint that holds everything an exact resume needs, and counts as finished only when
its model can be loaded. Each check returns the first problem as a sentence (None: complete), so callers can say
which folder was skipped and why.
"""

import json
import os
import re
import struct
from pathlib import Path

import torch
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

logger = logging.get_logger(__name__)
WEIGHTS = ("model.safetensors", "adapter_model.safetensors")
SHARDED_INDEX = "model.safetensors.index.json"
INCOMPLETE_PREFIX = "incomplete-"  # a skipped checkpoint is renamed so the Trainer never resumes from or rotates it
HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")  # 'name' or 'org/name'
NO_SUCH_FOLDER = "no such folder (nor a Hub id such as 'org/name')"


def missing_folder(path: str | os.PathLike) -> bool:
    """Whether `path` names a local folder that is not there (a file, a path the Hub could not hold, or one starting
    with "."), rather than a Hub id, which is left to the Hub (whose own error for a path is "Repo id must be in the
    form...")."""
    path = str(path)
    return not os.path.isdir(path) and (os.path.exists(path) or path.startswith(".") or not HUB_ID.fullmatch(path))


def safetensors_header(path: Path) -> tuple[int, dict] | None:
    """(bytes a whole file has, tensor entries: name -> dtype, shape, data_offsets) of a safetensors file's header;
    None if the header is unreadable."""
    try:
        with path.open("rb") as f:
            (header_size,) = struct.unpack("<Q", f.read(8))
            if header_size > path.stat().st_size - 8:  # a corrupted size: reading it would ask for exabytes
                return None
            header = json.loads(f.read(header_size))
        tensors = {name: entry for name, entry in header.items() if name != "__metadata__"}
        end = max((entry["data_offsets"][1] for entry in tensors.values()), default=0)
    except (struct.error, ValueError, OSError, AttributeError, KeyError, IndexError, TypeError):
        return None  # cut off, or not the JSON mapping of tensor entries a safetensors header is
    return 8 + header_size + end, tensors


def safetensors_problem(path: Path) -> str | None:
    """Why `path` is not a whole safetensors file: missing, or shorter than its header says (a killed write)."""
    if not path.is_file():
        return f"{path.name} is missing"
    header = safetensors_header(path)
    if header is None:
        return f"{path.name} is not a safetensors file (its header is cut off or unreadable)"
    if (size := path.stat().st_size) < header[0]:
        return f"{path.name} is truncated ({size} of {header[0]} bytes)"
    return None


def weights_problem(folder: Path) -> str | None:
    """Why the weights in `folder` cannot be loaded (None: every weights file is whole)."""
    if (folder / SHARDED_INDEX).is_file():
        shards = sorted(set(json.loads((folder / SHARDED_INDEX).read_text())["weight_map"].values()))
        return next(filter(None, (safetensors_problem(folder / shard) for shard in shards)), None)
    present = [folder / name for name in WEIGHTS if (folder / name).is_file()]
    if not present:
        return f"no weights ({' or '.join(WEIGHTS)})"
    return next(filter(None, map(safetensors_problem, present)), None)


def saved_model_problem(folder: str | Path, with_tokenizer: bool = True) -> str | None:
    """Why `folder` is not a loadable saved model or adapter (with its tokenizer) (None: it is)."""
    folder = Path(folder)
    if not folder.is_dir():
        return "no such folder"
    if not (folder / "config.json").is_file() and not (folder / "adapter_config.json").is_file():
        return "no config.json (or adapter_config.json): not a saved model"
    if with_tokenizer and (problem := tokenizer_problem(folder)):
        return problem
    return weights_problem(folder)


def reward_model_problem(folder: str | Path) -> str | None:
    """Why the saved model in `folder` cannot serve as a reward (or value) model, from its config.json (None: it is
    a sequence classifier with one output; or no config.json to read, e.g. an adapter, whose loader says what is
    wrong). A plain language model would load as a classifier with a new random score head: every reward it gave
    would be noise, and training against it would go on without a word."""
    config_file = Path(folder) / "config.json"
    if not config_file.is_file():
        return None
    config = json.loads(config_file.read_text())
    architecture = ", ".join(config.get("architectures") or []) or config.get("model_type", "an unknown model")
    fix = "pass a model trained by `hf-instruct reward` (a sequence classifier with one output, num_labels=1)"
    if "ForSequenceClassification" not in architecture:
        what = "a language model" if "ForCausalLM" in architecture else "not a sequence classifier"
        return f"is {what} ({architecture}), not a reward model (it has no score head): {fix}"
    labels = len(config.get("id2label") or {}) or config.get("num_labels", 2)
    if labels != 1:
        return f"is a sequence classifier with {labels} outputs, not a reward model (one score per text): {fix}"
    return None


def check_reward_model(path: str | Path, field: str) -> None:
    """Refuse, in one line naming `field` and `path`, a reward model that is missing or is not one
    (`reward_model_problem`)."""
    if missing_folder(path):
        raise FileNotFoundError(f"{field} {path}: {NO_SUCH_FOLDER}.")
    if problem := reward_model_problem(path):
        raise ValueError(f"{field} {path} {problem}.")


def tokenizer_problem(folder: Path) -> str | None:
    return None if (folder / "tokenizer_config.json").is_file() else "no tokenizer (tokenizer_config.json)"


def checkpoint_problem(checkpoint: Path) -> str | None:
    """Why training cannot resume exactly from `checkpoint` (None: it holds weights, optimizer, scheduler, state)."""
    state = checkpoint / "trainer_state.json"
    if not state.is_file():
        return "no trainer_state.json (the run was killed while writing it)"
    try:
        json.loads(state.read_text())
    except ValueError:
        return "trainer_state.json is cut off"
    if any(path.is_dir() and path.name.startswith("global_step") for path in checkpoint.iterdir()):
        return None  # DeepSpeed keeps weights and optimizer in its own format, written before the state
    if problem := weights_problem(checkpoint):
        return problem
    for name, what in (("optimizer.pt", "the optimizer"), ("scheduler.pt", "the learning-rate schedule")):
        if not (checkpoint / name).is_file():
            return f"no {name}: resuming from it would restart {what}"
    return None


def last_complete_checkpoint(output_dir: str | Path, rename_incomplete: bool) -> str | None:
    """The newest checkpoint that passes `checkpoint_problem`; each newer one is skipped with a warning why.

    With `rename_incomplete` (the main process), a skipped checkpoint becomes `incomplete-checkpoint-N`, out of the
    Trainer's way (it would otherwise count it among the newest when rotating old checkpoints)."""
    output_dir = Path(output_dir)
    checkpoints = [p for p in output_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if p.name.split("-")[-1].isdigit()]
    for checkpoint in sorted(checkpoints, key=lambda p: int(p.name.split("-")[-1]), reverse=True):
        problem = checkpoint_problem(checkpoint)
        if problem is None:
            return str(checkpoint)
        line = f"skipped {checkpoint}: {problem}"
        if rename_incomplete:
            checkpoint.rename(checkpoint.with_name(INCOMPLETE_PREFIX + checkpoint.name))
            line += f"; renamed {INCOMPLETE_PREFIX + checkpoint.name}"
        logger.warning(line)
    return None


def shape_mismatch(checkpoint: Path, model: torch.nn.Module) -> str | None:
    """The first weight whose shape in `checkpoint` differs from `model`'s (e.g. an output dir reused after the
    model's size changed), as 'name: checkpoint shape vs model shape'; None when they agree."""
    header = safetensors_header(checkpoint / WEIGHTS[0]) if (checkpoint / WEIGHTS[0]).is_file() else None
    if header is None:
        return None  # sharded, adapter or DeepSpeed checkpoints: the Trainer's own loading checks them
    shapes = {  # under DeepSpeed ZeRO-3 a parameter holds this process's shard, and ds_shape the whole one's shape
        name: list(getattr(parameter, "ds_shape", parameter.shape))
        for name, parameter in model.named_parameters(remove_duplicate=False)
    }
    for name, entry in header[1].items():
        if name in shapes and shapes[name] != entry["shape"]:
            return f"{name}: {entry['shape']} there, {shapes[name]} here"
    return None
