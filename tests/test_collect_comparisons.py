"""Comparisons as InstructGPT collected them (`hf-instruct collect_comparisons`): the simulated labeler's ranking and
disagreement rate, a prompt's pairs as one group, a collection interrupted and resumed, the reward trainer's grouped
batches and per-prompt loss, and the pipeline's run between SFT and reward."""

import json
import math
import random
from functools import partial
from itertools import combinations
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import SMOKE_TRAINING
from datasets import Dataset
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
from trl import RewardConfig, RewardTrainer

from hf_instruct.cli import main
from hf_instruct.data import load_preference_dataset
from hf_instruct.data.labeler import rank_answers, simulated_labeler, well_formed
from hf_instruct.data.suite import SuiteConfig, build_suite
from hf_instruct.evaluation.generation import SeededSampling
from hf_instruct.pipeline import PipelineConfig, data_files, reads_from, runs, stage_config
from hf_instruct.stages import (
    CollectComparisonsConfig,
    RewardStageConfig,
    parse_config,
    run_collect_comparisons,
    run_reward,
)
from hf_instruct.stages.collect_comparisons import COMPARISONS_FILE, STATE_FILE
from hf_instruct.stages.loading import load_held_out
from hf_instruct.trainers import GroupedBatchSampler, GroupedRewardTrainer

NUMBER = {"kind": "number", "answer": 17}


def test_the_labeler_ranks_passing_answers_first_then_well_formed_then_short():
    answers = ["The answer is 17.", "", "23", "17.", "Sure! Let me think it through: the smallest is 17.", " 17 "]
    ranked = rank_answers(answers, NUMBER, random.Random(0))
    assert [(a.text, a.rank, a.passes, a.well_formed) for a in ranked] == [
        ("17", 1, True, True),  # passes, and shorter than "17."
        ("17.", 2, True, True),
        ("23", 3, False, True),  # wrong, but the number that was asked for
        ("The answer is 17.", 4, False, False),  # the right value inside a sentence: off the asked format
        ("Sure! Let me think it through: the smallest is 17.", 5, False, False),  # rambles longer
    ]  # the empty answer is left out: nothing to read
    pairs = simulated_labeler(answers, json.dumps(NUMBER), random.Random(0), disagreement=0.0)
    assert [(c.chosen.rank, c.rejected.rank, c.flipped) for c in pairs] == [
        (better, worse, False) for better, worse in combinations(range(1, 6), 2)
    ]


def test_well_formed_is_the_asked_shape_whatever_the_value():
    bullets = {"kind": "list", "style": "bullet", "count": 2, "pool": ["cat", "dog", "owl"]}
    assert well_formed(bullets, "- cat\n- fox") and not well_formed(bullets, "cat, dog")
    assert not well_formed(bullets, "- cat\n- dog\n- owl")  # three items where two were asked
    assert well_formed({"kind": "yes_no", "answer": "no"}, "Yes.") and not well_formed(
        {"kind": "yes_no", "answer": "no"}, "True."
    )
    capitals = {"kind": "exact", "answer": "CARROTS", "case": True}
    assert well_formed(capitals, "PEAS") and not well_formed(capitals, "peas")
    keys = {"kind": "json", "answer": {"name": "Ann", "age": 3}}
    assert well_formed(keys, '{"name": "Bo", "age": 9}') and not well_formed(keys, '{"name": "Ann"}')


def test_ties_are_broken_by_the_seeded_rng_and_identical_answers_give_no_pair():
    orders = {tuple(a.text for a in rank_answers(["23", "31"], NUMBER, random.Random(seed))) for seed in range(20)}
    assert orders == {("23", "31"), ("31", "23")}  # two wrong numbers: either order, by the seed
    assert rank_answers(["23", "31"], NUMBER, random.Random(5)) == rank_answers(["23", "31"], NUMBER, random.Random(5))
    pairs = simulated_labeler(["5", " 5", "6", "17"], NUMBER, random.Random(0), disagreement=0.0)
    assert len(pairs) == math.comb(3, 2)  # "5" twice is one distinct answer
    assert all(c.chosen.text != c.rejected.text for c in pairs)
    assert simulated_labeler(["5", "5", "5", "5"], NUMBER, random.Random(0)) == []


