"""`hf-instruct pipeline`: the smoke setup end to end (killed once, then finished by re-running the same command; a
re-run changes no file; a deleted model is trained again and compared again; the final model pushed), stages started
from their recipes, errors in a pipeline YAML, and the default setup's sizes as the README states them."""

import hashlib
import json
import re
import subprocess

import pytest
import torch
import yaml
from conftest import CLI_ENV, REPO, smoke_pipeline
from hub_server import hub_env
from huggingface_hub import ModelCard
from safetensors.torch import load_file, save_file

from hf_instruct.checkpoints import saved_model_problem
from hf_instruct.cli import main
from hf_instruct.evaluation.evaluator import SUITE_SPLITS
from hf_instruct.evaluation.statistics import paired_difference
from hf_instruct.models.instructgpt import InstructGPTConfig, InstructGPTForCausalLM
from hf_instruct.pipeline import (
    PipelineConfig,
    RunPlan,
    compared,
    data_files,
    estimate_scale,
    fingerprint,
    headline,
    model_of,
    print_plan,
    runs,
    stage_config,
)
from hf_instruct.precision import ProbeResult, ProbeShapes, default_bf16, probe

PIPELINES = sorted(REPO.glob("recipes/*/pipeline.yaml"))


def test_there_are_pipelines_for_every_setup():
    assert {path.parent.name for path in PIPELINES} == {"default", "smoke", "gutenberg-dolly", "gpu-125m"}


@pytest.mark.parametrize("path", PIPELINES, ids=lambda path: path.parent.name)
def test_every_pipeline_yaml_builds_the_config_of_every_stage(path, tmp_path):
    config = PipelineConfig.from_yaml(path, output_dir=str(tmp_path / "run"))
    data = data_files(tmp_path)
    for name in runs(config):
        stage = stage_config(name, config, data, tmp_path / "run")
        assert stage.output_dir == str(tmp_path / "run" / name) and stage.seed == config.seed
    with pytest.raises(ValueError, match="unknown keys \\['stagez'\\]"):
        bad = tmp_path / "bad.yaml"
        bad.write_text("stagez: {}\n")
        PipelineConfig.from_yaml(bad)


def test_a_baseline_is_the_pretrain_run_with_its_changes_on_the_same_tokens(tmp_path):
    config = PipelineConfig(
        stages={"pretrain": {"max_steps": 7, "block_size": 32, "model_config": {"hidden_size": 32}}},
        baselines={"base_4x": {"model_config": {"hidden_size": 64}}},
    )
    data = data_files(tmp_path)
    assert list(runs(config)) == ["pretrain", "base_4x", "sft", "reward", "ppo", "ppo_no_ptx", "dpo"]
    assert compared(config) == (
        *("pretrain", "pretrain (3-shot)", "base_4x", "base_4x (3-shot)"),
        *("sft", "ppo_no_ptx", "ppo", "dpo"),
    )
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


def test_grpo_runs_when_configured_from_sft_against_the_reward_model_on_ppos_prompts(tmp_path):
    config = PipelineConfig(stages={"grpo": {"num_generations": 4, "max_steps": 2}}, evaluation={"best_of_n": 4})
    data = data_files(tmp_path / "data")
    assert list(runs(config)) == ["pretrain", "sft", "reward", "ppo", "ppo_no_ptx", "dpo", "grpo"]
    assert compared(config) == (
        *("pretrain", "pretrain (3-shot)", "sft", "sft (best-of-4)", "ppo_no_ptx", "ppo", "dpo", "grpo"),
    )
    assert model_of("sft (best-of-4)") == "sft" and model_of("pretrain (3-shot)") == "pretrain"
    grpo, ppo = (stage_config(name, config, data, tmp_path) for name in ("grpo", "ppo"))
    assert (grpo.model_name_or_path, grpo.reward_model_path) == (str(tmp_path / "sft"), str(tmp_path / "reward"))
    assert grpo.train_files == ppo.train_files and (grpo.num_generations, grpo.max_steps) == (4, 2)
    assert grpo.output_dir == str(tmp_path / "grpo") and grpo.seed == config.seed
    assert "grpo" not in runs(PipelineConfig()) and "sft (best-of-4)" not in compared(PipelineConfig())
    for bad in (0, "4", 2.5, True):
        with pytest.raises(ValueError, match=f"evaluation: best_of_n: {re.escape(repr(bad))} is not valid"):
            PipelineConfig(evaluation={"best_of_n": bad})
    for evaluation in ({"best_of_n": 4, "best_of_n_temperature": 0}, {"best_of_n_temperature": 0.7}):
        with pytest.raises(
            ValueError, match="evaluation: best_of_n_temperature: .* expected a number > 0, with best_of_n"
        ):
            PipelineConfig(evaluation=evaluation)
    with pytest.raises(ValueError, match=r"evaluation: unknown key 'best_of_m' \(did you mean 'best_of_n'\?\)"):
        PipelineConfig(evaluation={"best_of_m": 4})  # before anything runs, not when the comparison starts
    with pytest.raises(ValueError, match=r"unknown key 'seed' \(expected some of max_new_tokens, batch_size, limit"):
        PipelineConfig(evaluation={"seed": 4})  # the pipeline's own seed


