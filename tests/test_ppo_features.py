"""PPO's features beyond the core algorithm (issue 28, items 4, 6, 8, 10, 12-15): chunked generation, reward models
with their own tokenizers, several weighted reward sources and an HTTP reward, the rollout layout, reward
normalisation and clipping, KL estimators and the KL loss, critic warmup, approx-KL early stopping, and what is logged
and sent to the trackers. Each test shows the effect on a tiny model in one or two PPO steps."""

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from conftest import TEXT, flags, tiny_config, tiny_llama_config, torchrun_stage
from test_ppo import (
    STAGE_RUN,
    even_tokens,
    logged,
    multi_process_ppo_flags,
    parity_reward_model_dir,
    ppo_args,
    ppo_trainer,
    prompts,
    prompts_and_corpus,
    rollout_batch,
)
from torch.optim.optimizer import register_optimizer_step_post_hook
from transformers import LlamaForSequenceClassification, TrainerCallback, TrainerControl, TrainerState
from transformers.integrations import MLflowCallback, TensorBoardCallback, TrackioCallback, WandbCallback

from hf_instruct import InstructGPTForCausalLM, InstructGPTForSequenceClassification, PPOConfig, train_tokenizer
from hf_instruct.stages import PPOStageConfig, run_ppo
from hf_instruct.trainers.ppo_rewards import RemoteRewardModel, RunningMoments
from hf_instruct.trainers.ppo_tracking import send_sample_table
from hf_instruct.trainers.ppo_utils import explained_variance, kl_estimate, reward_texts
from hf_instruct.utils import reward_scores


def constant(value: float):
    def reward(prompts, completions, completion_ids):
        return [value] * len(completions)

    reward.__name__ = f"constant_{value}"
    return reward


def value_model() -> InstructGPTForSequenceClassification:
    return InstructGPTForSequenceClassification(tiny_config(num_labels=1))


def recording(generate, sizes: list[int]):
    """`generate` that notes how many prompts each call takes."""

    def wrapped(**kwargs):
        sizes.append(len(kwargs["input_ids"]))
        return generate(**kwargs)

    return wrapped


TRACKER_CALLBACKS = {
    "wandb": WandbCallback,
    "trackio": TrackioCallback,
    "tensorboard": TensorBoardCallback,
    "mlflow": MLflowCallback,
}


class SampleRecorder(TrainerCallback):
    """A tracker stand-in: keeps the sample tables PPO sends (`send_sample_table`)."""

    def __init__(self):
        self.tables = []

    def on_samples(self, args, state, control, key, samples, **kwargs):
        self.tables.append((state.global_step, key, samples))


# ---------------------------------------------------------------- item 4: generation in chunks


def test_generation_runs_in_chunks_that_give_what_one_generate_gives(tmp_path, tokenizer):
    """`generate` takes at most rollout_generation_batch_size prompts; without sampling (no random draws to share
    out) the chunks, each stopping at its own longest answer, give exactly the rollout of one generate."""
    rollouts, stop = [], None
    for size in (None, 3, None):
        torch.manual_seed(2)
        trainer = ppo_trainer(tokenizer, ppo_args(tmp_path, rollout_generation_batch_size=size))
        trainer.generation_config.do_sample = False
        if stop is not None:  # a token the first greedy pass wrote early: answers of several lengths
            trainer.generation_config.eos_token_id, trainer.stop_token_ids = [stop], torch.tensor([stop])
        sizes = []
        trainer.policy.generate = recording(trainer.policy.generate, sizes)
        rollouts.append(trainer._rollout(rollout_batch(trainer, 8)))
        assert sizes == ([3, 3, 2] if size == 3 else [8])
        stop = int(rollouts[0].responses[0, 2])
    _, chunked, whole = rollouts
    assert chunked.mask.sum(1).unique().numel() > 1  # answers of different lengths: padding at work
    for name in ("responses", "mask", "logprobs", "values", "scores", "ended"):
        torch.testing.assert_close(getattr(chunked, name), getattr(whole, name), msg=name)


