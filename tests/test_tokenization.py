"""train_tokenizer: byte-level BPE with special tokens and a training-compatible ChatML template."""

import pytest
from conftest import TEXT
from datasets import Dataset
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer
from trl.chat_template_utils import has_generation_markers, is_chat_template_stop_token_trained

from hf_instruct import train_tokenizer
from hf_instruct.tokenization import SPECIAL_TOKENS

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Name a fox."},
    {"role": "assistant", "content": "Reynard."},
    {"role": "user", "content": "And a dog?"},
    {"role": "assistant", "content": "Rex ünï 🙂"},
]


def test_special_tokens_sit_at_the_config_default_ids(tokenizer):
    assert tokenizer.convert_ids_to_tokens(list(range(5))) == SPECIAL_TOKENS
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") == 4


@settings(max_examples=50, deadline=None)
@given(st.text())
def test_any_text_round_trips_without_unknown_tokens(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text


def test_chat_template_renders_chatml_with_a_space_before_each_content():
    tokenizer = train_tokenizer([TEXT] * 5, vocab_size=300, show_progress=False)
    assert tokenizer.apply_chat_template(CONVERSATION[:2], tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>system\n Be brief.<|im_end|>\n<|im_start|>user\n Name a fox.<|im_end|>\n<|im_start|>assistant\n"
    )
    assert tokenizer.apply_chat_template(CONVERSATION[:3], tokenize=False).endswith(
        "<|im_start|>assistant\n Reynard.<|im_end|>\n"
    )
    # a decoded answer keeps its leading space; rendered again, it is the same conversation
    answered = [*CONVERSATION[:2], {"role": "assistant", "content": " Reynard. \n"}]
    assert tokenizer.apply_chat_template(answered, tokenize=False) == tokenizer.apply_chat_template(
        CONVERSATION[:3], tokenize=False
    )


def test_a_word_is_the_same_token_in_a_question_and_in_its_answer():
    tokenizer = train_tokenizer([TEXT] * 5, vocab_size=400, show_progress=False)
    conversation = [{"role": "user", "content": "fox"}, {"role": "assistant", "content": "fox"}]
    ids = tokenizer.apply_chat_template(conversation)["input_ids"]
    fox = tokenizer(" fox", add_special_tokens=False)["input_ids"]
    assert len(fox) == 1 and ids.count(fox[0]) == 2


def test_assistant_mask_covers_every_assistant_turn_and_its_end_of_turn_token(tokenizer):
    out = tokenizer.apply_chat_template(
        CONVERSATION, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    trained = [token for token, bit in zip(out["input_ids"], out["assistant_masks"], strict=True) if bit]
    assert tokenizer.decode(trained) == " Reynard.<|im_end|> Rex ünï 🙂<|im_end|>"
    # what TRL checks before `assistant_only_loss=True`
    assert has_generation_markers(tokenizer.chat_template)
    assert is_chat_template_stop_token_trained(tokenizer)


def test_generation_prompt_is_a_prefix_of_the_answered_conversation(tokenizer):
    prompt = tokenizer.apply_chat_template(CONVERSATION[:4], add_generation_prompt=True)["input_ids"]
    full = tokenizer.apply_chat_template(CONVERSATION)["input_ids"]
    assert full[: len(prompt)] == prompt


def test_save_and_load_with_auto_tokenizer(tmp_path, tokenizer):
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.chat_template == tokenizer.chat_template
    assert loaded(TEXT)["input_ids"] == tokenizer(TEXT)["input_ids"]
    assert (
        loaded.apply_chat_template(CONVERSATION)["input_ids"]
        == tokenizer.apply_chat_template(CONVERSATION)["input_ids"]
    )


def test_accepts_a_datasets_column_and_learns_merges():
    column = Dataset.from_dict({"text": [TEXT] * 10})["text"]
    tokenizer = train_tokenizer(column, vocab_size=300, show_progress=False)
    assert len(tokenizer) == 300
    assert len(tokenizer("the model")["input_ids"]) < len("the model")  # merged beyond single bytes


def test_bad_inputs():
    with pytest.raises(TypeError, match="text #1 is a int"):
        train_tokenizer(["fine", 3], vocab_size=300, show_progress=False)
    with pytest.raises(ValueError, match="vocab_size` must be at least 261"):
        train_tokenizer([TEXT], vocab_size=100)
