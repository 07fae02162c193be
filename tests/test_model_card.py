"""Model cards: every stage of a model's making, metadata that parses back, the right snippet for each kind."""

import json
from pathlib import Path

import pytest
from conftest import TEXT
from huggingface_hub import ModelCard

from hf_instruct.model_card import RUN_FILE, render_model_card
from hf_instruct.stages import (
    PretrainStageConfig,
    RewardStageConfig,
    SFTStageConfig,
    run_pretrain,
    run_reward,
    run_sft,
)

QUICK = dict(per_device_train_batch_size=4, logging_steps=1, save_strategy="no", disable_tqdm=True, report_to="none")


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> dict[str, Path]:
    """pretrain → SFT (LoRA and full) → reward, a few steps each, on a tiny corpus."""
    root = tmp_path_factory.mktemp("chain")
    corpus, instructions, pairs = root / "corpus.txt", root / "instructions.jsonl", root / "pairs.jsonl"
    corpus.write_text(TEXT * 40)
    sentences = [s.strip() for s in TEXT.split(".") if s.strip()]
    instructions.write_text(
        "".join(json.dumps({"instruction": f"Repeat: {s}", "output": s}) + "\n" for s in sentences * 8)
    )
    pairs.write_text(
        "".join(json.dumps({"prompt": f"Say {s}", "chosen": s, "rejected": "No."}) + "\n" for s in sentences * 8)
    )
    runs = {name: root / name for name in ("pretrain", "sft", "lora", "reward")}
    model_config = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    run_pretrain(PretrainStageConfig(
        train_files=[str(corpus)], output_dir=str(runs["pretrain"]), vocab_size=300, block_size=32, eval_blocks=4,
        model_config=model_config, max_steps=3, **QUICK,
    ))  # fmt: skip
    tuning = dict(model_name_or_path=str(runs["pretrain"]), train_files=[str(instructions)], eval_examples=4,
                  max_length=64, max_steps=3, **QUICK)  # fmt: skip
    run_sft(SFTStageConfig(output_dir=str(runs["sft"]), **tuning))
    run_sft(SFTStageConfig(output_dir=str(runs["lora"]), use_peft=True, **tuning))
    run_reward(RewardStageConfig(
        model_name_or_path=str(runs["sft"]), train_files=[str(pairs)], output_dir=str(runs["reward"]),
        eval_examples=4, max_length=64, max_steps=3, **QUICK,
    ))  # fmt: skip
    return runs


def test_the_card_tells_every_stage_that_made_the_model(chain):
    card = (chain["reward"] / "README.md").read_text()
    for number, stage in enumerate(["pretrain", "sft", "reward"], start=1):
        assert f"### {number}. {stage}" in card
    assert "pretrain → sft → reward" in card
    assert f"| base model | {chain['sft']} |" in card and f"| base model | {chain['pretrain']} |" in card
    assert "| num_hidden_layers | 1 |" in card and "| parameters |" in card
    assert "None" not in card and "Ouyang" in card and "Vaswani" in card and "hallucination" in card
    assert "![training curves](training_curves.png)" in card and (chain["reward"] / "training_curves.png").is_file()
    history = json.loads((chain["reward"] / RUN_FILE).read_text())["history"]
    assert [record["stage"] for record in history] == ["pretrain", "sft", "reward"]


def test_the_card_metadata_parses_back_with_its_evaluation_results(chain):
    card = ModelCard.load(chain["sft"] / "README.md")
    assert card.data.pipeline_tag == "text-generation" and card.data.library_name == "transformers"
    assert set(card.data.tags) == {"hf-instruct", "instructgpt", "pretrain", "sft"}
    results = {result.metric_type: result.metric_value for result in card.data.eval_results}
    recorded = json.loads((chain["sft"] / "all_results.json").read_text())
    assert results["loss"] == pytest.approx(recorded["eval_loss"]) and "perplexity" in results
    assert all(result.dataset_split == "held-out" for result in card.data.eval_results)


@pytest.mark.parametrize(
    ("run", "pipeline_tag", "library", "snippet"),
    [
        ("sft", "text-generation", "transformers", 'pipeline("text-generation", model="user/tiny"'),
        ("reward", "text-classification", "transformers", "AutoModelForSequenceClassification.from_pretrained"),
        ("lora", "text-generation", "peft", 'AutoPeftModelForCausalLM.from_pretrained("user/tiny"'),
    ],
)
def test_each_kind_of_model_gets_its_own_quick_start(chain, run, pipeline_tag, library, snippet):
    card = render_model_card(chain[run], model_id="user/tiny")
    assert card.data.pipeline_tag == pipeline_tag and card.data.library_name == library
    assert snippet in card.text and card.data.model_name == "user/tiny"
    if run == "lora":
        assert "trainable (adapter) parameters" in card.text
