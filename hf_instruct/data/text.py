"""Raw text for pretraining: load documents from files or the Hub, then pack them into fixed-length blocks.

Packing concatenates documents with an EOS token between them and cuts the stream into `block_size` blocks, so no
compute is spent on padding. Only the final partial block is dropped, with a warning that says how many tokens;
less text than one block is a `NotEnoughTextError`.
With `keep_documents_apart`, each block also carries `position_ids` that restart at every document and `labels`
that never ask a document's first token to be predicted from the previous document: a model then attends within
documents only (block-diagonal attention). For a small model this matters a great deal: in a 128-token block of
short documents, a question's answer otherwise attends over several unrelated documents, and the signal that
teaches it to find the relevant words drowns (measured in docs/research-log.md).
"""

import os
import warnings
from collections.abc import Callable, Iterable, Iterator

import datasets
from transformers import PreTrainedTokenizerBase

from .records import BadRecordError, expand_sources, read_lines, read_records

IGNORE_INDEX = -100
TEXT_SUFFIXES = (".txt", ".jsonl", ".json", ".parquet")
BUILDERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
# declared, else a streamed .txt corpus has no known columns
TEXT_FEATURES = datasets.Features({"text": datasets.Value("string")})


class NotEnoughTextError(ValueError):
    """Fewer tokens than one block, so nothing to train on; the stage adds which files and which setting."""


def load_text_dataset(
    source: str | os.PathLike | Iterable[str | os.PathLike],
    split: str = "train",
    text_field: str = "text",
    streaming: bool = False,
) -> datasets.Dataset | datasets.IterableDataset:
    """Documents with a `text` column from files, folders, globs (a .txt file is one document) or a Hub dataset."""
    paths = expand_sources(source, TEXT_SUFFIXES)
    if not paths:
        texts = datasets.load_dataset(os.fspath(source), split=split, streaming=streaming)
    else:
        kinds = {BUILDERS[os.path.splitext(p)[1]] for p in paths}
        if len(kinds) > 1:
            raise ValueError(f"{source}: mixes file types {sorted(kinds)}; point at one kind of file at a time.")
        kind = kinds.pop()
        extra = {"sample_by": "document", "features": TEXT_FEATURES} if kind == "text" else {}
        try:
            texts = datasets.load_dataset(kind, data_files=paths, split="train", streaming=streaming, **extra)
        except datasets.exceptions.DatasetGenerationError:
            problem = _first_bad_line(paths)
            if problem is None:
                raise
            raise ValueError(problem) from None
    columns = texts.column_names
    if columns is not None and text_field not in columns:  # a streamed Hub dataset may not know its columns
        raise ValueError(f"{source}: no {text_field!r} column (columns: {columns}); set text_field=.")
    return texts.select_columns([text_field]).rename_column(text_field, "text") if text_field != "text" else texts


def _first_bad_line(paths: list[str]) -> str | None:
    """'<file>, line <n>: <problem>' for the first line of `paths` that is not UTF-8 (or, in a JSON file, not a
    JSON object): datasets' DatasetGenerationError names neither."""
    for path in paths:
        if not path.endswith(".parquet"):
            for location, line in read_lines(path) if path.endswith(".txt") else read_records(path):
                if isinstance(line, BadRecordError):
                    return f"{location}: {line}."
    return None


def pack_texts(
    texts: datasets.Dataset | datasets.IterableDataset,
    tokenizer: PreTrainedTokenizerBase,
    block_size: int,
    batch_size: int = 256,
    keep_documents_apart: bool = False,
) -> datasets.Dataset | datasets.IterableDataset:
    """Tokenise the `text` column and pack it into `input_ids` blocks of exactly `block_size` tokens (plus
    `position_ids` and `labels` with `keep_documents_apart`)."""
    if tokenizer.eos_token_id is None:
        raise ValueError("pack_texts needs a tokenizer with an eos_token to separate documents.")

    def sequences(texts) -> Iterator[tuple[list[int], list[int]]]:
        for batch in texts.iter(batch_size=batch_size):
            for ids in tokenizer(batch["text"], add_special_tokens=False, verbose=False)["input_ids"]:
                yield ids, ids

    return pack_sequences(sequences, {"texts": texts}, tokenizer.eos_token_id, block_size, keep_documents_apart)


def pack_sequences(
    sequences: Callable[..., Iterator[tuple[list[int], list[int]]]],
    gen_kwargs: dict,
    eos_token_id: int,
    block_size: int,
    keep_documents_apart: bool,
) -> datasets.Dataset | datasets.IterableDataset:
    """Blocks from `sequences(**gen_kwargs)`, which yields (input_ids, labels) per document (-100: not trained); a
    streamed corpus in `gen_kwargs` gives streamed blocks."""
    gen_kwargs = {
        "sequences": sequences,
        "gen_kwargs": gen_kwargs,
        "eos_token_id": eos_token_id,
        "block_size": block_size,
        "keep_documents_apart": keep_documents_apart,
    }
    if any(isinstance(value, datasets.IterableDataset) for value in gen_kwargs["gen_kwargs"].values()):
        return datasets.IterableDataset.from_generator(_blocks, gen_kwargs=gen_kwargs)
    return datasets.Dataset.from_list(list(_blocks(**gen_kwargs)))


def _blocks(sequences, gen_kwargs, eos_token_id: int, block_size: int, keep_documents_apart: bool):
    input_ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    blocks = 0
    for ids, trained in sequences(**gen_kwargs):
        input_ids += [*ids, eos_token_id]
        labels += [IGNORE_INDEX, *trained[1:], eos_token_id] if ids else [IGNORE_INDEX]
        positions += range(len(ids) + 1)
        full = len(input_ids) // block_size * block_size
        for start in range(0, full, block_size):
            block = {"input_ids": input_ids[start : start + block_size]}
            if keep_documents_apart:  # a document cut by the block edge restarts at position 0 in the next block
                block_positions = positions[start : start + block_size]
                offset = block_positions[0]
                first_restart = next((i for i, p in enumerate(block_positions) if p == 0), block_size)
                block["position_ids"] = [p - offset if i < first_restart else p for i, p in enumerate(block_positions)]
                block["labels"] = [IGNORE_INDEX, *labels[start + 1 : start + block_size]]
            yield block
            blocks += 1
        del input_ids[:full], labels[:full], positions[:full]
    if not blocks:
        raise NotEnoughTextError(f"{len(input_ids)} tokens, fewer than one block of {block_size}")
    if input_ids:
        unused = f"pack_texts: the last {len(input_ids)} tokens do not fill a {block_size}-token block: unused."
        warnings.warn(unused, stacklevel=2)


def collate_blocks(blocks: list[dict[str, list[int]]]) -> dict:
    """Stack packed blocks for a causal LM. Blocks that keep documents apart go without an attention mask and with
    `use_cache=False`: transformers then builds block-diagonal attention from the restarting `position_ids` (with a
    cache, stock models let the documents see each other)."""
    import torch

    batch = {key: torch.tensor([block[key] for block in blocks]) for key in blocks[0]}
    if "position_ids" in batch:
        batch["use_cache"] = False
    else:
        batch["labels"] = batch["input_ids"].clone()
    return batch
