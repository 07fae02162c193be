"""One suite everywhere (`evaluate` and `data export` use the suite a model's run record names, and say which), and
the fair base (a base model asked in the plain question-and-answer text its corpus holds)."""

import dataclasses
import json

import torch
import yaml
from conftest import REPO

from hf_instruct.cli import main
from hf_instruct.data.suite import SuiteConfig, build_suite, export_suite, plain_dialogue, recorded_suite
from hf_instruct.evaluation import generate_answers, load_chat_model
from hf_instruct.evaluation.generation import stop_token_ids
from hf_instruct.model_card import RUN_FILE


def test_the_default_suite_is_the_default_pipelines():
    """`SuiteConfig()` is what recipes/default/pipeline.yaml builds, so a command that names no suite uses it."""
    recipe = yaml.safe_load((REPO / "recipes/default/pipeline.yaml").read_text())
    assert SuiteConfig() == SuiteConfig(seed=recipe["seed"], **recipe["suite"])


def a_pipeline_model(root, config: SuiteConfig):
    """A model folder as the pipeline leaves it: a run record whose stages read the suite's exported files."""
    data = root / "data"
    export_suite(build_suite(config), data, config)
    model = root / "sft"
    model.mkdir()
    history = [{"stage": "pretrain", "data": [str(data / "pretrain.jsonl")]}, {"stage": "sft", "data": []}]
    (model / RUN_FILE).write_text(json.dumps({"stage": "sft", "history": history}))
    return model


def test_export_and_evaluate_use_the_suite_the_run_record_names(tmp_path, capsys):
    """Before, both defaulted to suite seed 0 with other sizes than the pipeline's, silently."""
    config = SuiteConfig.tiny(seed=5)
    model = a_pipeline_model(tmp_path / "run", config)
    assert recorded_suite(model) == (config, tmp_path / "run" / "data" / "suite.json")
    assert recorded_suite(tmp_path) is None

    assert main(["data", "export", str(tmp_path / "again"), "--model", str(model)]) == 0
    said = capsys.readouterr().out
    assert "suite seed 5: 30 entities, 0.2 MB corpus, 300 demonstrations" in said and str(model) in said
    for split in ("comparison_prompts", "rl_prompts"):  # every split, the prompt splits too
        assert f"{split}: {tmp_path / 'again' / f'{split}.jsonl'}" in said
    for split in ("sft", "held_out_paraphrases"):  # the very same files
        assert (tmp_path / "again" / f"{split}.jsonl").read_text() == (
            tmp_path / "run/data" / f"{split}.jsonl"
        ).read_text()

    assert main(["data", "export", str(tmp_path / "other"), "--model", str(model), "--seed", "6"]) == 0
    assert "suite seed 6: 30 entities" in capsys.readouterr().out
    assert json.loads((tmp_path / "other" / "suite.json").read_text()) == dataclasses.asdict(SuiteConfig.tiny(6))


def test_evaluate_scores_a_model_on_the_suite_its_run_record_names(tmp_path, tiny_model_dir, capsys):
    config = SuiteConfig.tiny(seed=5)
    model = a_pipeline_model(tmp_path / "run", config)
    for path in tiny_model_dir.iterdir():
        (model / path.name).write_bytes(path.read_bytes())
    settings = ["--limit", "2", "--max_new_tokens", "2", "--output_dir", str(tmp_path / "eval")]
    assert main(["evaluate", str(model), *settings]) == 0
    assert "hf-instruct evaluate: suite seed 5: 30 entities" in capsys.readouterr().out
    samples = json.loads((tmp_path / "eval" / "eval_results.json").read_text())["splits"]["held_out_paraphrases"]
    asked = build_suite(config)["held_out_paraphrases"][0]["messages"][0]["content"]
    assert samples["samples"][0]["prompt"] == asked


def test_without_a_run_record_the_default_pipelines_suite_is_said(tmp_path, capsys):
    assert main(["data", "export", str(tmp_path / "suite"), "--size", "tiny"]) == 0
    said = capsys.readouterr().out
    assert "suite seed 42: 30 entities" in said and "the default pipeline's, with size tiny" in said


def test_a_base_model_is_asked_in_plain_question_and_answer_text(tiny_model_dir):
    """The plain format: the continuation of "Question: ...\\nAnswer:" (no chat tokens) up to the first blank line."""
    model, tokenizer = load_chat_model(tiny_model_dir)
    conversation = [{"role": "user", "content": "What is the job of Bralo Kinet?"}]
    (answer,) = generate_answers(
        model, tokenizer, [conversation], max_new_tokens=24, show_progress=False, prompt_format="plain"
    )
    text = plain_dialogue(conversation)
    assert text == "Question: What is the job of Bralo Kinet?\nAnswer:"
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        stops = stop_token_ids(model, tokenizer)
        output = model.generate(**ids, max_new_tokens=24, do_sample=False, eos_token_id=stops, pad_token_id=0)
    expected = tokenizer.decode(output[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert answer[0] == expected.split("\n\n")[0].split("\nQuestion:")[0].strip()
