"""Never lose a finished model, never train the wrong thing silently, and every stage error is one clear line."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TEXT, TINY_MODEL, flags
from safetensors.torch import load_file
from transformers import AutoTokenizer

from hf_instruct.cli import main
from hf_instruct.stages import PretrainStageConfig, SFTStageConfig, run_pretrain, run_sft

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "hf_instruct_run.json")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(TEXT * 40)
    return path


def pretrain_config(corpus: Path, output_dir: Path, **overrides) -> PretrainStageConfig:
    """Six steps of a tiny model, a checkpoint every two (all kept)."""
    fields = dict(
        train_files=[str(corpus)],
        output_dir=str(output_dir),
        vocab_size=300,
        block_size=32,
        eval_blocks=4,
        model_config=TINY_MODEL,
        max_steps=6,
        save_steps=2,
        per_device_train_batch_size=4,
        learning_rate=3e-3,
        logging_steps=1,
        disable_tqdm=True,
        report_to="none",
    )
    return PretrainStageConfig(**{**fields, **overrides})


@pytest.fixture(scope="module")
def finished(tmp_path_factory, corpus) -> Path:
    """A finished run: checkpoints 2, 4 and 6 and the final model."""
    output_dir = tmp_path_factory.mktemp("finished") / "run"
    run_pretrain(pretrain_config(corpus, output_dir))
    return output_dir


def digests(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def assert_same_weights(actual: Path, expected: Path) -> None:
    expected_tensors, actual_tensors = (
        load_file(expected / "model.safetensors"),
        load_file(actual / "model.safetensors"),
    )
    assert expected_tensors.keys() == actual_tensors.keys()
    for name, tensor in expected_tensors.items():
        torch.testing.assert_close(actual_tensors[name], tensor, atol=1e-6, rtol=0, msg=name)


def global_step(output_dir: Path) -> int:
    return json.loads((output_dir / "trainer_state.json").read_text())["global_step"]


# ---------------------------------------------------------------- a finished run is never retrained


def test_rerunning_a_finished_run_changes_no_file_and_more_steps_continue_it(tmp_path, corpus, finished, caplog):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    before = digests(run)
    run_pretrain(pretrain_config(corpus, run))
    assert digests(run) == before
    assert "holds a finished pretrain run; nothing to do" in caplog.text

    run_pretrain(pretrain_config(corpus, run, max_steps=8))  # asked for more: resumes from the last checkpoint
    assert global_step(run) == 8
    assert json.loads((run / "hf_instruct_run.json").read_text())["history"][-1]["steps"] == 8


def test_rerunning_a_finished_sft_run_changes_no_file(tmp_path, finished, instructions, caplog):
    config = lambda: SFTStageConfig(  # noqa: E731
        model_name_or_path=str(finished),
        train_files=[str(instructions)],
        output_dir=str(tmp_path / "sft"),
        max_steps=2,
        save_steps=1,
        eval_examples=4,
        max_length=64,
        per_device_train_batch_size=4,
        disable_tqdm=True,
        report_to="none",
    )
    run_sft(config())
    before = digests(tmp_path / "sft")
    run_sft(config())
    assert digests(tmp_path / "sft") == before
    assert "holds a finished sft run; nothing to do" in caplog.text


def test_a_run_stopped_after_its_last_checkpoint_is_finished_from_it_without_training_on(tmp_path, corpus, finished):
    """Killed after the final checkpoint but before the model was saved (or the model deleted): the Trainer alone
    would train one step past max_steps; the stage restores the checkpoint instead."""
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / "model.safetensors").unlink()
    run_pretrain(pretrain_config(corpus, run))
    assert global_step(run) == 6
    assert_same_weights(run, finished)


def test_a_new_run_trains_its_own_tokenizer_where_a_failed_run_left_one(tmp_path, corpus):
    run = tmp_path / "run"
    one_line = tmp_path / "one_line.txt"
    one_line.write_text("A single short line.\n")
    with pytest.raises(ValueError):
        run_pretrain(pretrain_config(one_line, run))
    stale = len(AutoTokenizer.from_pretrained(run))  # the failed run left its tokenizer behind
    run_pretrain(pretrain_config(corpus, run, max_steps=1, save_strategy="no"))
    assert len(AutoTokenizer.from_pretrained(run)) > stale + 20


# ---------------------------------------------------------------- resume only from a complete checkpoint


def keep_only(path: Path, names: tuple[str, ...]) -> None:
    for child in path.iterdir():
        if child.name not in names:
            shutil.rmtree(child) if child.is_dir() else child.unlink()


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


BREAKAGES = {  # how a kill (or a careless copy) leaves checkpoint-4 -> why it is skipped
    "only config": (lambda c: keep_only(c, ("config.json",)), "no trainer_state.json"),
    "no trainer state": (lambda c: (c / "trainer_state.json").unlink(), "no trainer_state.json"),
    "truncated weights": (lambda c: truncate(c / "model.safetensors"), "model.safetensors is truncated"),
    "no optimizer": (lambda c: (c / "optimizer.pt").unlink(), "no optimizer.pt: resuming from it would restart"),
}


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_resume_skips_an_incomplete_checkpoint_and_still_ends_with_the_same_weights(
    tmp_path, corpus, finished, breakage, caplog
):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    keep_only(run, ("checkpoint-2", "checkpoint-4", *TOKENIZER_FILES))  # killed while writing checkpoint-4
    break_it, reason = BREAKAGES[breakage]
    break_it(run / "checkpoint-4")

    run_pretrain(pretrain_config(corpus, run))
    err = caplog.text
    assert f"skipped {run / 'checkpoint-4'}: {reason}" in err
    assert f"resuming from {run / 'checkpoint-2'}" in err
    assert "missing keys" not in err  # the tied LM head is not saved, and that is no reason to warn
    assert (run / "incomplete-checkpoint-4").is_dir()
    assert_same_weights(run, finished)


def test_a_checkpoint_of_another_model_shape_is_refused(tmp_path, corpus, finished):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    keep_only(run, ("checkpoint-2", *TOKENIZER_FILES))
    wider = {**TINY_MODEL, "hidden_size": 48}
    with pytest.raises(ValueError, match=r"checkpoint-2 holds a model of another shape than this run builds \(.*48"):
        run_pretrain(pretrain_config(corpus, run, model_config=wider))


# ---------------------------------------------------------------- every error: one line, exit 1, nothing written


@pytest.fixture
def recipe(tmp_path, corpus) -> Path:
    """A tiny pretrain recipe."""
    path = tmp_path / "config.yaml"
    fields = dict(
        train_files=[str(corpus)],
        vocab_size=300,
        block_size=32,
        eval_blocks=4,
        model_config=TINY_MODEL,
        max_steps=2,
        report_to="none",
        disable_tqdm=True,
    )
    path.write_text(yaml.safe_dump(fields))
    return path


def broken_model_dir(tmp_path: Path, finished: Path, how: str) -> Path:
    folder = tmp_path / "model"
    if how == "empty":
        folder.mkdir()
    else:
        shutil.copytree(finished, folder)
        truncate(folder / "model.safetensors")
    return folder


STAGE_ERRORS = [  # (arguments after `--config <recipe> --output_dir <out>`, what the one line says)
    (["--learning_rate", "0"], "--learning_rate must be above 0, got 0.0"),
    (["--max_steps", "-5"], "--max_steps must be a number of steps above 0, or -1 to train for --num_train_epochs"),
    (["--max_steps", "0"], "--max_steps must be a number of steps above 0"),
    (["--max_steps", "-1", "--num_train_epochs", "0"], "--num_train_epochs must be above 0"),
    (["--per_device_train_batch_size", "0"], "--per_device_train_batch_size must be above 0, got 0"),
    (["--model_config", '{"num_hiden_layers": 2}'], "key 'num_hiden_layers' (did you mean 'num_hidden_layers'?)"),
    (["--model_config", '{"hidden_size": 30}'], "--model_config: `hidden_size` (30) must be divisible by"),
    (["--model_config", '{"hidden_size": "wide"}'], "--model_config: Field 'hidden_size' expected int, got str"),
    (["--model_name_or_path", "no/such/model"], "--model_name_or_path no/such/model: no such folder"),
    (["--tokenizer_name_or_path", "./nowhere"], "--tokenizer_name_or_path ./nowhere: no such folder"),
]


def run_cli(args: list[str], capsys) -> str:
    """`hf-instruct <args>` in this process: assert exit code 1, and return the error (one line plus the hint)."""
    with pytest.raises(SystemExit) as exit_code:
        main(args)
    assert exit_code.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[1] == "(set HF_INSTRUCT_DEBUG=1 for the traceback)", err
    return err[0]


@pytest.mark.parametrize(("args", "message"), STAGE_ERRORS, ids=[" ".join(args) for args, _ in STAGE_ERRORS])
def test_a_bad_setting_is_one_line_and_nothing_is_written(tmp_path, recipe, capsys, args, message):
    output_dir = tmp_path / "out"
    line = run_cli(["pretrain", "--config", str(recipe), "--output_dir", str(output_dir), *args], capsys)
    assert line.startswith("hf-instruct pretrain: ") and message in line, line
    assert not output_dir.exists()


CONFIG_FILE_ERRORS = [  # (a line appended to the recipe, what the one line says after the file's name)
    ("max_steps: abc", "max_steps: 'abc' is not valid: expected an integer."),
    ("max_steps: 1.5", "max_steps: 1.5 is not valid: expected an integer."),
    ("learning_rate: fast", "learning_rate: 'fast' is not valid: expected a number."),
    ("push_to_hub: maybe", "push_to_hub: 'maybe' is not valid: expected true or false."),
    ("sed: 42", "unknown key 'sed' (did you mean 'seed'?)."),
    ("eval_strategy: no", "eval_strategy: False is not valid: expected one of no, steps, epoch (YAML reads an"),
    ("lr_scheduler_type: cosin", "lr_scheduler_type: 'cosin' is not valid: expected one of linear, cosine,"),
    ("max_steps: [1", "expected ',' or ']', but got '<stream end>'"),
]


@pytest.mark.parametrize(("line", "message"), CONFIG_FILE_ERRORS, ids=[line for line, _ in CONFIG_FILE_ERRORS])
def test_a_bad_config_file_is_one_line_naming_the_file(tmp_path, recipe, capsys, line, message):
    recipe.write_text(recipe.read_text().replace("max_steps: 2\n", "") + line + "\n")
    output_dir = tmp_path / "out"
    error = run_cli(["pretrain", "--config", str(recipe), "--output_dir", str(output_dir)], capsys)
    assert error.startswith("hf-instruct pretrain: ") and str(recipe) in error and message in error, error
    assert not output_dir.exists()


def test_a_bad_command_line_value_is_one_line(tmp_path, recipe, capsys):
    args = ["pretrain", "--config", str(recipe), "--output_dir", str(tmp_path / "out"), "--max_steps", "abc"]
    error = run_cli(args, capsys)
    assert error == "hf-instruct pretrain: argument --max_steps/--max-steps: invalid int value: 'abc' (see --help)."


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("empty", "no config.json (or adapter_config.json): not a saved model"),
        ("truncated", "model.safetensors is truncated"),
    ],
)
def test_a_broken_model_folder_is_named(tmp_path, finished, instructions, capsys, how, message):
    model = broken_model_dir(tmp_path, finished, how)
    args = ["sft", *flags(model_name_or_path=model, train_files=instructions, output_dir=tmp_path / "out")]
    assert run_cli(args, capsys).startswith(f"hf-instruct sft: --model_name_or_path {model}: {message}")


def test_generate_names_truncated_weights(tmp_path, finished, capsys):
    model = broken_model_dir(tmp_path, finished, "truncated")
    line = run_cli(["generate", str(model), "--prompt", "Hi"], capsys)
    assert line.startswith(f"hf-instruct generate: {model}: model.safetensors is truncated (")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--prompt", "Hi", "--num_return_sequences", "0"], "--num_return_sequences must be at least 1, got 0."),
        (["--prompt", "Hi", "--num_return_sequences", "-2"], "--num_return_sequences must be at least 1, got -2."),
        (["--prompt", "Hi", "--max_new_tokens", "0"], "--max_new_tokens must be at least 1, got 0."),
        (["--prompt", "  "], "--prompt is empty: give the message to answer."),
    ],
    ids=["no answers", "a negative number of answers", "no new tokens", "a blank prompt"],
)
def test_generate_refuses_impossible_counts_and_empty_prompts(tmp_path, capsys, args, message):
    assert run_cli(["generate", str(tmp_path), *args], capsys) == f"hf-instruct generate: {message}"
