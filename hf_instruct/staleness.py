"""Is a run still what its config asks for? The settings and inputs a run records, and the lock on a run folder.

A stage records, in its run record, the settings that decide what it trains (`run_settings`: every field that differs
from its default, except those that only say where files go and how progress is shown) and a fingerprint of every
model and data file it read (`input_fingerprints`). The pipeline compares both with what it would run now, so a
changed learning rate, seed or input model re-runs the stage and everything downstream of it instead of keeping a
model made with another config; a stage run on its own says when a finished run's settings differ from the command's.
Fingerprints are cheap: each file's size and a few sampled MiB of its content (the whole file when small), so planning
never re-reads whole models, and a copied or moved folder keeps its fingerprint.
"""

import dataclasses
import errno
import fcntl
import glob
import hashlib
import json
import os
from pathlib import Path

from .model_card import RESULTS_FILES, RUN_FILE, STATE_FILE
from .precision import SET_IN_CONFIG

# the fields whose values are models and data read from disk: compared by content (`input_fingerprints`), not by path
INPUT_FIELDS = (
    "model_name_or_path",
    "tokenizer_name_or_path",
    "reward_model_path",
    "value_model_path",
    "train_files",
    "instruction_files",
    "demonstration_files",
    "ptx_files",
    "chat_template_path",
)
# fields that change where files go, how progress is shown or how fast a run goes, never what it trains
NOT_SETTINGS = {
    *INPUT_FIELDS,
    "output_dir",
    "report_to",
    "disable_tqdm",
    "run_name",
    "project",
    "resume_from_checkpoint",
    "push_to_hub",
    "keep_freed_memory",
    "use_cpu",
    "local_rank",
    "debug",
    "skip_memory_metrics",
    "include_num_input_tokens_seen",
    "num_completions_to_print",
    "dataloader_num_workers",
    "dataloader_pin_memory",
    "dataloader_persistent_workers",
    "dataloader_prefetch_factor",
    "dataloader_multiprocessing_context",
    "eval_strategy",
    "eval_steps",
    "eval_delay",
    "eval_on_start",
    "eval_accumulation_steps",
    "per_device_eval_batch_size",
}
NOT_SETTINGS_PREFIXES = ("logging_", "log_", "save_", "hub_", "trackio_", "ddp_")
# what a model folder holds that is not the model: the run's bookkeeping (the pipeline adds metrics to a run record)
NOT_MODEL_FILES = {RUN_FILE, STATE_FILE, *RESULTS_FILES, "train_results.json", "README.md"}
MODEL_SUFFIXES = (".safetensors", ".json", ".jinja", ".model", ".txt")
SAMPLE = 1 << 20  # bytes read at the start, middle and end of a big file
_held_locks: dict[tuple[int, int], int] = {}  # (device, inode) of a locked folder -> its open descriptor


def run_settings(config) -> dict:
    """The fields of a stage config that decide what it trains and differ from their defaults, JSON-ready: what the
    run record keeps, to tell later whether a run was made with the same settings."""
    values = config.to_dict()  # enums as their values, tokens hidden
    defaults = {field.name: field_default(field) for field in dataclasses.fields(config) if field.init}
    # a bf16 the machine chose is how fast a run goes, not what it asks for: a probe near its threshold may choose
    # otherwise next time, and that must not train a finished run again
    skipped = NOT_SETTINGS | ({"bf16"} if getattr(config, "bf16_reason", SET_IN_CONFIG) != SET_IN_CONFIG else set())
    settings = {}
    for name in sorted(defaults):
        if name in skipped or name.startswith(NOT_SETTINGS_PREFIXES) or name not in values:
            continue
        value, default = jsonable(values[name]), jsonable(defaults[name])
        if value != default:
            settings[name] = value
    return settings


def field_default(field: dataclasses.Field):
    if field.default is not dataclasses.MISSING:
        return field.default
    return field.default_factory() if field.default_factory is not dataclasses.MISSING else None


def jsonable(value):
    """`value` as it reads back from JSON (tuples as lists, enums and other objects as strings)."""
    return json.loads(json.dumps(value, default=lambda item: getattr(item, "value", str(item))))


def setting_changes(recorded: dict, current: dict, config_class: type) -> list[str]:
    """'name old → new' for each setting that differs; a setting missing on one side had its default there."""
    defaults = {field.name: jsonable(field_default(field)) for field in dataclasses.fields(config_class)}
    return value_changes(recorded, current, defaults)


