"""Preference comparisons normalised to TRL's conversational form.

Output: `{"prompt": [messages...], "chosen": [{"role": "assistant", ...}], "rejected": [{"role": "assistant", ...}]}`,
which TRL's RewardTrainer and DPOTrainer render with the tokenizer's chat template.

Accepted shapes:
- `prompt` + `chosen` + `rejected`, each a string or a list of messages; a string prompt in Anthropic's hh-rlhf
  transcript form (`\\n\\nHuman: ... \\n\\nAssistant:`) is split into turns;
- `chosen` + `rejected` only, as full hh-rlhf transcripts that share everything up to the last `Assistant:` turn.
"""

import os
import re
from collections.abc import Iterable

import datasets

from .instructions import CHAT_ROLES, checked_messages
from .records import BadRecordError, OnBadRecord, normalize_records, require_text

HH_TURN = re.compile(r"\n\n(Human|Assistant):")
HH_ROLES = {"Human": "user", "Assistant": "assistant"}
ASSISTANT_MARKER = "\n\nAssistant:"


def to_preference(record: dict) -> dict[str, list[dict[str, str]]]:
    """One comparison in normal form; BadRecordError for missing/empty fields or a chosen equal to its rejected."""
    if "prompt" in record:
        prompt = prompt_messages(record)
        chosen, rejected = _answer(record, "chosen"), _answer(record, "rejected")
    elif "chosen" in record and "rejected" in record:
        prompt, chosen, rejected = _split_transcripts(require_text(record, "chosen"), require_text(record, "rejected"))
    else:
        raise BadRecordError(
            f"no known preference format in fields {sorted(record)}; expected prompt+chosen+rejected, or "
            "chosen+rejected hh-rlhf transcripts"
        )
    if chosen[0]["content"].strip() == rejected[0]["content"].strip():
        raise BadRecordError("'chosen' and 'rejected' are the same answer, so there is nothing to prefer")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def load_preference_dataset(
    source: str | os.PathLike | Iterable[str | os.PathLike] | datasets.Dataset,
    on_bad_record: OnBadRecord = "error",
    split: str = "train",
    keep_groups: bool = False,
) -> datasets.Dataset:
    """Local .jsonl/.json/.parquet files, folders, globs, a Hub dataset name or a Dataset -> prompt/chosen/rejected;
    with `keep_groups`, also `group` (the prompt a comparison belongs to, as `hf-instruct collect_comparisons` writes
    it) when the records have one: all of them or none."""
    if not keep_groups:
        return normalize_records(source, to_preference, on_bad_record, split, desc="Normalising comparisons")
    pairs = normalize_records(source, to_grouped_preference, on_bad_record, split, desc="Normalising comparisons")
    missing = pairs["group"].count(None)
    if missing == len(pairs):
        return pairs.remove_columns("group")
    if missing:
        raise ValueError(
            f"{source}: {missing} of {len(pairs)} comparisons have no 'group' while the others have one: give every "
            "comparison its prompt's group (an integer), or none."
        )
    return pairs


def to_grouped_preference(record: dict) -> dict:
    """`to_preference` plus the record's `group` (None when it has none); BadRecordError for a group that is not an
    integer."""
    group = record.get("group")
    if group is not None and (not isinstance(group, int) or isinstance(group, bool)):
        raise BadRecordError(f"field 'group' must be an integer (the index of the comparison's prompt), got {group!r}")
    return {**to_preference(record), "group": group}


def parse_hh_transcript(text: str) -> list[dict[str, str]]:
    """'\\n\\nHuman: a\\n\\nAssistant: b' -> [user a, assistant b]; a trailing empty Assistant turn is dropped."""
    parts = HH_TURN.split(text)
    if parts[0].strip() or len(parts) < 3:
        raise BadRecordError("the prompt is not an hh-rlhf transcript starting with '\\n\\nHuman:'")
    turns = zip(parts[1::2], parts[2::2], strict=True)
    messages = [{"role": HH_ROLES[role], "content": content.strip()} for role, content in turns]
    if messages[-1]["role"] == "assistant" and not messages[-1]["content"]:
        messages.pop()
    for index, message in enumerate(messages):
        if not message["content"]:
            raise BadRecordError(f"turn {index} ({message['role']}) of the transcript is empty")
    return messages


def prompt_messages(record: dict) -> list[dict[str, str]]:
    prompt = record["prompt"]
    if isinstance(prompt, list):
        return checked_messages(prompt, "prompt", "role", "content", CHAT_ROLES)
    text = require_text(record, "prompt")
    return parse_hh_transcript(text) if HH_TURN.search(text) else [{"role": "user", "content": text.strip()}]


def _answer(record: dict, field: str) -> list[dict[str, str]]:
    value = record.get(field)
    if isinstance(value, list):
        messages = checked_messages(value, field, "role", "content", CHAT_ROLES)
        if len(messages) != 1 or messages[0]["role"] != "assistant":
            raise BadRecordError(f"field {field!r} must hold exactly one assistant message")
        return messages
    return [{"role": "assistant", "content": require_text(record, field).strip()}]


def _split_transcripts(chosen: str, rejected: str) -> tuple[list, list, list]:
    cut = chosen.rfind(ASSISTANT_MARKER) + len(ASSISTANT_MARKER)
    if cut < len(ASSISTANT_MARKER) or not rejected.startswith(chosen[:cut]):
        raise BadRecordError("'chosen' and 'rejected' transcripts differ before their last 'Assistant:' turn")
    answers = [text[cut:].strip() for text in (chosen, rejected)]
    for field, answer in zip(("chosen", "rejected"), answers, strict=True):
        if not answer:
            raise BadRecordError(f"the final {field!r} answer is empty")
    prompt = parse_hh_transcript(chosen[:cut])
    return prompt, [{"role": "assistant", "content": answers[0]}], [{"role": "assistant", "content": answers[1]}]
