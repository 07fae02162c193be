"""Reading records from local files or the Hub, with errors that name the file, the row and the field.

Every normaliser runs through `normalize_records`: a bad record either stops the run with a `BadRecordError` that
says where it is and how to fix it, or, with `on_bad_record="skip"`, is skipped and counted in a warning. Nothing is
dropped silently.
"""

import glob
import json
import os
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

import datasets
from tqdm.auto import tqdm

OnBadRecord = Literal["error", "skip"]
RECORD_SUFFIXES = (".jsonl", ".json", ".parquet")


class BadRecordError(ValueError):
    """A record that cannot be used; the message names its location, the field and the fix."""


def require_text(record: dict, field: str, allow_empty: bool = False) -> str:
    """`record[field]` as a string, or a BadRecordError naming the field."""
    if field not in record or record[field] is None:
        raise BadRecordError(f"field {field!r} is missing")
    value = record[field]
    if not isinstance(value, str):
        raise BadRecordError(f"field {field!r} must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise BadRecordError(f"field {field!r} is empty")
    return value


def expand_sources(source: str | os.PathLike | Iterable[str | os.PathLike], suffixes: tuple[str, ...]) -> list[str]:
    """Files named by a path, a folder (searched recursively), a glob, or a list of those; [] for a Hub name."""
    if not isinstance(source, (str, os.PathLike)):
        return [path for item in source for path in expand_sources(item, suffixes)]
    source = os.fspath(source)
    if os.path.isdir(source):
        pattern = os.path.join(source, "**", "*")
        return sorted(p for p in glob.glob(pattern, recursive=True) if p.endswith(suffixes) and os.path.isfile(p))
    if os.path.isfile(source):
        if not source.endswith(suffixes):
            raise ValueError(f"{source}: unsupported file type; use one of {', '.join(suffixes)}.")
        return [source]
    if glob.has_magic(source):
        matches = sorted(p for p in glob.glob(source, recursive=True) if p.endswith(suffixes))
        if not matches:
            raise FileNotFoundError(f"{source}: the pattern matches no {'/'.join(suffixes)} file.")
        return matches
    if source.startswith((".", "/", "~")) or os.path.splitext(source)[1]:
        raise FileNotFoundError(f"{source}: no such file or folder.")
    return []  # a Hub dataset name


def read_records(
    source: str | os.PathLike | Iterable[str | os.PathLike] | datasets.Dataset, split: str = "train"
) -> Iterator[tuple[str, dict | BadRecordError]]:
    """Yields (location, record) pairs; a line that is not UTF-8 or not a JSON object comes as a BadRecordError."""
    if isinstance(source, datasets.Dataset):
        for index, record in enumerate(source):
            yield f"row {index}", record
        return
    paths = expand_sources(source, RECORD_SUFFIXES)
    if not paths:
        hub = datasets.load_dataset(os.fspath(source), split=split)
        for index, record in enumerate(hub):
            yield f"{source} [{split}] row {index}", record
        return
    for path in paths:
        if path.endswith(".parquet"):
            table = datasets.load_dataset("parquet", data_files=path, split="train")
            for index, record in enumerate(table):
                yield f"{path}, row {index}", record
        elif path.endswith(".json") and _is_json_array(path):
            with open(path, encoding="utf-8") as f:
                for index, record in enumerate(json.load(f)):
                    yield f"{path}, item {index}", _as_object(record)
        else:
            yield from _read_json_lines(path)


def _is_json_array(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(256).lstrip().startswith(b"[")


def _read_json_lines(path: str) -> Iterator[tuple[str, dict | BadRecordError]]:
    with open(path, "rb") as f:
        for line_number, raw in enumerate(f, start=1):
            location = f"{path}, line {line_number}"
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield location, BadRecordError(f"not valid UTF-8 (byte {e.start}: {raw[e.start : e.start + 4]!r})")
                continue
            try:
                yield location, _as_object(json.loads(text))
            except json.JSONDecodeError as e:
                yield location, BadRecordError(f"not valid JSON ({e.msg} at column {e.colno})")


def _as_object(value: Any) -> dict | BadRecordError:
    return value if isinstance(value, dict) else BadRecordError(f"expected a JSON object, got {type(value).__name__}")


def normalize_records(
    source: str | os.PathLike | Iterable[str | os.PathLike] | datasets.Dataset,
    normalize: Callable[[dict], dict],
    on_bad_record: OnBadRecord = "error",
    split: str = "train",
    desc: str = "Reading records",
) -> datasets.Dataset:
    """Applies `normalize` to every record of `source`; bad records raise or, with "skip", are counted and warned."""
    if on_bad_record not in ("error", "skip"):
        raise ValueError(f"on_bad_record must be 'error' or 'skip', got {on_bad_record!r}.")
    rows, skipped, first_problem = [], Counter(), None
    for location, record in tqdm(read_records(source, split=split), desc=desc, unit=" records"):
        try:
            if isinstance(record, BadRecordError):
                raise record
            rows.append(normalize(record))
        except BadRecordError as problem:
            if on_bad_record == "error":
                raise BadRecordError(
                    f"{location}: {problem}. Fix the record, or pass on_bad_record='skip' to skip bad records."
                ) from None
            skipped[str(problem)] += 1
            first_problem = first_problem or f"{location}: {problem}"
    if skipped:
        reasons = "; ".join(f"{count} x {reason}" for reason, count in skipped.most_common())
        warnings.warn(
            f"Skipped {sum(skipped.values())} bad records of {sum(skipped.values()) + len(rows)} in {source} "
            f"({reasons}). First: {first_problem}.",
            stacklevel=2,
        )
    if not rows:
        raise ValueError(f"{source}: no usable records.")
    return datasets.Dataset.from_list(rows)
