"""`hf-instruct pipeline`: the smoke setup end to end (killed once, then finished by re-running the same command),
and the default setup's sizes as the README states them."""

import json
import signal
import subprocess
import sys
import time

import pytest
import yaml
from conftest import CLI_ENV, REPO
from huggingface_hub import ModelCard

from hf_instruct.evaluation.evaluator import SUITE_SPLITS
from hf_instruct.models.instructgpt import InstructGPTConfig, InstructGPTForCausalLM
from hf_instruct.pipeline import PipelineConfig, compared, headline, runs, stage_config

PIPELINES = sorted(REPO.glob("recipes/*/pipeline.yaml"))


def test_there_are_pipelines_for_every_setup():
    assert {path.parent.name for path in PIPELINES} == {"default", "smoke", "gutenberg-dolly", "gpu-125m"}


@pytest.mark.parametrize("path", PIPELINES, ids=lambda path: path.parent.name)
def test_every_pipeline_yaml_builds_the_config_of_every_stage(path, tmp_path):
    config = PipelineConfig.from_yaml(path, output_dir=str(tmp_path / "run"))
    data = {split: tmp_path / f"{split}.jsonl" for split in ("pretrain", "sft", "comparisons")}
    for name in runs(config):
        stage = stage_config(name, config, data, tmp_path / "run")
        assert stage.output_dir == str(tmp_path / "run" / name) and stage.seed == config.seed
    with pytest.raises(ValueError, match="unknown keys \\['stagez'\\]"):
        bad = tmp_path / "bad.yaml"
        bad.write_text("stagez: {}\n")
        PipelineConfig.from_yaml(bad)


def test_a_baseline_is_the_pretrain_run_with_its_changes_on_the_same_tokens(tmp_path):
    config = PipelineConfig(
        stages={"pretrain": {"max_steps": 7, "block_size": 32, "model_config": {"hidden_size": 32}, "estimate_s": 1}},
        baselines={"base_4x": {"model_config": {"hidden_size": 64}}},
    )
    data = {split: tmp_path / f"{split}.jsonl" for split in ("pretrain", "sft", "comparisons")}
    assert list(runs(config)) == ["pretrain", "base_4x", "sft", "reward", "ppo", "ppo_no_ptx", "dpo"]
    assert compared(config) == ("pretrain", "pretrain (3-shot)", "base_4x", "base_4x (3-shot)", "sft", "ppo_no_ptx",
                                "ppo", "dpo")  # fmt: skip
    base, baseline = (stage_config(name, config, data, tmp_path) for name in ("pretrain", "base_4x"))
    assert (baseline.max_steps, baseline.block_size, baseline.train_files) == (7, 32, [str(data["pretrain"])])
    assert baseline.model_config == {"hidden_size": 64} and base.model_config == {"hidden_size": 32}
    assert baseline.tokenizer_name_or_path == str(tmp_path / "pretrain") and base.tokenizer_name_or_path is None
    assert base.instruction_share == 0 and baseline.instruction_share == 0  # the base models read raw text only
    config.stages["midtrain"] = {"instruction_share": 0.3, "max_steps": 3}  # then SFT starts from the midtrained model
    assert list(runs(config)) == ["pretrain", "base_4x", "midtrain", "sft", "reward", "ppo", "ppo_no_ptx", "dpo"]
    midtrain, sft = (stage_config(name, config, data, tmp_path) for name in ("midtrain", "sft"))
    assert midtrain.model_name_or_path == str(tmp_path / "pretrain") and midtrain.instruction_share == 0.3
    assert midtrain.instruction_files == [str(data["sft"])] and sft.model_name_or_path == str(tmp_path / "midtrain")
    assert baseline.output_dir == str(tmp_path / "base_4x")


def test_the_headline_baseline_has_4x_the_parameters_and_as_many_tokens_on_raw_text(tmp_path):
    config = PipelineConfig.from_yaml(REPO / "recipes/tiny/headline.yaml", output_dir=str(tmp_path))
    default = PipelineConfig.from_yaml(REPO / "recipes/default/pipeline.yaml", output_dir=str(tmp_path))
    assert (config.stages, config.suite, config.seed) == (default.stages, default.suite, default.seed)
    data = {split: tmp_path / f"{split}.jsonl" for split in ("pretrain", "sft", "comparisons")}
    base, midtrain, baseline = (
        stage_config(name, config, data, tmp_path) for name in ("pretrain", "midtrain", "base_4x")
    )
    tokens = lambda stage: stage.max_steps * stage.per_device_train_batch_size * stage.block_size  # noqa: E731
    assert tokens(baseline) == tokens(base) + tokens(midtrain) and baseline.instruction_share == 0
    assert baseline.train_files == base.train_files and baseline.tokenizer_name_or_path == base.output_dir

    def parameters(stage):
        model_config = InstructGPTConfig(vocab_size=stage.vocab_size, **stage.model_config)
        return sum(p.numel() for p in InstructGPTForCausalLM(model_config).parameters())

    assert parameters(baseline) >= 4 * parameters(base)


