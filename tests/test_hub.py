"""Publishing: `hf-instruct push` and `push_to_hub: true` against a local Hub-protocol server (tests/hub_server.py),
then loading in a fresh process, with a fresh HF_HOME and the plugin hidden, exactly as someone else would."""

import json
import shutil
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from conftest import REPO, tiny_config
from hub_server import hub_env
from huggingface_hub import ModelCard
from huggingface_hub.repocard import metadata_load
from huggingface_hub.repocard_data import model_index_to_eval_results
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
from trl import SFTConfig

from hf_instruct import InstructGPTForCausalLM
from hf_instruct.model_card import CARD_MARKER
from hf_instruct.stages import SFTStageConfig, parse_config

TOKEN = "hf_test_token"  # the hub_server fixture's token of user "user"
CONVERSATION = [{"role": "user", "content": "Tell me about the quick brown fox."}]

# Loads `repo_id` from the server the way a stranger would: no hf_instruct, trust_remote_code, a fresh cache.
LOAD_SCRIPT = """
import sys
sys.modules["hf_instruct"] = None  # any `import hf_instruct` now raises ImportError
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

repo_id, kind, output = sys.argv[1:]
tokenizer = AutoTokenizer.from_pretrained(repo_id, trust_remote_code=True)
inputs = tokenizer.apply_chat_template(
    [{"role": "user", "content": "Tell me about the quick brown fox."}], add_generation_prompt=True,
    return_dict=True, return_tensors="pt",
)
if kind == "adapter":
    from peft import AutoPeftModelForCausalLM
    model = AutoPeftModelForCausalLM.from_pretrained(repo_id, trust_remote_code=True)
elif kind == "reward":
    model = AutoModelForSequenceClassification.from_pretrained(repo_id, trust_remote_code=True)
else:
    model = AutoModelForCausalLM.from_pretrained(repo_id, trust_remote_code=True)
with torch.no_grad():
    result = {"logits": model(**inputs).logits}
    if kind != "reward":
        result["generated"] = model.generate(**inputs, max_new_tokens=8, do_sample=False)
torch.save(result, output)
"""


# Runs several `hf-instruct push` commands in one process (one interpreter start), each with its own HF_TOKEN.
PUSH_SCRIPT = """
import contextlib, io, json, os, sys
from hf_instruct.cli import main

results = []
for token, args in json.loads(sys.argv[1]):
    os.environ.pop("HF_TOKEN", None)
    os.environ.update({"HF_TOKEN": token} if token else {})
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = main(["push", *args])
        except SystemExit as exit:
            code = exit.code
    results.append([code, stdout.getvalue(), stderr.getvalue()])
print(json.dumps(results))
"""


# A user's own training script: a stock Trainer on an `instructgpt` model built with `from_config`, our card in one
# step (`use_model_card`), then transformers' own `trainer.push_to_hub()`.
TRAINER_SCRIPT = """
import sys
from transformers import AutoModelForCausalLM, Trainer, TrainingArguments
import hf_instruct

output_dir, repo_id = sys.argv[1:]
text = "The quick brown fox jumps over the lazy dog. A model learns only what the labels say. " * 20
tokenizer = hf_instruct.train_tokenizer([text], vocab_size=320, show_progress=False)
config = hf_instruct.InstructGPTConfig(vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                       num_attention_heads=2, max_position_embeddings=64)
model = AutoModelForCausalLM.from_config(config)
ids = tokenizer(text)["input_ids"]
blocks = [{"input_ids": ids[i:i + 16], "labels": ids[i:i + 16]} for i in range(0, len(ids) - 16, 16)]
args = TrainingArguments(output_dir, max_steps=6, per_device_train_batch_size=4, learning_rate=3e-3, logging_steps=1,
                         eval_strategy="steps", eval_steps=3, save_strategy="no", report_to="none", use_cpu=True,
                         disable_tqdm=True, hub_model_id=repo_id)
trainer = Trainer(model=model, args=args, train_dataset=blocks, eval_dataset=blocks[:4], processing_class=tokenizer)
hf_instruct.use_model_card(trainer)
trainer.train()
trainer.save_metrics("eval", trainer.evaluate())
trainer.push_to_hub(license="mit")
"""


def pushed_card(hub_server, repo_id: str, tmp_path: Path) -> tuple[ModelCard, dict]:
    """The pushed README.md as `huggingface_hub` reads it, and its raw YAML metadata."""
    path = tmp_path / f"{repo_id.replace('/', '--')}.md"
    path.write_bytes(hub_server.repo(repo_id)["files"]["README.md"])
    return ModelCard.load(path), metadata_load(path)


