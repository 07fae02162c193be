"""Best-of-n against the reward model: the simplest way to use a reward model, with no training at all.

For each prompt the policy (the SFT model) samples n answers, the reward model scores each, and the best is kept
(Nakano et al. 2021, WebGPT; Stiennon et al. 2020). It is what RL against the same reward model has to beat: PPO and
GRPO spend training to move the policy towards answers the reward model prefers, best-of-n spends n samples per
prompt at answer time instead, and is only as good as the reward model's ranking of the policy's own samples.
"""

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..utils import score_chats
from .generation import Conversation, generate_answers


@dataclass
class BestOfN:
    """One prompt's best of n: the kept answer and its reward, and every sample with its reward in sampling order."""

    answer: str
    reward: float
    samples: list[str]
    rewards: list[float]


def best_of_n_answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    reward_model: PreTrainedModel,
    reward_tokenizer: PreTrainedTokenizerBase,
    conversations: list[Conversation],
    n: int,
    max_new_tokens: int = 128,
    batch_size: int = 16,
    temperature: float = 1.0,
    seed: int = 0,
    show_progress: bool = True,
) -> list[BestOfN]:
    """For each conversation, `n` answers sampled from `model` at `temperature` (torch's generator seeded with `seed`
    first, so a call is repeatable), each scored by `reward_model` on the chat it was trained on; the first of the
    highest-scoring is kept. `batch_size` counts sampled sequences, so each batch holds `batch_size // n` prompts (at
    least one) and memory stays that of plain generation; with `n=1` the answers are those of `generate_answers(...,
    do_sample=True)` after the same seed."""
    if n < 1:
        raise ValueError(f"best_of_n_answers: n must be at least 1 (samples per prompt), got {n}.")
    torch.manual_seed(seed)
    prompts_per_batch = max(1, batch_size // n)
    results = []
    batches = range(0, len(conversations), prompts_per_batch)
    for start in tqdm(batches, desc=f"Best-of-{n}", unit="batch", disable=not show_progress):
        batch = conversations[start : start + prompts_per_batch]
        samples = generate_answers(
            model,
            tokenizer,
            batch,
            max_new_tokens,
            batch_size=len(batch),
            num_return_sequences=n,
            do_sample=True,
            temperature=temperature,
            show_progress=False,
        )
        flat = [answer for answers in samples for answer in answers]
        scores = score_chats(reward_model, reward_tokenizer, [c for c in batch for _ in range(n)], flat, batch_size)
        for index, answers in enumerate(samples):
            rewards = scores[index * n : (index + 1) * n]
            best = max(range(n), key=rewards.__getitem__)  # the first of equal maxima
            results.append(BestOfN(answers[best], rewards[best], answers, rewards))
    return results
