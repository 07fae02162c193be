"""Recipes and stages: every YAML parses, the CLI, clear errors, the README chain, resume after SIGKILL, DDP."""

import argparse
import dataclasses
import json
import os
import re
import runpy
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from accelerate.commands.config.config_args import load_config_from_file
from conftest import (
    CLI_ENV,
    REPO,
    SMOKE_TRAINING,
    TEXT,
    TINY_MODEL,
    deepspeed_stage,
    needs_shared,
    tiny_llama_config,
    torchrun_stage,
)
from peft import AutoPeftModelForCausalLM
from safetensors.torch import load_file
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    GenerationConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaForCausalLM,
)
from trl import DPOTrainer

import hf_instruct
from hf_instruct import InstructGPTForCausalLM
from hf_instruct.cli import build_parser, main
from hf_instruct.stages import (
    STAGES,
    DPOStageConfig,
    GRPOStageConfig,
    PretrainStageConfig,
    RewardStageConfig,
    SFTStageConfig,
    parse_config,
    run_dpo,
    run_grpo,
    run_pretrain,
    run_reward,
    run_sft,
)
from hf_instruct.stages import dpo as dpo_stage
from hf_instruct.stages import loading as loading_stage
from hf_instruct.stages.reward import mean_reward

RECIPE_CONFIGS = sorted(REPO.glob("recipes/*/*/config.yaml"))
ACCELERATE_CONFIGS = sorted(REPO.glob("recipes/accelerate/*.yaml"))


def cli(*args: str, cwd: Path = REPO, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "hf_instruct.cli", *args],
        cwd=cwd,
        env=CLI_ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


# ---------------------------------------------------------------- recipes never rot


def test_there_are_recipes_for_every_setup_and_stage():
    names = {(p.parent.parent.name, p.parent.name) for p in RECIPE_CONFIGS}
    for setup in ("tiny", "gutenberg-dolly", "gpu-125m"):
        assert {(setup, "pretrain"), (setup, "sft")} <= names
    for setup in ("tiny", "gutenberg-dolly"):
        assert {(setup, stage) for stage in ("reward", "ppo", "dpo", "grpo")} <= names
    assert {p.name for p in ACCELERATE_CONFIGS} == {
        "ddp.yaml",
        "fsdp.yaml",
        "deepspeed_zero2.yaml",
        "deepspeed_zero3.yaml",
    }


@pytest.mark.parametrize("path", RECIPE_CONFIGS, ids=lambda p: f"{p.parent.parent.name}/{p.parent.name}")
def test_every_recipe_parses_into_its_config_class(path, tmp_path):
    config_class = STAGES[path.parent.name].config_class
    config = parse_config(config_class, ["--config", str(path), "--output_dir", str(tmp_path)])
    assert isinstance(config, config_class)
    for key, value in yaml.safe_load(path.read_text()).items():
        if key in ("output_dir", "report_to"):
            continue  # overridden above / resolved for this machine
        actual = getattr(config, key)
        actual = getattr(actual, "value", actual)  # enums such as lr_scheduler_type
        assert actual == value, key


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=lambda p: p.stem)
def test_accelerate_configs_load(path):
    config = load_config_from_file(str(path))
    expected = {"ddp": "MULTI_GPU", "fsdp": "FSDP", "deepspeed_zero2": "DEEPSPEED", "deepspeed_zero3": "DEEPSPEED"}
    assert config.distributed_type.value == expected[path.stem]


# ---------------------------------------------------------------- the command


def test_console_script_version():
    proc = subprocess.run(["hf-instruct", "--version"], env=CLI_ENV, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == f"hf-instruct {hf_instruct.__version__}"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--help"], ["pretrain", "sft"]),
        (["pretrain", "--help"], ["--block_size", "--model_config"]),
        (["sft", "--help"], ["--sft_backend", "--use_peft", "--assistant_only_loss"]),
    ],
)
def test_cli_help(capsys, args, expected):
    with pytest.raises(SystemExit) as exit_code:
        main(args)
    assert exit_code.value.code == 0
    out = capsys.readouterr().out
    assert all(word in out for word in expected)