def run(args: list[str], env: dict, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def push_each(hub_server, home: Path, cases: list[tuple[str | None, list[str]]]) -> list[tuple[int, str, str]]:
    """(exit code, stdout, stderr) of `hf-instruct push <args>` for each (token, args), in one process."""
    proc = run([sys.executable, "-c", PUSH_SCRIPT, json.dumps(cases)], hub_env(hub_server, home, token=None))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [tuple(result) for result in json.loads(proc.stdout.splitlines()[-1])]


def push(hub_server, home: Path, *args: str) -> tuple[int, str, str]:
    return push_each(hub_server, home, [(TOKEN, list(args))])[0]


def load_remotely(hub_server, tmp_path: Path, repo_id: str, kind: str) -> dict:
    """Logits (and greedy generation) of the pushed model, computed in a stranger's process."""
    output = tmp_path / "remote.pt"
    proc = run(
        [sys.executable, "-c", LOAD_SCRIPT, repo_id, kind, str(output)],
        hub_env(hub_server, tmp_path / "stranger-home", token=None),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return torch.load(output)


def local_outputs(model, folder: Path, kind: str) -> dict:
    tokenizer = AutoTokenizer.from_pretrained(folder)
    inputs = tokenizer.apply_chat_template(
        CONVERSATION, add_generation_prompt=True, return_dict=True, return_tensors="pt"
    )
    with torch.no_grad():
        result = {"logits": model.eval()(**inputs).logits}
        if kind != "reward":
            result["generated"] = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    return result


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sft", "reward"])
def test_a_pushed_model_loads_anywhere_with_identical_outputs(hub_server, chain, tmp_path, kind):
    folder = chain[kind]
    code, stdout, stderr = push(hub_server, tmp_path / "home", str(folder), f"user/tiny-{kind}")
    assert code == 0, stderr[-4000:]
    assert "push: done" in stdout and TOKEN not in stdout + stderr

    repo = hub_server.repo(f"user/tiny-{kind}")
    assert [commit["message"] for commit in repo["commits"]] == ["initial commit", f"Upload {kind} with hf-instruct"]
    files = set(repo["files"])
    assert {
        "model.safetensors",
        "config.json",
        "modeling_instructgpt.py",
        "configuration_instructgpt.py",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "README.md",
        "training_curves.png",
        "hf_instruct_run.json",
    } <= files
    assert not any(name.startswith("checkpoint-") or name == "training_args.bin" for name in files)
    assert json.loads(repo["files"]["config.json"])["auto_map"]["AutoModelForCausalLM"]

    card_path = tmp_path / "README.md"
    card_path.write_bytes(repo["files"]["README.md"])
    card = ModelCard.load(card_path)
    assert card.data.model_name == f"user/tiny-{kind}" and f'"user/tiny-{kind}"' in card.text
    assert card.data.eval_results and "None" not in card.text

    load = AutoModelForSequenceClassification if kind == "reward" else AutoModelForCausalLM
    expected = local_outputs(load.from_pretrained(folder), folder, kind)
    remote = load_remotely(hub_server, tmp_path, f"user/tiny-{kind}", kind)
    for name, tensor in expected.items():
        assert torch.equal(remote[name], tensor), name


@pytest.mark.slow
def test_a_lora_adapter_pushes_with_its_base_model_and_loads_with_auto_peft(hub_server, chain, tmp_path):
    home = tmp_path / "home"
    refused, base, adapter = push_each(
        home=home,
        hub_server=hub_server,
        cases=[
            (TOKEN, [str(chain["lora"]), "user/tiny-lora"]),
            (TOKEN, [str(chain["pretrain"]), "user/tiny-base"]),
            (TOKEN, [str(chain["lora"]), "user/tiny-lora", "--base_model_repo_id", "user/tiny-base"]),
        ],
    )
    assert refused[0] == 1 and "is a local folder" in refused[2] and "--base_model_repo_id" in refused[2]
    assert base[0] == 0 and adapter[0] == 0, base[2] + adapter[2]
    files = hub_server.repo("user/tiny-lora")["files"]
    assert "adapter_model.safetensors" in files and "model.safetensors" not in files
    assert json.loads(files["adapter_config.json"])["base_model_name_or_path"] == "user/tiny-base"

    base = AutoModelForCausalLM.from_pretrained(chain["pretrain"])
    expected = local_outputs(PeftModel.from_pretrained(base, chain["lora"]), chain["lora"], "adapter")
    remote = load_remotely(hub_server, tmp_path, "user/tiny-lora", "adapter")
    for name, tensor in expected.items():
        torch.testing.assert_close(remote[name], tensor, atol=1e-6, rtol=0, msg=name)


def test_a_private_push_is_private(hub_server, chain, tmp_path):
    assert push(hub_server, tmp_path / "home", str(chain["sft"]), "user/secret", "--private")[0] == 0
    assert hub_server.repo("user/secret")["private"] is True
    stranger = run(
        [sys.executable, "-c", "from huggingface_hub import model_info; model_info('user/secret')"],
        hub_env(hub_server, tmp_path / "stranger", token=None),
    )
    assert stranger.returncode != 0 and "RepositoryNotFoundError" in stranger.stderr


def test_a_push_to_a_branch_leaves_main_alone(hub_server, chain, tmp_path):
    options = ["--revision", "dev", "--commit_message", "First try"]
    code, _, stderr = push(hub_server, tmp_path / "home", str(chain["sft"]), "user/branched", *options)
    assert code == 0, stderr
    repo = hub_server.repo("user/branched", branch="dev")
    assert repo["branches"] == ["dev", "main"] and repo["commits"][-1]["message"] == "First try"
    assert "model.safetensors" in repo["files"] and hub_server.repo("user/branched")["files"] == {}


def test_push_errors_say_what_is_wrong_and_what_to_do(hub_server, chain, tmp_path):
    home, folder = tmp_path / "home", str(chain["sft"])
    cases = {
        "No Hugging Face token: set HF_TOKEN": (None, [folder, "user/x"]),
        "rejected the token (401)": ("hf_wrong", [folder, "user/x"]),
        "may not write to someone-else/x (403)": (TOKEN, [folder, "someone-else/x"]),
        "is not a valid repo id": (TOKEN, [folder, "user/not a name!"]),
        "is not a saved model": (TOKEN, [str(tmp_path), "user/x"]),
    }
    for message, (code, _, stderr) in zip(cases, push_each(hub_server, home, list(cases.values())), strict=True):
        assert code == 1 and message in stderr, stderr[-2000:]
        assert "Traceback" not in stderr and "hf_wrong" not in stderr
    assert hub_server.repo("user/x") is None


@pytest.mark.slow
def test_a_recipe_with_push_to_hub_pushes_and_keeps_the_token_out_of_every_file(
    hub_server, tiny_model_dir, instructions, tmp_path
):
    output_dir = tmp_path / "sft"
    secret = "hf_test_token"
    data = ["--model_name_or_path", str(tiny_model_dir), "--train_files", str(instructions)]
    short_run = ["--max_steps", "2", "--eval_examples", "4", "--max_length", "64", "--save_steps", "1"]
    quiet = ["--report_to", "none", "--disable_tqdm", "true"]
    publish = ["--push_to_hub", "true", "--hub_model_id", "user/from-recipe", "--hub_token", secret]
    sft = [sys.executable, "-m", "hf_instruct.cli", "sft", *data, "--output_dir", str(output_dir)]
    proc = run([*sft, *short_run, *quiet, *publish], hub_env(hub_server, tmp_path / "home", token=None))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "sft: pushed to" in proc.stderr
    repo = hub_server.repo("user/from-recipe")
    # one push, at the end, with our card: none by the Trainer at its two saves or at `save_model`
    assert [commit["message"] for commit in repo["commits"]] == ["initial commit", "hf-instruct sft"]
    assert "model.safetensors" in repo["files"] and CARD_MARKER in repo["files"]["README.md"].decode()
    written = [path for path in output_dir.rglob("*") if path.is_file()]
    assert any(path.name == "training_args.bin" for path in written)  # checkpoints pickle the arguments...
    for path in written:  # ...and still no file holds the token
        assert secret.encode() not in path.read_bytes(), path
    assert secret not in proc.stdout + proc.stderr


def test_a_stage_keeps_push_to_hub_as_set_and_adds_no_undeclared_setting(tmp_path):
    """The Trainer reads the same `push_to_hub`: "end" is the only hub_strategy, so the stage's own push is the one."""
    args = ["--model_name_or_path", "m", "--train_files", "t.jsonl", "--output_dir", str(tmp_path)]
    config = parse_config(SFTStageConfig, [*args, "--push_to_hub", "true"])
    assert config.push_to_hub is True and config.hub_strategy == "end"
    stock = SFTConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, bf16=False)
    assert undeclared_attributes(config) == undeclared_attributes(stock)  # transformers' own, nothing of ours
    with pytest.raises(ValueError, match="--hub_strategy.*invalid choice: 'every_save'"):
        parse_config(SFTStageConfig, [*args, "--hub_strategy", "every_save"])


def undeclared_attributes(config) -> set[str]:
    return set(vars(config)) - {field.name for field in fields(config)}


def test_any_saved_folder_pushes_with_our_card_unless_its_user_wrote_one(hub_server, tiny_model_dir, tmp_path):
    mine, drafted = tmp_path / "mine", tmp_path / "drafted"
    for folder, readme in [
        (mine, "# My model\n\nMy words.\n"),
        (drafted, "---\ntags:\n- generated_from_trainer\n---\n# A Trainer draft\n"),
    ]:
        shutil.copytree(tiny_model_dir, folder)
        (folder / "README.md").write_text(readme)
    results = push_each(
        hub_server,
        tmp_path / "home",
        [
            (TOKEN, [str(tiny_model_dir), "user/saved"]),  # only `save_pretrained`: no README.md
            (TOKEN, [str(mine), "user/mine"]),
            (TOKEN, [str(mine), "user/mine-ours", "--card", "regenerate", "--license", "apache-2.0"]),
            (TOKEN, [str(drafted), "user/drafted"]),
            (TOKEN, [str(drafted), "user/drafted-kept", "--card", "keep"]),
        ],
    )
    assert all(code == 0 for code, _, _ in results), results

    card, metadata = pushed_card(hub_server, "user/saved", tmp_path)
    assert card.data.to_dict() == metadata  # what the Hub's tooling reads back is what we wrote
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-generation"
    assert card.data.license == "unknown" and {"hf-instruct", "instructgpt"} <= set(card.data.tags)
    assert card.data.base_model is None and card.data.datasets is None and "None" not in card.text
    parameters = sum(p.numel() for p in InstructGPTForCausalLM(tiny_config()).parameters())  # as tiny_model_dir
    assert "| architecture | InstructGPTForCausalLM |" in card.text and f"| parameters | {parameters:,} |" in card.text
    assert "| max_position_embeddings | 128 |" in card.text and "| chat template | yes |" in card.text
    # the quick start that test_model_card.py runs against the folder, with the repo id
    assert 'pipeline("text-generation", model="user/saved", trust_remote_code=True)' in card.text

    readme = {
        repo: hub_server.repo(repo)["files"]["README.md"].decode()
        for repo in ("user/mine", "user/mine-ours", "user/drafted", "user/drafted-kept")
    }
    assert readme["user/mine"] == "# My model\n\nMy words.\n" and "A Trainer draft" in readme["user/drafted-kept"]
    for repo in ("user/mine-ours", "user/drafted"):
        card = ModelCard(readme[repo])
        assert card.data.model_name == repo and "<!-- hf-instruct model card" in card.text
    assert ModelCard(readme["user/mine-ours"]).data.license == "apache-2.0"
    assert (mine / "README.md").read_text() == "# My model\n\nMy words.\n"  # a push never rewrites the folder


@pytest.mark.slow
def test_trainer_push_to_hub_publishes_our_card_instead_of_the_generic_one(hub_server, tmp_path):
    output_dir = tmp_path / "trained"
    proc = run(
        [sys.executable, "-c", TRAINER_SCRIPT, str(output_dir), "user/trained"], hub_env(hub_server, tmp_path / "home")
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    files = hub_server.repo("user/trained")["files"]
    assert {"README.md", "training_curves.png", "trainer_state.json", "model.safetensors"} <= set(files)
    card, metadata = pushed_card(hub_server, "user/trained", tmp_path)
    assert card.data.to_dict() == metadata and "generated_from_trainer" not in card.data.tags
    assert card.data.license == "mit" and card.data.model_name == "user/trained"  # push_to_hub's kwargs count
    _, results = model_index_to_eval_results(metadata["model-index"])
    eval_loss = json.loads((output_dir / "eval_results.json").read_text())["eval_loss"]
    assert [(r.metric_type, r.metric_value) for r in results] == [("loss", pytest.approx(eval_loss))]
    assert "| steps | 6 |" in card.text and 'model="user/trained", trust_remote_code=True' in card.text
