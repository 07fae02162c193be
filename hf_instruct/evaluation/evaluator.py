"""`hf-instruct evaluate`: answer held-out instructions with a model and score the answers exactly.

On the embedded suite (`hf_instruct.data.suite`), every example carries a verifier, so the score is instruction
accuracy per task family on each held-out split (unseen entities, unseen paraphrases, unseen compositions), with its
95 % Wilson interval, each row's verdict (for paired comparisons) and, given the training demonstrations, the floor
that trivial answer rules reach (`floors.py`). On a
data file of instructions with reference answers, the scores are exact match and ROUGE-L against the references
(plus instruction accuracy when the records carry the suite's `check` field). With a reward model, also the mean
reward of the answers and their win rate against the references (and against a baseline model's answers).
"""

import json
import os
import random
from collections import Counter
from pathlib import Path

import datasets

from ..data.instructions import to_messages
from ..data.records import OnBadRecord, normalize_records
from ..data.suite import SuiteConfig, build_suite, verify
from ..utils import load_reward_model, markdown_table, table_cell
from .best_of_n import best_of_n_answers
from .floors import family_floors, split_floor
from .generation import generate_answers, load_chat_model
from .metric_modules import load_metric
from .statistics import wilson_interval

SUITE_SPLITS = ("held_out_entities", "held_out_paraphrases", "held_out_compositions")
# The columns of the results table, in this order, when any split has them.
METRICS = (
    "accuracy",
    "interval",
    "floor",
    "exact_match",
    "rouge_l",
    "mean_reward",
    "win_rate_vs_reference",
    "win_rate_vs_baseline",
    "any_sample_correct",
)


def load_scored_examples(source: str | os.PathLike | list, on_bad_record: OnBadRecord = "error") -> datasets.Dataset:
    """Instruction records with a reference answer (any shape `hf_instruct.data` knows), keeping the suite's
    `family` and `check` fields when present; bad records stop the run or, with "skip", are counted and skipped."""

    def scored(record: dict) -> dict:
        return {
            "messages": to_messages(record),
            "family": record.get("family", "all"),
            "check": record.get("check", ""),
        }

    return normalize_records(source, scored, on_bad_record, desc="Reading evaluation examples")


def suite_examples(config: SuiteConfig | None = None) -> dict[str, datasets.Dataset]:
    suite = build_suite(config, SUITE_SPLITS)
    return {split: suite[split] for split in SUITE_SPLITS}


def evaluate_model(
    model_path: str | os.PathLike,
    splits: dict[str, datasets.Dataset],
    reward_model: str | None = None,
    baseline_path: str | None = None,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    limit: int | None = None,
    demonstrations: datasets.Dataset | None = None,
    prompt_format: str = "chat",
    best_of_n: int | None = None,
    best_of_n_reward_model: str | os.PathLike | None = None,
    best_of_n_temperature: float = 1.0,
    seed: int = 0,
) -> dict:
    """Scores of `model_path` on each split (every row, or the first `limit`): {"model", "splits": {split: {metric:
    value, "per_family": {...}, "answers": [...], "samples": [...]}}}. Where the examples carry the suite's checks,
    also "interval" (the accuracy's 95 % Wilson interval), "correct" (each row's verdict), "family_examples" (rows
    per family) and, given the training `demonstrations`, "floor" and "floor_per_family" (`floors.py`).
    `prompt_format="plain"` asks a base model in the question-and-answer text its corpus holds ("Question:
    ...\nAnswer:") instead of the chat template; the baseline is asked the same way. `best_of_n` answers each prompt
    with the best of that many samples by `best_of_n_reward_model` (`best_of_n_answers`, at `best_of_n_temperature`,
    seeded by `seed`) instead of greedily; where the checks decide, "any_sample_correct" is then the share of prompts
    with at least one right sample (pass@n): what a reward model that always picks a right answer would reach."""
    if best_of_n is not None and (best_of_n < 1 or not best_of_n_reward_model or prompt_format != "chat"):
        raise ValueError(
            f"best_of_n={best_of_n}: needs n >= 1, best_of_n_reward_model (the reward model that picks the best "
            f"answer) and the chat prompt format (got {prompt_format!r}), as the reward model reads chats."
        )
    model, tokenizer = load_chat_model(model_path)
    judge = load_reward_model(best_of_n_reward_model) if best_of_n else None
    baseline = load_chat_model(baseline_path) if baseline_path else None
    results = {"model": str(model_path), "splits": {}}
    names = ("instruction_accuracy", "exact_match", "rouge_l") + (("win_rate",) if reward_model else ())
    metrics = {name: load_metric(name) for name in names}  # once, not per split
    for name, examples in splits.items():
        if limit is not None:
            examples = examples.select(range(min(limit, len(examples))))
        if len(examples) == 0:
            raise ValueError(f"The evaluation split {name!r} has no examples.")
        prompts = [messages[:-1] for messages in examples["messages"]]
        references = [messages[-1]["content"] for messages in examples["messages"]]
        if judge:
            chosen = best_of_n_answers(
                model,
                tokenizer,
                *judge,
                prompts,
                best_of_n,
                max_new_tokens,
                batch_size,
                temperature=best_of_n_temperature,
                seed=seed,
            )
            answers = [choice.answer for choice in chosen]
        else:
            answers = [
                a[0]
                for a in generate_answers(
                    model, tokenizer, prompts, max_new_tokens, batch_size, prompt_format=prompt_format
                )
            ]
        scores = {"examples": len(answers)}
        if any(examples["check"]):
            accuracy = metrics["instruction_accuracy"].compute(
                predictions=answers, references=examples["check"], families=examples["family"]
            )
            scores.update(accuracy)
            scores["correct"] = [
                verify(check, answer) for check, answer in zip(examples["check"], answers, strict=True)
            ]
            scores["interval"] = list(wilson_interval(sum(scores["correct"]), len(answers)))
            scores["family_examples"] = dict(sorted(Counter(examples["family"]).items()))
            if demonstrations is not None:
                scores["floor_per_family"] = family_floors(examples, demonstrations)
                scores["floor"] = split_floor(scores["floor_per_family"])
            if judge:
                right = [
                    any(verify(check, sample) for sample in choice.samples)
                    for check, choice in zip(examples["check"], chosen, strict=True)
                ]
                scores["any_sample_correct"] = sum(right) / len(right)
        scores.update(metrics["exact_match"].compute(predictions=answers, references=references))
        scores.update(metrics["rouge_l"].compute(predictions=answers, references=references))
        if reward_model:
            win_rate = metrics["win_rate"]
            against_references = win_rate.compute(
                predictions=answers, references=references, prompts=prompts, reward_model=reward_model
            )
            scores["mean_reward"] = against_references["mean_reward_a"]
            scores["win_rate_vs_reference"] = against_references["win_rate"]
            if baseline:
                baseline_answers = [
                    a[0]
                    for a in generate_answers(
                        *baseline, prompts, max_new_tokens, batch_size, prompt_format=prompt_format
                    )
                ]
                scores["win_rate_vs_baseline"] = win_rate.compute(
                    predictions=answers, references=baseline_answers, prompts=prompts, reward_model=reward_model
                )["win_rate"]
        scores["answers"] = answers
        scores["samples"] = [
            {"prompt": prompt[-1]["content"], "answer": answer, "reference": reference}
            for prompt, answer, reference in list(zip(prompts, answers, references, strict=True))[:5]
        ]
        results["splits"][name] = scores
    return results