# ---------------------------------------------------------------- item 6: the reward model's vocabulary and pad id


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(pad_token_id=5), r"reward_model.config.pad_token_id=5 but its tokenizer pads with id 0"),
        (dict(vocab_size=100), r"reward_model has 100 token embeddings but its tokenizer writes ids up to 3\d\d"),
    ],
    ids=["pad-id", "vocabulary"],
)
def test_a_reward_model_that_cannot_read_the_tokenizer_is_refused(tmp_path, tokenizer, overrides, message):
    """A stock classifier pools on its last token that is not its pad id: with another pad id than the tokenizer's,
    right padding is pooled as if it were the answer. Refused without reward_processing_class too."""
    reward_model = LlamaForSequenceClassification(tiny_llama_config(num_labels=1, **overrides))
    with pytest.raises(ValueError, match=message):
        ppo_trainer(tokenizer, ppo_args(tmp_path), reward_model=reward_model)


# ---------------------------------------------------------------- item 8 and 10: what is logged, and when


def test_raw_scores_and_the_missing_eos_penalty_are_logged_apart(tmp_path, tokenizer):
    """objective/scores and eval_reward are the reward sources' scores; the penalty for cut-off answers has keys of
    its own, so a policy that only learns to stop shows no reward gain."""
    args = ppo_args(tmp_path, max_steps=1, response_length=4, missing_eos_penalty=1.0)
    trainer = ppo_trainer(tokenizer, args, reward_model=constant(0.5), eval_dataset=prompts(8))
    trainer.train()
    (entry,) = [entry for entry in trainer.state.log_history if "objective/scores" in entry]
    assert entry["objective/scores"] == 0.5
    assert entry["val/ended_fraction"] < 1.0  # some answers were cut off and paid the penalty
    assert math.isclose(entry["objective/missing_eos_penalty"], 1.0 - entry["val/ended_fraction"], abs_tol=1e-6)
    metrics = trainer.evaluate()
    assert metrics["eval_reward"] == 0.5
    assert math.isclose(metrics["eval_missing_eos_penalty"], 1.0 - metrics["eval_ended_fraction"], abs_tol=1e-6)


def test_evaluate_leaves_the_pending_training_statistics_to_the_next_log(tmp_path, tokenizer):
    """eval_steps 3, logging_steps 2: the evaluation at step 3 logs its own metrics only, and the log at step 4
    averages the statistics of steps 3 and 4 (the reward here is the step number at the rollout: 2 and 3); the
    per-step minimum and maximum are the least and greatest over the logged steps."""
    trainer = None

    def step_number(prompts, completions, completion_ids):
        return [float(trainer.state.global_step)] * len(completions)

    args = ppo_args(
        tmp_path, max_steps=4, logging_steps=2, eval_strategy="steps", eval_steps=3, missing_eos_penalty=0.0
    )
    trainer = ppo_trainer(tokenizer, args, reward_model=step_number, eval_dataset=prompts(4))
    trainer.train()
    evaluations = {entry["step"]: entry for entry in trainer.state.log_history if "eval_reward" in entry}
    assert evaluations[3]["eval_reward"] == 3.0 and "objective/scores" not in evaluations[3]
    training = {entry["step"]: entry for entry in trainer.state.log_history if "objective/scores" in entry}
    assert [training[2]["objective/scores"], training[4]["objective/scores"]] == [0.5, 2.5]
    assert [training[4]["objective/scores_min"], training[4]["objective/scores_max"]] == [2.0, 3.0]
    assert [training[2]["episode"], training[4]["episode"]] == [32.0, 64.0]


# ---------------------------------------------------------------- item 15: observability