def commands() -> list[str]:
    (subcommands,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return list(subcommands.choices)


@pytest.mark.parametrize("command", commands())
def test_every_command_prints_its_help(command, capsys):
    """argparse formats help strings with %: one bare percent sign in a field's help broke `hf-instruct ppo --help`."""
    with pytest.raises(SystemExit) as exit_code:
        main([command, "--help"])
    assert exit_code.value.code == 0
    assert re.match(rf"usage: hf-instruct {command} ", capsys.readouterr().out, re.IGNORECASE)  # serve's is typer's


@pytest.mark.parametrize("stage", STAGES)
def test_a_recipe_script_is_its_stage_command(stage, tmp_path, monkeypatch, capsys):
    """`python recipes/<stage>.py ...` (what `accelerate launch` runs) is `hf-instruct <stage> ...`: the same parser
    and the same one-line errors."""
    monkeypatch.setattr(sys, "argv", [f"recipes/{stage}.py", "--config", str(tmp_path / "missing.yaml")])
    with pytest.raises(SystemExit) as exit_code:
        runpy.run_path(str(REPO / "recipes" / f"{stage}.py"), run_name="__main__")
    assert exit_code.value.code == 1
    assert f"hf-instruct {stage}: --config {tmp_path / 'missing.yaml'}: no such file" in capsys.readouterr().err


# ---------------------------------------------------------------- clear errors


def sft_config(model_dir: Path, data: Path, output_dir: Path, **overrides) -> SFTStageConfig:
    args = dict(
        model_name_or_path=str(model_dir),
        train_files=[str(data)],
        output_dir=str(output_dir),
        max_steps=3,
        per_device_train_batch_size=4,
        eval_examples=4,
        max_length=64,
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        report_to="none",
    )
    return SFTStageConfig(**{**args, **overrides})


def test_missing_config_and_data_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="--config nowhere.yaml: no such file"):
        parse_config(PretrainStageConfig, ["--config", "nowhere.yaml"])
    config = PretrainStageConfig(train_files=[str(tmp_path / "missing.txt")], output_dir=str(tmp_path / "out"))
    with pytest.raises(FileNotFoundError, match="missing.txt: no such file or folder"):
        run_pretrain(config)
    with pytest.raises(ValueError, match="Set --train_files"):
        PretrainStageConfig(output_dir=str(tmp_path / "out"))


def test_sft_refuses_a_tokenizer_without_chat_template(tmp_path, tiny_model_dir, instructions):
    config_path = tiny_model_dir / "tokenizer_config.json"
    (tiny_model_dir / "chat_template.jinja").unlink()
    config_path.write_text(
        json.dumps({k: v for k, v in json.loads(config_path.read_text()).items() if k != "chat_template"})
    )
    with pytest.raises(ValueError, match="has no chat template"):
        run_sft(sft_config(tiny_model_dir, instructions, tmp_path / "sft"))


def test_an_output_dir_holding_another_run_is_refused(tmp_path, tiny_model_dir, instructions):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds files that are not an hf-instruct run"):
        run_sft(sft_config(tiny_model_dir, instructions, foreign))
    previous = tmp_path / "previous"
    previous.mkdir()
    (previous / "hf_instruct_run.json").write_text('{"stage": "pretrain"}')
    with pytest.raises(ValueError, match="holds a pretrain run; a sft run would mix with it"):
        run_sft(sft_config(tiny_model_dir, instructions, previous))


def test_continued_pretraining_keeps_the_models_tokenizer(tmp_path, tiny_model_dir):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT * 40)
    config = PretrainStageConfig(
        model_name_or_path=str(tiny_model_dir),
        train_files=[str(corpus)],
        output_dir=str(tmp_path / "continued"),
        block_size=32,
        eval_blocks=4,
        max_steps=2,
        per_device_train_batch_size=4,
        save_strategy="no",
        disable_tqdm=True,
        report_to="none",
    )
    output_dir = Path(run_pretrain(config))
    assert (output_dir / "tokenizer.json").read_text() == (tiny_model_dir / "tokenizer.json").read_text()
    assert f"| base model | {tiny_model_dir} |" in (output_dir / "README.md").read_text()


# ---------------------------------------------------------------- SFT variants


