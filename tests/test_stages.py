"""A stage is its file: a config class, a run function and a `Stage` declaration, listed once in `STAGES`. Building
its config has no side effect; the run's start has them."""

import atexit
import dataclasses
import os

import pytest
from conftest import SMOKE_TRAINING

from hf_instruct import precision
from hf_instruct.stages import STAGES, PretrainStageConfig, lifecycle
from hf_instruct.stages.lifecycle import leave_the_process_group, start_run

SECRET = "hf_not_a_real_token"


def build(config_class, tmp_path, **values):
    """A config of `config_class` with the fields a stage requires (those it has), the Hub token and `values`."""
    required = dict(model_name_or_path="m", train_files=["t.jsonl"], reward_model_path="r", ptx_files=["p.txt"])
    names = {field.name for field in dataclasses.fields(config_class)}
    fields = {name: value for name, value in required.items() if name in names}
    return config_class(output_dir=str(tmp_path / "run"), hub_token=SECRET, **{**fields, **values})


@pytest.mark.parametrize("stage", STAGES)
def test_building_a_stage_config_probes_nothing_and_leaves_the_environment_and_exit_hooks_alone(
    stage, tmp_path, monkeypatch
):
    def no(*args, **kwargs):
        raise AssertionError("building a config has no side effect")

    monkeypatch.delenv("HF_INSTRUCT_BF16", raising=False)
    for module in (precision, lifecycle):
        monkeypatch.setattr(module, "default_bf16", no)
    monkeypatch.setattr(precision, "probe_speeds", no)
    monkeypatch.setattr(atexit, "register", no)
    environment = dict(os.environ)
    config = build(STAGES[stage].config_class, tmp_path)
    assert dict(os.environ) == environment
    assert config.hub_token == SECRET and config.bf16 is False and config.bf16_reason == precision.CHOSEN_AT_START


def test_a_run_moves_the_token_chooses_the_precision_and_registers_its_exit_hook_when_it_starts(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_INSTRUCT_BF16", "1")  # the choice without a probe
    monkeypatch.setenv("HF_TOKEN", "the one before")
    registered = []
    monkeypatch.setattr(atexit, "register", registered.append)
    config = build(PretrainStageConfig, tmp_path, **{**SMOKE_TRAINING, "bf16": None})
    precision.default_bf16.cache_clear()
    try:
        assert not start_run(config, "pretrain").finished
    finally:
        precision.default_bf16.cache_clear()
    assert os.environ["HF_TOKEN"] == SECRET and config.hub_token is None  # out of training_args.bin
    assert (config.bf16, config.bf16_reason, config.mixed_precision) == (True, "forced on by HF_INSTRUCT_BF16", "bf16")
    assert registered == [leave_the_process_group]