def test_statistics_of_rewards_advantages_returns_and_values_and_sample_tables_reach_the_trackers(tmp_path, tokenizer):
    recorder = SampleRecorder()
    args = ppo_args(tmp_path, max_steps=2, num_sample_completions=2)
    trainer = ppo_trainer(tokenizer, args, eval_dataset=prompts(4), callbacks=[recorder])
    rollouts = []
    rollout = trainer._rollout
    trainer._rollout = lambda *a, **k: rollouts.append(rollout(*a, **k)) or rollouts[-1]
    trainer.train()
    entry = [entry for entry in trainer.state.log_history if "objective/scores" in entry][0]
    first = rollouts[0]
    mask = first.mask.bool()
    advantages = (first.returns - first.values)[mask]
    expected = {
        "objective/scores_std": first.raw_scores.std(correction=0),
        "objective/scores_min": first.raw_scores.min(),
        "objective/scores_max": first.raw_scores.max(),
        "val/advantages_mean": advantages.mean(),
        "val/advantages_std": advantages.std(correction=0),
        "val/returns_mean": first.returns[mask].mean(),
        "val/returns_std": first.returns[mask].std(correction=0),
        "val/values_mean": first.values[mask].mean(),
        "val/explained_variance": 1 - advantages.var(correction=0) / first.returns[mask].var(correction=0),
    }
    for name, value in expected.items():
        assert math.isclose(entry[name], value.item(), rel_tol=1e-4, abs_tol=1e-6), name
    assert entry["episode"] == 16.0

    metrics = trainer.evaluate()
    assert 0 < metrics["eval_mean_response_length"] <= 12 and 0 <= metrics["eval_ended_fraction"] <= 1
    assert [(step, key, len(rows)) for step, key, rows in recorder.tables] == [
        (0, "train/samples", 2),
        (1, "train/samples", 2),
        (2, "eval/samples", 2),
    ]
    row = recorder.tables[0][2][0]
    assert set(row) == {"step", "prompt", "completion", "score"}
    assert row["prompt"].startswith("user\n Say something")
    assert len((tmp_path / "eval_samples.jsonl").read_text().splitlines()) == 2
    assert len((tmp_path / "samples.jsonl").read_text().splitlines()) == 4


class Backend:
    """Stands in for a tracker module that is not installed (wandb, trackio, mlflow) or a TensorBoard writer."""

    def __init__(self):
        self.calls = []

    def Table(self, columns, data):  # noqa: N802 (wandb.Table, trackio.Table)
        return ("table", columns, data)

    def log(self, values):
        self.calls.append(("log", values))

    def add_text(self, key, text, step):
        self.calls.append(("add_text", key, text, step))

    def log_table(self, data, artifact_file):
        self.calls.append(("log_table", data, artifact_file))


def test_sample_tables_take_each_trackers_form(tmp_path):
    """W&B and Trackio get a Table, TensorBoard Markdown text, MLflow a JSON table artifact (the packages are not
    installed here, so their modules are stood in for; the callbacks are transformers' own)."""
    callbacks = {name: object.__new__(cls) for name, cls in TRACKER_CALLBACKS.items()}
    backends = {name: Backend() for name in callbacks}
    for name, callback in callbacks.items():
        callback._initialized, callback._auto_end_run = True, False  # (MLflowCallback.__del__ reads the latter)
        setattr(
            callback,
            {"wandb": "_wandb", "trackio": "_trackio", "mlflow": "_ml_flow"}.get(name, "tb_writer"),
            backends[name],
        )
    state = TrainerState()
    state.global_step = 7
    samples = [{"step": 7, "prompt": "Say | it", "completion": " fox", "score": 0.5}]
    send_sample_table(list(callbacks.values()), ppo_args(tmp_path), state, TrainerControl(), "train/samples", samples)
    columns, row = ["step", "prompt", "completion", "score"], [7, "Say | it", " fox", 0.5]
    for name in ("wandb", "trackio"):
        assert backends[name].calls == [("log", {"train/samples": ("table", columns, [row]), "train/global_step": 7})]
    table = "| step | prompt | completion | score |\n|---|---|---|---|\n| 7 | Say \\| it | fox | 0.5 |"
    assert backends["tensorboard"].calls == [("add_text", "train/samples", table, 7)]
    data = {"step": [7], "prompt": ["Say | it"], "completion": [" fox"], "score": [0.5]}
    assert backends["mlflow"].calls == [("log_table", data, "train/samples/step_0000007.json")]


def test_explained_variance():
    returns, mask = torch.tensor([[1.0, 2.0, 3.0, 99.0]]), torch.tensor([[1, 1, 1, 0]])
    assert explained_variance(returns, returns, mask).item() == 1.0
    assert explained_variance(torch.full_like(returns, 2.0), returns, mask).item() == 0.0
    # residuals (0.5, 0, −0.5): variance 1/6 against 2/3
    torch.testing.assert_close(
        explained_variance(torch.tensor([[0.5, 2.0, 3.5, 0.0]]), returns, mask), torch.tensor(0.75)
    )


# ---------------------------------------------------------------- item 12: reward sources