def test_a_mistyped_suite_key_fails_before_anything_runs_with_the_closest_name(tmp_path, capsys):
    """Not a TypeError from SuiteConfig when the data is built: one line naming the file, the section and the key."""
    with pytest.raises(ValueError, match=r"suite: unknown key 'num_entitis' \(did you mean 'num_entities'\?\)"):
        PipelineConfig(suite={"num_entitis": 30})
    with pytest.raises(ValueError, match=r"suite: unknown key 'colour' \(expected some of seed, num_entities, "):
        PipelineConfig(suite={"colour": "blue"})
    assert PipelineConfig(suite={"seed": 7, "num_entities": 30}).suite_config().num_entities == 30
    path = tmp_path / "pipeline.yaml"
    path.write_text(f"extends: {REPO / 'recipes/smoke/pipeline.yaml'}\nsuite: {{corpus_mbs: 0.1}}\n")
    with pytest.raises(SystemExit):
        main(["pipeline", "--config", str(path), "--output_dir", str(tmp_path / "run")])
    assert capsys.readouterr().err.splitlines()[0] == (
        f"hf-instruct pipeline: {path}: suite: unknown key 'corpus_mbs' (did you mean 'corpus_mb'?)"
    )
    assert not (tmp_path / "run").exists()


def test_the_headline_baseline_has_4x_the_parameters_and_as_many_tokens_on_raw_text(tmp_path):
    config = PipelineConfig.from_yaml(REPO / "recipes/tiny/headline.yaml", output_dir=str(tmp_path))
    default = PipelineConfig.from_yaml(REPO / "recipes/default/pipeline.yaml", output_dir=str(tmp_path))
    assert (config.stages, config.suite, config.seed) == (default.stages, default.suite, default.seed)
    assert config.estimates == {**default.estimates, "base_4x": 1670}  # `extends` updates a mapping key by key
    data = data_files(tmp_path)
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


def over_the_default(tmp_path, stages: str) -> tuple[PipelineConfig, PipelineConfig]:
    """A pipeline YAML that extends the default with `stages:` (YAML lines), parsed, and the default."""
    variant = tmp_path / "variant.yaml"
    variant.write_text(f"extends: {REPO / 'recipes/default/pipeline.yaml'}\nstages:\n{stages}")
    default = PipelineConfig.from_yaml(REPO / "recipes/default/pipeline.yaml", output_dir=str(tmp_path))
    return PipelineConfig.from_yaml(variant, output_dir=str(tmp_path)), default


def test_extends_changes_only_the_fields_a_stage_names_and_keeps_its_others(tmp_path):
    config, default = over_the_default(
        tmp_path, "  sft: {learning_rate: 1.0e-4}\n  pretrain: {model_config: {hidden_size: 256}}\n"
    )
    assert config.stages["sft"] == {**default.stages["sft"], "learning_rate": 1.0e-4}
    pretrain = default.stages["pretrain"]
    assert config.stages["pretrain"] == {**pretrain, "model_config": {**pretrain["model_config"], "hidden_size": 256}}
    assert {name: config.stages[name] for name in ("midtrain", "reward", "ppo")} == {
        name: default.stages[name] for name in ("midtrain", "reward", "ppo")
    }


