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
    """Files named by a path, a folder (searched recursively), a glob, or a list of those; [] for a Hub name. Only a
    lone string can be a Hub name: in a list (what --train_files gives) a mistyped folder is an error."""
    if not isinstance(source, (str, os.PathLike)):
        return [path for item in source for path in _local_files(os.fspath(item), suffixes)]
    source = os.fspath(source)
    local = os.path.exists(source) or glob.has_magic(source) or source.startswith((".", "/", "~"))
    return _local_files(source, suffixes) if local or os.path.splitext(source)[1] else []


def _local_files(source: str, suffixes: tuple[str, ...]) -> list[str]:
    kinds = "/".join(suffixes)
    if os.path.isdir(source):
        pattern = os.path.join(source, "**", "*")
        files = sorted(p for p in glob.glob(pattern, recursive=True) if p.endswith(suffixes) and os.path.isfile(p))
        if not files:
            raise FileNotFoundError(f"{source}: no {kinds} files in that folder.")
        return files
    if os.path.isfile(source):
        if not source.endswith(suffixes):
            raise ValueError(f"{source}: unsupported file type; use one of {', '.join(suffixes)}.")
        return [source]
    if glob.has_magic(source):
        matches = sorted(p for p in glob.glob(source, recursive=True) if p.endswith(suffixes))
        if not matches:
            raise FileNotFoundError(f"{source}: the pattern matches no {kinds} file.")
        return matches
    raise FileNotFoundError(f"{source}: no such file or folder.")


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
            for index, record in enumerate(_read_json_array(path)):
                yield f"{path}, item {index}", _as_object(record)
        else:
            yield from _read_json_lines(path)


def read_lines(path: str) -> Iterator[tuple[str, str | BadRecordError]]:
    """Yields (location, text) for every non-blank line of `path`; a line that is not UTF-8 comes as a
    BadRecordError."""
    with open(path, "rb") as f:
        for line_number, raw in enumerate(f, start=1):
            if raw.strip():
                yield f"{path}, line {line_number}", _decode(raw)


def _decode(raw: bytes) -> str | BadRecordError:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        column = len(raw[: e.start].decode("utf-8")) + 1  # in characters, as JSON errors count
        return BadRecordError(
            f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {column}): re-encode the file as UTF-8"
        )


def _is_json_array(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(256).lstrip().startswith(b"[")


def _read_json_array(path: str) -> list:
    """The items of a .json file holding one array. A broken array cannot be read record by record, so its error
    is a ValueError that names the line (not a skippable bad record)."""
    with open(path, "rb") as f:
        lines = [_decode(raw) for raw in f]
    for line_number, line in enumerate(lines, start=1):
        if isinstance(line, BadRecordError):
            raise ValueError(f"{path}, line {line_number}: {line}.")
    try:
        return json.loads("".join(lines).rstrip())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}, line {e.lineno}: not valid JSON ({e.msg} at column {e.colno}).") from None


def _read_json_lines(path: str) -> Iterator[tuple[str, dict | BadRecordError]]:
    for location, line in read_lines(path):
        yield location, line if isinstance(line, BadRecordError) else _json_object(line.rstrip())


def _json_object(line: str) -> dict | BadRecordError:
    try:
        return _as_object(json.loads(line))
    except json.JSONDecodeError as e:  # columns of the line itself: its newline would put an early end in column 1
        end = ", the end of the line: a JSON Lines record must fit on one line" if e.pos >= len(line) else ""
        return BadRecordError(f"not valid JSON ({e.msg} at column {e.colno}{end})")


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