@pytest.fixture(scope="module")
def other_tokenizer(tokenizer):
    """A tokenizer with another vocabulary than the policy's (same special tokens at ids 0-4)."""
    other = train_tokenizer([TEXT.upper()] * 20, vocab_size=300, show_progress=False)
    assert other.get_vocab() != tokenizer.get_vocab()
    return other


def test_a_reward_model_with_its_own_tokenizer_scores_the_text_with_it(tmp_path, tokenizer, other_tokenizer):
    """Rewards go through text: a reward model reads prompt + answer with its own tokenizer. Only the default value
    model (a copy of the reward model) needs the policy's vocabulary, so then a value_model is asked for."""
    reward_model = InstructGPTForSequenceClassification(tiny_config(num_labels=1, vocab_size=300)).eval()
    with pytest.raises(ValueError, match="pass a value_model built on the policy's vocabulary"):
        ppo_trainer(
            tokenizer,
            ppo_args(tmp_path),
            reward_model=reward_model,
            reward_processing_class=other_tokenizer,
            value_model=None,
        )
    trainer = ppo_trainer(
        tokenizer, ppo_args(tmp_path), reward_model=reward_model, reward_processing_class=other_tokenizer
    )
    rollout = trainer._rollout(rollout_batch(trainer, 4))
    completions = [
        tokenizer.decode(row[:length], skip_special_tokens=True)
        for row, length in zip(rollout.responses.tolist(), rollout.mask.sum(1).tolist(), strict=True)
    ]
    texts = reward_texts(other_tokenizer, prompts(4)["prompt"], completions, rollout.ended.tolist())
    expected = reward_scores(reward_model, other_tokenizer, texts)
    assert other_tokenizer(texts)["input_ids"] != tokenizer(texts)["input_ids"]
    torch.testing.assert_close(rollout.raw_scores, expected)


def test_several_reward_sources_sum_with_their_weights(tmp_path, tokenizer, other_tokenizer):
    reward_model = InstructGPTForSequenceClassification(tiny_config(num_labels=1)).eval()
    sources = [even_tokens, reward_model, constant(1.0)]
    with pytest.raises(ValueError, match="reward_weights has 2 weights for 3 reward sources"):
        ppo_trainer(tokenizer, ppo_args(tmp_path, reward_weights=[1.0, 2.0]), reward_model=sources)
    with pytest.raises(ValueError, match="reward_processing_class has 2 tokenizers for 3 reward sources"):
        ppo_trainer(tokenizer, ppo_args(tmp_path), reward_model=sources, reward_processing_class=[None, None])
    args = ppo_args(tmp_path, reward_weights=[2.0, 0.5, -1.0])
    trainer = ppo_trainer(tokenizer, args, reward_model=sources)
    rollout = trainer._rollout(rollout_batch(trainer, 4))
    lengths = rollout.mask.sum(1).tolist()
    completion_ids = [row[:length] for row, length in zip(rollout.responses.tolist(), lengths, strict=True)]
    completions = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
    texts = reward_texts(tokenizer, prompts(4)["prompt"], completions, rollout.ended.tolist())
    even = torch.tensor(even_tokens(None, None, completion_ids))
    expected = 2.0 * even + 0.5 * reward_scores(reward_model, tokenizer, texts) - 1.0
    torch.testing.assert_close(rollout.raw_scores, expected)


class RewardServer(ThreadingHTTPServer):
    """A reward server in OpenRLHF's remote_rm_url shape on 127.0.0.1: POST {"query": [...], ...} -> {"rewards":
    [...]}, the reward being a query's length / 100. It keeps the bodies it received."""

    daemon_threads = True

    def __init__(self):
        self.bodies = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(handler):
                body = json.loads(handler.rfile.read(int(handler.headers["Content-Length"])))
                self.bodies.append(body)
                answer = json.dumps({"rewards": [len(query) / 100 for query in body["query"]]}).encode()
                handler.send_response(200)
                handler.send_header("Content-Type", "application/json")
                handler.send_header("Content-Length", str(len(answer)))
                handler.end_headers()
                handler.wfile.write(answer)

            def log_message(handler, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)


