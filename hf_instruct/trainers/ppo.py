"""PPO with the pretraining-loss mix (PPO-ptx): InstructGPT step 3, on `transformers.Trainer` machinery.

One Trainer step is one PPO iteration over a batch of prompts:
1. rollout: the policy samples a response to every prompt (`generate`);
2. reward: the reward model scores prompt + response (plus its `reward_shift`), and every response token pays
   β·(log π(token) − log π_ref(token)), the KL penalty to the frozen SFT reference; β is fixed or adapted;
3. advantages: GAE over the value model's per-token values, whitened;
4. update: `num_ppo_epochs` passes over the rollout in `num_mini_batches` minibatches, one optimiser step each, on
   the clipped policy loss + `vf_coef` × the clipped value loss + `ptx_coef` × the causal-LM loss of a pretraining
   batch (PPO-ptx: it keeps the policy good at its pretraining distribution).

The policy and the value model train as one module (`PolicyAndValueModel`), so the Trainer's optimiser, scheduler,
gradient clipping, mixed precision, DDP, logging, callbacks and checkpoints cover both. A checkpoint also holds the
value model and the KL coefficient, and the pretraining batches are drawn by position, so `resume_from_checkpoint`
continues a run where it stopped. `save_model` writes the policy only: a normal causal-LM (or PEFT adapter) folder.
"""

import contextlib
import copy
import itertools
import json
import os
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import datasets
import torch
from datasets.distributed import split_dataset_by_node
from peft import PeftConfig, PeftModel, get_peft_model
from torch import nn
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging
from trl.trainer.utils import entropy_from_logits, pad, selective_log_softmax

from ..markdown import table_cell
from ..reward_scores import reward_scores

logger = logging.get_logger(__name__)

VALUE_MODEL_DIR = "value_model"
PPO_STATE_FILE = "ppo_state.json"
SAMPLES_FILE = "samples.jsonl"
# A rule-based reward: f(prompts, completions, completion_ids=...) -> one float per completion.
RewardFunction = Callable[..., list[float]]