def test_the_disagreement_rate_is_honoured():
    rng = random.Random(1)
    answers = ["17", "17.", "23", "The answer is 17.", "no idea at all"]
    for rate in (0.0, 0.16, 0.3):
        judgements = [c for _ in range(2000) for c in simulated_labeler(answers, NUMBER, rng, rate)]
        flipped = [c.flipped for c in judgements]
        assert all(c.flipped == (c.chosen.rank > c.rejected.rank) for c in judgements)
        n, expected = len(flipped), rate
        tolerance = 4 * math.sqrt(expected * (1 - expected) / n)  # 4 standard deviations of the binomial rate
        assert abs(sum(flipped) / n - expected) <= tolerance, (rate, sum(flipped) / n)
    assert not any(c.flipped for c in simulated_labeler(answers, NUMBER, rng, 0.0))


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> Path:
    """The tiny suite's comparison prompts, with their checks."""
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    build_suite(SuiteConfig.tiny(), ["comparisons"])["comparisons"].to_json(path)
    return path


def collect(model_dir, prompts, output_dir, labeler=simulated_labeler, **fields) -> Path:
    fields = {"max_prompts": 12, "generation_batch_size": 4, "max_new_tokens": 8, "report_to": "none", **fields}
    config = CollectComparisonsConfig(
        model_name_or_path=str(model_dir), train_files=[str(prompts)], output_dir=str(output_dir), **fields
    )
    run_collect_comparisons(config, labeler=labeler)
    return Path(output_dir) / COMPARISONS_FILE


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_prompts_pairs_share_its_group_and_every_distinct_pair_is_there(tiny_model_dir, prompts, tmp_path):
    rows = rows_of(collect(tiny_model_dir, prompts, tmp_path / "out", num_samples=4))
    suite = [json.loads(line) for line in prompts.read_text().splitlines()][:12]
    groups = {}
    for row in rows:
        groups.setdefault(row["group"], []).append(row)
        source = suite[row["group"]]  # the group is the prompt's index
        assert row["prompt"] == source["prompt"]
        assert (row["family"], row["check"]) == (source["family"], source["check"])
        assert row["chosen"][0]["role"] == row["rejected"][0]["role"] == "assistant"
    assert set(groups) <= set(range(12))
    for group in groups.values():
        answers = {row[side][0]["content"] for row in group for side in ("chosen", "rejected")}
        pairs = {frozenset((row["chosen"][0]["content"], row["rejected"][0]["content"])) for row in group}
        assert len(group) == len(pairs) == math.comb(len(answers), 2) and len(answers) <= 4
        ranks = {(row["chosen_rank"], row["rejected_rank"]) for row in group}
        assert len(ranks) == len(group)
        assert all(row["flipped"] == (row["chosen_rank"] > row["rejected_rank"]) for row in group)
    results = json.loads((tmp_path / "out" / "all_results.json").read_text())
    assert (results["prompts"], results["comparisons"]) == (12, len(rows))
    # the file is what `hf-instruct reward` and `dpo` read: TRL's conversational form, groups kept for reward
    assert load_preference_dataset(str(tmp_path / "out" / COMPARISONS_FILE), keep_groups=True)["group"] == [
        row["group"] for row in rows
    ]


def test_an_interrupted_collection_resumes_to_the_file_an_uninterrupted_one_writes(tiny_model_dir, prompts, tmp_path):
    whole = collect(tiny_model_dir, prompts, tmp_path / "whole").read_bytes()

    def interrupted(answers, check, rng, disagreement):
        if interrupted.calls == 6:  # in the second batch of 4 prompts
            raise KeyboardInterrupt
        interrupted.calls += 1
        return simulated_labeler(answers, check, rng, disagreement)

    interrupted.calls = 0
    with pytest.raises(KeyboardInterrupt):
        collect(tiny_model_dir, prompts, tmp_path / "resumed", labeler=interrupted)
    state = json.loads((tmp_path / "resumed" / STATE_FILE).read_text())
    assert state["prompts_done"] == 4 and not (tmp_path / "resumed" / "all_results.json").exists()
    with (tmp_path / "resumed" / COMPARISONS_FILE).open("a") as f:  # a kill in the middle of a batch's write
        f.write('{"prompt": [{"role": "user", "con')
    torch.manual_seed(123)  # the answers do not depend on the process's RNG
    resumed = collect(tiny_model_dir, prompts, tmp_path / "resumed")
    assert resumed.read_bytes() == whole
    assert [json.loads((tmp_path / d / "all_results.json").read_text()) for d in ("whole", "resumed")] == [
        json.loads((tmp_path / "whole" / "all_results.json").read_text())
    ] * 2
    before = resumed.stat().st_mtime_ns
    collect(tiny_model_dir, prompts, tmp_path / "resumed")  # finished: left as it is
    assert resumed.stat().st_mtime_ns == before


