"""Evaluation: batched chat generation, `hf-instruct evaluate|generate|data export` (and every command's flags), the
training callback."""

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import CLI_ENV, REPO

from hf_instruct.cli import build_parser
from hf_instruct.data import load_instruction_dataset
from hf_instruct.data.suite import COMPOSITIONS, FAMILIES, SuiteConfig, build_suite, verify
from hf_instruct.evaluation import (
    InstructionAccuracyCallback,
    best_of_n_answers,
    evaluate_model,
    generate_answers,
    load_chat_model,
)
from hf_instruct.evaluation.evaluator import SUITE_SPLITS, results_markdown
from hf_instruct.stages import SFTStageConfig, run_sft
from hf_instruct.utils import chat_rewards, load_reward_model, markdown_table, table_cell


@pytest.fixture(scope="module")
def tiny_suite():
    return build_suite(SuiteConfig.tiny())


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hf_instruct.cli", *args],
        cwd=REPO,
        env=CLI_ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_every_argument_of_the_commands_is_snake_case_and_says_what_it_is():
    """One flag style, TRL's and transformers': `--max_new_tokens`, never `--max-new-tokens`."""
    parsers, arguments = [build_parser()], []
    while parsers:
        for action in parsers.pop()._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
            elif action.dest != "help":
                arguments.append(action)
    assert {"--reward_model", "--num_return_sequences", "--commit_message"} <= {
        option for action in arguments for option in action.option_strings
    }
    for action in arguments:
        assert all(re.fullmatch(r"--[a-z0-9]+(_[a-z0-9]+)*", option) for option in action.option_strings), action
        assert action.help, action


def test_batched_generation_equals_one_conversation_at_a_time(chain):
    """Left padding, the attention mask and the KV cache make a batch answer exactly like single prompts."""
    model, tokenizer = load_chat_model(chain["sft"])
    conversations = [[{"role": "user", "content": text}] for text in ("Hi", "Tell me a long story about a fox", "?")]
    batched = generate_answers(model, tokenizer, conversations, max_new_tokens=12, batch_size=3, show_progress=False)
    alone = [generate_answers(model, tokenizer, [c], max_new_tokens=12, show_progress=False)[0] for c in conversations]
    assert batched == alone and all(len(answers) == 1 for answers in batched)


CONVERSATIONS = [[{"role": "user", "content": text}] for text in ("Hi", "Tell me about the fox.", "Say dog.", "?")]


def test_best_of_n_keeps_the_sample_the_reward_model_scores_highest(chain):
    model, tokenizer = load_chat_model(chain["sft"])
    judge = load_reward_model(chain["reward"])
    chosen = best_of_n_answers(
        model, tokenizer, *judge, CONVERSATIONS, n=5, max_new_tokens=8, batch_size=8, seed=3, show_progress=False
    )
    assert len(chosen) == len(CONVERSATIONS)
    for conversation, choice in zip(CONVERSATIONS, chosen, strict=True):
        assert len(choice.samples) == len(choice.rewards) == 5
        # the scores are the reward model's for each (prompt, sample) chat, scored apart from the batch
        expected = chat_rewards(chain["reward"], [conversation] * 5, choice.samples, batch_size=1)
        assert choice.rewards == pytest.approx(expected, abs=1e-5)
        assert choice.reward == max(choice.rewards) and choice.answer == choice.samples[expected.index(max(expected))]
    assert any(choice.answer != choice.samples[0] for choice in chosen)  # a real choice among different samples
    again = best_of_n_answers(
        model, tokenizer, *judge, CONVERSATIONS, n=5, max_new_tokens=8, batch_size=8, seed=3, show_progress=False
    )
    assert again == chosen  # seeded: the same samples and choices
    with pytest.raises(ValueError, match="n must be at least 1"):
        best_of_n_answers(model, tokenizer, *judge, CONVERSATIONS, n=0)


def test_best_of_one_is_plain_sampling_with_the_same_seed(chain):
    model, tokenizer = load_chat_model(chain["sft"])
    torch.manual_seed(7)
    sampled = generate_answers(
        model, tokenizer, CONVERSATIONS, max_new_tokens=8, batch_size=3, do_sample=True, show_progress=False
    )
    chosen = best_of_n_answers(
        model,
        tokenizer,
        *load_reward_model(chain["reward"]),
        CONVERSATIONS,
        n=1,
        max_new_tokens=8,
        batch_size=3,
        seed=7,
        show_progress=False,
    )
    assert [[choice.answer] for choice in chosen] == sampled
    greedy = generate_answers(model, tokenizer, CONVERSATIONS, max_new_tokens=8, show_progress=False)
    assert sampled != greedy  # sampling, not the greedy answers


