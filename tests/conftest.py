"""Shared fixtures: tiny configs and a real byte-level BPE tokenizer trained on the spot (no downloads)."""

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import LlamaConfig, PreTrainedTokenizerFast  # noqa: E402

from hf_instruct import InstructGPTConfig, train_tokenizer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
# The real data lies beside the checkout (../shared/data). Tests that read it skip where it is missing, except in CI.
needs_shared = pytest.mark.skipif(
    not SHARED.exists() and not os.environ.get("CI"), reason="../shared/data is not here"
)

TINY = dict(
    vocab_size=320,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    rms_norm_eps=1e-5,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)

TEXT = (
    "The quick brown fox jumps over the lazy dog. A model learns only what the labels say. "
    "Instruction tuning teaches a pretrained model to follow instructions; a reward model learns "
    "which of two answers people prefer, and PPO makes the policy prefer them too. "
)


# Trainer settings for a three-step CPU smoke run (TRL configs default to bf16 and activation checkpointing).
SMOKE_TRAINING = dict(
    max_steps=3,
    per_device_train_batch_size=4,
    learning_rate=3e-3,
    logging_steps=1,
    save_strategy="no",
    report_to="none",
    use_cpu=True,
    bf16=False,
    disable_tqdm=True,
)


def logged_losses(trainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def tiny_config(**overrides) -> InstructGPTConfig:
    return InstructGPTConfig(**{**TINY, "tie_word_embeddings": False, **overrides})


def tiny_llama_config(**overrides) -> LlamaConfig:
    return LlamaConfig(**{**TINY, "tie_word_embeddings": False, **overrides})


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    """A real byte-level BPE tokenizer with the ChatML training template, trained in a fraction of a second."""
    tok = train_tokenizer([TEXT] * 20, vocab_size=TINY["vocab_size"], show_progress=False)
    assert len(tok) <= TINY["vocab_size"]
    return tok
