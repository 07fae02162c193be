"""Prompts for the RL stages (PPO, GRPO): the conversation the policy answers, in TRL's conversational form.

Output: `{"prompt": [messages...]}` ending with a user turn. Any instruction shape (its last assistant turn and what
follows is dropped), any comparison shape (its shared prompt), or a record with only a `prompt` (a string, an
hh-rlhf transcript or a list of messages) is accepted, so the SFT and reward data double as prompt sets.
"""

import os
from collections.abc import Iterable

import datasets

from .instructions import to_messages
from .preferences import prompt_messages, to_preference
from .records import BadRecordError, OnBadRecord, normalize_records


def to_prompt(record: dict) -> dict[str, list[dict[str, str]]]:
    """The record's prompt as messages ending with a user turn; BadRecordError when there is none."""
    if "chosen" in record and "rejected" in record:
        messages = to_preference(record)["prompt"]
    elif "prompt" in record and "completion" not in record:
        messages = prompt_messages(record)
    else:
        messages = to_messages(record)
        last_answer = max(i for i, message in enumerate(messages) if message["role"] == "assistant")
        messages = messages[:last_answer]
    if not messages or messages[-1]["role"] != "user":
        raise BadRecordError("the prompt does not end with a user turn, so there is nothing to answer")
    return {"prompt": messages}


def load_prompt_dataset(
    source: str | os.PathLike | Iterable[str | os.PathLike] | datasets.Dataset,
    on_bad_record: OnBadRecord = "error",
    split: str = "train",
) -> datasets.Dataset:
    """Local .jsonl/.json/.parquet files, folders, globs, a Hub dataset name or a Dataset -> a `prompt` column."""
    return normalize_records(source, to_prompt, on_bad_record, split, desc="Normalising prompts")