def test_evaluate_model_scores_the_best_of_n_answers(chain, tiny_suite):
    splits = {split: tiny_suite[split] for split in SUITE_SPLITS[:1]}
    settings = dict(max_new_tokens=8, batch_size=8, limit=6)
    picking = dict(best_of_n=3, best_of_n_reward_model=chain["reward"], best_of_n_temperature=0.7, seed=5)
    scores = evaluate_model(chain["sft"], splits, **picking, **settings)["splits"][SUITE_SPLITS[0]]
    model, tokenizer = load_chat_model(chain["sft"])
    prompts = [messages[:-1] for messages in splits[SUITE_SPLITS[0]]["messages"][:6]]
    judge = load_reward_model(chain["reward"])
    chosen = best_of_n_answers(model, tokenizer, *judge, prompts, 3, 8, 8, 0.7, seed=5, show_progress=False)
    assert scores["answers"] == [choice.answer for choice in chosen] and len(scores["correct"]) == 6
    checks = splits[SUITE_SPLITS[0]]["check"][:6]
    right = [any(verify(check, sample) for sample in c.samples) for check, c in zip(checks, chosen, strict=True)]
    assert scores["any_sample_correct"] == sum(right) / 6 >= scores["accuracy"]
    with pytest.raises(ValueError, match="needs n >= 1, best_of_n_reward_model"):
        evaluate_model(chain["sft"], splits, best_of_n=3, **settings)


def test_evaluate_a_tiny_model_on_the_suite_prints_per_family_accuracy(chain, tmp_path):
    settings = ["--suite_size", "tiny", "--limit", "12", "--max_new_tokens", "8", "--output_dir", str(tmp_path)]
    proc = cli("evaluate", str(chain["sft"]), "--suite", *settings)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "## Instruction accuracy per task family" in proc.stdout
    results = json.loads((tmp_path / "eval_results.json").read_text())
    assert set(results["splits"]) == {"held_out_entities", "held_out_paraphrases", "held_out_compositions"}
    for scores in results["splits"].values():
        assert scores["examples"] == len(scores["correct"]) == 12 and 0.0 <= scores["accuracy"] <= 1.0
        assert scores["interval"][0] <= scores["accuracy"] == sum(scores["correct"]) / 12 <= scores["interval"][1]
        assert set(scores["per_family"]) <= {*FAMILIES, *COMPOSITIONS} and 0.0 <= scores["rouge_l"] <= 1.0
        assert set(scores["floor_per_family"]) == set(scores["family_examples"]) == set(scores["per_family"])
        assert sum(scores["family_examples"].values()) == 12 and 0.0 <= scores["floor"] <= 1.0
    markdown = (tmp_path / "eval_results.md").read_text()
    entities = results["splits"]["held_out_entities"]
    low, high = entities["interval"]
    assert markdown.startswith("# Evaluation of") and "| split | examples | accuracy | interval | floor |" in markdown
    assert f"| held_out_entities | 12 | {entities['accuracy']:.3f} | [{low:.3f}, {high:.3f}] |" in markdown
    family, rows = next(iter(entities["family_examples"].items()))
    assert f"| {family} | {entities['per_family'][family]:.3f} ({rows}) |" in markdown


def test_evaluate_a_data_file_and_the_data_export(tmp_path, chain):
    export = cli("data", "export", str(tmp_path / "suite"), "--size", "tiny")
    assert export.returncode == 0, export.stderr[-4000:]
    files = {path.stem: path for path in (tmp_path / "suite").glob("*.jsonl")}
    assert {"pretrain", "sft", "comparisons", "held_out_entities"} <= set(files)
    assert len(load_instruction_dataset(str(files["sft"]))) == len(build_suite(SuiteConfig.tiny())["sft"])
    settings = ["--limit", "6", "--max_new_tokens", "6", "--output_dir", str(tmp_path / "eval")]
    proc = cli("evaluate", str(chain["sft"]), "--data", str(files["held_out_paraphrases"]), *settings)
    assert proc.returncode == 0, proc.stderr[-4000:]
    scores = json.loads((tmp_path / "eval" / "eval_results.json").read_text())["splits"]["held_out_paraphrases"]
    assert {"accuracy", "per_family", "exact_match", "rouge_l"} <= set(scores)  # the export keeps the checks


