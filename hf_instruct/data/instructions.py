"""Instruction data in every common shape, normalised to chat `messages`.

Accepted shapes (detected by their fields; an optional `system` string becomes a system message):

| shape | fields |
|---|---|
| chat | `messages`: [{"role": "system"/"user"/"assistant", "content": str}, ...] |
| ShareGPT | `conversations`: [{"from": "system"/"human"/"gpt", "value": str}, ...] |
| prompt/completion | `prompt`, `completion`: strings, or lists of messages (TRL's conversational form) |
| Alpaca | `instruction`, `input` (may be empty), `output` |
| Dolly | `instruction`, `context` (may be empty), `response` |
"""

import os
from collections.abc import Iterable

import datasets
from transformers import PreTrainedTokenizerBase

from .records import BadRecordError, OnBadRecord, normalize_records, require_text
from .text import IGNORE_INDEX

CHAT_ROLES = {"system": "system", "user": "user", "assistant": "assistant"}
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


def chat_tokens(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> tuple[list[int], list[int]]:
    """The conversation's token ids as the tokenizer's chat template renders it, and its assistant mask: 1 on each
    assistant turn with its end-of-turn token (the template's `{% generation %}` spans), the tokens SFT trains."""
    rendered = tokenizer.apply_chat_template(
        messages,
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
        tokenizer_kwargs={"verbose": False},  # the collator truncates long examples, with its own warning
    )
    if not any(rendered["assistant_masks"]):
        raise ValueError(
            "The tokenizer's chat template marks no assistant tokens: it needs {% generation %} ... "
            "{% endgeneration %} around each assistant turn and its end-of-turn token. Use the template of "
            "hf_instruct.train_tokenizer, or trl.chat_template_utils.get_training_chat_template(tokenizer)."
        )
    return list(rendered["input_ids"]), list(rendered["assistant_masks"])


def trained_labels(input_ids: list[int], masks: list[list[int]]) -> list[int]:
    """The labels of a tokenised example: each token where every mask is 1, IGNORE_INDEX elsewhere (every token when
    `masks` is empty)."""
    return [token if all(bits) else IGNORE_INDEX for token, *bits in zip(input_ids, *masks, strict=True)]


def to_messages(record: dict) -> list[dict[str, str]]:
    """The record as a conversation with at least one non-empty assistant turn; BadRecordError otherwise."""
    if "messages" in record:
        messages = checked_messages(record["messages"], "messages", "role", "content", CHAT_ROLES)
    elif "conversations" in record:
        messages = checked_messages(record["conversations"], "conversations", "from", "value", SHAREGPT_ROLES)
    elif "prompt" in record and "completion" in record:
        messages = _prompt_completion(record)
    elif "instruction" in record and "output" in record:
        messages = _instruction(record, context_field="input", answer_field="output")
    elif "instruction" in record and "response" in record:
        messages = _instruction(record, context_field="context", answer_field="response")
    else:
        raise BadRecordError(
            f"no known instruction format in fields {sorted(record)}; expected messages, conversations, "
            "prompt+completion, instruction+input+output (Alpaca) or instruction+context+response (Dolly)"
        )
    if record.get("system") and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": require_text(record, "system")})
    if not any(m["role"] == "assistant" for m in messages):
        raise BadRecordError("the conversation has no assistant turn to learn from")
    return messages


def load_instruction_dataset(
    source: str | os.PathLike | Iterable[str | os.PathLike] | datasets.Dataset,
    on_bad_record: OnBadRecord = "error",
    split: str = "train",
) -> datasets.Dataset:
    """Local .jsonl/.json/.parquet files, folders, globs, a Hub dataset name or a Dataset -> a `messages` column."""
    return normalize_records(
        source, lambda r: {"messages": to_messages(r)}, on_bad_record, split, desc="Normalising instructions"
    )


def _instruction(record: dict, context_field: str, answer_field: str) -> list[dict[str, str]]:
    instruction = require_text(record, "instruction").strip()
    context = require_text(record, context_field, allow_empty=True).strip() if record.get(context_field) else ""
    prompt = f"{instruction}\n\n{context}" if context else instruction
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": require_text(record, answer_field)}]


def _prompt_completion(record: dict) -> list[dict[str, str]]:
    prompt, completion = record["prompt"], record["completion"]
    if isinstance(prompt, list) and isinstance(completion, list):
        return checked_messages(prompt, "prompt", "role", "content", CHAT_ROLES) + checked_messages(
            completion, "completion", "role", "content", CHAT_ROLES
        )
    return [
        {"role": "user", "content": require_text(record, "prompt")},
        {"role": "assistant", "content": require_text(record, "completion")},
    ]


def checked_messages(
    turns: object, field: str, role_key: str, content_key: str, role_map: dict[str, str]
) -> list[dict[str, str]]:
    if not isinstance(turns, list) or not turns:
        raise BadRecordError(f"field {field!r} must be a non-empty list of turns")
    messages = []
    for index, turn in enumerate(turns):
        where = f"{field}[{index}]"
        if not isinstance(turn, dict):
            raise BadRecordError(f"{where} must be an object with {role_key!r} and {content_key!r}")
        role = role_map.get(turn.get(role_key))
        if role is None:
            raise BadRecordError(f"{where}.{role_key} is {turn.get(role_key)!r}; expected one of {sorted(role_map)}")
        try:
            content = require_text(turn, content_key, allow_empty=role != "assistant")
        except BadRecordError as problem:
            raise BadRecordError(f"{where}: {problem}") from None
        messages.append({"role": role, "content": content})
    return messages