@pytest.fixture
def reward_server():
    server = RewardServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_a_reward_served_over_http(tmp_path, tokenizer, reward_server):
    url = f"http://127.0.0.1:{reward_server.server_address[1]}/get_reward"
    remote = RemoteRewardModel(url, tokenizer=tokenizer, batch_size=3, timeout=10)
    trainer = ppo_trainer(
        tokenizer, ppo_args(tmp_path, max_steps=1, per_device_train_batch_size=4), reward_model=remote
    )
    rollouts = []
    rollout = trainer._rollout
    trainer._rollout = lambda *a, **k: rollouts.append(rollout(*a, **k)) or rollouts[-1]
    trainer.train()
    assert [len(body["query"]) for body in reward_server.bodies] == [3, 1]  # 4 answers in requests of 3
    queries = [query for body in reward_server.bodies for query in body["query"]]
    sent_prompts = [prompt for body in reward_server.bodies for prompt in body["prompts"]]
    assert all(prompt in prompts()["prompt"] for prompt in sent_prompts)  # the conversations as given
    for query, prompt in zip(queries, sent_prompts, strict=True):  # rendered with the chat template, then the answer
        assert query.startswith(tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True))
    torch.testing.assert_close(rollouts[0].raw_scores, torch.tensor([len(query) / 100 for query in queries]))

    closed = RemoteRewardModel("http://127.0.0.1:9/get_reward", tokenizer=tokenizer, timeout=1, retries=0)
    with pytest.raises(RuntimeError, match="did not answer"):
        closed(["a"], ["b"])


def test_hf_instruct_ppo_scores_with_a_remote_reward_url(tmp_path, tiny_model_dir, tokenizer, reward_server):
    """`--remote_reward_url`: the stage's answers are scored by the server (one request of 4 queries per step), not
    by the reward model, whose folder only starts the value model."""
    prompt_file, _ = prompts_and_corpus(tmp_path, 16)
    config = PPOStageConfig(
        model_name_or_path=str(tiny_model_dir),
        reward_model_path=str(parity_reward_model_dir(tmp_path, tokenizer)),
        remote_reward_url=f"http://127.0.0.1:{reward_server.server_address[1]}/get_reward",
        train_files=[str(prompt_file)],
        eval_examples=0,
        output_dir=str(tmp_path / "ppo"),
        max_steps=2,
        per_device_train_batch_size=4,
        num_mini_batches=1,
        response_length=4,
        logging_steps=1,
        **STAGE_RUN,
    )
    history = json.loads((Path(run_ppo(config)) / "trainer_state.json").read_text())["log_history"]
    scores = [entry["objective/scores"] for entry in history if "objective/scores" in entry]
    assert [len(body["query"]) for body in reward_server.bodies] == [4, 4]
    served = [sum(len(query) / 100 for query in body["query"]) / 4 for body in reward_server.bodies]
    assert scores == pytest.approx(served, abs=1e-6)


# ---------------------------------------------------------------- item 13: the rollout layout


def test_a_rollout_of_its_own_size_with_several_answers_per_prompt(tmp_path, tokenizer):
    """rollout_batch_size 4 prompts × num_samples_per_prompt 4 = 16 answers per iteration, learnt from in
    minibatches of per_device_train_batch_size 8 answers (so 2 per epoch)."""
    with pytest.raises(ValueError, match="Leave num_mini_batches at 1"):
        ppo_args(tmp_path, rollout_batch_size=4, num_mini_batches=2)
    with pytest.raises(ValueError, match="= 12 answers must be a multiple of per_device_train_batch_size=8"):
        ppo_args(
            tmp_path, rollout_batch_size=3, num_samples_per_prompt=4, per_device_train_batch_size=8, num_mini_batches=1
        )
    args = ppo_args(
        tmp_path,
        max_steps=1,
        rollout_batch_size=4,
        num_samples_per_prompt=4,
        per_device_train_batch_size=8,
        num_mini_batches=1,
        num_ppo_epochs=2,
        rollout_forward_batch_size=6,
    )
    assert (args.mini_batch_size, args.rollout_size) == (8, 16)
    trainer = ppo_trainer(tokenizer, args)
    rollouts, minibatches = [], []
    rollout, update = trainer._rollout, trainer._update
    trainer._rollout = lambda *a, **k: rollouts.append(rollout(*a, **k)) or rollouts[-1]
    trainer._update = lambda model, rollout, index: minibatches.append(len(index)) or update(model, rollout, index)
    trainer.train()
    (rollout,) = rollouts
    prompt_ids = rollout.query_responses[:, : rollout.prompt_length]
    assert len(prompt_ids) == 16 and len(prompt_ids.unique(dim=0)) == 4
    assert all(torch.equal(prompt_ids[i], prompt_ids[i - i % 4]) for i in range(16))  # a prompt's answers together
    assert len(rollout.responses.unique(dim=0)) > 4  # sampled apart
    assert minibatches == [8, 8, 8, 8]  # 2 epochs × 2 minibatches of 8 answers
    assert logged(trainer, "episode") == [16.0]