def test_generate_samples_several_answers(chain):
    settings = ["--num_return_sequences", "3", "--max_new_tokens", "8"]
    proc = cli("generate", str(chain["sft"]), "--prompt", "Tell me about the fox.", *settings)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert [line[:3] for line in proc.stdout.splitlines() if line.startswith("[")] == ["[1]", "[2]", "[3]"]


def test_bad_inputs_give_clear_errors(chain, tmp_path):
    without_template = tmp_path / "no-template"
    shutil.copytree(chain["pretrain"], without_template)
    (without_template / "chat_template.jinja").unlink(missing_ok=True)
    config_path = without_template / "tokenizer_config.json"
    config_path.write_text(
        json.dumps({k: v for k, v in json.loads(config_path.read_text()).items() if k != "chat_template"})
    )
    proc = cli("generate", str(without_template), "--prompt", "Hi")
    assert proc.returncode == 1 and "has no chat template" in proc.stderr and "Traceback" not in proc.stderr
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    proc = cli("evaluate", str(chain["sft"]), "--data", str(empty))
    assert proc.returncode == 1 and "no usable records" in proc.stderr and "Traceback" not in proc.stderr


def test_the_callback_logs_instruction_accuracy_during_sft(tmp_path, tiny_model_dir, tiny_suite):
    sft = tiny_suite["sft"].select(range(64))
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"messages": m}) + "\n" for m in sft["messages"]))
    held_out = tiny_suite["held_out_paraphrases"].select(range(8))
    config = SFTStageConfig(
        model_name_or_path=str(tiny_model_dir),
        train_files=[str(data)],
        output_dir=str(tmp_path / "sft"),
        eval_examples=8,
        max_steps=4,
        eval_strategy="steps",
        eval_steps=2,
        per_device_train_batch_size=8,
        max_length=128,
        save_strategy="no",
        logging_steps=2,
        disable_tqdm=True,
        report_to="none",
    )
    output_dir = Path(run_sft(config, callbacks=[InstructionAccuracyCallback(held_out, max_new_tokens=8)]))
    results = json.loads((output_dir / "all_results.json").read_text())
    assert 0.0 <= results["eval_instruction_accuracy"] <= 1.0
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    assert [entry["step"] for entry in history if "eval_instruction_accuracy" in entry][:2] == [2, 4]


def test_few_shot_prompts_put_three_solved_examples_of_the_same_family_first(tiny_suite):
    from hf_instruct.evaluation.evaluator import few_shot

    held_out, solved = tiny_suite["held_out_paraphrases"], tiny_suite["sft"]
    prompted = few_shot(held_out, solved, shots=3, seed=0)
    assert prompted["family"] == held_out["family"] and prompted["check"] == held_out["check"]
    solved_by_family = {}
    for row in solved:
        solved_by_family.setdefault(row["family"], []).append(row["messages"])
    flawed = [row["messages"] for row in solved if row["flaw"]]
    assert flawed  # the suite's demonstrations hold their writers' mistakes
    for row, original in zip(prompted, held_out, strict=True):
        question = original["messages"]
        assert row["messages"][-len(question) :] == question  # the question and its reference answer come last
        shots = row["messages"][: -len(question)]
        conversations, start = [], 0
        for end in range(1, len(shots) + 1):  # split the shots back into the solved conversations they came from
            if shots[start:end] in solved_by_family[row["family"]]:
                conversations.append(shots[start:end])
                start = end
        assert start == len(shots) and len(conversations) == 3, row["family"]
        assert not any(conversation in flawed for conversation in conversations)  # a wrong demonstration is no shot
    with pytest.raises(ValueError, match="only 0 solved examples"):
        few_shot(held_out, held_out.select([]), shots=3)


def test_markdown_table_puts_a_rule_under_the_header_and_one_line_per_row():
    lines = markdown_table(["name", "value"], [["a", "1"], [table_cell("x | y\nz"), ""]])
    assert lines == ["| name | value |", "|---|---|", "| a | 1 |", r"| x \| y z |  |"]


