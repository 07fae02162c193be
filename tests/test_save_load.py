"""Checkpoints: Auto classes, safetensors round trips, and remote-code loading on a machine without hf_instruct."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import tiny_config
from safetensors import safe_open
from torch.testing import assert_close
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

from hf_instruct import (
    InstructGPTConfig,
    InstructGPTForCausalLM,
    InstructGPTForSequenceClassification,
    InstructGPTModel,
)


def test_import_registers_the_auto_classes():
    config = tiny_config()
    assert isinstance(AutoConfig.for_model("instructgpt"), InstructGPTConfig)
    assert type(AutoModel.from_config(config)) is InstructGPTModel
    assert type(AutoModelForCausalLM.from_config(config)) is InstructGPTForCausalLM
    assert type(AutoModelForSequenceClassification.from_config(config)) is InstructGPTForSequenceClassification


@pytest.mark.parametrize("tie", [True, False])
def test_save_load_round_trip_is_safetensors_only_and_stores_tied_weights_once(tmp_path, tie):
    model = InstructGPTForCausalLM(tiny_config(tie_word_embeddings=tie)).eval()
    model.save_pretrained(tmp_path)
    files = sorted(os.listdir(tmp_path))
    assert "model.safetensors" in files and not any(f.endswith((".bin", ".pt", ".pth")) for f in files)
    assert {"modeling_instructgpt.py", "configuration_instructgpt.py", "generation_config.json"} <= set(files)
    with safe_open(tmp_path / "model.safetensors", "pt") as weights:
        assert ("lm_head.weight" in weights.keys()) is (not tie)
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert set(auto_map) == {"AutoConfig", "AutoModel", "AutoModelForCausalLM", "AutoModelForSequenceClassification"}

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is InstructGPTForCausalLM
    assert (loaded.lm_head.weight is loaded.model.embed_tokens.weight) is tie
    input_ids = torch.randint(3, 320, (2, 9))
    with torch.no_grad():
        assert_close(loaded(input_ids).logits, model(input_ids).logits, atol=0, rtol=0)


def test_reward_model_initialised_from_a_causal_lm_checkpoint(tmp_path):
    """The reward stage starts from the SFT checkpoint: the backbone carries over, the score head is new."""
    lm = InstructGPTForCausalLM(tiny_config())
    lm.save_pretrained(tmp_path)
    rm = AutoModelForSequenceClassification.from_pretrained(tmp_path, num_labels=1)
    for name, tensor in lm.model.state_dict().items():
        assert torch.equal(rm.model.state_dict()[name], tensor), name
    assert rm.score.weight.shape == (1, lm.config.hidden_size)


REMOTE_LOAD = textwrap.dedent(
    """
    import sys
    sys.modules["hf_instruct"] = None  # any `import hf_instruct` now raises ImportError
    import torch
    import transformers
    path, head, inputs, out = sys.argv[1:]
    auto = getattr(transformers, head)
    model = auto.from_pretrained(path, trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    batch = torch.load(inputs)
    with torch.no_grad():
        torch.save(model(**batch).logits, out)
    """
)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model_class", "head", "extra"),
    [
        (InstructGPTForCausalLM, "AutoModelForCausalLM", {}),
        (InstructGPTForSequenceClassification, "AutoModelForSequenceClassification", {"num_labels": 1}),
    ],
)
def test_remote_code_loads_without_the_plugin(tmp_path, model_class, head, extra):
    model = model_class(tiny_config(**extra)).eval()
    model.save_pretrained(tmp_path / "ckpt")
    batch = {"input_ids": torch.randint(3, 320, (2, 7)), "attention_mask": torch.ones(2, 7, dtype=torch.long)}
    batch["attention_mask"][1, 5:] = 0
    torch.save(batch, tmp_path / "inputs.pt")
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"}
    args = [str(tmp_path / "ckpt"), head, str(tmp_path / "inputs.pt"), str(tmp_path / "out.pt")]
    proc = subprocess.run([sys.executable, "-c", REMOTE_LOAD, *args], cwd=tmp_path, env=env, capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    with torch.no_grad():
        expected = model(**batch).logits
    assert_close(torch.load(tmp_path / "out.pt"), expected, atol=0, rtol=0)


@pytest.mark.slow
def test_remote_code_loads_a_causal_lm_checkpoint_as_a_reward_model(tmp_path):
    """Every checkpoint's auto_map names every head: an SFT checkpoint becomes a reward model without the plugin."""
    lm = InstructGPTForCausalLM(tiny_config())
    lm.save_pretrained(tmp_path / "sft")
    script = textwrap.dedent(
        """
        import sys
        sys.modules["hf_instruct"] = None
        import torch
        from transformers import AutoModelForSequenceClassification
        model = AutoModelForSequenceClassification.from_pretrained(sys.argv[1], num_labels=1, trust_remote_code=True)
        assert type(model).__name__ == "InstructGPTForSequenceClassification", type(model)
        torch.save(model.model.state_dict(), sys.argv[2])
        """
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "sft"), str(tmp_path / "backbone.pt")],
        env=env,
        capture_output=True,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    backbone = torch.load(tmp_path / "backbone.pt")
    for name, tensor in lm.model.state_dict().items():
        assert torch.equal(backbone[name], tensor), name