# ---------------------------------------------------------------- item 14: reward shaping, KL, update schedule


def test_rewards_are_normalised_by_running_moments_and_clipped(tmp_path, tokenizer):
    args = ppo_args(tmp_path, reward_normalization=True, missing_eos_penalty=0.0)
    trainer = ppo_trainer(tokenizer, args)
    rollout = trainer._rollout(rollout_batch(trainer, 8))
    raw = rollout.raw_scores
    assert trainer.reward_moments.count == 8
    torch.testing.assert_close(rollout.scores, (raw - raw.mean()) / (raw.std(correction=0) + 1e-8))
    evaluation = trainer._rollout(rollout_batch(trainer, 8), evaluating=True)
    assert trainer.reward_moments.count == 8  # evaluation reads the moments, does not add to them
    torch.testing.assert_close(evaluation.scores, (evaluation.raw_scores - raw.mean()) / raw.std(correction=0))

    args = ppo_args(tmp_path, reward_normalization=True, missing_eos_penalty=0.0, reward_clip=0.5)
    trainer = ppo_trainer(tokenizer, args)
    rollout = trainer._rollout(rollout_batch(trainer, 8))
    assert rollout.scores.abs().max() == 0.5
    normalised = trainer.reward_moments.normalize(rollout.raw_scores)
    torch.testing.assert_close(rollout.scores, normalised.clamp(-0.5, 0.5))


def test_running_moments_merge_batches_exactly():
    moments, values = RunningMoments(), torch.tensor([1.0, 2.0, 4.0, 8.0, 16.0], dtype=torch.float64)
    for batch in (values[:2], values[2:]):
        moments.update(len(batch), batch.sum().item(), (batch**2).sum().item())
    assert moments.count == 5 and math.isclose(moments.mean, values.mean().item())
    assert math.isclose(moments.var, values.var(correction=0).item(), rel_tol=1e-9)


def test_a_resumed_run_normalises_with_the_running_moments_and_episode_count_it_stopped_with(tmp_path, tokenizer):
    settings = dict(max_steps=2, reward_normalization=True, save_strategy="steps", save_steps=1)
    whole = ppo_trainer(tokenizer, ppo_args(tmp_path / "whole", **settings))
    whole.train()
    assert whole.reward_moments.count == 32
    resumed = ppo_trainer(tokenizer, ppo_args(tmp_path / "resumed", **settings))
    resumed.train(resume_from_checkpoint=str(tmp_path / "whole" / "checkpoint-1"))
    assert resumed.reward_moments.count == whole.reward_moments.count == 32
    assert math.isclose(resumed.reward_moments.mean, whole.reward_moments.mean, rel_tol=1e-6)
    assert math.isclose(resumed.reward_moments.var, whole.reward_moments.var, rel_tol=1e-6)
    assert logged(resumed, "episode") == [16.0, 32.0]  # step 1's log comes with the checkpoint


def test_kl_estimators():
    logprobs, ref_logprobs = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    torch.testing.assert_close(kl_estimate(logprobs, ref_logprobs, "k1"), torch.tensor([math.log(2)]))
    # r = π_ref/π = 0.5: r − 1 − log r = −0.5 + log 2
    torch.testing.assert_close(kl_estimate(logprobs, ref_logprobs, "k3"), torch.tensor([math.log(2) - 0.5]))
    assert (kl_estimate(torch.randn(100), torch.randn(100), "k3") >= 0).all()
    with pytest.raises(ValueError, match=r"kl_estimator must be one of \('k1', 'k3'\), got 'k2'"):
        PPOConfig(output_dir="x", kl_estimator="k2")