def test_the_results_markdown_keeps_each_sample_answer_in_its_cells():
    sample = {"prompt": "Say a | b\nthen stop", "answer": "w" * 150, "reference": "a | b"}
    results = {"model": "m", "splits": {"held_out_entities": {"examples": 1, "accuracy": 0.5, "samples": [sample]}}}
    lines = results_markdown(results).splitlines()
    assert lines[2:5] == ["| split | examples | accuracy |", "|---|---|---|", "| held_out_entities | 1 | 0.500 |"]
    assert rf"| Say a \| b then stop | {'w' * 99}… | a \| b |" in lines


def test_wilson_intervals_are_the_published_values():
    """Newcombe (1998), table I: 81 of 263 gives 0.2553-0.3662; 0 of 10 stays inside [0, 1] (Wald's would not)."""
    from hf_instruct.evaluation.statistics import wilson_interval

    assert wilson_interval(81, 263) == pytest.approx((0.25529, 0.36621), abs=1e-5)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.27753), abs=1e-5)
    assert wilson_interval(5, 10) == pytest.approx((0.23659, 0.76341), abs=1e-5)
    assert wilson_interval(0, 3)[0] == 0.0 and wilson_interval(3, 3)[1] == 1.0  # exactly, for `low <= accuracy`
    with pytest.raises(ValueError, match="0 <= successes <= n and n > 0, got 3 of 0"):
        wilson_interval(3, 0)


def test_a_paired_difference_has_the_hand_computed_value_p_and_interval():
    from hf_instruct.evaluation.statistics import mcnemar_p, paired_difference

    # 20 prompts: 1 only the model gets right, 5 only the baseline, 8 both, 6 neither
    model = [True] * 1 + [False] * 5 + [True] * 8 + [False] * 6
    baseline = [False] * 1 + [True] * 5 + [True] * 8 + [False] * 6
    result = paired_difference(model, baseline)
    assert result["difference"] == pytest.approx(-4 / 20)
    assert result["p"] == pytest.approx(2 * (1 + 6) / 2**6)  # McNemar exact: 2 P(X <= 1), X ~ Bin(6, 1/2)
    assert result["interval"][0] < -0.2 < result["interval"][1] <= 0.0
    assert mcnemar_p(3, 3) == 1.0 and mcnemar_p(0, 0) == 1.0
    # every prompt goes the model's way: no resample can differ
    assert paired_difference([True] * 5, [False] * 5) == {"difference": 1.0, "interval": [1.0, 1.0], "p": 0.0625}
    # 1000 prompts, 300 only the model's, 100 only the baseline's: the bootstrap interval is the normal one,
    # 0.2 +- 1.96 * sqrt(400 - 200**2 / 1000) / 1000 = [0.1628, 0.2372]
    pairs = [(True, False)] * 300 + [(False, True)] * 100 + [(True, True)] * 100 + [(False, False)] * 500
    large = paired_difference([m for m, _ in pairs], [b for _, b in pairs])
    assert large["difference"] == pytest.approx(0.2)
    assert large["interval"] == pytest.approx([0.1628, 0.2372], abs=0.004)
    assert paired_difference(model, baseline) == result  # seeded: a re-run writes the same numbers


def test_the_verifier_judges_the_win_rate_on_differing_answers_with_ties_half():
    from hf_instruct.evaluation.statistics import pairwise_win_rates

    answers = ["a", "b", "c", "d", "e", "f"]
    baseline = ["a", "x", "y", "z", "w", "v"]  # the first pair is the same answer: it tells nothing
    correct = [True, True, False, True, False, True]
    baseline_correct = [True, False, False, True, True, False]
    # verifier: right beats wrong (pairs 1, 5), wrong loses (4), equal verdicts tie (2, 3): 3 of 5
    rewards, baseline_rewards = [9, 2, 0, 1, 0, 1], [9, 1, 3, 1, 5, 2]
    result = pairwise_win_rates(answers, baseline, correct, baseline_correct, rewards, baseline_rewards)
    assert result == {
        "pairs": 5,
        "win_rate": 3 / 5,
        "reward_model_win_rate": 1.5 / 5,  # wins pair 1, ties pair 3
        "reward_model_agreement": 2 / 3,  # of the decided pairs 1, 4, 5 it sides with the verifier on 1 and 4
    }
    same = pairwise_win_rates(answers, answers, correct, correct, rewards, rewards)
    assert same == {"pairs": 0, "win_rate": 0.5, "reward_model_win_rate": 0.5, "reward_model_agreement": None}
    with pytest.raises(ValueError, match="both `rewards` and `baseline_rewards`"):
        pairwise_win_rates(answers, baseline, correct, baseline_correct, rewards)