def value_changes(old: dict, new: dict, defaults: dict | None = None) -> list[str]:
    """'name old → new' for each key whose value differs between two mappings (a missing key has its `defaults`
    value, else None), in key order."""
    defaults = defaults or {}
    changes = []
    for name in sorted(set(old) | set(new)):
        before, after = old.get(name, defaults.get(name)), new.get(name, defaults.get(name))
        if before != after:
            changes.append(f"{name} {before} → {after}")
    return changes


def input_fingerprints(config) -> dict[str, str]:
    """Field -> fingerprint of what it names (every file of a data folder or glob, a model folder's model files);
    a Hub id, or a path that is not there, is fingerprinted by its name."""
    fingerprints = {}
    for name in INPUT_FIELDS:
        value = getattr(config, name, None)
        if value:
            paths = [value] if isinstance(value, str) else list(value)
            fingerprints[name] = digest_of([path_fingerprint(str(path)) for path in paths])
    return fingerprints


def path_fingerprint(path: str) -> str:
    """The fingerprint of a file, folder or glob (see `input_fingerprints`)."""
    if os.path.isfile(path):
        return file_fingerprint(Path(path))
    if os.path.isdir(path):
        folder = Path(path)
        if (folder / "config.json").is_file() or (folder / "adapter_config.json").is_file():  # a saved model
            files = [
                file
                for file in folder.iterdir()
                if file.is_file() and file.name.endswith(MODEL_SUFFIXES) and file.name not in NOT_MODEL_FILES
            ]
        else:  # a folder of data files
            files = [file for file in folder.rglob("*") if file.is_file()]
        return digest_of([f"{file.relative_to(folder)}:{file_fingerprint(file)}" for file in sorted(files)])
    if matches := sorted(glob.glob(path)):
        return digest_of([f"{os.path.basename(match)}:{path_fingerprint(match)}" for match in matches])
    return f"name:{path}"


def file_fingerprint(path: Path) -> str:
    """SHA-256 of a file's size and content; of a file over 4 MiB, of its size and 1 MiB at its start, middle and
    end (a retrained model changes every tensor, so every sample)."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as f:
        if size <= 4 * SAMPLE:
            digest.update(f.read())
        else:
            for offset in (0, size // 2, size - SAMPLE):
                f.seek(offset)
                digest.update(f.read(SAMPLE))
    return digest.hexdigest()


def digest_of(parts: list[str]) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def recorded_run(run_dir: str | os.PathLike) -> dict:
    """What the run in `run_dir` recorded of its settings and inputs: its last stage record once finished, else what
    it wrote when it started ({} when nothing, or an hf-instruct version that recorded neither)."""
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        return {}
    record = json.loads(path.read_text())
    return record["history"][-1] if record.get("history") else record


def why_stale(recorded: dict, config, check_inputs: bool = True) -> str | None:
    """Why a run that recorded `recorded` is not what `config` asks for: its settings or (with `check_inputs`) its
    inputs differ (None: they are the same, or the record holds neither)."""
    reasons = []
    if "settings" in recorded and (
        changes := setting_changes(recorded["settings"], run_settings(config), type(config))
    ):
        reasons.append(f"settings changed ({', '.join(changes)})")
    if check_inputs and "inputs" in recorded:
        current = input_fingerprints(config)
        changed = [
            name
            for name in sorted(set(recorded["inputs"]) | set(current))
            if recorded["inputs"].get(name) != current.get(name)
        ]
        if changed:
            reasons.append(f"input changed ({', '.join(changed)})")
    return "; ".join(reasons) or None


def lock_folder(folder: str | os.PathLike) -> None:
    """Hold an exclusive lock on `folder` until this process ends, so a second run cannot write into it at the same
    time (the lock goes with the process, also when it is killed). Refused with a clear error when another process
    holds it; file systems without locks are left unlocked."""
    descriptor = os.open(folder, os.O_RDONLY)
    stat = os.fstat(descriptor)
    key = (stat.st_dev, stat.st_ino)
    if key in _held_locks:  # this process holds it already (a re-run in the same process)
        os.close(descriptor)
        return
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        os.close(descriptor)
        if error.errno in (errno.EWOULDBLOCK, errno.EACCES):
            raise ValueError(
                f"{folder} is in use by another hf-instruct run (it holds the folder's lock): wait for it to end, or "
                "choose another output folder."
            ) from None
        return  # a file system without locks
    _held_locks[key] = descriptor