def test_the_kl_penalty_in_the_loss_leaves_the_rewards_and_adds_beta_times_the_kl(tmp_path, tokenizer):
    """kl_penalty "loss": the rollout's rewards carry no KL (its advantages are those of β = 0), and the policy's loss
    gains β × the mean per-token k3 estimate of the updated policy against the reference."""
    rollouts, losses = {}, {}
    for name, settings in {
        "no kl": dict(kl_coef=0.0),
        "kl loss": dict(kl_coef=0.5, kl_penalty="loss", kl_estimator="k3"),
        "kl reward": dict(kl_coef=0.5),
    }.items():
        torch.manual_seed(7)
        reference = InstructGPTForCausalLM(tiny_config())
        trainer = ppo_trainer(tokenizer, ppo_args(tmp_path, **settings), ref_model=reference)
        torch.manual_seed(1)
        rollout = trainer._rollout(rollout_batch(trainer, 8))
        rows = torch.arange(8)
        losses[name] = trainer._ppo_loss(trainer.model, rollout, rows, None)[0].item()
        rollouts[name] = rollout
    torch.testing.assert_close(rollouts["kl loss"].advantages, rollouts["no kl"].advantages)
    assert not torch.allclose(rollouts["kl reward"].advantages, rollouts["no kl"].advantages)
    loss_rollout = rollouts["kl loss"]
    k3 = kl_estimate(loss_rollout.logprobs, loss_rollout.ref_logprobs, "k3")
    expected_kl = (k3 * loss_rollout.mask).sum() / loss_rollout.mask.sum()
    assert expected_kl > 0
    assert math.isclose(losses["kl loss"] - losses["no kl"], 0.5 * expected_kl.item(), rel_tol=1e-4)


@pytest.mark.parametrize("warmup", [0, 1])
def test_critic_warmup_trains_the_value_model_alone(tmp_path, tokenizer, warmup):
    args = ppo_args(tmp_path, max_steps=1, per_device_train_batch_size=8, critic_warmup_steps=warmup, weight_decay=0.1)
    trainer = ppo_trainer(tokenizer, args)
    policy = {name: value.clone() for name, value in trainer.policy.state_dict().items()}
    value_head = trainer.value_model.score.weight.detach().clone()
    trainer.train()
    unchanged = all(torch.equal(value, trainer.policy.state_dict()[name]) for name, value in policy.items())
    assert unchanged == (warmup == 1)
    assert not torch.equal(trainer.value_model.score.weight, value_head)


def test_early_stopping_on_approx_kl_skips_the_remaining_epochs(tmp_path, tokenizer):
    """The first epoch's first update has approx-KL 0 (π = π_old), its second one more: with max_approx_kl tiny the
    run stops after one epoch of four."""
    runs = {}
    for limit in (None, 1e-12):
        args = ppo_args(tmp_path, max_steps=1, num_ppo_epochs=4, num_mini_batches=2, max_approx_kl=limit)
        trainer = ppo_trainer(tokenizer, args)
        steps = []
        hook = register_optimizer_step_post_hook(lambda optimizer, args, kwargs, steps=steps: steps.append(1))
        try:
            trainer.train()
        finally:
            hook.remove()
        runs[limit] = (logged(trainer, "policy/ppo_epochs"), len(steps))
    assert runs == {None: ([4.0], 8), 1e-12: ([1.0], 2)}


# ---------------------------------------------------------------- all of them under DDP


@pytest.mark.slow
def test_the_options_run_under_two_process_ddp(tmp_path, tiny_model_dir, tokenizer):
    """The options that add collective calls (running reward moments, the approx-KL stop, the min/max logs) or change
    what each rank does (critic warmup, several answers per prompt, generation chunks, the KL loss, an evaluation
    between logs): both ranks end with the same weights."""
    reward_dir = parity_reward_model_dir(tmp_path, tokenizer)
    output_dir = tmp_path / "ppo-ddp"
    args = multi_process_ppo_flags(tmp_path, tiny_model_dir, reward_dir, prompts=64)
    args += flags(
        output_dir=output_dir,
        max_steps=3,
        save_strategy="no",
        eval_examples=8,
        eval_strategy="steps",
        eval_steps=3,
        logging_steps=2,
        reward_normalization="true",
        reward_clip=3,
        max_approx_kl=1e-9,
        critic_warmup_steps=1,
        num_samples_per_prompt=2,
        rollout_generation_batch_size=3,
        kl_penalty="loss",
        kl_estimator="k3",
    )
    torchrun_stage("ppo", *args, tmp_path=tmp_path)
