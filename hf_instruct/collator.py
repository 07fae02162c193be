"""DataCollatorForInstructionTuning: the labels are exactly the assistant tokens, in padded or padding-free batches.

Loss-masking bugs are the most common failure of instruction tuning: prompt tokens trained, the end-of-turn token
never trained (so the model never stops), masks broken by truncation or multi-turn chat, packed sequences leaking
into each other. This collator renders conversations with the tokenizer's chat template and takes the labels from
its `{% generation %}` spans, so every assistant turn is trained *with* its end-of-turn token and nothing else is.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase
from transformers.utils import logging

from .data.instructions import chat_tokens, to_messages, trained_labels
from .data.records import BadRecordError
from .data.text import IGNORE_INDEX

logger = logging.get_logger(__name__)
MASK_FIELDS = ("assistant_masks", "completion_mask")


@dataclass
class DataCollatorForInstructionTuning:
    """Collates instruction examples for causal-LM training with a stock `Trainer` or TRL's `SFTTrainer`.

    Accepts, in any mix:
    - raw examples in any shape `hf_instruct.data.to_messages` knows (chat `messages`, ShareGPT, prompt/completion,
      Alpaca, Dolly), rendered with the tokenizer's chat template (pass `remove_unused_columns=False` to `Trainer`);
    - pre-tokenised examples: `input_ids` with `labels`, or with `assistant_masks` and/or `completion_mask` (as
      TRL's SFTTrainer prepares them), or alone (then every token is trained).

    Args:
        tokenizer: its chat template must mark assistant turns with `{% generation %}` (see `train_tokenizer`).
        max_length: longer sequences lose prompt tokens from the left first (keeping the part nearest the
            response), then response tokens from the right. A warning counts truncated examples and examples left
            with no trained token.
        padding_free: one row per batch with `position_ids` restarting at each sequence, `cu_seq_lens_q/k` and
            `max_length_q/k` for flash attention, no attention mask; the first label of every sequence is ignored so
            no label crosses a boundary. Otherwise rows are right-padded with an `attention_mask`.
        pad_to_multiple_of: pad the (row) length to a multiple of this.
        train_on_prompt: train on every token, not only the assistant's.
        trained_logits_only: also return `logits_to_keep`, a boolean mask of the positions whose next token is
            trained, and `shift_labels`, those next tokens. A transformers causal LM (ours, Llama and most others)
            then projects only these positions onto the vocabulary and takes its loss there: the same loss, without
            the LM head and softmax on prompt and padding positions; `logits` hold just these rows,
            (n_trained, vocab). For a stock `Trainer`; TRL's trainers compute the loss themselves and must not get it.
    """

    tokenizer: PreTrainedTokenizerBase
    max_length: int | None = None
    padding_free: bool = False
    pad_to_multiple_of: int | None = None
    train_on_prompt: bool = False
    trained_logits_only: bool = False
    truncated_examples: int = field(default=0, init=False)

    def __post_init__(self):
        if self.tokenizer.pad_token_id is None:
            raise ValueError("The tokenizer has no pad token: set `tokenizer.pad_token` before collating.")
        if self.max_length is not None and self.max_length < 2:
            raise ValueError(f"max_length must be at least 2, got {self.max_length}.")

    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        sequences = [self.truncate(*self.tokenize(example, index)) for index, example in enumerate(examples)]
        untrained = sum(all(label == IGNORE_INDEX for label in labels) for _, labels in sequences)
        if untrained:
            logger.warning(
                f"{untrained} of {len(sequences)} examples in this batch have no trained token (no assistant turn "
                "left after truncation?): they add no loss. Raise max_length or filter these examples."
            )
        batch = self.flatten(sequences) if self.padding_free else self.pad(sequences)
        if self.trained_logits_only:
            batch.update(trained_positions(batch["labels"]))
        return batch

    def tokenize(self, example: dict[str, Any], index: int = 0) -> tuple[list[int], list[int]]:
        """(input_ids, labels) of one example; labels are -100 outside the trained tokens."""
        if "input_ids" in example:
            input_ids = list(example["input_ids"])
            if "labels" in example:
                return input_ids, list(example["labels"])
            masks = [example[name] for name in MASK_FIELDS if name in example]
        else:
            try:
                messages = to_messages(example)
            except BadRecordError as problem:
                raise BadRecordError(f"example {index} of the batch: {problem}") from None
            input_ids, assistant_mask = chat_tokens(self.tokenizer, messages)
            masks = [assistant_mask]
        return input_ids, trained_labels(input_ids, [] if self.train_on_prompt else masks)

    def truncate(self, input_ids: list[int], labels: list[int]) -> tuple[list[int], list[int]]:
        """Cut to max_length: prompt tokens from the left first, then response tokens from the right."""
        excess = len(input_ids) - (self.max_length or len(input_ids))
        if excess <= 0:
            return input_ids, labels
        if self.truncated_examples == 0:
            logger.warning(
                f"Truncating examples longer than max_length={self.max_length}: prompt tokens are dropped from the "
                "left first, then response tokens from the right."
            )
        self.truncated_examples += 1
        first_trained = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(labels))
        left = min(excess, first_trained)
        return input_ids[left : left + self.max_length], labels[left : left + self.max_length]

    def pad(self, sequences: list[tuple[list[int], list[int]]]) -> dict[str, torch.Tensor]:
        length = self._padded_length(max(len(ids) for ids, _ in sequences))
        input_ids = torch.full((len(sequences), length), self.tokenizer.pad_token_id, dtype=torch.long)
        labels = torch.full((len(sequences), length), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
        for row, (ids, lbls) in enumerate(sequences):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            labels[row, : len(ids)] = torch.tensor(lbls)
            attention_mask[row, : len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    def flatten(self, sequences: list[tuple[list[int], list[int]]]) -> dict[str, Any]:
        lengths = [len(ids) for ids, _ in sequences]
        total = sum(lengths)
        padding = self._padded_length(total) - total
        lengths += [1] * padding  # each pad token is a sequence of its own, attending only to itself
        input_ids = [token for ids, _ in sequences for token in ids] + [self.tokenizer.pad_token_id] * padding
        labels = [label for _, lbls in sequences for label in lbls] + [IGNORE_INDEX] * padding
        position_ids = [position for n in lengths for position in range(n)]
        # No label crosses a boundary: the first token of a sequence is never predicted from the previous one.
        labels = [IGNORE_INDEX if pos == 0 else label for label, pos in zip(labels, position_ids, strict=True)]
        cu_seq_lens = torch.tensor([0, *lengths], dtype=torch.int32).cumsum(0, dtype=torch.int32)
        return {
            "input_ids": torch.tensor([input_ids]),
            "position_ids": torch.tensor([position_ids]),
            "labels": torch.tensor([labels]),
            "cu_seq_lens_q": cu_seq_lens,
            "cu_seq_lens_k": cu_seq_lens,
            "max_length_q": max(lengths),
            "max_length_k": max(lengths),
        }

    def _padded_length(self, length: int) -> int:
        multiple = self.pad_to_multiple_of or 1
        return -(-length // multiple) * multiple


def trained_positions(labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """`logits_to_keep`: (B, T) mask of the positions whose next label is trained; `shift_labels`: those labels, (K,).

    A causal LM's logits at position t predict the label at t + 1, so only these K positions add to the loss.
    """
    next_labels = labels[:, 1:]
    keep = nn.functional.pad(next_labels != IGNORE_INDEX, (0, 1), value=False)
    return {"logits_to_keep": keep, "shift_labels": next_labels[keep[:, :-1]]}