def few_shot(examples: datasets.Dataset, solved: datasets.Dataset, shots: int = 3, seed: int = 0) -> datasets.Dataset:
    """`examples` with `shots` solved conversations of the same family before each one (drawn from `solved`, never
    the example itself): how a base model is given its best chance, as in the GPT-3 paper's few-shot setting. A
    demonstration with a recorded `flaw` (its writer's mistake, data/suite/flaws.py) is not solved: never a shot."""
    rng = random.Random(seed)
    by_family: dict[str, list] = {}
    for row in solved:
        if not row.get("flaw"):
            by_family.setdefault(row["family"], []).append(row["messages"])

    def prompted(row: dict) -> dict:
        candidates = [messages for messages in by_family.get(row["family"], []) if messages != row["messages"]]
        if len(candidates) < shots:
            raise ValueError(f"few_shot: only {len(candidates)} solved examples of family {row['family']!r}.")
        return {
            **row,
            "messages": [m for messages in rng.sample(candidates, shots) for m in messages] + row["messages"],
        }

    return datasets.Dataset.from_list([prompted(row) for row in examples])


def write_results(results: dict, output_dir: str | os.PathLike) -> tuple[Path, Path]:
    """`eval_results.json` and `eval_results.md` (a table per split, per-family accuracy, sample answers)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path, markdown_path = output_dir / "eval_results.json", output_dir / "eval_results.md"
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    markdown_path.write_text(results_markdown(results))
    return json_path, markdown_path


def results_markdown(results: dict) -> str:
    """`eval_results.md`: the scores of every split (accuracy with its 95 % interval and the trivial-rule floor),
    the accuracy per task family with its rows in brackets, the sample answers."""
    splits = results["splits"]
    metrics = [metric for metric in METRICS if any(metric in scores for scores in splits.values())]
    rows = [
        [name, str(scores["examples"]), *(_cell(scores.get(m)) for m in metrics)] for name, scores in splits.items()
    ]
    lines = [f"# Evaluation of {results['model']}", "", *markdown_table(["split", "examples", *metrics], rows)]
    families = sorted({family for scores in splits.values() for family in scores.get("per_family", {})})
    if families:
        rows = [[family, *(_family_cell(scores, family) for scores in splits.values())] for family in families]
        lines += ["", "## Instruction accuracy per task family", "", *markdown_table(["family", *splits], rows)]
    for name, scores in splits.items():
        columns = ["prompt", "answer", "reference"]
        rows = [[table_cell(sample[column], 100) for column in columns] for sample in scores["samples"]]
        lines += ["", f"## Sample answers: {name}", "", *markdown_table(columns, rows)]
    return "\n".join(lines) + "\n"


def _cell(value) -> str:
    if isinstance(value, list):  # an interval
        return f"[{value[0]:.3f}, {value[1]:.3f}]"
    return "–" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def _family_cell(scores: dict, family: str) -> str:
    """A family's accuracy on a split and the rows it rests on: "0.850 (20)"."""
    accuracy = scores.get("per_family", {}).get(family)
    rows = scores.get("family_examples", {}).get(family)
    return _cell(accuracy) + (f" ({rows})" if rows is not None else "")