@pytest.mark.parametrize(
    "overrides",
    [{}, {"use_peft": True}, {"sft_backend": "collator", "padding_free": True}],
    ids=["trl", "trl-lora", "collator-padding-free"],
)
def test_sft_variants_train_and_save(tmp_path, tiny_model_dir, instructions, overrides):
    output_dir = run_sft(sft_config(tiny_model_dir, instructions, tmp_path / "sft", learning_rate=3e-3, **overrides))
    results = json.loads((Path(output_dir) / "all_results.json").read_text())
    assert results["eval_loss"] < results["eval_loss_before_training"]
    files = set(os.listdir(output_dir))
    assert {"README.md", "tokenizer.json", "chat_template.jinja", "hf_instruct_run.json"} <= files
    assert ("adapter_model.safetensors" in files) is bool(overrides.get("use_peft"))
    card = (Path(output_dir) / "README.md").read_text()
    assert "### 1. sft" in card and "None" not in card
    if not overrides.get("use_peft"):  # chat generation stops at <|im_end|> (id 4) as well as at <|endoftext|>
        assert GenerationConfig.from_pretrained(output_dir).eos_token_id == [2, 4]


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_sft_tunes_any_causal_lm(tmp_path, tokenizer, instructions, architecture):
    """Stock Llama and GPT-2 checkpoints (built locally: no downloads) go through the same stage."""
    if architecture == "llama":
        model = LlamaForCausalLM(tiny_llama_config())
    else:
        model = GPT2LMHeadModel(GPT2Config(vocab_size=320, n_positions=128, n_embd=64, n_layer=2, n_head=4))
    model.save_pretrained(tmp_path / architecture)
    tokenizer.save_pretrained(tmp_path / architecture)
    output_dir = run_sft(sft_config(tmp_path / architecture, instructions, tmp_path / "sft", learning_rate=3e-3))
    results = json.loads((Path(output_dir) / "all_results.json").read_text())
    assert results["eval_loss"] < results["eval_loss_before_training"]
    assert type(AutoModelForCausalLM.from_pretrained(output_dir)) is type(model)


# ---------------------------------------------------------------- reward model


def test_reward_model_learns_an_obvious_preference_and_centres_on_demonstrations(tmp_path, tiny_model_dir):
    """Polite answers beat rude ones: > 90 % held-out pairwise accuracy; demonstrations then score 0 on average."""
    topics = ["the sea", "a fox", "the moon", "bread", "music", "rain", "a river", "the city", "tea", "stars"]
    rows = [
        {
            "prompt": f"Tell me about {topic}, round {i}.",
            "chosen": f"Thank you for asking about {topic}, gladly.",
            "rejected": f"Go away, {topic} bores me.",
        }
        for i in range(12)
        for topic in topics
    ]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    demonstrations = tmp_path / "demos.jsonl"
    demonstrations.write_text(
        "".join(json.dumps({"prompt": r["prompt"], "completion": r["chosen"]}) + "\n" for r in rows)
    )
    config = RewardStageConfig(
        model_name_or_path=str(tiny_model_dir),
        train_files=[str(pairs)],
        demonstration_files=[str(demonstrations)],
        max_demonstrations=32,
        output_dir=str(tmp_path / "reward"),
        eval_examples=40,
        max_steps=40,
        per_device_train_batch_size=8,
        learning_rate=3e-3,
        max_length=256,
        logging_steps=10,
        save_strategy="no",
        disable_tqdm=True,
        report_to="none",
        bf16=False,  # the centring tolerance is fp32's
    )
    output_dir = run_reward(config)
    results = json.loads((Path(output_dir) / "all_results.json").read_text())
    assert results["eval_accuracy"] > 0.9
    model = AutoModelForSequenceClassification.from_pretrained(output_dir)
    assert model.config.num_labels == 1 and model.config.pad_token_id == 0
    conversations = [
        [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["chosen"]}] for r in rows[:32]
    ]
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    assert abs(mean_reward(model, tokenizer, conversations) + model.config.reward_shift) < 1e-4
    with pytest.raises(ValueError, match="All 80 training comparisons are longer than max_length=16 tokens"):
        run_reward(dataclasses.replace(config, max_length=16, output_dir=str(tmp_path / "too-short")))