def test_floors_are_the_best_trivial_rule_per_family_weighted_by_rows():
    from hf_instruct.evaluation.floors import family_floors, split_floor

    def demonstration(family, answer, flaw=""):
        return {
            "family": family,
            "messages": [{"role": "user", "content": "?"}, {"role": "assistant", "content": answer}],
            "flaw": flaw,
        }

    def example(family, answer, **shown):  # shown: the check's options, items or word
        kind = {"kind": "number", "answer": answer} if isinstance(answer, int) else {"kind": "exact", "answer": answer}
        return {"family": family, "check": json.dumps({**kind, **shown})}

    demonstrations = [
        *(demonstration("choice", answer) for answer in ("Lima", "Oslo", "Lima")),
        *(demonstration("count_letters", answer) for answer in ("5", "5", "6", "4")),
        *(demonstration("count_letters", "3", flaw="miscount") for _ in range(5)),  # no reference answers
    ]
    examples = [
        example("choice", "Oslo", options=["Rome", "Oslo"]),
        example("choice", "Oslo", options=["Oslo", "Lima"]),
        example("choice", "Lima", options=["Lima", "Rome"]),
        example("choice", "Bern", options=["Bern", "Lima"]),
        # never trained: its constants are the answers of the trained families ending in count_letters; the word's
        # letter count is right once (apple), the constant "6" twice
        *(example("one_word+count_letters", n, word=w) for n, w in ((6, "peach"), (6, "plum"), (5, "apple"))),
        example("list_item+first_letter", "f", items=["pear", "apple", "fig"]),
        example("list_item+first_letter", "k", items=["kiwi", "plum"]),
        # the word's letter count is the task itself: constant "4" scores 1/2
        *(example("count_letters", len(word), word=word) for word in ("fig", "pear")),
        # numbers are read as text: the last of the items
        example("min_max", 9, items=[3, 9]),
    ]
    floors = family_floors(examples, demonstrations)
    assert floors == {
        "choice": {"floor": 0.75, "rule": "first option", "examples": 4},  # constant "Lima" 0.25, "Oslo" 0.5
        "count_letters": {"floor": 0.5, "rule": 'constant "4"', "examples": 2},
        "list_item+first_letter": {"floor": 0.5, "rule": "first item, first letter", "examples": 2},
        "min_max": {"floor": 1.0, "rule": "last item", "examples": 1},
        "one_word+count_letters": {"floor": 2 / 3, "rule": 'constant "6"', "examples": 3},
    }
    assert split_floor(floors) == pytest.approx((4 * 0.75 + 2 * 0.5 + 2 * 0.5 + 1.0 + 3 * 2 / 3) / 12)


SHOWN = {  # family -> the fields its check records of what the prompt shows, for the floors' rules
    "choice": {"options"},
    "yes_no": {"options"},
    "compare_numbers": {"options"},
    "extract": {"options"},
    "one_word": {"options", "word"},
    "list_item": {"items"},
    "count_items": {"items"},
    "min_max": {"items"},
    "arithmetic": {"items"},
    "count_letters": {"word"},
    "uppercase": {"word"},
    "first_letter": {"word"},
    "list_item+": {"items"},  # compositions, by their source
    "one_word+": {"word"},
}


def test_the_suite_records_in_each_check_what_its_question_shows(tiny_suite):
    """The floors' rules read the check's `options`, `items` and `word`, not the prompt: a rephrased prompt cannot
    break them. Each value is in the question (yes_no's options excepted: "yes"/"no" are the answers' words)."""
    for split in ("sft", "held_out_entities", "held_out_paraphrases", "held_out_compositions"):
        for row in tiny_suite[split]:
            check, question = json.loads(row["check"]), row["messages"][0]["content"]
            family = row["family"].split("+")[0] + "+" if "+" in row["family"] else row["family"]
            assert {field for field in ("options", "items", "word") if field in check} == SHOWN.get(family, set()), row
            values = [
                *check.get("options", []),
                *check.get("items", []),
                *([check["word"]] if "word" in check else []),
            ]
            if row["family"] != "yes_no":
                assert all(str(value) in question for value in values), row
