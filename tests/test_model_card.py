"""Model cards: every stage of a model's making, metadata that parses back, the right snippet for each kind; for any
saved folder and a stock Trainer's run too."""

import contextlib
import io
import json

import pytest
from conftest import SMOKE_TRAINING, TEXT, tiny_config, tiny_llama_config
from huggingface_hub import ModelCard
from huggingface_hub.repocard import metadata_load
from huggingface_hub.repocard_data import model_index_to_eval_results
from peft import LoraConfig
from transformers import LlamaForCausalLM, Trainer, TrainingArguments

from hf_instruct import InstructGPTForCausalLM, use_model_card
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


def quick_start(card: ModelCard) -> str:
    """The Python snippet of the card's quick start."""
    return card.text.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.mark.parametrize(
    ("architecture", "model_class", "config"),
    [("instructgpt", InstructGPTForCausalLM, tiny_config), ("llama", LlamaForCausalLM, tiny_llama_config)],
)
def test_a_folder_saved_with_save_pretrained_gets_a_card_whose_quick_start_runs(
    tmp_path, tokenizer, architecture, model_class, config
):
    model = model_class(config())
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    card = render_model_card(tmp_path)
    assert card.data.pipeline_tag == "text-generation" and card.data.library_name == "transformers"
    assert card.data.license == "unknown" and card.data.tags == ["hf-instruct", architecture]
    assert card.data.base_model is None and card.data.eval_results is None  # nothing to say: nothing invented
    parameters = sum(p.numel() for p in model.parameters())
    assert f"| architecture | {model_class.__name__} |" in card.text
    assert f"| parameters | {parameters:,} |" in card.text
    assert "| max_position_embeddings | 128 |" in card.text and "| chat template | yes |" in card.text
    assert "None" not in card.text and "Training procedure" not in card.text and "Citation" not in card.text
    # remote code for our architecture (shipped in the folder), plain transformers for a stock one
    assert ("trust_remote_code=True" in card.text) == (architecture == "instructgpt")
    assert ("pip install transformers" in card.text) == (architecture == "llama")
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        exec(quick_start(card), {})  # the snippet, as a reader would paste it, against this folder
    assert output.getvalue().strip()


def test_a_trainer_with_use_model_card_writes_our_card_with_its_curves_and_final_metrics(tmp_path, tokenizer):
    ids = tokenizer(TEXT * 4)["input_ids"]
    blocks = [{"input_ids": ids[i : i + 16], "labels": ids[i : i + 16]} for i in range(0, len(ids) - 16, 16)]
    args = TrainingArguments(str(tmp_path), **{**SMOKE_TRAINING, "max_steps": 4}, eval_strategy="steps", eval_steps=2)
    trainer = Trainer(
        InstructGPTForCausalLM(tiny_config()),
        args,
        train_dataset=blocks,
        eval_dataset=blocks[:4],
        processing_class=tokenizer,
    )
    use_model_card(trainer)
    trainer.train()
    trainer.save_metrics("eval", trainer.evaluate())
    trainer.save_model()
    # what `trainer.push_to_hub(license=..., ...)` calls before it uploads the folder
    trainer.create_model_card(license="mit", tags=["mine"], finetuned_from=str(tmp_path), dataset_tags="org/data")

    card, metadata = ModelCard.load(tmp_path / "README.md"), metadata_load(tmp_path / "README.md")
    assert card.data.to_dict() == metadata and card.data.license == "mit"
    assert card.data.tags == ["hf-instruct", "instructgpt", "mine"] and card.data.datasets == ["org/data"]
    assert card.data.base_model is None  # a local path is not a Hub id
    eval_loss = json.loads((tmp_path / "eval_results.json").read_text())["eval_loss"]
    _, results = model_index_to_eval_results(metadata["model-index"])
    assert [(r.metric_type, r.dataset_type) for r in results] == [("loss", "org/data")]
    assert results[0].metric_value == pytest.approx(eval_loss)
    assert "![training curves](training_curves.png)" in card.text and (tmp_path / "training_curves.png").is_file()
    assert "| steps | 4 |" in card.text and "| epochs |" in card.text and "| train_loss |" in card.text
    assert f"| eval_loss | {eval_loss:.4g} |" in card.text and "None" not in card.text


def test_a_value_holding_a_pipe_stays_in_its_table_cell(tmp_path):
    """PEFT takes a regex for `target_modules`: its `|` is escaped, so the Model table keeps two columns."""
    base, adapter = tmp_path / "base", tmp_path / "adapter"
    tiny_llama_config().save_pretrained(base)
    LoraConfig(
        r=4, lora_alpha=8, target_modules=r".*\.(q_proj|v_proj)", base_model_name_or_path=str(base)
    ).save_pretrained(adapter)
    card = render_model_card(adapter)
    assert r"| adapter | LoRA r=4, alpha=8, on .*\.(q_proj\|v_proj) |" in card.text.splitlines()
