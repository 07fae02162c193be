"""PPO-ptx: the algorithm's pieces against hand-computed values, and runs that show it learns, mixes in the
pretraining loss, resumes exactly, works with LoRA and refuses bad inputs. GRPO through its stage."""

import copy
import dataclasses
import json
import math
import shutil
from pathlib import Path

import datasets
import pytest
import torch
import yaml
from conftest import REPO, TEXT, deepspeed_stage, flags, tiny_config, torchrun_stage
from peft import AutoPeftModelForCausalLM, LoraConfig, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, Trainer, TrainerCallback
from transformers.modeling_layers import GradientCheckpointingLayer
from trl import RewardConfig, RewardTrainer
from trl.trainer.utils import selective_log_softmax

from hf_instruct import (
    InstructGPTForCausalLM,
    InstructGPTForSequenceClassification,
    PPOConfig,
    PPOTrainer,
    train_tokenizer,
)
from hf_instruct.data import pack_texts
from hf_instruct.evaluation.generation import load_chat_model
from hf_instruct.stages import GRPOStageConfig, PPOStageConfig, run_grpo, run_ppo
from hf_instruct.stages import ppo as ppo_stage
from hf_instruct.trainers.ppo_trainer import Rollout
from hf_instruct.trainers.ppo_utils import (
    KLController,
    clipped_policy_loss,
    clipped_value_loss,
    compute_gae,
    kl_penalised_rewards,
    masked_whiten,
    reward_texts,
    sequence_positions,
)

# ---------------------------------------------------------------- the algorithm against hand-computed values