def test_dpo_moves_the_reward_margin_towards_the_chosen_answers(tmp_path, tiny_model_dir):
    rows = [
        {"prompt": f"Tell me about {topic}.", "chosen": "Thank you, gladly.", "rejected": "Go away."}
        for topic in ["the sea", "a fox", "the moon", "bread", "music", "rain", "a river", "tea"] * 6
    ]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = DPOStageConfig(
        model_name_or_path=str(tiny_model_dir),
        train_files=[str(pairs)],
        output_dir=str(tmp_path / "dpo"),
        eval_examples=8,
        max_steps=10,
        per_device_train_batch_size=8,
        learning_rate=3e-3,
        max_length=128,
        logging_steps=5,
        save_strategy="no",
        disable_tqdm=True,
        report_to="none",
    )
    results = json.loads((Path(run_dpo(config)) / "all_results.json").read_text())
    assert results["eval_rewards/margins"] > 0.5 and results["eval_rewards/accuracies"] == 1.0


@pytest.mark.parametrize("stage", ["sft", "reward", "dpo"])
def test_stages_from_a_lora_sft_adapter_train_the_merged_sft_model(tmp_path, chain, stage, monkeypatch):
    """`hf-instruct sft --use_peft true` saves an adapter folder. `from_pretrained` on it gives the base with the
    adapted layers frozen, so a stage would move only embeddings and norms and save the adapter unchanged. Every stage
    starts from base + adapter merged, trains all its weights and saves a whole model; DPO's reference is the SFT
    model, not the base that TRL would reload from the merged model's `name_or_path`."""
    trainers = []

    class RecordedDPOTrainer(DPOTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            trainers.append(self)

    monkeypatch.setattr(dpo_stage, "DPOTrainer", RecordedDPOTrainer)
    root = chain["sft"].parent
    common = dict(
        SMOKE_TRAINING,
        model_name_or_path=str(chain["lora"]),
        output_dir=str(tmp_path / stage),
        eval_examples=0,
        max_length=64,
        learning_rate=1e-2,
    )
    data = root / ("instructions.jsonl" if stage == "sft" else "pairs.jsonl")
    output_dir = Path(STAGES[stage].run(STAGES[stage].config_class(train_files=[str(data)], **common)))
    assert not (output_dir / "adapter_config.json").exists()
    sft = AutoPeftModelForCausalLM.from_pretrained(chain["lora"]).merge_and_unload().state_dict()
    trained = load_file(output_dir / "model.safetensors")
    name = "model.layers.0.self_attn.q_proj.weight"  # an adapted layer
    assert trained[name].shape == sft[name].shape and (trained[name] - sft[name]).abs().max() > 1e-4
    if stage == "dpo":
        ids = torch.tensor([[5, 6, 7, 8, 9]])
        sft_model = AutoPeftModelForCausalLM.from_pretrained(chain["lora"]).merge_and_unload()
        with torch.no_grad():
            torch.testing.assert_close(trainers[-1].ref_model(input_ids=ids).logits, sft_model(input_ids=ids).logits)


@pytest.mark.parametrize("stage", ["dpo", "ppo"])
def test_a_lora_adapter_is_refused_under_deepspeed_zero3(tmp_path, chain, stage, monkeypatch):
    """ZeRO-3 shards the base weights as they load, so the adapter cannot be merged: one clear error, nothing run."""
    monkeypatch.setattr(loading_stage, "is_deepspeed_zero3_enabled", lambda: True)
    data = chain["sft"].parent / ("pairs.jsonl" if stage == "dpo" else "instructions.jsonl")
    extra = {"reward_model_path": str(chain["reward"]), "use_peft": True} if stage == "ppo" else {}
    config = STAGES[stage].config_class(
        model_name_or_path=str(chain["lora"]),
        train_files=[str(data)],
        eval_examples=0,
        output_dir=str(tmp_path / stage),
        **extra,
        **{**SMOKE_TRAINING, "max_steps": 1},
    )
    with pytest.raises(ValueError, match="is a LoRA adapter, which cannot be merged here under DeepSpeed ZeRO-3"):
        STAGES[stage].run(config)
    assert not (tmp_path / stage / "model.safetensors").exists()


def test_grpo_refuses_a_lora_adapter_it_cannot_reload_as_its_reference(tmp_path, chain):
    config = GRPOStageConfig(
        model_name_or_path=str(chain["lora"]),
        reward_model_path=str(chain["reward"]),
        beta=0.04,
        train_files=[str(chain["sft"].parent / "instructions.jsonl")],
        output_dir=str(tmp_path / "grpo"),
        eval_examples=0,
        num_generations=4,
        **{**SMOKE_TRAINING, "max_steps": 1},
    )
    with pytest.raises(ValueError, match=r"is a LoRA adapter: GRPOTrainer reloads its KL reference \(beta=0\.04\)"):
        run_grpo(config)
    assert not (tmp_path / "grpo" / "model.safetensors").exists()


# ---------------------------------------------------------------- end to end on the real data, as the README says


def readme_commands(stage: str) -> set[str]:
    """Every tiny-recipe command of `stage` in the README (the tiny chain of its section on the stages)."""
    readme = (REPO / "README.md").read_text()
    pattern = rf"hf-instruct {stage} --config recipes/tiny/{stage}/config\.yaml(?: --\w+ [^\s&]+)*"
    return set(re.findall(pattern, readme))


@needs_shared
@pytest.mark.slow
def test_readme_tiny_chain_on_real_data(tmp_path):
    """Every tiny-recipe command of the README, in order, on the shared data: pretrain → SFT → reward → PPO, DPO,
    GRPO (the README's paths replaced by this test's folders; the stages after SFT run 10 steps, not their 20-40)."""
    lines = {stage: readme_commands(stage) for stage in ("pretrain", "sft", "reward", "ppo", "dpo", "grpo")}
    assert all(len(found) == 1 for found in lines.values()), lines
    args = {stage: found.pop().split()[1:] for stage, found in lines.items()}
    runs = {stage: tmp_path / stage for stage in args}
    quiet, short = ("--disable_tqdm", "true"), ("--max_steps", "10")
    cli(*args["pretrain"], "--output_dir", str(runs["pretrain"]), *quiet)
    pretrained = json.loads((runs["pretrain"] / "all_results.json").read_text())
    assert pretrained["eval_perplexity"] < 400  # a uniform guess over the 2048-token vocabulary scores 2048
    sft = ("--model_name_or_path", str(runs["sft"]))
    cli(*args["sft"], "--model_name_or_path", str(runs["pretrain"]), "--output_dir", str(runs["sft"]), *quiet)
    tuned = json.loads((runs["sft"] / "all_results.json").read_text())
    assert tuned["eval_loss"] < tuned["eval_loss_before_training"] - 0.3  # held-out Dolly answers
    assert InstructGPTForCausalLM.from_pretrained(runs["sft"]).config.vocab_size == 2048
    cli(*args["reward"], *sft, "--output_dir", str(runs["reward"]), *quiet, *short)
    rewarded = json.loads((runs["reward"] / "all_results.json").read_text())
    assert 0.0 <= rewarded["eval_accuracy"] <= 1.0 and "eval_perplexity" not in rewarded
    assert isinstance(json.loads((runs["reward"] / "config.json").read_text())["reward_shift"], float)

    reward = ("--reward_model_path", str(runs["reward"]))
    cli(*args["ppo"], *sft, *reward, "--output_dir", str(runs["ppo"]), *quiet, *short)
    optimised = json.loads((runs["ppo"] / "all_results.json").read_text())
    assert {"eval_reward_before_training", "eval_reward", "eval_kl"} <= set(optimised)
    assert (runs["ppo"] / "samples.jsonl").read_text().count("\n") == 2 * 4  # 4 answers at steps 0 and 5
    cli(*args["dpo"], *sft, "--output_dir", str(runs["dpo"]), *quiet, *short)
    assert "eval_rewards/margins" in json.loads((runs["dpo"] / "all_results.json").read_text())
    cli(*args["grpo"], *sft, *reward, "--output_dir", str(runs["grpo"]), *quiet, *short)
    history = json.loads((runs["grpo"] / "trainer_state.json").read_text())["log_history"]
    assert sum("reward" in entry for entry in history) == 2  # logged every 5 of 10 steps
    for stage in ("ppo", "dpo", "grpo"):
        assert AutoModelForCausalLM.from_pretrained(runs[stage]).config.vocab_size == 2048, stage


# ---------------------------------------------------------------- fault tolerance: SIGKILL, re-run, same weights

RESUME_ARGS = [
    "pretrain",
    "--config",
    "recipes/tiny/pretrain/config.yaml",
    "--max_steps",
    "24",
    "--save_steps",
    "8",
    "--eval_blocks",
    "8",
    "--disable_tqdm",
    "true",
    "--logging_steps",
    "4",
]


@needs_shared
@pytest.mark.slow
def test_a_killed_run_resumes_to_the_same_weights(tmp_path):
    """Kill -9 after the first checkpoint, run the same command again: the final weights equal an uninterrupted run.

    Exact equality (to 1e-6) holds because resuming restores optimizer, scheduler, RNG states and the data position,
    and one CPU process computes deterministically.
    """
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    cli(*RESUME_ARGS, "--output_dir", str(reference))

    command = [sys.executable, "-m", "hf_instruct.cli", *RESUME_ARGS, "--output_dir", str(interrupted)]
    proc = subprocess.Popen(command, cwd=REPO, env=CLI_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (interrupted / "checkpoint-8" / "trainer_state.json").exists():
        assert proc.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.05)
    time.sleep(0.5)  # let the checkpoint finish writing
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (interrupted / "model.safetensors").exists()  # it really died before the end

    result = cli(*RESUME_ARGS, "--output_dir", str(interrupted))
    assert f"pretrain: resuming from {interrupted / 'checkpoint-8'}" in result.stderr
    expected = load_file(reference / "model.safetensors")
    actual = load_file(interrupted / "model.safetensors")
    for name, tensor in expected.items():
        torch.testing.assert_close(actual[name], tensor, atol=1e-6, rtol=0, msg=name)


# ---------------------------------------------------------------- multi-process: 2-process gloo DDP on CPU


@needs_shared
@pytest.mark.slow
def test_torchrun_two_process_ddp_ends_with_identical_weights(tmp_path):
    output_dir = tmp_path / "ddp"
    torchrun_stage(
        "pretrain",
        "--config",
        "recipes/tiny/pretrain/config.yaml",
        "--output_dir",
        str(output_dir),
        "--max_steps",
        "6",
        "--save_strategy",
        "no",
        "--eval_blocks",
        "8",
        "--disable_tqdm",
        "true",
        tmp_path=tmp_path,
    )
    assert (output_dir / "model.safetensors").exists()


@pytest.mark.skipif(shutil.which("deepspeed") is None, reason="the [deepspeed] extra is not installed")
@pytest.mark.slow
@pytest.mark.parametrize("zero", [2, 3])
def test_deepspeed_zero_on_cpu(tmp_path, zero, deepspeed_env):
    """The shipped ZeRO-2/3 accelerate configs train a stock-Trainer stage on 2 CPU processes (both ranks report the
    ZeRO stage) and save whole weights (gathered from the shards under ZeRO-3)."""
    corpus, output_dir = tmp_path / "corpus.txt", tmp_path / f"zero{zero}"
    corpus.write_text(TEXT * 40)
    deepspeed_stage(
        "pretrain",
        zero,
        "--train_files",
        str(corpus),
        "--vocab_size",
        "300",
        "--block_size",
        "32",
        "--eval_blocks",
        "4",
        "--model_config",
        json.dumps(TINY_MODEL),
        "--output_dir",
        str(output_dir),
        "--max_steps",
        "4",
        "--per_device_train_batch_size",
        "4",
        "--save_strategy",
        "no",
        "--disable_tqdm",
        "true",
        "--report_to",
        "none",
        tmp_path=tmp_path,
        env=deepspeed_env,
    )
    config = json.loads((output_dir / "config.json").read_text())
    embeddings = load_file(output_dir / "model.safetensors")["model.embed_tokens.weight"]
    assert embeddings.shape == (config["vocab_size"], config["hidden_size"])
