"""PPO-ptx: the algorithm's pieces against hand-computed values, and runs that show it learns, mixes in the
pretraining loss, resumes exactly, works with LoRA and refuses bad inputs. GRPO through its stage."""

import copy
import dataclasses
import json
import math
from pathlib import Path

import datasets
import pytest
import torch
from conftest import TEXT, tiny_config, torchrun_stage
from peft import LoraConfig
from safetensors.torch import load_file
from transformers import TrainerCallback

from hf_instruct import (
    InstructGPTForCausalLM,
    InstructGPTForSequenceClassification,
    PPOConfig,
    PPOTrainer,
    train_tokenizer,
)
from hf_instruct.data import pack_texts
from hf_instruct.stages import GRPOStageConfig, PPOStageConfig, run_grpo, run_ppo
from hf_instruct.trainers.ppo import (
    KLController,
    clipped_policy_loss,
    clipped_value_loss,
    compute_gae,
    kl_penalised_rewards,
    masked_whiten,
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
    args = dict(output_dir=str(output_dir), max_steps=4, per_device_train_batch_size=16, num_mini_batches=2,
                learning_rate=3e-3, lr_scheduler_type="constant", response_length=12, temperature=1.0, kl_coef=0.05,
                logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True,
                num_sample_completions=0)  # fmt: skip
    return PPOConfig(**{**args, **overrides})


def ppo_trainer(tokenizer, args: PPOConfig, **overrides) -> PPOTrainer:
    torch.manual_seed(args.seed)
    value_model = InstructGPTForSequenceClassification(tiny_config(num_labels=1))
    kwargs = dict(model=InstructGPTForCausalLM(tiny_config()), args=args, processing_class=tokenizer,
                  reward_model=even_tokens, value_model=value_model, train_dataset=prompts())  # fmt: skip
    return PPOTrainer(**{**kwargs, **overrides})


def logged(trainer, name: str) -> list[float]:
    return [entry[name] for entry in trainer.state.log_history if name in entry]


def test_ppo_raises_the_reward_while_the_kl_stays_bounded(tmp_path, tokenizer):
    trainer = ppo_trainer(tokenizer, ppo_args(tmp_path, max_steps=30, logging_steps=5, kl_coef=0.02))
    trainer.train()
    scores, kls = logged(trainer, "objective/scores"), logged(trainer, "objective/kl")
    assert scores[0] < 0.6  # a random policy: about half of its tokens are even
    assert scores[-1] > 0.85, scores
    assert max(kls) < 15.0, kls  # nats per 12-token response, held by the β = 0.02 penalty
    for name in ("objective/rlhf_reward", "objective/entropy", "policy/clipfrac", "val/ratio", "loss/policy",
                 "loss/value"):  # fmt: skip
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
    settings = dict(max_steps=6, save_strategy="steps", save_steps=2, ptx_coef=0.5, ptx_batch_size=2, kl_target=1.0,
                    kl_horizon=50, lr_scheduler_type="linear", per_device_train_batch_size=8)  # fmt: skip
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
    peft_config = (
        LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM") if use_peft else None
    )
    trainer = ppo_trainer(tokenizer, ppo_args(tmp_path, max_steps=3), peft_config=peft_config)
    trainer.train()
    kls = logged(trainer, "objective/kl")
    assert kls[0] == 0.0 and abs(kls[-1]) > 1e-4  # then the policy moves away (a sampled KL may be negative)
    trainer.save_model()
    assert (tmp_path / "adapter_model.safetensors").exists() is use_peft
    assert (tmp_path / "model.safetensors").exists() is not use_peft
    if not use_peft:  # the saved model is the policy alone, loadable as a causal LM
        assert set(load_file(tmp_path / "model.safetensors")) == set(trainer.policy.state_dict())


def test_clear_errors(tmp_path, tokenizer):
    args = ppo_args(tmp_path)
    other_tokenizer = train_tokenizer(["a completely different corpus " * 50], vocab_size=300, show_progress=False)
    with pytest.raises(ValueError, match="reward model's tokenizer differs from the policy's"):
        ppo_trainer(tokenizer, args, reward_processing_class=other_tokenizer)
    two_labels = InstructGPTForSequenceClassification(tiny_config(num_labels=2))
    with pytest.raises(ValueError, match="reward_model has num_labels=2"):
        ppo_trainer(tokenizer, args, reward_model=two_labels, value_model=None)
    with pytest.raises(ValueError, match="train_dataset is empty"):
        ppo_trainer(tokenizer, args, train_dataset=prompts().select([]))
    with pytest.raises(ValueError, match="longer than max_prompt_length=2 tokens"):
        ppo_trainer(tokenizer, ppo_args(tmp_path, max_prompt_length=2))
    with pytest.raises(ValueError, match="ptx_coef=0.5 needs a ptx_dataset"):
        ppo_trainer(tokenizer, ppo_args(tmp_path, ptx_coef=0.5))
    with pytest.raises(ValueError, match="With a reward function, pass a value_model"):
        ppo_trainer(tokenizer, args, value_model=None)
    with pytest.raises(ValueError, match="must be a multiple of num_mini_batches=3"):
        ppo_args(tmp_path, num_mini_batches=3)


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


def test_ppo_stage_with_a_reward_model_on_disk(tmp_path, tiny_model_dir, tokenizer):
    reward_dir = parity_reward_model_dir(tmp_path, tokenizer)
    prompt_file, corpus = tmp_path / "prompts.jsonl", tmp_path / "corpus.txt"
    prompt_file.write_text("".join(json.dumps({"prompt": f"Say something {i}."}) + "\n" for i in range(96)))
    corpus.write_text(TEXT * 20)
    config = PPOStageConfig(
        model_name_or_path=str(tiny_model_dir), reward_model_path=str(reward_dir), train_files=[str(prompt_file)],
        ptx_files=[str(corpus)], ptx_coef=0.05, ptx_block_size=32, output_dir=str(tmp_path / "ppo"), eval_examples=32,
        max_steps=24, per_device_train_batch_size=16, num_mini_batches=2, learning_rate=3e-3,
        lr_scheduler_type="constant", response_length=4, temperature=1.0, logging_steps=8, save_strategy="no",
        disable_tqdm=True, report_to="none",
    )  # fmt: skip
    output_dir = Path(run_ppo(config))
    results = json.loads((output_dir / "all_results.json").read_text())
    assert results["eval_reward"] > results["eval_reward_before_training"] + 0.5, results
    assert results["eval_kl"] > 0
    card = (output_dir / "README.md").read_text()
    assert "### 1. ppo" in card and "| ptx_coef | 0.05 |" in card and "| eval_reward |" in card
    samples = [json.loads(line) for line in (output_dir / "samples.jsonl").read_text().splitlines()]
    assert {row["step"] for row in samples} == {0, 8, 16} and all(len(row) == 4 for row in samples)
    assert not (output_dir / "value_model").exists()  # the output is the policy alone


def test_ppo_stage_refuses_a_reward_model_with_another_tokenizer(tmp_path, tiny_model_dir, tokenizer, instructions):
    reward_dir = parity_reward_model_dir(tmp_path, tokenizer)
    train_tokenizer(["another corpus entirely " * 40], vocab_size=300, show_progress=False).save_pretrained(reward_dir)
    config = PPOStageConfig(
        model_name_or_path=str(tiny_model_dir), reward_model_path=str(reward_dir), train_files=[str(instructions)],
        output_dir=str(tmp_path / "ppo"), max_steps=1, report_to="none",
    )  # fmt: skip
    with pytest.raises(ValueError, match="would hold out all 24 records"):
        run_ppo(config)
    with pytest.raises(ValueError, match="reward model's tokenizer differs"):
        run_ppo(dataclasses.replace(config, eval_examples=4))


def test_grpo_stage_raises_the_reward(tmp_path, tiny_model_dir, tokenizer, instructions):
    reward_dir = parity_reward_model_dir(tmp_path, tokenizer)
    config = GRPOStageConfig(
        model_name_or_path=str(tiny_model_dir), reward_model_path=str(reward_dir), train_files=[str(instructions)],
        output_dir=str(tmp_path / "grpo"), eval_examples=0, max_steps=40, per_device_train_batch_size=16,
        num_generations=4, max_completion_length=4, temperature=1.0, learning_rate=1e-2, lr_scheduler_type="constant",
        logging_steps=4, save_strategy="no", disable_tqdm=True, report_to="none",
    )  # fmt: skip
    output_dir = Path(run_grpo(config))
    rewards = [entry["reward"] for entry in json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
               if "reward" in entry]  # fmt: skip
    assert rewards[-1] > rewards[0] + 0.5, rewards


@pytest.mark.slow
def test_torchrun_two_process_ppo_ends_with_identical_policy_and_value_weights(tmp_path, tiny_model_dir, tokenizer):
    """Each rank samples its own prompts and pretraining blocks; gradients, β and metrics are averaged."""
    reward_dir = parity_reward_model_dir(tmp_path, tokenizer)
    prompt_file, corpus = tmp_path / "prompts.jsonl", tmp_path / "corpus.txt"
    prompt_file.write_text("".join(json.dumps({"prompt": f"Say something {i}."}) + "\n" for i in range(64)))
    corpus.write_text(TEXT * 20)
    output_dir = tmp_path / "ppo-ddp"
    torchrun_stage(
        "ppo", "--model_name_or_path", str(tiny_model_dir), "--reward_model_path", str(reward_dir), "--train_files",
        str(prompt_file), "--ptx_files", str(corpus), "--ptx_coef", "0.5", "--ptx_block_size", "32", "--kl_target",
        "2", "--eval_examples", "8", "--output_dir", str(output_dir), "--max_steps", "3", "--response_length", "4",
        "--per_device_train_batch_size", "4", "--num_mini_batches", "2", "--save_strategy", "no", "--disable_tqdm",
        "true", "--report_to", "none", tmp_path=tmp_path,
    )  # fmt: skip
    assert (output_dir / "model.safetensors").exists()