def test_false_turns_off_a_run_the_extended_yaml_names_but_not_the_chain_to_the_final_model(tmp_path):
    """A control (docs/pipeline.md) extends the default and turns runs off: the synthetic comparisons instead of the
    collected ones (reward and DPO then read the suite's), and no GRPO, DPO or PPO without ptx."""
    config, default = over_the_default(
        tmp_path, "  collect_comparisons: false\n  grpo: false\n  dpo: false\n  ppo_no_ptx: false\n"
    )
    assert list(runs(config)) == ["pretrain", "midtrain", "sft", "reward", "ppo"]
    assert set(runs(default)) - set(runs(config)) == {"collect_comparisons", "grpo", "dpo", "ppo_no_ptx"}
    data = data_files(tmp_path)
    assert stage_config("reward", config, data, tmp_path).train_files == [str(data["comparisons"])]
    assert stage_config("reward", default, data, tmp_path).train_files == [
        str(tmp_path / "collect_comparisons" / "comparisons.jsonl")
    ]
    assert stage_config("ppo", config, data, tmp_path).max_steps == default.stages["ppo"]["max_steps"]
    for required in ("pretrain", "sft", "reward", "ppo"):
        with pytest.raises(ValueError, match=f"stages: {required}: false: .* always run"):
            over_the_default(tmp_path, f"  {required}: false\n")


def test_the_controls_of_learning_from_feedback_change_one_cause_each_and_run_sft_and_ppo_only(tmp_path):
    default = PipelineConfig.from_yaml(REPO / "recipes/default/pipeline.yaml", output_dir=str(tmp_path))
    chain = ["pretrain", "midtrain", "sft", "collect_comparisons", "reward", "ppo"]
    for name, flaws, ran in (
        ("no-flaws", 0.0, chain),
        ("twice-flaws", 2.0, chain),
        ("synthetic-comparisons", default.suite_config().demonstration_flaws, chain[:3] + chain[4:]),
    ):
        control = PipelineConfig.from_yaml(REPO / f"recipes/default/control-{name}.yaml", output_dir=str(tmp_path))
        assert list(runs(control)) == ran, name
        assert control.suite_config().demonstration_flaws == flaws, name
        assert compared(control)[-2:] == ("sft", "ppo"), name  # no best-of-n row
        assert {run: control.stages[run] for run in ran} == {run: default.stages[run] for run in ran}, name


def test_a_stage_starts_from_its_recipe_in_the_place_the_pipeline_gives_it(tmp_path):
    config = PipelineConfig.from_yaml(REPO / "recipes/gpu-125m/pipeline.yaml", output_dir=str(tmp_path), seed=7)
    config.stages["sft"]["max_steps"] = 500  # the entry's own fields replace the recipe's
    recipe = yaml.safe_load((REPO / "recipes/gpu-125m/sft/config.yaml").read_text())
    data = data_files(tmp_path)
    sft = stage_config("sft", config, data, tmp_path)
    for name in ("max_length", "num_train_epochs", "per_device_train_batch_size", "packing", "learning_rate"):
        assert getattr(sft, name) == recipe[name], name
    assert sft.max_steps == 500
    # the pipeline's seed, output_dir, model and data, not the recipe's run alone
    assert (sft.seed, sft.output_dir) == (7, str(tmp_path / "sft"))
    assert (sft.model_name_or_path, sft.train_files) == (str(tmp_path / "midtrain"), [str(data["sft"])])


