"""Never lose a finished model, never train the wrong thing silently, and every stage error is one clear line."""

import dataclasses
import hashlib
import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import SMOKE_TRAINING, TEXT, TINY_MODEL, flags, free_port, tiny_config
from huggingface_hub import constants
from safetensors.torch import load_file
from transformers import AutoTokenizer, TrainerCallback

from hf_instruct import InstructGPTForSequenceClassification
from hf_instruct.cli import main
from hf_instruct.hub import _operations
from hf_instruct.pipeline import PipelineConfig, run_pipeline
from hf_instruct.stages import (
    STAGES,
    PretrainStageConfig,
    RewardStageConfig,
    SFTStageConfig,
    run_pretrain,
    run_reward,
    run_sft,
)

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

    run_pretrain(pretrain_config(corpus, run, learning_rate=1e-3, warmup_steps=2))  # other settings: said, not done
    assert digests(run) == before
    assert (
        "holds a finished pretrain run; its settings differ from this command's (learning_rate 0.003 → 0.001, "
        "warmup_steps 0 → 2); nothing to do"
    ) in caplog.text

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
    "corrupted header": (  # a header size of 1 TiB: reading it raised MemoryError, and every re-run with it
        lambda c: corrupt_header(c / "model.safetensors"),
        "model.safetensors is not a safetensors file (its header is cut off or unreadable)",
    ),
}


def corrupt_header(path: Path) -> None:
    path.write_bytes(struct.pack("<Q", 1 << 40) + path.read_bytes()[8:])


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
        (truncate if how == "truncated" else corrupt_header)(folder / "model.safetensors")
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
    ("backend: trl", "unknown key 'backend' (see --help for the fields)."),  # not "did you mean 'ddp_backend'?"
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
        ("corrupted", "model.safetensors is not a safetensors file (its header is cut off or unreadable)"),
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


# ---------------------------------------------------------------- one run per folder, and a folder that is a file

# another run holding a folder: the lock `hf_instruct.staleness.lock_folder` takes (without importing the package)
LOCKER = "import fcntl, os, sys, time; fcntl.flock(os.open(sys.argv[1], 0), fcntl.LOCK_EX); print(1); time.sleep(99)"


def test_a_second_run_on_a_folder_in_use_is_refused(tmp_path, corpus, finished, caplog):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    other = subprocess.Popen([sys.executable, "-u", "-c", LOCKER, str(run)], stdout=subprocess.PIPE)
    try:
        assert other.stdout.readline() == b"1\n"  # another run holds the folder
        message = f"{run} is in use by another hf-instruct run (it holds the folder's lock): wait for it to end"
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            run_pretrain(pretrain_config(corpus, run))
        with pytest.raises(ValueError, match="is in use by another hf-instruct run"):
            run_pipeline(PipelineConfig(output_dir=str(run)))
    finally:
        other.kill()
        other.wait()
    run_pretrain(pretrain_config(corpus, run))  # the lock goes with the process that held it
    assert "holds a finished pretrain run; nothing to do" in caplog.text


def test_an_output_folder_that_is_a_file_is_one_line(tmp_path, recipe, capsys):
    path = tmp_path / "a_file"
    path.write_text("not a folder\n")
    line = run_cli(["pretrain", "--config", str(recipe), "--output_dir", str(path)], capsys)
    assert line == f"hf-instruct pretrain: --output_dir {path} is a file, not a folder: choose another --output_dir."
    line = run_cli(["pipeline", "--config", "recipes/smoke/pipeline.yaml", "--output_dir", str(path)], capsys)
    assert line == f"hf-instruct pipeline: output_dir {path} is a file, not a folder: choose another --output_dir."
    assert path.read_text() == "not a folder\n"


# ---------------------------------------------------------------- a reward model must be one


