"""Raw text for pretraining: load documents from files or the Hub, then pack them into fixed-length blocks.

Packing concatenates documents with an EOS token between them and cuts the stream into `block_size` blocks, so no
compute is spent on padding. Only the final partial block is dropped, with a warning that says how many tokens.
"""

import os
import warnings
from collections.abc import Iterable, Iterator

import datasets
from transformers import PreTrainedTokenizerBase

from .records import expand_sources

TEXT_SUFFIXES = (".txt", ".jsonl", ".json", ".parquet")
BUILDERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


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
        extra = {"sample_by": "document"} if kind == "text" else {}
        texts = datasets.load_dataset(kind, data_files=paths, split="train", streaming=streaming, **extra)
    columns = texts.column_names or []
    if text_field not in columns:
        raise ValueError(f"{source}: no {text_field!r} column (columns: {columns}); set text_field=.")
    return texts.select_columns([text_field]).rename_column(text_field, "text") if text_field != "text" else texts


def pack_texts(
    texts: datasets.Dataset | datasets.IterableDataset,
    tokenizer: PreTrainedTokenizerBase,
    block_size: int,
    batch_size: int = 256,
) -> datasets.Dataset | datasets.IterableDataset:
    """Tokenise the `text` column and pack it into `input_ids` blocks of exactly `block_size` tokens."""
    if tokenizer.eos_token_id is None:
        raise ValueError("pack_texts needs a tokenizer with an eos_token to separate documents.")
    gen_kwargs = {"texts": texts, "tokenizer": tokenizer, "block_size": block_size, "batch_size": batch_size}
    if isinstance(texts, datasets.IterableDataset):
        return datasets.IterableDataset.from_generator(_blocks, gen_kwargs=gen_kwargs)
    return datasets.Dataset.from_list(list(_blocks(**gen_kwargs)))


def _blocks(texts, tokenizer, block_size: int, batch_size: int) -> Iterator[dict[str, list[int]]]:
    buffer: list[int] = []
    for batch in texts.iter(batch_size=batch_size):
        for ids in tokenizer(batch["text"], add_special_tokens=False, verbose=False)["input_ids"]:
            buffer.extend(ids)
            buffer.append(tokenizer.eos_token_id)
        full = len(buffer) // block_size * block_size
        for start in range(0, full, block_size):
            yield {"input_ids": buffer[start : start + block_size]}
        del buffer[:full]
    if buffer:
        unused = f"pack_texts: the last {len(buffer)} tokens do not fill a {block_size}-token block: unused."
        warnings.warn(unused, stacklevel=2)
