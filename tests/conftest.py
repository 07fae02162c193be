"""Shared fixtures: tiny configs and a real byte-level BPE tokenizer trained on the spot (no downloads)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402
from transformers import LlamaConfig, PreTrainedTokenizerFast  # noqa: E402

from hf_instruct import InstructGPTConfig  # noqa: E402

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


def tiny_config(**overrides) -> InstructGPTConfig:
    return InstructGPTConfig(**{**TINY, "tie_word_embeddings": False, **overrides})


def tiny_llama_config(**overrides) -> LlamaConfig:
    return LlamaConfig(**{**TINY, "tie_word_embeddings": False, **overrides})


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY["vocab_size"],
        special_tokens=["<|pad|>", "<|bos|>", "<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([TEXT] * 20, trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe, pad_token="<|pad|>", bos_token="<|bos|>", eos_token="<|endoftext|>"
    )
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert len(tok) <= TINY["vocab_size"]
    return tok
