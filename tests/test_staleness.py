"""A pipeline notices what changed: an edited setting, another seed or a model replaced upstream re-runs the stage and
everything downstream of it, and the plan says why; an unchanged pipeline re-runs nothing. On a copy of the smoke
pipeline's finished folder (the shared `smoke_run`), so only one test trains anything."""

import json
import shutil
import subprocess

import pytest
from conftest import CLI_ENV, REPO, smoke_pipeline
from safetensors.torch import load_file, save_file

from hf_instruct.model_card import RUN_FILE
from hf_instruct.pipeline import (
    PipelineConfig,
    data_files,
    plan_runs,
    prepare_data,
    print_plan,
    runs,
    stage_config,
)
from hf_instruct.staleness import file_fingerprint, input_fingerprints, path_fingerprint, run_settings

pytestmark = pytest.mark.slow  # every test reads the smoke pipeline's folder


@pytest.fixture
def finished_copy(smoke_run, tmp_path):
    """A copy of the finished smoke pipeline, free to change."""
    output_dir = tmp_path / "smoke"
    shutil.copytree(smoke_run[0], output_dir)
    return output_dir


def plan(output_dir, capsys, **changes):
    """The plan the smoke pipeline in `output_dir` prints after `changes` to its config (`stages`: run -> fields);
    returns {run: (action, reason)} and the printed lines after the table."""
    config = PipelineConfig.from_yaml(REPO / "recipes/smoke/pipeline.yaml", output_dir=str(output_dir))
    for run, fields in changes.pop("stages", {}).items():
        config.stages[run] = {**config.stages[run], **fields}
    for name, value in changes.items():
        setattr(config, name, value)
    data = data_files(output_dir / "data")
    configs = {name: stage_config(name, config, data, output_dir) for name in runs(config)}
    capsys.readouterr()
    data_changed = prepare_data(config, data)
    plans = plan_runs(configs)
    print_plan(config, configs, plans, data_changed)
    printed = capsys.readouterr().out.splitlines()
    below_table = [line for line in printed if line and not line.startswith(("|", "pipeline plan", "total"))]
    return {name: (plan.action, plan.reason) for name, plan in plans.items()}, below_table


def test_an_unchanged_pipeline_re_runs_nothing(finished_copy, capsys):
    plans, lines = plan(finished_copy, capsys)
    assert plans == {name: ("skip", "") for name in plans} and lines == []


def test_a_changed_setting_re_runs_its_stage_and_everything_downstream_and_the_plan_says_why(finished_copy, capsys):
    plans, lines = plan(finished_copy, capsys, stages={"sft": {"learning_rate": 1.0e-3}})
    assert lines == [
        "sft: settings changed (learning_rate 0.002 → 0.001): re-run",
        "collect_comparisons, reward, ppo, ppo_no_ptx, dpo, grpo: input changed (sft runs again): re-run",
    ]
    assert {name for name, (action, _) in plans.items() if action == "skip"} == {"pretrain", "base_4x", "midtrain"}


def test_another_seed_builds_the_suite_again_and_re_runs_every_stage(finished_copy, capsys):
    before = file_fingerprint(finished_copy / "data" / "sft.jsonl")
    plans, lines = plan(finished_copy, capsys, seed=7)
    assert file_fingerprint(finished_copy / "data" / "sft.jsonl") != before
    assert json.loads((finished_copy / "data" / "suite.json").read_text())["seed"] == 7
    assert lines == [
        "data: suite settings changed (seed 42 → 7): built again",
        "pretrain: settings changed (seed 42 → 7); input changed (instruction_files, train_files): re-run",
        "base_4x, midtrain, sft, collect_comparisons, reward, ppo, ppo_no_ptx, dpo, grpo: "
        "input changed (pretrain runs again): re-run",
    ]
    assert all(action == "re-run" for action, _ in plans.values())


def test_a_model_replaced_upstream_re_runs_the_stages_that_read_it(finished_copy, capsys):
    weights = finished_copy / "sft" / "model.safetensors"  # e.g. SFT trained again by hand, same shape
    save_file({name: tensor + 0.01 for name, tensor in load_file(weights).items()}, weights, metadata={"format": "pt"})
    plans, lines = plan(finished_copy, capsys)
    assert lines == [
        "collect_comparisons: input changed (model_name_or_path): re-run",
        "reward, ppo, ppo_no_ptx, dpo, grpo: input changed (collect_comparisons runs again): re-run",
    ]
    assert plans["sft"] == ("skip", "")


def test_fingerprints_follow_the_content_not_the_place(finished_copy, smoke_run):
    for name in ("sft", "reward", "data"):
        assert path_fingerprint(str(finished_copy / name)) == path_fingerprint(str(smoke_run[0] / name))
    record = json.loads((finished_copy / "ppo" / RUN_FILE).read_text())["history"][-1]
    config = stage_config(
        "ppo",
        PipelineConfig.from_yaml(REPO / "recipes/smoke/pipeline.yaml"),
        data_files(finished_copy / "data"),
        finished_copy,
    )
    assert record["inputs"] == input_fingerprints(config)  # the copy's inputs are the ones the run read
    assert record["settings"] == run_settings(config)
    assert {"learning_rate", "ptx_coef", "response_length"} <= set(record["settings"])


def test_an_edited_stage_runs_again_from_the_start_and_the_others_are_kept(finished_copy, smoke_run, tmp_path, capsys):
    edited = tmp_path / "edited.yaml"
    edited.write_text(f"extends: {REPO / 'recipes/smoke/pipeline.yaml'}\nstages:\n  dpo: {{learning_rate: 2.0e-4}}\n")
    command = smoke_pipeline(finished_copy)
    command[command.index("--config") + 1] = str(edited)
    rerun = subprocess.run(command, cwd=REPO, env=CLI_ENV, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    output = rerun.stderr + rerun.stdout
    assert "\ndpo: settings changed (learning_rate 0.0001 → 0.0002): re-run\n" in output  # the plan
    previous = finished_copy / "previous" / "dpo"
    assert (
        "pipeline: dpo: settings changed (learning_rate 0.0001 → 0.0002); running it again from the start (the old "
        f"run is in {previous})"
    ) in output
    assert all(f"pipeline: {name} finished before, skipped" in output for name in ("sft", "reward", "ppo"))
    learning_rates = [
        json.loads((folder / RUN_FILE).read_text())["history"][-1]["hyperparameters"]["learning_rate"]
        for folder in (finished_copy / "dpo", previous)
    ]
    assert learning_rates == [2.0e-4, 1.0e-4]
    models = [
        json.loads((folder / "comparison.json").read_text())["models"] for folder in (smoke_run[0], finished_copy)
    ]
    assert models[0]["dpo"] != models[1]["dpo"] and models[0]["sft"] == models[1]["sft"]  # compared again

    plans, lines = plan(finished_copy, capsys, stages={"dpo": {"learning_rate": 2.0e-4}})  # now it is up to date
    assert plans == {name: ("skip", "") for name in plans} and lines == []