def test_the_headline_claims_the_same_tokens_only_when_the_baseline_changes_none_of_them():
    def model(parameters, accuracy):
        return {"parameters": parameters, "splits": {split: {"accuracy": accuracy} for split in SUITE_SPLITS}}

    results = {"ppo": model(1_000_000, 0.5), "base_4x": model(4_000_000, 0.25)}
    sentence = headline("base_4x", results, {"model_config": {"hidden_size": 64}})
    assert sentence == (
        "The final model (PPO-ptx, 1.00 M parameters) against base_4x (4.0x its parameters, pretrained on the same "
        "corpus for the same tokens), held-out accuracy: entities 0.50 against 0.25, paraphrases 0.50 against 0.25, "
        "compositions 0.50 against 0.25."
    )
    assert "same corpus), held-out" in headline("base_4x", results, {"max_steps": 10})


@pytest.mark.slow
def test_smoke_pipeline_killed_then_rerun_finishes_with_report_and_card(tmp_path):
    output_dir = tmp_path / "smoke"
    command = [sys.executable, "-m", "hf_instruct.cli", "pipeline", "--config", "recipes/smoke/pipeline.yaml",
               "--output_dir", str(output_dir)]  # fmt: skip
    first = subprocess.Popen(command, cwd=REPO, env=CLI_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (output_dir / "sft" / "all_results.json").exists():
        assert first.poll() is None and time.time() < deadline, "the first run ended before SFT finished"
        time.sleep(0.1)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert not (output_dir / "report.md").exists()

    second = subprocess.run(command, cwd=REPO, env=CLI_ENV, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-4000:]
    assert "pipeline: pretrain finished before, skipped" in second.stderr + second.stdout
    assert "pipeline: sft finished before, skipped" in second.stderr + second.stdout

    comparison = json.loads((output_dir / "comparison.json").read_text())
    config = PipelineConfig.from_yaml(REPO / "recipes/smoke/pipeline.yaml")
    assert list(comparison) == ["pretrain", "pretrain (3-shot)", "base_4x", "base_4x (3-shot)", "midtrain", "sft",
                                "ppo_no_ptx", "ppo", "dpo"]  # fmt: skip
    assert list(comparison) == list(compared(config))
    assert comparison["base_4x"]["parameters"] >= 4 * comparison["ppo"]["parameters"]
    for model in comparison.values():
        assert set(model["splits"]) == set(SUITE_SPLITS) and model["perplexity"] > 1.0
        assert all(0.0 <= split["win_rate_vs_sft"] <= 1.0 for split in model["splits"].values())
    assert all(comparison["sft"]["splits"][split]["win_rate_vs_sft"] == 0.5 for split in SUITE_SPLITS)
    report = (output_dir / "report.md").read_text()
    assert all(f"| {name} |" in report for name in comparison) and (output_dir / "accuracy.png").is_file()
    assert "The final model (PPO-ptx, " in report and "against base_4x (" in report
    assert "## Sample answers" in report and "| seed | 42 |" in report
    card = ModelCard.load(output_dir / "ppo" / "README.md")
    assert {"pretrain", "sft", "ppo"} <= set(card.data.tags)
    assert "suite_accuracy/held_out_entities" in card.text
    assert all((output_dir / name / "all_results.json").is_file() for name in runs(config))


def test_the_default_setup_is_what_the_readme_says():
    config = yaml.safe_load((REPO / "recipes/default/pipeline.yaml").read_text())
    suite, stages = config["suite"], config["stages"]
    model = stages["pretrain"]["model_config"]
    estimate = sum(stage["estimate_s"] for stage in stages.values()) + config["evaluation"]["estimate_s"]
    sentence = (
        f"a {suite['corpus_mb']} MB corpus about {suite['num_entities']} invented entities, "
        f"{suite['sft_examples']} demonstrations, {suite['comparisons']} comparisons and "
        f"{suite['held_out_examples']} examples per held-out split; a {model['num_hidden_layers']}-layer, "
        f"{model['hidden_size']}-wide model pretrained for {stages['pretrain']['max_steps']} steps on raw text and "
        f"midtrained for {stages['midtrain']['max_steps']} steps with {stages['midtrain']['instruction_share']:.0%} "
        "instruction conversations; "
        f"about {round(estimate / 60)} minutes on 2 CPU cores"
    )
    assert sentence in " ".join((REPO / "README.md").read_text().split())
