"""Small helpers shared by the library: Markdown tables for reports and cards, telling Hub ids from local paths, and
scoring texts with a reward model."""

import os

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase


def table_cell(text: str, width: int | None = 80) -> str:
    """`text` on one line, pipes escaped and cut to `width` characters (None: whole), to sit in a Markdown table
    cell."""
    text = " ".join(text.split()).replace("|", "\\|")
    return text if width is None or len(text) <= width else text[: width - 1] + "…"


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """The lines of a Markdown table: the header, its rule, one line per row. Cells go in as given: pass free text
    (prompts, answers) through `table_cell` first."""

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cells) + " |"

    return [line(header), "|" + "---|" * len(header), *map(line, rows)]


def is_hub_id(name: str | None) -> bool:
    """A Hub repo id ("org/name") rather than a local path."""
    return bool(name) and not os.path.exists(name) and name.count("/") == 1 and not name.startswith((".", "/"))


@torch.no_grad()
def reward_scores(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    batch_size: int = 16,
    add_special_tokens: bool = False,
) -> torch.Tensor:
    """One float32 score per text, read the way the reward model was trained: right-padded batches, no special
    tokens added (the chat template already holds them) unless asked (plain text, which TRL's RewardTrainer tokenises
    with them), the one-output score of each row's last real token. Used by the reward stage (the reward shift), PPO
    (the rollout rewards) and the win-rate metric."""
    scores = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(
            texts[start : start + batch_size],
            padding=True,
            padding_side="right",
            add_special_tokens=add_special_tokens,
            return_tensors="pt",
        )
        scores.append(model(**batch.to(model.device)).logits[:, 0].float())
    return torch.cat(scores)


def load_reward_model(
    model_path: str | os.PathLike,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The reward model saved in `model_path` and its tokenizer, ready for batched scoring: in eval mode, on the GPU
    when there is one, with a pad token (batched scoring finds the last real token of padded rows)."""
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForSequenceClassification.from_pretrained(model_path).to(device).eval()
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def score_chats(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list,
    answers: list[str],
    batch_size: int = 16,
) -> list[float]:
    """The reward of each (prompt, answer), rendered as the chat the reward model was trained on: a prompt is a list
    of messages (the answer becomes the assistant turn) or a user turn's text."""
    texts = []
    for prompt, answer in zip(prompts, answers, strict=True):
        messages = list(prompt) if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        messages.append({"role": "assistant", "content": answer})
        texts.append(tokenizer.apply_chat_template(messages, tokenize=False))
    return reward_scores(model, tokenizer, texts, batch_size).tolist()


def chat_rewards(
    model_path: str | os.PathLike, prompts: list, answers: list[str], batch_size: int = 16
) -> list[float]:
    """`score_chats` by the reward model saved in `model_path`."""
    return score_chats(*load_reward_model(model_path), prompts, answers, batch_size)