def test_a_prompt_file_without_checks_is_one_line_naming_the_field(tiny_model_dir, tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"prompt": [{"role": "user", "content": "Hi"}]}) + "\n")
    with pytest.raises(ValueError, match=r"prompts.jsonl, line 1: field 'check' is missing"):
        collect(tiny_model_dir, path, tmp_path / "out")
    with pytest.raises(ValueError, match="--labeler_disagreement must be between 0 and 0.5"):
        collect(tiny_model_dir, path, tmp_path / "out2", labeler_disagreement=0.7)


def grouped_pairs(sizes: list[int]) -> Dataset:
    """Comparisons whose groups have `sizes` pairs, their rows interleaved (a file need not keep a group together)."""
    rows = [
        {
            "prompt": [{"role": "user", "content": f"Question {group}?"}],
            "chosen": [{"role": "assistant", "content": "yes " * (1 + pair % 3)}],
            "rejected": [{"role": "assistant", "content": f"no {pair}"}],
            "group": group,
        }
        for group, size in enumerate(sizes)
        for pair in range(size)
    ]
    return Dataset.from_list(random.Random(0).sample(rows, len(rows)))


def test_grouped_batches_keep_a_group_together_and_change_between_epochs():
    groups = grouped_pairs([6, 6, 3, 1, 6, 10, 5, 2])["group"]
    sampler = GroupedBatchSampler(groups, batch_size=8, seed=3)
    epochs = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler) and all(len(batch) <= 8 for batch in batches)
        assert sorted(i for batch in batches for i in batch) == list(range(len(groups)))  # every pair once an epoch
        where = {}
        for number, batch in enumerate(batches):
            for i in batch:
                where.setdefault(groups[i], set()).add(number)
        assert all(len(where[g]) == 1 for g in where if g != 5)  # each group in one batch
        assert len(where[5]) == 2  # the 10-pair group: a batch of 8 of its own, and 2 beside other groups
        assert any(sorted(groups[i] for i in batches[b]) == [5] * 8 for b in where[5])
        epochs.append(batches)
    assert epochs[0] != epochs[1] != epochs[2]  # other companions and order each epoch
    sampler.set_epoch(1)
    assert list(sampler) == epochs[1]  # seeded by the epoch: a resumed run sees the same batches


def reward_trainer(model_dir, pairs, trainer_class=GroupedRewardTrainer, **fields):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1)
    args = RewardConfig(output_dir=str(Path(model_dir).parent / "rm"), **{**SMOKE_TRAINING, **fields})
    return trainer_class(model=model, args=args, train_dataset=pairs, processing_class=tokenizer)


def test_the_grouped_loss_is_the_mean_over_prompts_of_each_prompts_mean(tiny_model_dir):
    trainer = reward_trainer(tiny_model_dir, grouped_pairs([3, 1, 2]), per_device_train_batch_size=8)
    (batch,) = list(trainer.get_train_dataloader())
    groups = batch["group"].tolist()
    assert sorted(groups) == [0, 0, 0, 1, 2, 2]
    trainer.model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, dict(batch))
        rewards = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
    chosen, rejected = rewards.chunk(2)
    per_pair = (-F.logsigmoid(chosen - rejected)).tolist()
    by_group = [[loss for loss, g in zip(per_pair, groups, strict=True) if g == group] for group in (0, 1, 2)]
    expected = sum(sum(losses) / len(losses) for losses in by_group) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert abs(expected - sum(per_pair) / 6) > 1e-4  # not the mean over pairs


def test_comparisons_without_groups_train_exactly_as_trls_reward_trainer(tiny_model_dir, prompts):
    pairs = load_preference_dataset(str(prompts)).select(range(24))  # the suite's synthetic comparisons
    losses = []
    for trainer_class in (RewardTrainer, GroupedRewardTrainer):
        torch.manual_seed(0)
        trainer = reward_trainer(tiny_model_dir, pairs, trainer_class, max_length=256)
        trainer.train()
        losses.append([entry["loss"] for entry in trainer.state.log_history if "loss" in entry])
    assert losses[0] == losses[1] and len(losses[0]) == 3


