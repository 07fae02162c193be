"""InstructGPTConfig: standard field names, derived defaults, and errors that name the field and the fix."""

import pytest
from huggingface_hub.errors import StrictDataclassClassValidationError
from transformers import AutoConfig

from hf_instruct import InstructGPTConfig


def test_defaults_and_derived_fields():
    config = InstructGPTConfig()
    assert config.model_type == "instructgpt"
    assert config.head_dim == config.hidden_size // config.num_attention_heads
    assert config.num_key_value_heads == config.num_attention_heads
    assert config.rope_parameters == {"rope_type": "default", "rope_theta": 10000.0}
    assert (config.pad_token_id, config.bos_token_id, config.eos_token_id) == (0, 1, 2)
    assert config.base_model_tp_plan["layers.*.self_attn.o_proj"] == "rowwise"
    assert "layers" in config.base_model_pp_plan


def test_round_trip_through_auto_config(tmp_path):
    config = InstructGPTConfig(hidden_size=96, num_attention_heads=6, num_key_value_heads=2, hidden_dropout=0.2)
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, InstructGPTConfig)
    assert loaded.to_diff_dict() == config.to_diff_dict()
    assert loaded.auto_map["AutoModelForSequenceClassification"].endswith("InstructGPTForSequenceClassification")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(hidden_size=100, num_attention_heads=3), r"`hidden_size` \(100\) must be divisible by `num_attention_"),
        (dict(num_attention_heads=8, num_key_value_heads=3), r"num_key_value_heads=2"),
        (dict(num_hidden_layers=0), r"`num_hidden_layers` must be a positive integer, got 0"),
        (dict(vocab_size=-5), r"`vocab_size` must be a positive integer"),
        (dict(intermediate_size=0), r"`intermediate_size` must be a positive integer"),
        (dict(hidden_size=36, num_attention_heads=4), r"`head_dim` \(9\) must be even"),
        (dict(hidden_dropout=1.0), r"`hidden_dropout` must be in \[0, 1\)"),
        (dict(attention_dropout=-0.1), r"`attention_dropout` must be in \[0, 1\)"),
        (dict(rms_norm_eps=0.0), r"`rms_norm_eps` must be positive"),
        (dict(rope_parameters={"rope_type": "bogus", "rope_theta": 1e4}), r"rope_type.*'bogus'.*use one of"),
    ],
)
def test_impossible_configs_name_the_field_and_the_fix(kwargs, message):
    with pytest.raises(StrictDataclassClassValidationError, match=message):
        InstructGPTConfig(**kwargs)


def test_explicit_head_dim_allows_any_hidden_size():
    config = InstructGPTConfig(hidden_size=100, num_attention_heads=3, head_dim=32)
    assert config.head_dim == 32
