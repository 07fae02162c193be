"""Model cards: every stage of a model's making, metadata that parses back, the right snippet for each kind."""

import json

import pytest
from huggingface_hub import ModelCard

from hf_instruct.model_card import RUN_FILE, render_model_card


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