def test_hf_instruct_reward_trains_on_the_collected_comparisons_by_groups(tiny_model_dir, prompts, tmp_path):
    comparisons = collect(tiny_model_dir, prompts, tmp_path / "collected", max_prompts=16)
    output = tmp_path / "reward"
    args = ["reward", "--model_name_or_path", str(tiny_model_dir), "--train_files", str(comparisons)]
    args += ["--output_dir", str(output), "--max_steps", "2", "--per_device_train_batch_size", "8", "--bf16", "false"]
    args += ["--eval_examples", "6", "--max_length", "256", "--report_to", "none", "--save_strategy", "no"]
    assert main(args) == 0
    metrics = json.loads((output / "all_results.json").read_text())
    assert "eval_accuracy" in metrics and "train_loss" in metrics
    # its held-out pairs are whole prompts: no held-out answer was trained on beside its siblings
    config = parse_config(RewardStageConfig, args[1:] + ["--output_dir", str(tmp_path / "other")])
    train, held_out = load_held_out(config, partial(load_preference_dataset, keep_groups=True))
    assert len(held_out) >= 6 and not set(train["group"]) & set(held_out["group"])
    assert len(train) + len(held_out) == len(rows_of(comparisons))


def test_the_pipeline_collects_between_sft_and_reward_when_configured(tmp_path):
    data = data_files(tmp_path / "data")
    config = PipelineConfig(stages={"collect_comparisons": {"max_prompts": 8}})
    assert list(runs(config)) == ["pretrain", "sft", "collect_comparisons", "reward", "ppo", "ppo_no_ptx", "dpo"]
    configs = {name: stage_config(name, config, data, tmp_path) for name in runs(config)}
    collected = str(tmp_path / "collect_comparisons" / COMPARISONS_FILE)
    assert configs["collect_comparisons"].train_files == [str(data["comparison_prompts"])]
    assert configs["collect_comparisons"].model_name_or_path == str(tmp_path / "sft")
    assert configs["reward"].train_files == configs["dpo"].train_files == [collected]
    assert reads_from(configs["reward"], configs) == ["sft", "collect_comparisons"]  # re-run when it is
    unconfigured = PipelineConfig()  # the suite's synthetic comparisons, as before
    assert "collect_comparisons" not in runs(unconfigured)
    assert stage_config("reward", unconfigured, data, tmp_path).train_files == [str(data["comparisons"])]


def test_seeded_sampling_draws_from_softmax_over_temperature_one_generator_per_row():
    probabilities = torch.tensor([0.1, 0.0, 0.6, 0.3])
    scores = probabilities.log().expand(20000, 4)
    for temperature in (1.0, 2.0):
        drawn = SeededSampling(list(range(20000)), temperature)(None, scores)
        assert (drawn.isfinite().sum(dim=1) == 1).all()  # one token left possible per row
        tokens = drawn.argmax(dim=1)
        expected = torch.softmax(scores[0] / temperature, dim=0)
        tolerance = 4 * (expected * (1 - expected) / 20000).sqrt()  # 4 binomial standard deviations
        assert ((torch.bincount(tokens, minlength=4) / 20000 - expected).abs() <= tolerance).all()
        assert not (tokens == 1).any()  # never a token of probability 0
    again = SeededSampling([7, 8], 1.0)(None, scores[:2]).argmax(dim=1)
    assert torch.equal(again, SeededSampling([7, 8], 1.0)(None, scores[:2]).argmax(dim=1))


def test_grouped_reward_training_interrupted_resumes_to_the_same_weights(tiny_model_dir, prompts, tmp_path, caplog):
    """Interrupted after its checkpoint in the first epoch and run again, a grouped reward run ends with the weights of
    an uninterrupted one: the resumed run skips the batches it trained, and the next epoch's are dealt the same."""
    comparisons = collect(tiny_model_dir, prompts, tmp_path / "collected", max_prompts=10)
    fields = dict(model_name_or_path=str(tiny_model_dir), train_files=[str(comparisons)], eval_examples=0)
    fields.update(SMOKE_TRAINING, max_steps=12, save_strategy="steps", save_steps=5, per_device_train_batch_size=8)

    class StopAtStep7(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 7:
                raise KeyboardInterrupt

    run_reward(RewardStageConfig(output_dir=str(tmp_path / "whole"), **fields))
    with pytest.raises(KeyboardInterrupt):
        run_reward(RewardStageConfig(output_dir=str(tmp_path / "resumed"), **fields), callbacks=[StopAtStep7()])
    caplog.clear()
    run_reward(RewardStageConfig(output_dir=str(tmp_path / "resumed"), **fields))
    assert f"reward: resuming from {tmp_path / 'resumed' / 'checkpoint-5'}" in caplog.text
    state = json.loads((tmp_path / "whole" / "trainer_state.json").read_text())
    assert state["epoch"] > 1  # the run crossed an epoch
    expected, actual = (load_file(tmp_path / name / "model.safetensors") for name in ("whole", "resumed"))
    for name, tensor in expected.items():
        torch.testing.assert_close(actual[name], tensor, atol=1e-6, rtol=0, msg=name)