def test_ppo_without_ptx_shares_the_ppo_fields_without_the_pretraining_mix(tmp_path):
    """...and both read the suite's RL prompts (broader than the demonstrations), unless a setup names its own."""
    data = data_files(tmp_path)
    for path in PIPELINES:
        config = PipelineConfig.from_yaml(path, output_dir=str(tmp_path))
        ppo, no_ptx = (stage_config(name, config, data, tmp_path) for name in ("ppo", "ppo_no_ptx"))
        assert ppo.ptx_coef > 0 and ppo.ptx_files and no_ptx.ptx_coef == 0 and no_ptx.ptx_files is None
        prompts = config.stages["ppo"].get("train_files") or [str(data["rl_prompts"])]
        assert ppo.train_files == no_ptx.train_files == prompts
        assert path.parent.name == "gutenberg-dolly" or prompts == [str(tmp_path / "rl_prompts.jsonl")]
        assert (ppo.max_steps, ppo.learning_rate, ppo.response_length) == (
            no_ptx.max_steps,
            no_ptx.learning_rate,
            no_ptx.response_length,
        )


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


def test_the_estimates_scale_by_this_machines_probe_against_the_reference_speed():
    result = ProbeResult(fp32=20_000.0, bf16=30_000.0, seconds=0.8)
    assert estimate_scale(12_000, result, bf16=True) == (
        0.4,
        "estimates scaled ×0.40 by a 0.8 s probe on this machine: 30.0 k training tokens/s at the default model's "
        "shapes in bf16, against 12.0 k where they were measured",
    )
    assert estimate_scale(12_000, result, bf16=False)[0] == 0.6  # the speed of the precision the stages train in
    assert estimate_scale(None, result, bf16=True) == (
        1.0,
        "estimates unscaled: no estimates.reference_speed to compare this machine with",
    )
    assert estimate_scale(12_000, None, bf16=False) == (
        1.0,
        "estimates unscaled: they were measured on CPUs, and this machine trains on its GPU",
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU probe")
def test_the_plan_scales_the_default_estimates_to_this_machine_and_says_by_what(tmp_path, capsys):
    config = PipelineConfig.from_yaml(REPO / "recipes/default/pipeline.yaml", output_dir=str(tmp_path))
    data = data_files(tmp_path)
    configs = {name: stage_config(name, config, data, tmp_path) for name in runs(config)}
    plans = {name: RunPlan("skip" if name == "pretrain" else "run") for name in configs}
    estimates = dict(config.estimates)
    shapes = ProbeShapes()  # the default model's: the shapes reference_speed was measured at
    speed = probe(shapes).speed(default_bf16(shapes).bf16)  # the probe the plan reads, run once per process
    scale = estimates.pop("reference_speed") / speed
    capsys.readouterr()
    assert print_plan(config, configs, plans, None) == pytest.approx(scale)
    output = capsys.readouterr().out
    assert output.startswith("pipeline plan (times measured on 2 CPU cores, scaled to this machine):")
    assert (
        f"| midtrain | 4500 | ~{scale * estimates['midtrain'] / 60:.1f} min |" in output
        and "| pretrain | 300 | done |" in output
    )
    total = scale * (sum(estimates.values()) - estimates["pretrain"]) / 60
    assert f"total ≈ {total:.1f} min (estimates scaled ×{scale:.2f} by a {probe(shapes).seconds:.1f} s probe" in output
    del config.estimates["reference_speed"]  # then the plan says the estimates are as measured
    print_plan(config, configs, plans, None)
    output = capsys.readouterr().out
    assert output.startswith("pipeline plan (times measured on 2 CPU cores):")
    unscaled = (sum(estimates.values()) - estimates["pretrain"]) / 60
    assert f"total ≈ {unscaled:.1f} min (estimates unscaled: no estimates.reference_speed" in output


@pytest.mark.slow
def test_smoke_pipeline_killed_then_rerun_finishes_with_report_and_card(smoke_run):
    output_dir, output = smoke_run
    assert "pipeline: pretrain finished before, skipped" in output
    assert "pipeline: sft finished before, skipped" in output
    assert "| reward | 10 | ~0.2 min |" in output and "| evaluation |  | ~0.7 min |" in output  # the plan's estimates
    # after each stage that ran, the time left at the pace so far (the estimates of the stages that ran against
    # their times)
    assert re.search(
        r"pipeline: reward took \d+\.\d min \(estimated 0\.2\); at the pace so far \(×\d+\.\d\d the plan\) "
        r"≈ \d+\.\d min left",
        output,
    )

    comparison = json.loads((output_dir / "comparison.json").read_text())["results"]
    config = PipelineConfig.from_yaml(REPO / "recipes/smoke/pipeline.yaml")
    assert list(comparison) == [
        *("pretrain", "pretrain (3-shot)", "base_4x", "base_4x (3-shot)"),
        *("midtrain", "sft", "sft (best-of-4)", "ppo_no_ptx", "ppo", "dpo", "grpo"),
    ]
    assert list(comparison) == list(compared(config))
    assert comparison["base_4x"]["parameters"] >= 4 * comparison["ppo"]["parameters"]
    best_of_4, sft = comparison["sft (best-of-4)"], comparison["sft"]  # the SFT model, answering otherwise
    assert (best_of_4["parameters"], best_of_4["perplexity"]) == (sft["parameters"], sft["perplexity"])
    assert any(best_of_4["splits"][s]["answers"] != sft["splits"][s]["answers"] for s in SUITE_SPLITS)
    floors = {split: comparison["sft"]["splits"][split]["floor"] for split in SUITE_SPLITS}
    for model in comparison.values():
        assert set(model["splits"]) == set(SUITE_SPLITS) and model["perplexity"] > 1.0
        for split, scores in model["splits"].items():  # the keys docs/evaluation.md documents for scripts
            assert scores["examples"] == len(scores["correct"]) == 8  # the smoke YAML's limit
            assert scores["accuracy"] == sum(scores["correct"]) / 8
            assert scores["interval"][0] <= scores["accuracy"] <= scores["interval"][1]
            assert scores["floor"] == floors[split] and 0.0 <= scores["floor"] <= 1.0  # the same rows for every model
            assert set(scores["vs_sft"]) == {"difference", "interval", "p"} and 0.0 <= scores["vs_sft"]["p"] <= 1.0
            assert 0.0 <= scores["win_rate_vs_sft"] <= 1.0 and 0.0 <= scores["reward_model_win_rate_vs_sft"] <= 1.0
            assert sum(scores["family_examples"].values()) == 8
    for name, model in comparison.items():  # every held-out row as one set of prompts: the splits' verdicts joined
        correct = [verdict for split in SUITE_SPLITS for verdict in model["splits"][split]["correct"]]
        sft_correct = [verdict for split in SUITE_SPLITS for verdict in comparison["sft"]["splits"][split]["correct"]]
        assert model["pooled"]["accuracy"] == sum(correct) / 24
        assert model["pooled"]["vs_sft"] == paired_difference(correct, sft_correct), name
        assert model["pooled"]["pairs_vs_sft"] == sum(model["splits"][s]["pairs_vs_sft"] for s in SUITE_SPLITS)
    for split in SUITE_SPLITS:  # SFT against itself: no difference, every answer the same
        sft = comparison["sft"]["splits"][split]
        assert sft["vs_sft"] == {"difference": 0.0, "interval": [0.0, 0.0], "p": 1.0} and sft["pairs_vs_sft"] == 0
        assert sft["win_rate_vs_sft"] == sft["reward_model_win_rate_vs_sft"] == 0.5
    report = (output_dir / "report.md").read_text()
    assert all(f"| {name} |" in report for name in comparison) and (output_dir / "accuracy.png").is_file()
    assert "| floor (best trivial rule per family) |  | " in report and "| entities (8 rows) |" in report
    sft = comparison["sft"]["splits"]["held_out_entities"]
    low, high = sft["interval"]
    assert (
        f"| sft | {comparison['sft']['parameters'] / 1e6:.2f} M | {sft['accuracy']:.3f} [{low:.3f}, {high:.3f}] |"
        in (report)
    )
    assert "### all held-out splits pooled" in report
    assert "## Against SFT, on the same prompts" in report and "| sft | +0.000 [+0.000, +0.000] | 1 | 0.500 | 0 |" in (
        report
    )
    for family, rows in sft["family_examples"].items():  # each per-family figure shows the rows it rests on
        assert f"| {family} ({rows}) | {sft['floor_per_family'][family]['floor']:.2f} (" in report
    assert "The final model (PPO-ptx, " in report and "against base_4x (" in report
    assert "sft (best-of-4): the SFT model samples 4 answers to each prompt (temperature 1.0, seed 42)" in report
    ceiling = " / ".join(f"{best_of_4['splits'][split]['any_sample_correct']:.3f}" for split in SUITE_SPLITS)
    assert f"A reward model that always picked a right sample would reach {ceiling} (entities, " in report
    for split in SUITE_SPLITS:  # the kept sample is one of the 4: right whenever no sample is, at most
        assert best_of_4["splits"][split]["accuracy"] <= best_of_4["splits"][split]["any_sample_correct"]
    assert "| grpo wall time |" in report
    assert "## Sample answers" in report and "| seed | 42 |" in report
    assert f"| suite | {config.suite_config().describe()} |" in report  # the suite's own seed and sizes
    card = ModelCard.load(output_dir / "ppo" / "README.md")
    assert {"pretrain", "sft", "ppo"} <= set(card.data.tags)
    assert "suite_accuracy/held_out_entities" in card.text
    assert all((output_dir / name / "all_results.json").is_file() for name in runs(config))


def file_states(folder):
    """Each file's content hash and modification time: a file rewritten with the same bytes counts as changed too."""
    files = [path for path in sorted(folder.rglob("*")) if path.is_file()]
    return {
        str(path.relative_to(folder)): (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
        for path in files
    }


@pytest.mark.slow
def test_a_rerun_of_a_finished_pipeline_leaves_every_file_byte_identical(smoke_run):
    output_dir, _ = smoke_run
    before = file_states(output_dir)
    rerun = subprocess.run(smoke_pipeline(output_dir), cwd=REPO, env=CLI_ENV, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    assert file_states(output_dir) == before


@pytest.mark.slow
def test_push_to_hub_publishes_the_final_model_under_the_tokens_user(smoke_run, hub_server, tmp_path):
    output_dir, _ = smoke_run
    command = [*smoke_pipeline(output_dir), "--push_to_hub", "--hub_model_id", "smoke-final"]
    env = {**hub_env(hub_server, tmp_path / "home"), "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    rerun = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    repo = hub_server.repo("user/smoke-final")  # a name without a namespace: the token's user
    assert {"model.safetensors", "README.md"} <= set(repo["files"])
    assert repo["commits"][-1]["message"] == "hf-instruct pipeline: PPO-ptx"


@pytest.mark.slow
def test_a_stage_whose_model_is_gone_runs_again_and_a_changed_model_is_compared_again(smoke_run):
    output_dir, _ = smoke_run
    (output_dir / "dpo" / "model.safetensors").unlink()
    problem = saved_model_problem(output_dir / "dpo")
    weights = output_dir / "ppo_no_ptx" / "model.safetensors"  # replaced by another model of the same shape
    save_file({name: tensor + 0.01 for name, tensor in load_file(weights).items()}, weights, metadata={"format": "pt"})
    before = json.loads((output_dir / "comparison.json").read_text())

    rerun = subprocess.run(smoke_pipeline(output_dir), cwd=REPO, env=CLI_ENV, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    output = rerun.stderr + rerun.stdout
    assert f"pipeline: dpo is incomplete ({problem}); running it again" in output
    estimates = PipelineConfig.from_yaml(REPO / "recipes/smoke/pipeline.yaml").estimates
    assert f"total ≈ {(estimates['dpo'] + estimates['evaluation']) / 60:.1f} min" in output  # what is left to run
    assert "pipeline: ppo_no_ptx finished before, skipped" in output
    assert saved_model_problem(output_dir / "dpo") is None
    after = json.loads((output_dir / "comparison.json").read_text())
    assert after["models"]["ppo_no_ptx"] != before["models"]["ppo_no_ptx"]
    assert after["models"] == {name: fingerprint(output_dir / name) for name in after["models"]}


@pytest.mark.parametrize(
    "section, run, fields, message",
    [
        ("stages", "sft", {"max_stepz": 5}, "stages.sft: unknown key 'max_stepz' (did you mean 'max_steps'?)."),
        (
            "baselines",
            "base_4x",
            {"max_stepz": 5},
            "baselines.base_4x: unknown key 'max_stepz' (did you mean 'max_steps'?).",
        ),
        ("stages", "sft", {"max_steps": "abc"}, "stages.sft: max_steps: 'abc' is not valid: expected an integer."),
        (
            "stages",
            "reward",
            {"learning_rate": "fast"},
            "stages.reward: learning_rate: 'fast' is not valid: expected a number.",
        ),
        (
            "stages",
            "dpo",
            {"save_strategy": "sometimes"},
            "stages.dpo: save_strategy: 'sometimes' is not valid: expected one of no, steps, epoch, best.",
        ),
        ("stages", "sfft", {}, "stages: unknown run 'sfft' (did you mean 'sft'?)"),
        ("estimates", "sfft", {}, "estimates: unknown run 'sfft' (did you mean 'sft'?)"),
        (  # a stage recipe with a typo: its file is named too
            "stages",
            "sft",
            {"config": "recipe.yaml"},
            "stages.sft (config: {folder}/recipe.yaml): unknown key 'max_stepz' (did you mean 'max_steps'?).",
        ),
        ("stages", "sft", {"config": "missing.yaml"}, "stages.sft (config: {folder}/missing.yaml): no such file."),
        (
            "stages",
            "sft",
            {"config": "list.yaml"},
            "stages.sft (config: {folder}/list.yaml): must be a YAML mapping of field: value.",
        ),
    ],
)
def test_a_bad_stage_field_is_one_line_naming_file_and_stage_before_anything_is_written(
    section, run, fields, message, tmp_path, capsys
):
    values = yaml.safe_load((REPO / "recipes/smoke/pipeline.yaml").read_text())
    values[section][run] = {**values[section].get(run, {}), **fields}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(values))
    (tmp_path / "recipe.yaml").write_text("max_stepz: 5\n")
    (tmp_path / "list.yaml").write_text("- max_steps: 5\n")
    with pytest.raises(SystemExit) as exit:
        main(["pipeline", "--config", str(path), "--output_dir", str(tmp_path / "run")])
    assert exit.value.code == 1
    message = message.format(folder=tmp_path)
    assert capsys.readouterr().err.splitlines()[0] == f"hf-instruct pipeline: {path}: {message}"
    assert not (tmp_path / "run").exists()


def test_the_default_pipeline_scores_every_held_out_row():
    config = PipelineConfig.from_yaml(REPO / "recipes/default/pipeline.yaml")
    assert "limit" not in config.evaluation  # compare_models then scores all rows of each split (300 by default)


def test_the_default_setup_is_what_the_readme_says():
    config = yaml.safe_load((REPO / "recipes/default/pipeline.yaml").read_text())
    suite = PipelineConfig.from_yaml(REPO / "recipes/default/pipeline.yaml").suite_config()
    stages = config["stages"]
    model = stages["pretrain"]["model_config"]
    estimate = sum(seconds for name, seconds in config["estimates"].items() if name != "reference_speed")
    sentence = (
        f"a {suite.corpus_mb} MB corpus about {suite.num_entities} invented entities, {suite.sft_examples} "
        f"demonstrations (writers' mistakes x{suite.demonstration_flaws:g}), {suite.comparison_prompts} prompts for "
        f"collecting comparisons, {suite.rl_prompts} RL prompts and {suite.held_out_examples} examples per held-out "
        f"split; a {model['num_hidden_layers']}-layer, {model['hidden_size']}-wide model pretrained for "
        f"{stages['pretrain']['max_steps']} steps on raw text and midtrained for {stages['midtrain']['max_steps']} "
        f"steps with {stages['midtrain']['instruction_share']:.0%} instruction conversations; "
        f"about {round(estimate / 60)} minutes on 2 CPU cores"
    )
    assert sentence in " ".join((REPO / "README.md").read_text().split())
