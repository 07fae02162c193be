"""Scoring texts with a reward model the way it was trained: right-padded batches, no special tokens added (the chat
template already holds them) unless asked (plain text, which TRL's RewardTrainer tokenises with them), the one-output
score of each row's last real token. Used by the reward stage (the reward shift), PPO (the rollout rewards) and the
win-rate metric."""

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase


@torch.no_grad()
def reward_scores(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    batch_size: int = 16,
    add_special_tokens: bool = False,
) -> torch.Tensor:
    """One float32 score per text."""
    scores = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(texts[start : start + batch_size], padding=True, padding_side="right",
                          add_special_tokens=add_special_tokens, return_tensors="pt")  # fmt: skip
        scores.append(model(**batch.to(model.device)).logits[:, 0].float())
    return torch.cat(scores)
