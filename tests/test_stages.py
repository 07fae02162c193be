"""A stage is its file: a config class, a run function and a `Stage` declaration, listed once in `STAGES`, which
the command, the card, the plot and the pipeline read. Building its config has no side effect; the run's start has
them. The KTO stage of docs/training.md ("Adding a stage") is loaded, registered and run as the page says."""

import atexit
import dataclasses
import importlib.util
import json
import os
import re
import sys

import pytest
import torch
from conftest import REPO, SMOKE_TRAINING, tiny_config
from transformers import Trainer

import hf_instruct.stages
from hf_instruct import InstructGPTForCausalLM, pipeline, precision
from hf_instruct.cli import build_parser, main
from hf_instruct.model_card import read_history
from hf_instruct.stages import STAGES, PretrainStageConfig, Stage, lifecycle, parse_config
from hf_instruct.stages.lifecycle import leave_the_process_group, start_run, train_and_save

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


def test_stages_is_built_from_the_declaration_at_the_end_of_each_stage_file():
    for name, stage in STAGES.items():
        assert isinstance(stage, Stage) and stage.name == name
        assert vars(sys.modules[stage.run.__module__])[name.upper()] is stage
        assert set(stage.card_hyperparameters) <= {field.name for field in dataclasses.fields(stage.config_class)}
    assert [name for name, stage in STAGES.items() if stage.language_modelling] == ["pretrain", "sft"]
    commands = build_parser()._subparsers._group_actions[0].choices
    assert set(STAGES) <= set(commands)


def test_the_card_and_the_plot_show_what_the_stage_declares(tmp_path, tokenizer, monkeypatch):
    """Which metrics and settings the run record keeps, what is plotted and whether the perplexity is added: the
    declaration's, whatever the trainer logs."""
    plotted = []
    monkeypatch.setattr(lifecycle, "plot_training_curves", lambda *args: plotted.append(args))
    toy = Stage(
        name="toy",
        config_class=PretrainStageConfig,
        run=lambda config: config.output_dir,
        card_metrics=("eval_perplexity", "train_loss"),
        card_hyperparameters=("seed", "learning_rate"),
        plotted=("loss",),
        language_modelling=True,
    )
    config = PretrainStageConfig(
        output_dir=str(tmp_path / "toy"), train_files=["unused.txt"], **{**SMOKE_TRAINING, "max_steps": 2}
    )
    blocks = [{"input_ids": row, "labels": row} for row in torch.randint(0, 300, (8, 16)).tolist()]
    trainer = Trainer(InstructGPTForCausalLM(tiny_config()), config, train_dataset=blocks, eval_dataset=blocks[:4])
    train_and_save(trainer, config, toy, tokenizer, resume_from=None)
    (record,) = read_history(config.output_dir)
    assert record["stage"] == "toy" and list(record["metrics"]) == ["eval_perplexity", "train_loss"]
    assert list(record["hyperparameters"]) == ["seed", "learning_rate", "bf16_reason", "allocator"]
    assert [(stage, plot) for _, stage, _, plot in plotted] == [("toy", ("loss",))]


ADDING_A_STAGE = (REPO / "docs" / "training.md").read_text().partition("\n## Adding a stage\n")[2]
FILE, REGISTRY, PIPELINE_ROW = re.findall(r"^```python\n(.*?)^```", ADDING_A_STAGE, re.S | re.M)


@pytest.fixture
def kto(tmp_path, monkeypatch):
    """docs/training.md's `hf_instruct/stages/kto.py`, imported as that module, and its registry line run: STAGES and
    the pipeline's RUNS with KTO in them, for this test."""
    path = tmp_path / "kto.py"
    path.write_text(FILE)
    spec = importlib.util.spec_from_file_location("hf_instruct.stages.kto", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    registry = {**vars(hf_instruct.stages)}
    exec(REGISTRY, registry)
    assert registry["STAGES"] == {**STAGES, "kto": module.KTO}  # the one new entry, last
    monkeypatch.setitem(STAGES, "kto", module.KTO)
    monkeypatch.setitem(pipeline.RUNS, "kto", eval(f"{{{PIPELINE_ROW}}}", vars(pipeline))["kto"])
    return module


def test_a_new_stage_is_its_file_and_one_registry_line(kto, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_code:
        main(["kto", "--help"])
    assert exit_code.value.code == 0 and capsys.readouterr().out.startswith("usage: hf-instruct kto ")
    assert "kto" in build_parser()._subparsers._group_actions[0].choices
    config = parse_config(
        kto.KTOStageConfig, ["--model_name_or_path", "m", "--train_files", "t.jsonl", "--beta", "0.2"]
    )
    assert isinstance(config, kto.KTOStageConfig) and config.beta == 0.2
    assert set(kto.KTO.card_hyperparameters) <= {field.name for field in dataclasses.fields(kto.KTOStageConfig)}
    with pytest.raises(SystemExit):  # the stages' one-line errors
        main(["kto", "--train_files", "t.jsonl"])
    assert capsys.readouterr().err.startswith("hf-instruct kto: Set --model_name_or_path: the model to start from")


def test_a_new_stage_joins_the_pipeline_with_one_row(kto, tmp_path):
    assert "kto" not in pipeline.runs(pipeline.PipelineConfig())  # WHEN_NAMED
    config = pipeline.PipelineConfig(stages={"kto": {"max_steps": 3}}, evaluation={"best_of_n": 2})
    assert list(pipeline.runs(config))[-1] == "kto" and pipeline.compared(config)[-2:] == ("dpo", "kto")
    data = pipeline.data_files(tmp_path / "data")
    stage = pipeline.stage_config("kto", config, data, tmp_path)
    assert isinstance(stage, kto.KTOStageConfig) and stage.max_steps == 3
    assert (stage.model_name_or_path, stage.train_files) == (str(tmp_path / "sft"), [str(data["comparisons"])])


@pytest.mark.slow
def test_the_kto_stage_of_the_docs_trains_and_its_card_shows_what_it_declares(kto, tmp_path, tiny_model_dir):
    row = {"prompt": "Tell me about the sea.", "chosen": "The sea is wide and deep.", "rejected": "Go away."}
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text((json.dumps(row) + "\n") * 16)
    output_dir = tmp_path / "kto"
    config = kto.KTOStageConfig(
        model_name_or_path=str(tiny_model_dir),
        train_files=[str(pairs)],
        output_dir=str(output_dir),
        eval_examples=4,
        max_length=64,
        **{**SMOKE_TRAINING, "max_steps": 2},
    )
    kto.run_kto(config)
    (*_, record) = read_history(output_dir)
    assert record["stage"] == "kto" and set(record["metrics"]) <= set(kto.KTO.card_metrics)
    assert {"train_loss", "eval_loss"} <= set(record["metrics"]) and record["hyperparameters"]["beta"] == 0.1
    assert (output_dir / "README.md").is_file() and (output_dir / "training_curves.png").is_file()