def test_gae_matches_hand_computed_advantages_and_returns():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 9.0]])
    values = torch.tensor([[0.5, 0.4, 0.3], [0.5, 0.4, 7.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    advantages, returns = compute_gae(rewards, values, mask, gamma=0.9, lam=0.5)
    # row 0: δ2 = 1 − 0.3 = 0.7; δ1 = 0.9·0.3 − 0.4 = −0.13; δ0 = 0.9·0.4 − 0.5 = −0.14
    #        A2 = 0.7; A1 = −0.13 + 0.45·0.7 = 0.185; A0 = −0.14 + 0.45·0.185 = −0.05675
    # row 1 (the third token is padding): δ1 = 1 − 0.4 = 0.6; A1 = 0.6; A0 = −0.14 + 0.45·0.6 = 0.13
    expected_advantages = torch.tensor([[-0.05675, 0.185, 0.7], [0.13, 0.6, 0.0]])
    torch.testing.assert_close(advantages, expected_advantages)
    torch.testing.assert_close(returns, (expected_advantages + values) * mask)


def test_clipped_policy_loss_takes_the_pessimistic_side_of_each_token():
    ratios = torch.tensor([[1.5, 1.5, 0.5, 0.5]])
    advantages = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    loss, stats = clipped_policy_loss(ratios.log(), torch.zeros(1, 4), advantages, torch.ones(1, 4), cliprange=0.2)
    # per token max(−A·r, −A·clip(r, 0.8, 1.2)): −1.2 (clipped), 1.5, −0.5, 0.8 (clipped)
    torch.testing.assert_close(loss, torch.tensor((-1.2 + 1.5 - 0.5 + 0.8) / 4))
    torch.testing.assert_close(stats["policy/clipfrac"], torch.tensor(0.5))
    torch.testing.assert_close(stats["val/ratio"], torch.tensor(1.0))
    masked_loss, _ = clipped_policy_loss(
        ratios.log(), torch.zeros(1, 4), advantages, torch.tensor([[1, 1, 0, 0]]), 0.2
    )
    torch.testing.assert_close(masked_loss, torch.tensor((-1.2 + 1.5) / 2))


def test_clipped_value_loss_keeps_the_larger_error():
    values, old_values, returns = torch.tensor([[0.5, 0.1]]), torch.zeros(1, 2), torch.ones(1, 2)
    loss, stats = clipped_value_loss(values, old_values, returns, torch.ones(1, 2), cliprange_value=0.2)
    # token 0: V clipped to 0.2 → max(0.25, 0.64) = 0.64; token 1: inside the range → 0.81
    torch.testing.assert_close(loss, torch.tensor(0.5 * (0.64 + 0.81) / 2))
    torch.testing.assert_close(stats["val/clipfrac"], torch.tensor(0.5))


def test_kl_penalty_per_token_and_score_on_the_last_response_token():
    logprobs = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0]])
    ref_logprobs = torch.tensor([[-1.5, -2.0, -2.0], [-1.0, -2.0, -1.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    rewards, kl = kl_penalised_rewards(torch.tensor([2.0, -1.0]), logprobs, ref_logprobs, mask, kl_coef=0.1)
    torch.testing.assert_close(kl, torch.tensor([[0.5, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    torch.testing.assert_close(rewards, torch.tensor([[-0.05, 2.0, 0.0], [0.0, -0.1, -1.0]]))


def test_kl_controller_fixed_and_adaptive():
    fixed = KLController(0.1)
    fixed.update(current_kl=50.0, episodes=1000)
    assert fixed.value == 0.1
    adaptive = KLController(0.1, target=6.0, horizon=1000)
    adaptive.update(current_kl=12.0, episodes=100)  # error clipped to +0.2: β × (1 + 0.2 · 100/1000)
    assert math.isclose(adaptive.value, 0.1 * 1.02)
    adaptive.update(current_kl=5.4, episodes=100)  # error −0.1
    assert math.isclose(adaptive.value, 0.1 * 1.02 * 0.99)


def test_masked_whiten():
    values, mask = torch.tensor([[1.0, 3.0, 100.0]]), torch.tensor([[1, 1, 0]])
    torch.testing.assert_close(masked_whiten(values, mask), torch.tensor([[-1.0, 1.0, 0.0]]), atol=1e-6, rtol=0)


# ---------------------------------------------------------------- runs


def even_tokens(prompts, completions, completion_ids):
    """A synthetic reward: the share of even token ids in the completion."""
    return [sum(token % 2 == 0 for token in ids) / len(ids) for ids in completion_ids]


def prompts(count: int = 64) -> datasets.Dataset:
    return datasets.Dataset.from_list(
        [{"prompt": [{"role": "user", "content": f"Say something {i}"}]} for i in range(count)]
    )


def ppo_args(output_dir: Path, **overrides) -> PPOConfig:
    args = dict(
        output_dir=str(output_dir),
        max_steps=4,
        per_device_train_batch_size=16,
        num_mini_batches=2,
        learning_rate=3e-3,
        lr_scheduler_type="constant",
        response_length=12,
        temperature=1.0,
        kl_coef=0.05,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        num_sample_completions=0,
    )
    return PPOConfig(**{**args, **overrides})


def ppo_trainer(tokenizer, args: PPOConfig, **overrides) -> PPOTrainer:
    torch.manual_seed(args.seed)
    value_model = InstructGPTForSequenceClassification(tiny_config(num_labels=1))
    kwargs = dict(
        model=InstructGPTForCausalLM(tiny_config()),
        args=args,
        processing_class=tokenizer,
        reward_model=even_tokens,
        value_model=value_model,
        train_dataset=prompts(),
    )
    return PPOTrainer(**{**kwargs, **overrides})


def logged(trainer, name: str) -> list[float]:
    return [entry[name] for entry in trainer.state.log_history if name in entry]


def lora_config(**overrides) -> LoraConfig:
    return LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM", **overrides)


def rollout_batch(trainer: PPOTrainer, count: int = 8) -> dict:
    """The first `count` training prompts, collated as the Trainer feeds them to a rollout."""
    return trainer._prepare_inputs(trainer._left_pad([trainer.train_dataset[i] for i in range(count)]))


def test_ppo_raises_the_reward_while_the_kl_stays_bounded(tmp_path, tokenizer):
    trainer = ppo_trainer(tokenizer, ppo_args(tmp_path, max_steps=30, logging_steps=5, kl_coef=0.02))
    trainer.train()
    scores, kls = logged(trainer, "objective/scores"), logged(trainer, "objective/kl")
    assert scores[0] < 0.6  # a random policy: about half of its tokens are even
    assert scores[-1] > 0.85, scores
    assert max(kls) < 15.0, kls  # nats per 12-token response, held by the β = 0.02 penalty
    for name in (
        "objective/rlhf_reward",
        "objective/entropy",
        "policy/clipfrac",
        "val/ratio",
        "loss/policy",
        "loss/value",
    ):
        assert len(logged(trainer, name)) == 6, name


def pretraining_blocks(tokenizer) -> datasets.Dataset:
    with pytest.warns(UserWarning, match="do not fill"):
        return pack_texts(datasets.Dataset.from_dict({"text": [TEXT] * 30}), tokenizer, block_size=32)


def test_ptx_keeps_the_pretraining_loss_lower_than_plain_ppo(tmp_path, tokenizer):
    blocks = pretraining_blocks(tokenizer)
    held_out = torch.tensor(blocks[-8:]["input_ids"])
    losses = {}
    for ptx_coef in (0.0, 1.0):
        args = ppo_args(tmp_path / str(ptx_coef), max_steps=6, ptx_coef=ptx_coef, ptx_batch_size=4)
        trainer = ppo_trainer(tokenizer, args, ptx_dataset=blocks.select(range(len(blocks) - 8)))
        trainer.train()
        with torch.no_grad():
            losses[ptx_coef] = trainer.policy(input_ids=held_out, labels=held_out).loss.item()
        assert (len(logged(trainer, "loss/ptx")) > 0) is (ptx_coef > 0)
    assert losses[1.0] < losses[0.0] - 1.0, losses


class CrashAt(TrainerCallback):
    """Stands in for a kill: training ends abruptly after `step`, without a final save."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt


def test_a_crashed_run_resumes_to_the_same_policy_value_model_and_kl_coefficient(tmp_path, tokenizer):
    """Resume restores policy, value model, optimiser, scheduler, RNG, β and the prompt and pretraining positions:
    the result equals an uninterrupted run to 1e-6 (one CPU process computes deterministically)."""
    blocks = pretraining_blocks(tokenizer)
    settings = dict(
        max_steps=6,
        save_strategy="steps",
        save_steps=2,
        ptx_coef=0.5,
        ptx_batch_size=2,
        kl_target=1.0,
        kl_horizon=50,
        lr_scheduler_type="linear",
        per_device_train_batch_size=8,
    )
    reference = ppo_trainer(tokenizer, ppo_args(tmp_path / "reference", **settings), ptx_dataset=blocks)
    reference.train()

    crashed = ppo_trainer(tokenizer, ppo_args(tmp_path / "resumed", **settings), ptx_dataset=blocks)
    crashed.add_callback(CrashAt(step=3))
    with pytest.raises(KeyboardInterrupt):
        crashed.train()
    resumed = ppo_trainer(tokenizer, ppo_args(tmp_path / "resumed", **settings), ptx_dataset=blocks)
    assert resumed.kl_controller.value == 0.05
    resumed.train(resume_from_checkpoint=str(tmp_path / "resumed" / "checkpoint-2"))

    assert resumed.kl_controller.value == reference.kl_controller.value != 0.05
    for expected, actual in [(reference.policy, resumed.policy), (reference.value_model, resumed.value_model)]:
        actual_state = actual.state_dict()
        for name, tensor in expected.state_dict().items():
            torch.testing.assert_close(actual_state[name], tensor, atol=1e-6, rtol=0, msg=name)
    assert logged(resumed, "objective/scores")[-1] == logged(reference, "objective/scores")[-1]


@pytest.mark.parametrize("use_peft", [False, True], ids=["full", "lora"])
def test_the_reference_is_the_starting_policy(tmp_path, tokenizer, use_peft):
    """The first rollout has KL exactly 0 (reference = a frozen copy, or the policy with its adapter disabled)."""
    trainer = ppo_trainer(tokenizer, ppo_args(tmp_path, max_steps=3), peft_config=lora_config() if use_peft else None)
    trainer.train()
    kls = logged(trainer, "objective/kl")
    assert kls[0] == 0.0 and abs(kls[-1]) > 1e-4  # then the policy moves away (a sampled KL may be negative)
    trainer.save_model()
    assert (tmp_path / "adapter_model.safetensors").exists() is use_peft
    assert (tmp_path / "model.safetensors").exists() is not use_peft
    if not use_peft:  # the saved model is the policy alone, loadable as a causal LM
        assert set(load_file(tmp_path / "model.safetensors")) == set(trainer.policy.state_dict())


def policy_with_a_loaded_adapter(folder: Path) -> dict:
    """A policy loaded by from_pretrained(<adapter folder>), as PPOTrainer arguments: base + a frozen LoRA adapter."""
    InstructGPTForCausalLM(tiny_config()).save_pretrained(folder / "base")
    adapter = get_peft_model(AutoModelForCausalLM.from_pretrained(folder / "base"), lora_config())
    adapter.save_pretrained(folder / "adapter")
    return dict(model=AutoModelForCausalLM.from_pretrained(folder / "adapter"), peft_config=lora_config())


BAD_INPUTS = {  # what is wrong: (PPOConfig fields, PPOTrainer arguments made in a scratch folder, what the error says)
    "reward model with another tokenizer": (
        {},
        lambda folder: dict(
            reward_model=InstructGPTForSequenceClassification(tiny_config(num_labels=1)),
            reward_processing_class=train_tokenizer(["another corpus " * 50], vocab_size=300, show_progress=False),
            value_model=None,
        ),
        "reward model's tokenizer differs from the policy's, and the default value model",
    ),
    "reward function without a value model": (
        {},
        lambda folder: dict(value_model=None),
        "With a reward function, pass a value_model",
    ),
    "reward model with two labels": (
        {},
        lambda folder: dict(
            reward_model=InstructGPTForSequenceClassification(tiny_config(num_labels=2)), value_model=None
        ),
        "reward_model has num_labels=2",
    ),
    "value model with two labels": (
        {},
        lambda folder: dict(value_model=InstructGPTForSequenceClassification(tiny_config(num_labels=2))),
        "value_model has num_labels=2",
    ),
    "ptx_coef without a ptx_dataset": ({"ptx_coef": 0.5}, lambda folder: {}, "ptx_coef=0.5 needs a ptx_dataset"),
    "ptx_dataset without input_ids": (
        {"ptx_coef": 0.5},
        lambda folder: dict(ptx_dataset=datasets.Dataset.from_dict({"text": [TEXT]})),
        "ptx_dataset needs an `input_ids` column",
    ),
    "policy with an adapter loaded by from_pretrained": (
        {},
        policy_with_a_loaded_adapter,
        "carries a LoRA adapter loaded by from_pretrained",
    ),
    "frozen policy": (
        {},
        lambda folder: dict(model=InstructGPTForCausalLM(tiny_config()).requires_grad_(False)),
        "The policy has no trainable parameters",
    ),
    "peft_config in inference mode": (  # as one read from a saved adapter is: get_peft_model freezes the adapter
        {},
        lambda folder: dict(peft_config=lora_config(inference_mode=True)),
        "The policy has no trainable parameters",
    ),
    "frozen value model": (
        {},
        lambda folder: dict(
            value_model=InstructGPTForSequenceClassification(tiny_config(num_labels=1)).requires_grad_(False)
        ),
        "The value_model has no trainable parameters",
    ),
    "no prompts": ({}, lambda folder: dict(train_dataset=prompts().select([])), "train_dataset is empty"),
    "every prompt too long": ({"max_prompt_length": 2}, lambda folder: {}, "longer than max_prompt_length=2 tokens"),
    "batch not divisible into minibatches": (
        {"num_mini_batches": 3},
        lambda folder: {},
        "must be a multiple of num_mini_batches=3",
    ),
}


@pytest.mark.parametrize("bad_input", BAD_INPUTS)
def test_a_bad_input_is_refused_with_the_fix(tmp_path, tokenizer, bad_input):
    settings, make_arguments, message = BAD_INPUTS[bad_input]
    with pytest.raises(ValueError, match=message):
        ppo_trainer(tokenizer, ppo_args(tmp_path, **settings), **make_arguments(tmp_path))


# ---------------------------------------------------------------- settings users pick every day


@pytest.mark.parametrize("use_peft", [False, True], ids=["full", "lora"])
def test_activation_checkpointing_trains_the_same_policy(tmp_path, tokenizer, use_peft):
    """The Trainer turns it on with every_n_layers and offload: policy and value model recompute their layers in the
    backward pass, and end with the weights of a run without it."""
    policies = []
    for checkpointing in (False, True):
        args = ppo_args(
            tmp_path / str(checkpointing),
            max_steps=2,
            per_device_train_batch_size=4,
            activation_checkpointing=checkpointing,
        )
        trainer = ppo_trainer(tokenizer, args, peft_config=lora_config() if use_peft else None)
        trainer.train()
        layers = [module for module in trainer.model.modules() if isinstance(module, GradientCheckpointingLayer)]
        assert len(layers) == 4 and all(layer.gradient_checkpointing is checkpointing for layer in layers)
        policies.append(trainer.policy.state_dict())
    for name, tensor in policies[0].items():
        torch.testing.assert_close(policies[1][name], tensor, atol=1e-6, rtol=0, msg=name)


@pytest.mark.parametrize("use_peft", [False, True], ids=["full", "lora"])
def test_the_models_own_sampling_settings_do_not_change_rollouts(tmp_path, tokenizer, use_peft):
    """generate() applies the model's generation_config to every field the rollout's config leaves None (Hub chat
    models ship repetition_penalty, min_p...): answers would come from another distribution than the softmax(logits /
    T) of PPO's log-probs. The same seed samples the same answers with and without them; the model keeps them."""
    peft_config = lora_config() if use_peft else None
    trainer = ppo_trainer(tokenizer, ppo_args(tmp_path, temperature=0.7), peft_config=peft_config)
    batch = rollout_batch(trainer)
    torch.manual_seed(1)
    plain = trainer._rollout(batch)
    settings = dict(repetition_penalty=1.3, no_repeat_ngram_size=1, min_p=0.3, suppress_tokens=list(range(5, 160)))
    trainer.policy.generation_config.update(**settings)
    torch.manual_seed(1)
    shaped = trainer._rollout(batch)
    torch.testing.assert_close(shaped.responses, plain.responses, rtol=0, atol=0)
    torch.testing.assert_close(shaped.logprobs, plain.logprobs)
    assert trainer.policy.generation_config.repetition_penalty == 1.3


class FirstIsBest(TrainerCallback):
    """A stand-in metric by which the first evaluated checkpoint is the best (loading the last would prove nothing)."""

    def on_evaluate(self, args, state, control, metrics, **kwargs):
        metrics["eval_earliness"] = -state.global_step


def test_load_best_model_at_end_loads_the_best_checkpoints_policy_and_value_model(tmp_path, tokenizer):
    settings = dict(
        eval_strategy="steps", eval_steps=2, save_strategy="steps", save_steps=2, load_best_model_at_end=True
    )
    assert ppo_args(tmp_path, **settings).metric_for_best_model == "reward"  # by default: evaluate() has no loss
    args = ppo_args(
        tmp_path,
        max_steps=4,
        per_device_train_batch_size=4,
        num_mini_batches=1,
        per_device_eval_batch_size=4,
        metric_for_best_model="earliness",
        **settings,
    )
    trainer = ppo_trainer(tokenizer, args, eval_dataset=prompts(4), callbacks=[FirstIsBest()])
    trainer.train()
    assert Path(trainer.state.best_model_checkpoint).name == "checkpoint-2"
    for folder, model in [("", trainer.policy), ("value_model", trainer.value_model)]:
        actual = model.state_dict()
        for name, tensor in load_file(tmp_path / "checkpoint-2" / folder / "model.safetensors").items():
            torch.testing.assert_close(actual[name], tensor, atol=0, rtol=0, msg=name)
        last = load_file(tmp_path / "checkpoint-4" / folder / "model.safetensors")
        assert any(not torch.equal(actual[name], tensor) for name, tensor in last.items())


def test_a_cut_off_answer_is_scored_as_cut_off(tmp_path, tokenizer):
    """The chat template closes every answer with <|im_end|>: an answer cut off at response_length is scored without
    it, and pays missing_eos_penalty (on by default)."""
    prompt = [{"role": "user", "content": "Say something"}]
    texts = reward_texts(tokenizer, [prompt, prompt], [" The fox.", " The fox"], [True, False])
    assert texts == [
        "<|im_start|>user\n Say something<|im_end|>\n<|im_start|>assistant\n The fox.<|im_end|>\n",
        "<|im_start|>user\n Say something<|im_end|>\n<|im_start|>assistant\n The fox",
    ]
    args = ppo_args(tmp_path)
    assert args.missing_eos_penalty == 1.0
    trainer = ppo_trainer(tokenizer, args, reward_model=lambda prompts, completions, completion_ids: [0.0] * 8)
    rollout = trainer._rollout(rollout_batch(trainer))
    torch.testing.assert_close(rollout.scores, -(~rollout.ended).float())


def test_text_prompts_are_scored_as_reward_training_reads_them(tmp_path, tokenizer):
    """RewardTrainer appends EOS to a plain-text answer: a finished answer's reward is the reward model's score of
    RewardTrainer's tokens, a cut-off one's of those tokens without the EOS. Prompts given only as token ids keep
    their chat markup."""
    reward_model = InstructGPTForSequenceClassification(tiny_config(num_labels=1)).eval()
    text_prompts, answers, ended = ["The quick brown", "A model learns"], [" fox jumps.", " only what"], [True, False]
    reward_trainer = RewardTrainer(
        model=copy.deepcopy(reward_model),
        args=RewardConfig(output_dir=str(tmp_path / "reward"), report_to="none", use_cpu=True, bf16=False),
        processing_class=tokenizer,
        train_dataset=datasets.Dataset.from_dict({"prompt": text_prompts, "chosen": answers, "rejected": answers}),
    )
    chosen = reward_trainer.train_dataset["chosen_ids"]
    read = [ids if finished else ids[:-1] for ids, finished in zip(chosen, ended, strict=True)]
    assert read[0][-1] == tokenizer.eos_token_id
    expected = torch.stack([reward_model(input_ids=torch.tensor([ids])).logits[0, 0] for ids in read])

    trainer = ppo_trainer(tokenizer, ppo_args(tmp_path), reward_model=reward_model)
    rows = [tokenizer(answer, add_special_tokens=False)["input_ids"] for answer in answers]
    rows[0].append(tokenizer.eos_token_id)  # the first answer ended; the second was cut off
    width = max(len(row) for row in rows)
    responses = torch.tensor([row + [tokenizer.pad_token_id] * (width - len(row)) for row in rows])
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows])
    batch = trainer._left_pad([{"input_ids": tokenizer(prompt)["input_ids"]} for prompt in text_prompts])
    scores = trainer._scores(
        text_prompts, batch["input_ids"], batch["attention_mask"], responses, mask, torch.tensor(ended)
    )
    torch.testing.assert_close(scores, expected.detach())

    seen = []

    def record(prompts, completions, completion_ids):
        seen.extend(prompts)
        return [0.0] * len(prompts)

    ids_only = prompts(8).map(
        lambda row: tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, return_dict=True),
        remove_columns=["prompt"],
    )
    trainer = ppo_trainer(tokenizer, ppo_args(tmp_path), train_dataset=ids_only, reward_model=record)
    trainer._rollout(rollout_batch(trainer))
    assert seen[0] == "<|im_start|>user\n Say something 0<|im_end|>\n<|im_start|>assistant\n"


def test_the_value_model_copied_from_a_frozen_reward_model_trains(tmp_path, tokenizer):
    reward_model = InstructGPTForSequenceClassification(tiny_config(num_labels=1)).requires_grad_(False)
    args = ppo_args(tmp_path, max_steps=1, per_device_train_batch_size=4, num_mini_batches=1)
    trainer = ppo_trainer(tokenizer, args, reward_model=reward_model, value_model=None)
    assert all(parameter.requires_grad for parameter in trainer.value_model.parameters())
    before = trainer.value_model.score.weight.detach().clone()
    trainer.train()
    assert not torch.equal(trainer.value_model.score.weight, before)
    assert not any(parameter.requires_grad for parameter in reward_model.parameters())


def test_an_adaptive_kl_whose_horizon_outlasts_the_run_is_warned_about(tmp_path, tokenizer, recwarn):
    """β moves by at most 20 % × answers per step / kl_horizon per step: a horizon longer than the run fixes it."""
    with pytest.warns(UserWarning, match=r"kl_horizon=10000 is longer than this run \(64 answers\).*×1\.00"):
        ppo_trainer(tokenizer, ppo_args(tmp_path, kl_target=6.0))  # 4 steps × 16 prompts
    recwarn.clear()
    ppo_trainer(tokenizer, ppo_args(tmp_path, kl_target=6.0, kl_horizon=16))
    assert not [warning for warning in recwarn if "kl_horizon" in str(warning.message)]


def test_recipes_with_an_adaptive_kl_let_it_move_within_their_run():
    """Every shipped PPO setting with kl_target samples more answers than its kl_horizon."""
    settings = [yaml.safe_load(path.read_text()) for path in REPO.glob("recipes/*/ppo/config.yaml")]
    for path in REPO.glob("recipes/*/pipeline.yaml"):
        stages = yaml.safe_load(path.read_text())["stages"]
        settings += [stage for name, stage in stages.items() if name.startswith("ppo")]
    adaptive = [setting for setting in settings if setting.get("kl_target") is not None]
    assert len(adaptive) >= 3
    for setting in adaptive:
        answers = setting["max_steps"] * setting["per_device_train_batch_size"]
        assert setting.get("kl_horizon", PPOConfig.kl_horizon) <= answers, setting


# ---------------------------------------------------------------- scale and memory


def test_log_probs_come_from_the_response_positions_alone_and_equal_the_full_logit_computation(tmp_path, tokenizer):
    """Rollouts and updates run the LM head over the positions that predict the response only (logits_to_keep):
    the same log-probs as from the logits of every position."""
    trainer = ppo_trainer(tokenizer, ppo_args(tmp_path, temperature=0.7))
    lm_head_rows = []  # positions per row that each LM head call projects, policy's and reference's
    for model in (trainer.policy, trainer.ref_model):
        model.lm_head.register_forward_hook(lambda module, args, output: lm_head_rows.append(args[0].shape[1]))
    rollout = trainer._rollout(rollout_batch(trainer))
    response_length = rollout.responses.shape[1]
    # generation projects one position per token; scoring by policy and reference the response's R + 1
    assert lm_head_rows[-2:] == [response_length + 1] * 2 and max(lm_head_rows) == response_length + 1
    with torch.no_grad():
        full = trainer.policy(
            input_ids=rollout.query_responses,
            attention_mask=rollout.attention_mask,
            position_ids=sequence_positions(rollout.attention_mask),
        ).logits
    predicting = full[:, rollout.prompt_length - 1 : -1]
    expected = selective_log_softmax(predicting / 0.7, rollout.responses) * rollout.mask
    torch.testing.assert_close(rollout.logprobs, expected)
    logits, values, _ = trainer.model(rollout.query_responses, rollout.attention_mask, response_length)  # an update's
    torch.testing.assert_close(logits.detach(), predicting)
    assert values.shape == rollout.values.shape


def test_rollout_results_do_not_depend_on_the_forward_batch_size(tmp_path, tokenizer):
    """Policy, reference, value and reward model score a rollout in forwards of rollout_forward_batch_size sequences:
    one at a time gives what the whole batch in one forward gives."""
    rollouts = []
    for size in (1, 64):
        torch.manual_seed(5)
        reference = InstructGPTForCausalLM(tiny_config())  # another model than the policy: a KL that is not 0
        reward_model = InstructGPTForSequenceClassification(tiny_config(num_labels=1))
        args = ppo_args(tmp_path, rollout_forward_batch_size=size)
        trainer = ppo_trainer(tokenizer, args, ref_model=reference, reward_model=reward_model)
        torch.manual_seed(1)
        rollouts.append(trainer._rollout(rollout_batch(trainer)))
    assert rollouts[0].kl.abs().sum() > 0
    for field in dataclasses.fields(Rollout):
        torch.testing.assert_close(getattr(rollouts[0], field.name), getattr(rollouts[1], field.name), msg=field.name)


def test_gradient_accumulation_gives_the_update_of_the_whole_minibatch(tmp_path, tokenizer):
    """Each micro-batch's loss weighs its share of the minibatch's response tokens (and pretraining rows): policy and
    value model end as after unaccumulated updates, and the logged loss is the same."""
    blocks = pretraining_blocks(tokenizer)
    trainers, forwards = [], []
    for steps in (1, 4):
        torch.manual_seed(3)
        policy = InstructGPTForCausalLM(tiny_config())
        policy.generation_config.eos_token_id = list(range(2, 320, 8))  # answers of many lengths: unequal shares
        args = ppo_args(
            tmp_path / str(steps),
            max_steps=1,
            per_device_train_batch_size=8,
            gradient_accumulation_steps=steps,
            ptx_coef=0.5,
            ptx_batch_size=4,
            # SGD, not Adam: Adam scales a near-zero gradient's rounding noise up to a whole learning-rate step, and
            # the summation order of a matmul differs with its batch size on some CPUs (AMX)
            optim="sgd",
        )
        trainer = ppo_trainer(tokenizer, args, model=policy, ptx_dataset=blocks)
        trainer.model.register_forward_pre_hook(lambda module, args, steps=steps: forwards.append(steps))
        trainer.train()
        trainers.append(trainer)
    whole, accumulated = trainers
    assert logged(whole, "val/mean_response_length")[0] < 8
    assert accumulated.args.gradient_accumulation_steps == 1  # the Trainer's loop sees one PPO iteration per step
    updates = args.num_ppo_epochs * args.num_mini_batches
    assert forwards.count(1) == 1 + updates and forwards.count(4) == 1 + 4 * updates
    for expected, actual in [(whole.policy, accumulated.policy), (whole.value_model, accumulated.value_model)]:
        actual_state = actual.state_dict()
        for name, tensor in expected.state_dict().items():
            torch.testing.assert_close(actual_state[name], tensor, atol=1e-5, rtol=0, msg=name)
    assert logged(accumulated, "loss") == pytest.approx(logged(whole, "loss"), rel=1e-5)
    with pytest.raises(
        ValueError,
        match="per_device_train_batch_size / num_mini_batches = 8 must be a multiple of gradient_accumulation_steps=3",
    ):
        ppo_args(tmp_path, gradient_accumulation_steps=3)


def test_the_value_model_has_its_own_learning_rate_and_gradient_clipping(tmp_path, tokenizer):
    """value_learning_rate and value_max_grad_norm: a large critic gradient is clipped to its own norm and does not
    shrink the policy's step (one clip over both would)."""
    args = ppo_args(
        tmp_path,
        optim="sgd",
        learning_rate=1e-3,
        value_learning_rate=1e-2,
        max_grad_norm=0.5,
        value_max_grad_norm=2.0,
        weight_decay=0.1,
    )
    trainer = ppo_trainer(tokenizer, args)
    optimizer = trainer.create_optimizer()
    value_parameters = set(trainer.value_model.parameters())
    for group in optimizer.param_groups:
        in_value_model = {parameter in value_parameters for parameter in group["params"]}
        assert len(in_value_model) == 1 and group["lr"] == (1e-2 if in_value_model.pop() else 1e-3)
    assert sorted(group["weight_decay"] for group in optimizer.param_groups) == [0.0, 0.0, 0.1, 0.1]
    assert sum(len(group["params"]) for group in optimizer.param_groups) == len(list(trainer.model.parameters()))

    for parameter in trainer.model.parameters():
        parameter.grad = torch.full_like(parameter, 100.0 if parameter in value_parameters else 0.01)
    trainer._clip_gradients()
    for model, max_norm, name in [(trainer.policy, 0.5, "policy"), (trainer.value_model, 2.0, "val")]:
        assert trainer._metrics[f"{name}/grad_norm"][-1] > max_norm  # recorded before clipping
        norm = torch.linalg.vector_norm(torch.stack([parameter.grad.norm() for parameter in model.parameters()]))
        torch.testing.assert_close(norm, torch.tensor(max_norm))
    checked = [(trainer.policy.lm_head.weight, 1e-3), (trainer.value_model.score.weight, 1e-2)]  # both decayed
    before = [(parameter.detach().clone(), parameter.grad.clone()) for parameter, _ in checked]
    optimizer.step()  # SGD: w ← w − lr · (grad + weight_decay · w)
    for (parameter, lr), (weight, grad) in zip(checked, before, strict=True):
        torch.testing.assert_close(parameter.detach(), weight - lr * (grad + 0.1 * weight))


def test_the_logged_loss_and_grad_norm_are_the_means_of_all_updates(tmp_path, tokenizer):
    """Not the last minibatch's: 2 iterations × 2 epochs × 2 minibatches = 8 updates per log."""
    args = ppo_args(tmp_path, max_steps=2, per_device_train_batch_size=8, num_ppo_epochs=2, logging_steps=2)
    trainer = ppo_trainer(tokenizer, args)
    losses, norms = [], []
    update, clip = trainer._update, trainer._clip_gradients

    def recorded_update(*args):
        losses.append(update(*args).item())
        return torch.tensor(losses[-1])

    def recorded_clip():
        clip()
        norms.append(trainer._metrics["grad_norm"][-1].item())

    trainer._update, trainer._clip_gradients = recorded_update, recorded_clip
    trainer.train()
    assert len(losses) == len(norms) == 8 and len(set(losses)) == 8
    (entry,) = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert entry["loss"] == pytest.approx(sum(losses) / 8, rel=1e-5)
    assert entry["grad_norm"] == pytest.approx(sum(norms) / 8, rel=1e-5)


@pytest.mark.parametrize("backend", ["fsdp", "deepspeed"])
def test_what_a_sharded_backend_cannot_do_is_refused(tmp_path, tokenizer, monkeypatch, backend):
    """FSDP (which one CPU process cannot start) is refused with a pointer to ZeRO-3; under DeepSpeed, whose engine
    clips all gradients together, so is a clipping norm of the value model's own."""
    create_accelerator = Trainer.create_accelerator_and_postprocess

    def as_if_launched_so(self):
        create_accelerator(self)
        setattr(self, f"is_{backend}_enabled", True)

    monkeypatch.setattr(Trainer, "create_accelerator_and_postprocess", as_if_launched_so)
    with pytest.raises(
        ValueError,
        match=r"does not run under FSDP .*deepspeed_zero3\.yaml"
        if backend == "fsdp"
        else r"value_max_grad_norm=2\.0: under DeepSpeed its engine clips",
    ):
        ppo_trainer(tokenizer, ppo_args(tmp_path, value_max_grad_norm=2.0))


# ---------------------------------------------------------------- the stages, with a reward model on disk


def parity_reward_model_dir(tmp_path: Path, tokenizer) -> Path:
    """A reward model whose score is +1 when the answer's last token id is even and −1 when odd, built by hand:
    every layer's output projections are zero (the residual stream stays the token embedding), embeddings are ±1."""
    model = InstructGPTForSequenceClassification(tiny_config(num_labels=1))
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        signs = torch.where(torch.arange(model.config.vocab_size) % 2 == 0, 1.0, -1.0)
        model.model.embed_tokens.weight.copy_(signs[:, None].expand(-1, model.config.hidden_size))
        model.model.norm.weight.fill_(1.0)
        model.score.weight.fill_(1.0 / model.config.hidden_size)
    path = tmp_path / "parity-reward"
    model.save_pretrained(path)
    # It reads the answer alone, after <|bos|> (odd): an empty answer scores −1.
    reward_tokenizer = copy.deepcopy(tokenizer)
    reward_tokenizer.chat_template = "{{ '<|bos|>' + messages[-1]['content'] }}"
    reward_tokenizer.save_pretrained(path)
    ids = torch.tensor([[5, 7, 8], [8, 6, 7]])
    torch.testing.assert_close(model(input_ids=ids).logits[:, 0], torch.tensor([1.0, -1.0]), atol=1e-4, rtol=0)
    return path


def prompts_and_corpus(folder: Path, count: int) -> tuple[Path, Path]:
    """A prompt file of `count` prompts and a pretraining corpus, written to `folder`."""
    prompt_file, corpus = folder / "prompts.jsonl", folder / "corpus.txt"
    prompt_file.write_text("".join(json.dumps({"prompt": f"Say something {i}."}) + "\n" for i in range(count)))
    corpus.write_text(TEXT * 20)
    return prompt_file, corpus


# The stage runs below sample at T = 1 and learn at a constant rate; they save and report nothing.
# fp32 pinned: the tolerances below are fp32's, and a stage would pick bf16 on a CPU with bf16 instructions.
STAGE_RUN = dict(
    lr_scheduler_type="constant", temperature=1.0, save_strategy="no", disable_tqdm=True, report_to="none", bf16=False
)


def test_ppo_stage_with_a_reward_model_on_disk(tmp_path, tiny_model_dir, tokenizer):
    reward_dir = parity_reward_model_dir(tmp_path, tokenizer)
    prompt_file, corpus = prompts_and_corpus(tmp_path, 96)
    config = PPOStageConfig(
        model_name_or_path=str(tiny_model_dir),
        reward_model_path=str(reward_dir),
        train_files=[str(prompt_file)],
        ptx_files=[str(corpus)],
        ptx_coef=0.05,
        ptx_block_size=32,
        output_dir=str(tmp_path / "ppo"),
        eval_examples=32,
        max_steps=24,
        per_device_train_batch_size=16,
        num_mini_batches=2,
        learning_rate=3e-3,
        response_length=4,
        logging_steps=8,
        **STAGE_RUN,
    )
    output_dir = Path(run_ppo(config))
    results = json.loads((output_dir / "all_results.json").read_text())
    assert results["eval_reward"] > results["eval_reward_before_training"] + 0.5, results
    assert results["eval_kl"] > 0
    card = (output_dir / "README.md").read_text()
    assert "### 1. ppo" in card and "| ptx_coef | 0.05 |" in card and "| eval_reward |" in card
    samples = [json.loads(line) for line in (output_dir / "samples.jsonl").read_text().splitlines()]
    assert {row["step"] for row in samples} == {0, 8, 16} and all(len(row) == 4 for row in samples)
    assert not (output_dir / "value_model").exists()  # the output is the policy alone


@pytest.mark.parametrize(
    ("eval_examples", "foreign_reward_tokenizer", "message"),
    [(64, False, "--eval_examples 64 would hold out all 24 records"), (4, True, "reward model's tokenizer differs")],
    ids=["every record held out", "reward model with another tokenizer"],
)
def test_the_ppo_stage_refuses_bad_inputs(
    tmp_path, tiny_model_dir, tokenizer, instructions, eval_examples, foreign_reward_tokenizer, message
):
    reward_dir = parity_reward_model_dir(tmp_path, tokenizer)
    if foreign_reward_tokenizer:
        foreign = train_tokenizer(["another corpus entirely " * 40], vocab_size=300, show_progress=False)
        foreign.save_pretrained(reward_dir)
    config = PPOStageConfig(
        model_name_or_path=str(tiny_model_dir),
        reward_model_path=str(reward_dir),
        train_files=[str(instructions)],
        eval_examples=eval_examples,
        output_dir=str(tmp_path / "ppo"),
        max_steps=1,
        report_to="none",
    )
    with pytest.raises(ValueError, match=message):
        run_ppo(config)


@pytest.mark.parametrize("use_peft", [False, True], ids=["full", "lora"])
def test_ppo_from_a_lora_sft_adapter_trains_against_the_sft_model(tmp_path, chain, use_peft, monkeypatch):
    """`hf-instruct sft --use_peft true` saves an adapter: PPO from it (full or LoRA) starts from and is held to the
    SFT model (base + adapter merged), moves the policy, and saves a policy that loads as trained."""
    trainers = []

    class RecordedPPOTrainer(PPOTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            trainers.append(self)

    monkeypatch.setattr(ppo_stage, "PPOTrainer", RecordedPPOTrainer)
    config = PPOStageConfig(
        model_name_or_path=str(chain["lora"]),
        reward_model_path=str(chain["reward"]),
        use_peft=use_peft,
        train_files=[str(chain["sft"].parent / "instructions.jsonl")],
        eval_examples=0,
        output_dir=str(tmp_path / "ppo"),
        max_steps=3,
        per_device_train_batch_size=4,
        num_mini_batches=1,
        learning_rate=1e-2,
        response_length=6,
        logging_steps=1,
        **STAGE_RUN,
    )
    output_dir = Path(run_ppo(config))
    (trainer,) = trainers
    sft = AutoPeftModelForCausalLM.from_pretrained(chain["lora"]).merge_and_unload()
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        torch.testing.assert_close(trainer.ref_model(input_ids=ids).logits, sft(input_ids=ids).logits)
        trained = trainer.policy(input_ids=ids).logits
        assert (trained - sft(input_ids=ids).logits).abs().max() > 1e-3  # the policy moved
        saved, _ = load_chat_model(output_dir)
        torch.testing.assert_close(saved(input_ids=ids).logits, trained)
    kls = logged(trainer, "objective/kl")
    assert abs(kls[0]) < 1e-4 and abs(kls[-1]) > 1e-3, kls  # the first rollout is the SFT model's


def test_grpo_stage_raises_the_reward(tmp_path, tiny_model_dir, tokenizer, instructions):
    reward_dir = parity_reward_model_dir(tmp_path, tokenizer)
    config = GRPOStageConfig(
        model_name_or_path=str(tiny_model_dir),
        reward_model_path=str(reward_dir),
        train_files=[str(instructions)],
        output_dir=str(tmp_path / "grpo"),
        eval_examples=0,
        max_steps=40,
        per_device_train_batch_size=16,
        num_generations=4,
        max_completion_length=4,
        learning_rate=1e-2,
        logging_steps=4,
        **STAGE_RUN,
    )
    output_dir = Path(run_grpo(config))
    rewards = [
        entry["reward"]
        for entry in json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
        if "reward" in entry
    ]
    assert rewards[-1] > rewards[0] + 0.5, rewards


def multi_process_ppo_flags(folder: Path, model_dir: Path, reward_dir: Path, prompts: int) -> list[str]:
    """The flags of the multi-process PPO-ptx runs, with micro-batches: `prompts` prompts and a pretraining corpus
    (written to `folder`), four-token answers."""
    prompt_file, corpus = prompts_and_corpus(folder, prompts)
    return flags(
        model_name_or_path=model_dir,
        reward_model_path=reward_dir,
        train_files=prompt_file,
        ptx_files=corpus,
        ptx_coef=0.5,
        ptx_block_size=32,
        response_length=4,
        per_device_train_batch_size=4,
        num_mini_batches=2,
        gradient_accumulation_steps=2,
        disable_tqdm="true",
        report_to="none",
    )


@pytest.mark.slow
def test_torchrun_two_process_ppo_ends_with_identical_policy_and_value_weights(tmp_path, tiny_model_dir, tokenizer):
    """Each rank samples its own prompts and pretraining blocks; gradients (accumulated over micro-batches, all-reduced
    on the last), β and metrics are averaged."""
    reward_dir = parity_reward_model_dir(tmp_path, tokenizer)
    output_dir = tmp_path / "ppo-ddp"
    args = multi_process_ppo_flags(tmp_path, tiny_model_dir, reward_dir, prompts=64)
    args += flags(kl_target=2, eval_examples=8, output_dir=output_dir, max_steps=3, save_strategy="no")
    torchrun_stage("ppo", *args, tmp_path=tmp_path)
    assert (output_dir / "model.safetensors").exists()


@pytest.mark.skipif(shutil.which("deepspeed") is None, reason="the [deepspeed] extra is not installed")
@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_ppo_on_cpu(tmp_path, tiny_model_dir, tokenizer, stage, deepspeed_env):
    """Policy and value model train as one DeepSpeed engine (ZeRO-3: sharded, gathered for generation and saving),
    with micro-batches; reference and reward model are sharded like them under ZeRO-3. The saved policy is trained,
    and a larger --max_steps continues the run from its DeepSpeed checkpoint."""
    reward_dir = parity_reward_model_dir(tmp_path, tokenizer)
    output_dir = tmp_path / "ppo"
    args = multi_process_ppo_flags(tmp_path, tiny_model_dir, reward_dir, prompts=32)
    args += flags(eval_examples=0, output_dir=output_dir, learning_rate="1e-2", save_strategy="steps", save_steps=2)
    deepspeed_stage("ppo", stage, *args, "--max_steps", "2", tmp_path=tmp_path, env=deepspeed_env)
    for trained, start in [
        (output_dir / "model.safetensors", tiny_model_dir / "model.safetensors"),
        (output_dir / "checkpoint-2" / "value_model" / "model.safetensors", reward_dir / "model.safetensors"),
    ]:
        trained, start = load_file(trained), load_file(start)  # whole weights, gathered from the shards under ZeRO-3
        assert set(trained) == set(start) and all(trained[name].shape == start[name].shape for name in start)
        assert any(not torch.equal(trained[name], start[name]) for name in start)
    resumed = deepspeed_stage("ppo", stage, *args, "--max_steps", "3", tmp_path=tmp_path, env=deepspeed_env)
    assert f"ppo: resuming from {output_dir / 'checkpoint-2'}" in resumed.stderr
    assert json.loads((output_dir / "trainer_state.json").read_text())["global_step"] == 3