@dataclass
class PPOConfig(TrainingArguments):
    """`TrainingArguments` plus PPO-ptx. A step is `per_device_train_batch_size` prompts per device, answered once
    and then learnt from in `num_ppo_epochs` × `num_mini_batches` optimiser steps."""

    learning_rate: float = field(default=1e-5, metadata={"help": "Adam learning rate of policy and value model."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep the prompt columns."})
    max_prompt_length: int = field(default=256, metadata={"help": "Longer prompts are left out (and counted)."})
    response_length: int = field(default=64, metadata={"help": "At most this many sampled tokens per response."})
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature of the rollouts."})
    num_ppo_epochs: int = field(default=4, metadata={"help": "Passes over each rollout batch."})
    num_mini_batches: int = field(default=1, metadata={"help": "Optimiser steps per pass over a rollout batch."})
    kl_coef: float = field(default=0.05, metadata={"help": "β: the per-token KL penalty (initial value if adaptive)."})
    kl_target: float | None = field(
        default=None, metadata={"help": "Adapt β so that the response KL approaches this many nats (None: fixed β)."}
    )
    kl_horizon: int = field(default=10000, metadata={"help": "Episodes over which the adaptive β moves by ≤ 20 %."})
    cliprange: float = field(default=0.2, metadata={"help": "ε of the clipped policy ratio."})
    cliprange_value: float = field(default=0.2, metadata={"help": "Clip range of the value update."})
    vf_coef: float = field(default=0.1, metadata={"help": "Weight of the value loss."})
    gamma: float = field(default=1.0, metadata={"help": "Discount factor."})
    lam: float = field(default=0.95, metadata={"help": "GAE λ."})
    missing_eos_penalty: float | None = field(
        default=None, metadata={"help": "Subtracted from the score of a response that never ends (None: nothing)."}
    )
    ptx_coef: float = field(
        default=0.0, metadata={"help": "γ of PPO-ptx: weight of the pretraining LM loss in every update (0: off)."}
    )
    ptx_batch_size: int | None = field(
        default=None, metadata={"help": "Pretraining blocks per update (default: the PPO minibatch size)."}
    )
    num_sample_completions: int = field(
        default=4, metadata={"help": "Completions logged (and appended to samples.jsonl) every logging step."}
    )

    def __post_init__(self):
        super().__post_init__()
        if self.per_device_train_batch_size % self.num_mini_batches:
            raise ValueError(
                f"per_device_train_batch_size={self.per_device_train_batch_size} must be a multiple of "
                f"num_mini_batches={self.num_mini_batches} (each minibatch is an equal share of a rollout batch)."
            )
        if self.gradient_accumulation_steps != 1:
            raise ValueError(
                "PPO takes its optimiser steps per minibatch: set num_mini_batches (and per_device_train_batch_size) "
                f"instead of gradient_accumulation_steps={self.gradient_accumulation_steps}."
            )
        for name in ("kl_coef", "ptx_coef", "vf_coef", "cliprange", "cliprange_value"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be ≥ 0, got {getattr(self, name)}.")

    @property
    def mini_batch_size(self) -> int:
        return self.per_device_train_batch_size // self.num_mini_batches


# ---------------------------------------------------------------- the algorithm, as plain functions


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance over the unmasked entries (masked entries become 0)."""
    mean = masked_mean(values, mask)
    variance = masked_mean((values - mean) ** 2, mask)
    return (values - mean) * torch.rsqrt(variance + 1e-8) * mask


def kl_penalised_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards −β·(log π − log π_ref), plus the sequence score on the last response token; and the KL."""
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    last_token = mask.sum(dim=1).long() - 1
    rewards[torch.arange(rewards.shape[0], device=rewards.device), last_token] += scores
    return rewards, kl


def compute_gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimates and returns over each response (the value after the last token is 0)."""
    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        next_value = values[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
    return advantages * mask, (advantages + values) * mask


def clipped_policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, cliprange: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's pessimistic surrogate: mean over tokens of max(−A·r, −A·clip(r, 1 − ε, 1 + ε)), r = π/π_old."""
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.max(unclipped, clipped), mask)
    stats = {
        "policy/clipfrac": masked_mean((clipped > unclipped).float(), mask),
        "policy/approxkl": 0.5 * masked_mean((logprobs - old_logprobs) ** 2, mask),
        "val/ratio": masked_mean(ratio, mask),
    }
    return loss, {name: value.detach() for name, value in stats.items()}


def clipped_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, cliprange_value: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """½ · mean over tokens of max((V − R)², (V_clipped − R)²), V_clipped within ±cliprange_value of the old V."""
    clipped_values = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    unclipped_loss, clipped_loss = (values - returns) ** 2, (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(unclipped_loss, clipped_loss), mask)
    return loss, {"val/clipfrac": masked_mean((clipped_loss > unclipped_loss).float(), mask).detach()}


@dataclass
class KLController:
    """β of the KL penalty: fixed, or adapted towards `target` nats per response (Ziegler et al. 2019)."""

    value: float
    target: float | None = None
    horizon: int = 10000

    def update(self, current_kl: float, episodes: int) -> None:
        if self.target is None:
            return
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * episodes / self.horizon


# ---------------------------------------------------------------- models


def sequence_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 on each row's first real token (prompts are left-padded)."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


def token_scores(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """A one-output sequence classifier's score at every position (B, T): the per-token values of a value model."""
    backbone = getattr(model, model.base_model_prefix)
    hidden = backbone(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=sequence_positions(attention_mask),
        use_cache=False,
    ).last_hidden_state  # fmt: skip
    return model.score(hidden).squeeze(-1)


def disable_dropout(model: nn.Module) -> None:
    """No dropout anywhere, so that π/π_old is exactly 1 before the first update of a rollout."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        for name in ("attention_dropout", "hidden_dropout"):
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, 0.0)


class PolicyAndValueModel(nn.Module):
    """The policy and the value model as one module: one optimiser, one DDP wrapper and one forward per update."""

    def __init__(self, policy: PreTrainedModel | PeftModel, value_model: PreTrainedModel):
        super().__init__()
        self.policy = policy
        self.value_model = value_model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, ptx_input_ids: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Policy logits and values of every position, and the LM loss of a pretraining batch if one is given."""
        logits = self.policy(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=sequence_positions(attention_mask),
            use_cache=False,
        ).logits  # fmt: skip
        values = token_scores(self.value_model, input_ids, attention_mask)
        ptx_loss = None
        if ptx_input_ids is not None:
            ptx_loss = self.policy(input_ids=ptx_input_ids, labels=ptx_input_ids, use_cache=False).loss
        return logits, values, ptx_loss

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        for model in (self.policy, self.value_model):
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs)


@dataclass
class Rollout:
    """One batch of sampled responses with everything the PPO updates need; all tensors (B, response length)
    except `query_responses`/`attention_mask` (B, prompt + response length) and `scores`/`ended` (B,)."""

    query_responses: torch.Tensor
    attention_mask: torch.Tensor
    responses: torch.Tensor
    mask: torch.Tensor
    logprobs: torch.Tensor
    values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    kl: torch.Tensor
    scores: torch.Tensor
    ended: torch.Tensor
    entropy: torch.Tensor

    @property
    def prompt_length(self) -> int:
        return self.query_responses.shape[1] - self.responses.shape[1]


# ---------------------------------------------------------------- the trainer


class PPOTrainer(Trainer):
    """PPO-ptx for any causal LM: `PPOTrainer(model, args, processing_class, reward_model, train_dataset)`.

    - `model`: the policy, started from the SFT model (or a `PeftModel`; `peft_config` makes one). The frozen
      reference is a copy of it taken here (for PEFT: the same model with the adapter disabled), or `ref_model`.
    - `reward_model`: a one-output sequence classifier, which scores prompt + answer rendered with its tokenizer's
      chat template as in reward training (its `config.reward_shift` is added); or a function
      `f(prompts, completions, completion_ids=...) -> list[float]` (prompts as given, answers as text).
    - `value_model`: default a copy of the reward model (InstructGPT); required with a reward function.
    - `train_dataset`: prompts, as `prompt` (messages or text, rendered with the chat template) or `input_ids`.
    - `ptx_dataset`: pretraining blocks (`input_ids` of equal length, e.g. `hf_instruct.data.pack_texts`), used
      when `args.ptx_coef > 0`; a streaming dataset works too.
    - `eval_dataset`: prompts; `evaluate()` reports their mean reward and KL.
    """

    def __init__(
        self,
        model: PreTrainedModel | PeftModel,
        args: PPOConfig,
        processing_class: PreTrainedTokenizerBase,
        reward_model: PreTrainedModel | RewardFunction,
        train_dataset: datasets.Dataset,
        value_model: PreTrainedModel | None = None,
        ref_model: PreTrainedModel | None = None,
        ptx_dataset: datasets.Dataset | datasets.IterableDataset | None = None,
        eval_dataset: datasets.Dataset | None = None,
        peft_config: PeftConfig | None = None,
        reward_processing_class: PreTrainedTokenizerBase | None = None,
        callbacks: list | None = None,
    ):
        if processing_class.pad_token_id is None:
            raise ValueError("The tokenizer has no pad token: set tokenizer.pad_token (e.g. to its eos_token).")
        if reward_processing_class is not None and reward_processing_class.get_vocab() != processing_class.get_vocab():
            raise ValueError(
                "The reward model's tokenizer differs from the policy's, so it would score other tokens than the "
                "policy writes. Train the reward model from the same SFT model (hf-instruct reward does)."
            )
        if value_model is None:
            if not isinstance(reward_model, nn.Module):
                raise ValueError("With a reward function, pass a value_model (a one-output sequence classifier).")
            value_model = copy.deepcopy(reward_model)
        for name, scorer in (("reward_model", reward_model), ("value_model", value_model)):
            labels = getattr(getattr(scorer, "config", None), "num_labels", 1)
            if isinstance(scorer, nn.Module) and labels != 1:
                raise ValueError(
                    f"{name} has num_labels={labels}; PPO needs one scalar per sequence: a sequence classifier with "
                    "num_labels=1 (what hf-instruct reward trains)."
                )
        if ptx_dataset is None and args.ptx_coef > 0:
            raise ValueError(f"ptx_coef={args.ptx_coef} needs a ptx_dataset of pretraining blocks (or ptx_coef=0).")
        if args.ptx_coef > 0 and "input_ids" not in (ptx_dataset.column_names or []):
            raise ValueError("ptx_dataset needs an `input_ids` column of equal-length blocks (see pack_texts).")

        if peft_config is not None:
            model = get_peft_model(model, peft_config)
        if ref_model is None and not isinstance(model, PeftModel):
            ref_model = copy.deepcopy(model)
        for module in (model, value_model, ref_model, reward_model):
            if isinstance(module, nn.Module):
                disable_dropout(module)
        for frozen in (ref_model, reward_model):
            if isinstance(frozen, nn.Module):
                frozen.eval().requires_grad_(False)
        if isinstance(reward_model, nn.Module) and reward_model.config.pad_token_id is None:
            reward_model.config.pad_token_id = processing_class.pad_token_id  # stock classifiers pool by pad id

        self.ref_model, self.reward_model, self.ptx_dataset = ref_model, reward_model, ptx_dataset
        self.reward_processing_class = reward_processing_class or processing_class
        self.kl_controller = KLController(args.kl_coef, args.kl_target, args.kl_horizon)
        train_dataset = self._tokenized_prompts(train_dataset, processing_class, args, "train_dataset")
        if eval_dataset is not None:
            eval_dataset = self._tokenized_prompts(eval_dataset, processing_class, args, "eval_dataset")
        super().__init__(
            model=PolicyAndValueModel(model, value_model),
            args=args,
            data_collator=self._left_pad,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            callbacks=callbacks,
        )
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            raise ValueError(
                "PPOTrainer runs single-device or DDP (accelerate launch --multi_gpu), not FSDP/DeepSpeed."
            )
        for frozen in (ref_model, reward_model):
            if isinstance(frozen, nn.Module):
                frozen.to(self.args.device)

        stop_ids = model.generation_config.eos_token_id if model.generation_config is not None else None
        stop_ids = stop_ids if stop_ids is not None else processing_class.eos_token_id
        self.stop_token_ids = torch.tensor(stop_ids if isinstance(stop_ids, list) else [stop_ids])
        self.generation_config = GenerationConfig(
            max_new_tokens=args.response_length,
            do_sample=True,
            temperature=args.temperature,
            top_k=0,
            top_p=1.0,
            eos_token_id=self.stop_token_ids.tolist(),
            pad_token_id=processing_class.pad_token_id,
        )
        self._metrics: dict[str, list[torch.Tensor]] = defaultdict(list)
        self._ptx_rows: Iterator[dict] | None = None

    @property
    def policy(self) -> PreTrainedModel | PeftModel:
        return self.accelerator.unwrap_model(self.model).policy

    @property
    def value_model(self) -> PreTrainedModel:
        return self.accelerator.unwrap_model(self.model).value_model

    # ---- data

    @staticmethod
    def _tokenized_prompts(prompts: datasets.Dataset, tokenizer, args: PPOConfig, name: str) -> datasets.Dataset:
        """Prompt token ids (chat template with the generation prompt for messages), too-long ones counted out."""
        if len(prompts) == 0:
            raise ValueError(f"{name} is empty: PPO needs prompts to answer.")
        if "input_ids" not in prompts.column_names:
            if "prompt" not in prompts.column_names:
                raise ValueError(f"{name} needs a `prompt` or `input_ids` column; it has {prompts.column_names}.")

            def tokenize(row):
                prompt = row["prompt"]
                if isinstance(prompt, str):
                    return {"input_ids": tokenizer(prompt, add_special_tokens=False)["input_ids"]}
                ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_dict=True)["input_ids"]
                return {"input_ids": ids}

            with args.main_process_first(desc=f"tokenizing {name}"):
                prompts = prompts.map(tokenize, desc=f"Tokenizing {name}")
        kept = prompts.filter(lambda row: 0 < len(row["input_ids"]) <= args.max_prompt_length)
        if len(kept) == 0:
            raise ValueError(
                f"All {len(prompts)} prompts of {name} are empty or longer than max_prompt_length="
                f"{args.max_prompt_length} tokens: raise --max_prompt_length."
            )
        if len(kept) < len(prompts):
            logger.warning(
                f"ppo: {len(prompts) - len(kept)} of {len(prompts)} prompts of {name} are longer than "
                f"max_prompt_length={args.max_prompt_length} tokens and are left out."
            )
        return kept.select_columns([column for column in ("input_ids", "prompt") if column in kept.column_names])

    def _left_pad(self, rows: list[dict]) -> dict:
        ids = [torch.tensor(row["input_ids"]) for row in rows]
        batch = {
            "input_ids": pad(ids, padding_value=self.processing_class.pad_token_id, padding_side="left"),
            "attention_mask": pad([torch.ones_like(i) for i in ids], padding_value=0, padding_side="left"),
        }
        if "prompt" in rows[0]:  # the reward model reads the conversation as it was trained to
            batch["prompt"] = [row["prompt"] for row in rows]
        return batch

    def _next_ptx_batch(self) -> torch.Tensor:
        """The next `ptx_batch_size` pretraining blocks, drawn by position so that a resumed run draws the same."""
        size = self.args.ptx_batch_size or self.args.mini_batch_size
        if self._ptx_rows is None:
            updates = self.args.num_ppo_epochs * self.args.num_mini_batches
            start = self.state.global_step * updates * size
            shard = split_dataset_by_node(self.ptx_dataset, self.args.process_index, self.args.world_size)
            self._ptx_rows = itertools.islice(_endless(shard), start, None)
        rows = [next(self._ptx_rows)["input_ids"] for _ in range(size)]
        return torch.tensor(rows, device=self.args.device)

    # ---- rollout

    @torch.no_grad()
    def _rollout(self, inputs: dict[str, torch.Tensor]) -> Rollout:
        """Sample responses, score them, and compute log-probs, values, KL, advantages and returns."""
        wrapper = self.accelerator.unwrap_model(self.model)
        wrapper.eval()
        prompt_ids, prompt_mask = inputs["input_ids"], inputs["attention_mask"]
        prompt_length = prompt_ids.shape[1]
        sequences = wrapper.policy.generate(
            input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=self.generation_config
        )
        responses = sequences[:, prompt_length:]
        is_stop = torch.isin(responses, self.stop_token_ids.to(responses.device))
        ended = is_stop.any(dim=1)
        first_stop = torch.where(ended, is_stop.int().argmax(dim=1), responses.shape[1] - 1)
        mask = (torch.arange(responses.shape[1], device=responses.device)[None, :] <= first_stop[:, None]).long()
        responses = responses.masked_fill(mask == 0, self.processing_class.pad_token_id)
        query_responses = torch.cat([prompt_ids, responses], dim=1)
        attention_mask = torch.cat([prompt_mask, mask], dim=1)
        response_slice = slice(prompt_length - 1, -1)  # the positions that predict the response tokens

        with self.compute_loss_context_manager():
            logits, values, _ = wrapper(query_responses, attention_mask)
            logits = logits[:, response_slice].float() / self.args.temperature
            logprobs = selective_log_softmax(logits, responses) * mask
            entropy = masked_mean(entropy_from_logits(logits), mask)
            values = values[:, response_slice].float() * mask
            ref_logprobs = self._ref_logprobs(query_responses, attention_mask, responses, response_slice) * mask
            scores = self._scores(inputs.get("prompt"), prompt_ids, responses, mask)
        if self.args.missing_eos_penalty is not None:
            scores = scores - self.args.missing_eos_penalty * (~ended).float()

        rewards, kl = kl_penalised_rewards(scores, logprobs, ref_logprobs, mask, self.kl_controller.value)
        advantages, returns = compute_gae(rewards, values, mask, self.args.gamma, self.args.lam)
        advantages = masked_whiten(advantages, mask)
        return Rollout(
            query_responses, attention_mask, responses, mask, logprobs, values, advantages, returns, kl, scores,
            ended, entropy,
        )  # fmt: skip

    def _ref_logprobs(self, query_responses, attention_mask, responses, response_slice) -> torch.Tensor:
        """Log-probs of the responses under the frozen reference (for PEFT: the policy without its adapter)."""
        reference = self.ref_model if self.ref_model is not None else self.policy
        with self.policy.disable_adapter() if self.ref_model is None else contextlib.nullcontext():
            logits = reference(
                input_ids=query_responses, attention_mask=attention_mask,
                position_ids=sequence_positions(attention_mask), use_cache=False,
            ).logits  # fmt: skip
        return selective_log_softmax(logits[:, response_slice].float() / self.args.temperature, responses)

    def _scores(self, prompts: list | None, prompt_ids, responses, mask) -> torch.Tensor:
        """The reward of each response: the reward function's, or the reward model's score (+ its reward_shift) of
        prompt + answer rendered as in reward training (the chat template for conversations), like TRL's GRPO."""
        lengths = mask.sum(dim=1).tolist()
        completion_ids = [row[:length] for row, length in zip(responses.tolist(), lengths, strict=True)]
        completions = self.processing_class.batch_decode(completion_ids, skip_special_tokens=True)
        if prompts is None:
            prompts = self.processing_class.batch_decode(prompt_ids, skip_special_tokens=True)
        if not isinstance(self.reward_model, nn.Module):
            values = self.reward_model(prompts=prompts, completions=completions, completion_ids=completion_ids)
            return torch.tensor(values, dtype=torch.float, device=responses.device)
        tokenizer = self.reward_processing_class
        texts = [
            prompt + completion
            if isinstance(prompt, str)
            else tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": completion}], tokenize=False)
            for prompt, completion in zip(prompts, completions, strict=True)
        ]
        scores = reward_scores(self.reward_model, tokenizer, texts, batch_size=len(texts))
        return scores + (getattr(self.reward_model.config, "reward_shift", 0.0) or 0.0)

    # ---- update

    def training_step(self, model: nn.Module, inputs: dict, num_items_in_batch=None) -> torch.Tensor:
        """One PPO iteration: a rollout, then num_ppo_epochs × num_mini_batches updates. Every update but the last
        steps the optimiser here; the Trainer takes the last step (with its clipping, scheduler and callbacks)."""
        rollout = self._rollout(self._prepare_inputs(inputs))
        self._record_rollout(rollout)
        model.train()
        batch_size = rollout.responses.shape[0]  # the last batch of an epoch may be smaller
        num_minibatches = min(self.args.num_mini_batches, batch_size)
        updates = self.args.num_ppo_epochs * num_minibatches
        for update in range(updates):
            if update % num_minibatches == 0:  # a new pass over the rollout, in a new order
                minibatches = torch.randperm(batch_size, device=rollout.responses.device).tensor_split(num_minibatches)
            with self.compute_loss_context_manager():
                loss = self._ppo_loss(model, rollout, minibatches[update % num_minibatches])
            self.accelerator.backward(loss)
            if update < updates - 1:
                if self.args.max_grad_norm > 0:
                    self._clip_grad_norm(model)
                self.optimizer.step()
                self.optimizer.zero_grad()
        episodes = batch_size * self.args.world_size
        self.kl_controller.update(self.accelerator.reduce(rollout.kl.sum(1).mean(), "mean").item(), episodes)
        return loss.detach()

    def _ppo_loss(self, model: nn.Module, rollout: Rollout, index: torch.Tensor) -> torch.Tensor:
        """Clipped policy loss + vf_coef × clipped value loss (+ ptx_coef × pretraining LM loss) of one minibatch."""
        ptx_input_ids = self._next_ptx_batch() if self.args.ptx_coef > 0 else None
        logits, values, ptx_loss = model(rollout.query_responses[index], rollout.attention_mask[index], ptx_input_ids)
        response_slice = slice(rollout.prompt_length - 1, -1)
        logits = logits[:, response_slice].float() / self.args.temperature
        logprobs = selective_log_softmax(logits, rollout.responses[index])
        mask = rollout.mask[index]
        policy_loss, policy_stats = clipped_policy_loss(
            logprobs, rollout.logprobs[index], rollout.advantages[index], mask, self.args.cliprange
        )
        value_loss, value_stats = clipped_value_loss(
            values[:, response_slice].float(), rollout.values[index], rollout.returns[index], mask,
            self.args.cliprange_value,
        )  # fmt: skip
        loss = policy_loss + self.args.vf_coef * value_loss
        stats = {**policy_stats, **value_stats, "loss/policy": policy_loss, "loss/value": value_loss}
        if ptx_loss is not None:
            loss = loss + self.args.ptx_coef * ptx_loss
            stats["loss/ptx"] = ptx_loss
        for name, value in stats.items():
            self._metrics[name].append(value.detach())
        return loss

    # ---- logging, evaluation

    def _record_rollout(self, rollout: Rollout) -> None:
        kl = rollout.kl.sum(dim=1)
        stats = {
            "objective/scores": rollout.scores.mean(),
            "objective/kl": kl.mean(),
            "objective/rlhf_reward": (rollout.scores - self.kl_controller.value * kl).mean(),
            "objective/entropy": rollout.entropy,
            "objective/kl_coef": torch.tensor(self.kl_controller.value),
            "val/mean_response_length": rollout.mask.sum(dim=1).float().mean(),
            "val/ended_fraction": rollout.ended.float().mean(),
        }
        for name, value in stats.items():
            self._metrics[name].append(value.detach().to(self.args.device))
        if self.state.global_step % self.args.logging_steps == 0 and self.args.num_sample_completions > 0:
            self._log_samples(rollout)

    def _log_samples(self, rollout: Rollout) -> None:
        """A table of sample completions on the console, also appended to <output_dir>/samples.jsonl."""
        if not self.is_world_process_zero():
            return
        count = self.args.num_sample_completions
        decode = self.processing_class.batch_decode
        prompts = decode(rollout.query_responses[:count, : rollout.prompt_length], skip_special_tokens=True)
        completions = decode(rollout.responses[:count], skip_special_tokens=True)
        rows = [
            {"step": self.state.global_step, "prompt": p, "completion": c, "score": round(s, 4)}
            for p, c, s in zip(prompts, completions, rollout.scores[:count].tolist(), strict=True)
        ]
        os.makedirs(self.args.output_dir, exist_ok=True)
        with open(os.path.join(self.args.output_dir, SAMPLES_FILE), "a", encoding="utf-8") as f:
            f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        table = "\n".join(
            f"| {row['score']:.3f} | {table_cell(row['prompt'])} | {table_cell(row['completion'])} |" for row in rows
        )
        print(
            f"ppo samples at step {self.state.global_step}:\n| score | prompt | completion |\n|---|---|---|\n{table}"
        )

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the PPO statistics gathered since the last log (averaged over steps and processes)."""
        for name, values in sorted(self._metrics.items()):
            logs[name] = self.accelerator.reduce(torch.stack(values).mean().to(self.args.device), "mean").item()
        self._metrics.clear()
        super().log(logs, start_time)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Mean reward model score and KL to the reference of sampled answers to the evaluation prompts."""
        scores, kls = [], []
        for inputs in self.get_eval_dataloader(eval_dataset):
            rollout = self._rollout(self._prepare_inputs(inputs))
            scores.append(self.accelerator.gather_for_metrics(rollout.scores))
            kls.append(self.accelerator.gather_for_metrics(rollout.kl.sum(dim=1)))
        metrics = {
            f"{metric_key_prefix}_reward": torch.cat(scores).mean().item(),
            f"{metric_key_prefix}_kl": torch.cat(kls).mean().item(),
        }
        self.log(dict(metrics))
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    # ---- saving and resuming

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """The policy only (a normal model or adapter folder) and the tokenizer."""
        output_dir = output_dir or self.args.output_dir
        if not self.args.should_save:
            return
        self.policy.save_pretrained(output_dir)
        self.processing_class.save_pretrained(output_dir)

    def _save_checkpoint(self, model: nn.Module, trial) -> None:
        """A checkpoint also holds the value model and the KL coefficient (written before the Trainer's state)."""
        checkpoint = os.path.join(
            self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        )
        if self.args.should_save:
            self.value_model.save_pretrained(os.path.join(checkpoint, VALUE_MODEL_DIR))
            with open(os.path.join(checkpoint, PPO_STATE_FILE), "w") as f:
                json.dump({"kl_coef": self.kl_controller.value}, f)
        super()._save_checkpoint(model, trial)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model=self.policy)
        super()._load_from_checkpoint(os.path.join(resume_from_checkpoint, VALUE_MODEL_DIR), model=self.value_model)
        with open(os.path.join(resume_from_checkpoint, PPO_STATE_FILE)) as f:
            self.kl_controller.value = json.load(f)["kl_coef"]


def _endless(dataset: datasets.Dataset | datasets.IterableDataset) -> Iterator[dict]:
    while True:
        yield from dataset