@pytest.fixture
def two_label_classifier(tmp_path, tokenizer) -> Path:
    path = tmp_path / "classifier"
    InstructGPTForSequenceClassification(tiny_config(num_labels=2)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


FIX = "pass a model trained by `hf-instruct reward` (a sequence classifier with one output, num_labels=1)."


@pytest.mark.parametrize("command", ["grpo", "ppo", "evaluate"])
def test_a_plain_language_model_is_refused_as_a_reward_model_everywhere(
    command, tiny_model_dir, two_label_classifier, instructions, tmp_path, capsys
):
    output_dir = tmp_path / "out"
    for model, problem in (
        (tiny_model_dir, "is a language model (InstructGPTForCausalLM), not a reward model (it has no score head)"),
        (two_label_classifier, "is a sequence classifier with 2 outputs, not a reward model (one score per text)"),
    ):
        if command == "evaluate":
            field = "--reward_model"
            args = ["evaluate", str(tiny_model_dir), "--data", str(instructions), "--reward_model", str(model)]
            args += flags(limit=1, max_new_tokens=1, output_dir=output_dir)
        else:  # PPO without the pretraining mix, so that no corpus is needed
            field, extra = "--reward_model_path", {"ptx_coef": 0} if command == "ppo" else {}
            args = [command, *flags(model_name_or_path=tiny_model_dir, reward_model_path=model, **extra)]
            args += flags(train_files=instructions, output_dir=output_dir, max_steps=1, report_to="none")
        assert run_cli(args, capsys) == f"hf-instruct {command}: {field} {model} {problem}: {FIX}"
        assert not output_dir.exists()


@pytest.mark.parametrize("command", ["evaluate", "generate"])
def test_a_missing_model_folder_is_named_as_missing(command, tmp_path, capsys):
    model = tmp_path / "runs" / "smoke" / "ppo"  # not "Repo id must be in the form 'repo_name' or ..."
    args = [command, str(model), *(["--prompt", "Hi"] if command == "generate" else ["--limit", "1"])]
    line = run_cli(args, capsys)
    assert line == f"hf-instruct {command}: {model}: no such folder (nor a Hub id such as 'org/name')."


def test_evaluate_writes_beside_the_model_not_into_it(tiny_model_dir, instructions, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", str(tiny_model_dir), "--data", str(instructions), *flags(limit=2, max_new_tokens=2)]) == 0
    assert not (tiny_model_dir / "eval").exists()
    results = json.loads((tmp_path / "base-eval" / "eval_results.json").read_text())
    assert results["splits"]["instructions"]["examples"] == 2


# ---------------------------------------------------------------- what TRL drops is counted; inputs checked first


def test_records_sft_drops_for_their_length_are_counted_and_said(tiny_model_dir, instructions, tmp_path, caplog):
    data = tmp_path / "with_a_long_record.jsonl"
    records = instructions.read_text().splitlines()
    long_record = {"instruction": "Repeat: " + "the lazy dog " * 400, "output": "No."}  # the prompt fills max_length
    data.write_text("\n".join([*records, json.dumps(long_record)]) + "\n")
    config = SFTStageConfig(
        model_name_or_path=str(tiny_model_dir),
        train_files=[str(data)],
        output_dir=str(tmp_path / "sft"),
        eval_examples=0,
        max_length=256,
        **{**SMOKE_TRAINING, "max_steps": 1},
    )
    run_sft(config)
    total = len(records) + 1
    assert (
        f"sft: 1 of {total} training records have a prompt that fills max_length=256 tokens, and SFTTrainer drops "
        f"such records, so they are left out ({total} → {total - 1} records): raise --max_length to keep them."
    ) in caplog.text


def test_the_reward_stage_reads_its_demonstrations_before_training(tiny_model_dir, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "".join(json.dumps({"prompt": f"Say {n}", "chosen": f"{n}", "rejected": "No."}) + "\n" for n in range(16))
    )
    demonstrations = tmp_path / "demonstrations.jsonl"
    demonstrations.write_text(json.dumps({"instruction": "Hi", "output": "Hello."}) + "\n" + '{"answer": 1}\n')
    config = RewardStageConfig(
        model_name_or_path=str(tiny_model_dir),
        train_files=[str(pairs)],
        demonstration_files=[str(demonstrations)],
        output_dir=str(tmp_path / "reward"),
        eval_examples=0,
        max_length=64,
        **{**SMOKE_TRAINING, "max_steps": 1, "save_strategy": "steps", "save_steps": 1},
    )
    with pytest.raises(ValueError, match=f"{demonstrations}.*line 2"):
        run_reward(config)
    assert not list((tmp_path / "reward").glob("checkpoint-*"))  # nothing was trained


def test_a_push_leaves_the_checkpoints_a_resume_skipped(finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / "checkpoint-6").rename(run / "incomplete-checkpoint-6")
    names = {operation.path_in_repo for operation in _operations(run, "user/run", None, None, None)}
    assert "model.safetensors" in names and not any("checkpoint" in name for name in names)


# ---------------------------------------------------------------- Ctrl-C, a full disk, an unreachable Hub: one line


class FailAtStep(TrainerCallback):
    """Calls `fail` when training reaches `step` (after the checkpoint of step 2 is written)."""

    def __init__(self, step: int, fail):
        self.step, self.fail = step, fail

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            self.fail()


def interrupt():
    raise KeyboardInterrupt


def write_to_a_full_disk():
    with open("/dev/full", "wb") as f:  # a device that is always full: every write fails with ENOSPC
        f.write(b"weights" * 1024)


def save_to_a_full_disk():
    torch.save(torch.zeros(1024), "/dev/full")  # torch wraps the failed write in its own RuntimeError


RESUMES = "run the same command again: finished work is kept and the run resumes from its last complete checkpoint."
FAILURES = {  # what happens at step 3 -> exit code, the one line
    "Ctrl-C": (interrupt, 130, f"interrupted (Ctrl-C); {RESUMES}"),
    "disk full": (
        write_to_a_full_disk,
        1,
        f"the disk is full (no space left on device); free some space, then {RESUMES}",
    ),
    "disk full in torch.save": (save_to_a_full_disk, 1, "writing a file failed ("),
}


@pytest.mark.skipif(not Path("/dev/full").is_char_device(), reason="no /dev/full")
@pytest.mark.parametrize("failure", FAILURES)
def test_ctrl_c_and_a_full_disk_are_one_line_and_the_run_resumes(
    failure, tmp_path, recipe, capsys, caplog, monkeypatch
):
    fail, code, message = FAILURES[failure]
    failing = lambda config: run_pretrain(config, callbacks=[FailAtStep(3, fail)])  # noqa: E731
    monkeypatch.setitem(STAGES, "pretrain", dataclasses.replace(STAGES["pretrain"], run=failing))
    output_dir = tmp_path / "out"
    args = ["pretrain", "--config", str(recipe), *flags(output_dir=output_dir, max_steps=4, save_steps=2)]
    with pytest.raises(SystemExit) as exit_code:
        main(args)
    assert exit_code.value.code == code
    err = capsys.readouterr().err.strip().splitlines()[-2:]  # after the progress bars: one line, and the hint
    assert err[0].startswith(f"hf-instruct pretrain: {message}") and err[1].startswith("(set HF_INSTRUCT_DEBUG"), err
    assert err[0].endswith(f"; free some space, then {RESUMES}") or failure == "Ctrl-C"

    monkeypatch.undo()
    assert main(args) == 0
    assert f"resuming from {output_dir / 'checkpoint-2'}" in caplog.text and global_step(output_dir) == 4


def test_an_unreachable_hub_is_one_line_and_the_push_can_be_run_again(tiny_model_dir, monkeypatch, capsys):
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    line = run_cli(["push", str(tiny_model_dir), "user/tiny"], capsys)
    assert line.startswith(f"hf-instruct push: cannot reach the Hub at {endpoint} (")
    assert line.endswith(f"); once it is reachable, {RESUMES}")
