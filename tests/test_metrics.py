"""The shipped `evaluate` metric modules: they load offline by path and give hand-computed values."""

import math

import pytest
import torch
from conftest import tiny_config
from torch.testing import assert_close

from hf_instruct import InstructGPTForCausalLM, InstructGPTForSequenceClassification
from hf_instruct.evaluation.metric_modules import METRICS, load_metric, metric_path


@pytest.fixture
def load(tmp_path):
    """load_metric with the predictions/references scratch files in a temporary folder."""
    return lambda name: load_metric(name, cache_dir=str(tmp_path / "evaluate"))


@pytest.mark.parametrize("name", METRICS)
def test_every_shipped_metric_loads_by_path(name, load):
    metric = load(name)
    assert metric.name == name
    assert metric.description and metric.inputs_description
    assert "predictions" in metric.features


def test_unknown_metric_names_the_shipped_ones():
    with pytest.raises(ValueError, match="bleu.*exact_match, rouge_l, win_rate, perplexity, instruction_accuracy"):
        metric_path("bleu")


def test_instruction_accuracy_overall_and_per_family(load):
    checks = [
        '{"kind": "number", "answer": 42}',
        '{"kind": "yes_no", "answer": "yes"}',
        '{"kind": "number", "answer": 7}',
    ]
    result = load("instruction_accuracy").compute(
        predictions=["42.", "Yes, I think so.", "7"],
        references=checks,
        families=["arithmetic", "yes_no", "arithmetic"],
    )
    assert result["accuracy"] == pytest.approx(2 / 3)  # prose around a yes/no answer is not a yes/no answer
    assert result["per_family"] == {"arithmetic": 1.0, "yes_no": 0.0}


def test_exact_match_normalises_whitespace_and_case(load):
    exact_match = load("exact_match")
    predictions = ["  Paris\n", "the  Big   apple", "Rome.", "Oslo"]
    references = ["paris", "The big apple", "Rome", "Bergen"]
    assert exact_match.compute(predictions=predictions, references=references) == {"exact_match": 0.5}
    assert exact_match.compute(predictions=predictions, references=references, ignore_punctuation=True) == {
        "exact_match": 0.75
    }
    assert exact_match.compute(predictions=predictions, references=references, ignore_case=False) == {
        "exact_match": 0.0
    }


def test_rouge_l_is_the_lcs_f1(load):
    # LCS of "the cat sat on the mat" and "the cat lay on the mat" is "the cat on the mat": 5 of 6 words each way.
    result = load("rouge_l").compute(
        predictions=["the cat sat on the mat", "a b c d"], references=["the cat lay on the mat", "a b c d"]
    )
    assert result["rouge_l"] == pytest.approx((5 / 6 + 1) / 2)


def test_win_rate_from_scores_counts_ties_half(load):
    result = load("win_rate").compute(
        predictions=["a1", "a2", "a3", "a4"],
        references=["b1", "b2", "b3", "b4"],
        scores_a=[1, 0, 2, 2],
        scores_b=[0, 1, 1, 2],
    )
    assert result == {"win_rate": (1 + 0 + 1 + 0.5) / 4, "mean_reward_a": 5 / 4, "mean_reward_b": 4 / 4}


def test_win_rate_needs_a_model_or_both_scores(load):
    with pytest.raises(ValueError, match="scores_a"):
        load("win_rate").compute(predictions=["a"], references=["b"], scores_a=[1.0])


def test_win_rate_scores_chat_renderings_with_the_reward_model(load, tokenizer, tmp_path):
    path = tmp_path / "reward"
    model = InstructGPTForSequenceClassification(tiny_config(num_labels=1)).eval()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    prompts = [
        "Name a fox.",
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi."}],
        "What does a reward model learn?",
    ]
    answers_a = ["The quick brown fox.", "Hi.", "Which of two answers people prefer."]
    answers_b = ["A dog.", "Hello there, how are you today?", "No."]

    def reward(prompt, answer):  # the ChatML rendering written out, scored alone (no padding)
        turns = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        text = "".join(f"<|im_start|>{t['role']}\n {t['content']}<|im_end|>\n" for t in turns)
        text += f"<|im_start|>assistant\n {answer}<|im_end|>\n"
        with torch.no_grad():
            return model(**tokenizer(text, add_special_tokens=False, return_tensors="pt")).logits[0, 0].item()

    scores_a = [reward(p, a) for p, a in zip(prompts, answers_a, strict=True)]
    scores_b = [reward(p, b) for p, b in zip(prompts, answers_b, strict=True)]
    result = load("win_rate").compute(
        predictions=answers_a, references=answers_b, prompts=prompts, reward_model=str(path), batch_size=4
    )
    assert result["win_rate"] == sum(a > b for a, b in zip(scores_a, scores_b, strict=True)) / 3
    assert result["mean_reward_a"] == pytest.approx(sum(scores_a) / 3, abs=1e-6)
    assert result["mean_reward_b"] == pytest.approx(sum(scores_b) / 3, abs=1e-6)


TEXTS = ["The quick brown fox jumps over the lazy dog.", "A model learns.", "Instruction tuning teaches a model."]


def test_perplexity_is_exp_of_the_mean_token_nll(load, tiny_model_dir, tokenizer):
    model = InstructGPTForCausalLM.from_pretrained(tiny_model_dir).eval()

    def perplexity(ids):
        with torch.no_grad():
            return math.exp(model(torch.tensor([ids]), labels=torch.tensor([ids])).loss.item())

    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in TEXTS]
    metric = load("perplexity")
    result = metric.compute(predictions=TEXTS, model_id=str(tiny_model_dir))
    assert_close(result["perplexities"], [perplexity(i) for i in ids], rtol=1e-5, atol=0)
    assert result["mean_perplexity"] == pytest.approx(sum(result["perplexities"]) / 3)

    with_start = metric.compute(predictions=TEXTS, model_id=str(tiny_model_dir), add_start_token=True, max_length=6)
    assert_close(
        with_start["perplexities"], [perplexity([tokenizer.bos_token_id, *i][:6]) for i in ids], rtol=1e-5, atol=0
    )


def test_perplexity_does_not_depend_on_padding(load, tiny_model_dir):
    metric = load("perplexity")
    batched = metric.compute(predictions=TEXTS, model_id=str(tiny_model_dir), batch_size=3)["perplexities"]
    alone = metric.compute(predictions=TEXTS, model_id=str(tiny_model_dir), batch_size=1)["perplexities"]
    assert_close(batched, alone, rtol=1e-5, atol=0)
