"""PPO with the pretraining-loss mix (PPO-ptx): InstructGPT step 3, on `transformers.Trainer` machinery.

One Trainer step is one PPO iteration over a batch of prompts:
1. rollout: the policy samples a response to every prompt (`generate`);
2. reward: the reward model scores prompt + response (plus its `reward_shift`), and every response token pays
   β·(log π(token) − log π_ref(token)), the KL penalty to the frozen SFT reference; β is fixed or adapted;
3. advantages: GAE over the value model's per-token values, whitened;
4. update: `num_ppo_epochs` passes over the rollout in `num_mini_batches` minibatches, one optimiser step each, on
   the clipped policy loss + `vf_coef` × the clipped value loss + `ptx_coef` × the causal-LM loss of a pretraining
   batch (PPO-ptx: it keeps the policy good at its pretraining distribution); policy and value gradients are clipped
   apart, and the value model may have a learning rate of its own.

Memory: the LM heads project only the positions that predict the response (`logits_to_keep`), a rollout's forwards
run `rollout_forward_batch_size` sequences at a time, and a minibatch's gradient is accumulated over
`gradient_accumulation_steps` micro-batches; none of them changes the results.

The policy and the value model train as one module (`PolicyAndValueModel`), so the Trainer's optimiser, scheduler,
mixed precision, DDP, logging, callbacks and checkpoints cover both. A checkpoint also holds the value model and the
KL coefficient, and the pretraining batches are drawn by position, so `resume_from_checkpoint` continues a run where
it stopped. `save_model` writes the policy only: a normal causal-LM (or PEFT adapter) folder.
"""

import contextlib
import copy
import itertools
import json
import math
import os
import warnings
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

import datasets
import torch
from datasets.distributed import split_dataset_by_node
from peft import PeftConfig, PeftModel, get_peft_model
from torch import nn
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase, Trainer
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging
from trl.models import prepare_deepspeed
from trl.models.utils import add_hooks, remove_hooks
from trl.trainer.utils import entropy_from_logits, pad, selective_log_softmax

from ..utils import markdown_table, reward_scores, table_cell
from .ppo_config import PPOConfig
from .ppo_rewards import (
    RewardFunction,
    RewardSource,
    RunningMoments,
    as_list,
    check_reward_tokenizer,
    reward_tokenizer_list,
    weighted_scores,
)
from .ppo_tracking import send_sample_table
from .ppo_utils import (
    KLController,
    check_no_dropout,
    clipped_policy_loss,
    clipped_value_loss,
    compute_gae,
    copied,
    disable_dropout,
    explained_variance,
    generate_in_chunks,
    kl_estimate,
    kl_penalised_rewards,
    masked_mean,
    masked_variance,
    masked_whiten,
    neutral_generation_defaults,
    repeated_prompts,
    response_logits,
    reward_texts,
    submodule_state_dict,
    token_scores,
    written_texts,
)

logger = logging.get_logger(__name__)

VALUE_MODEL_DIR = "value_model"
PPO_STATE_FILE = "ppo_state.json"
SAMPLES_FILE = "samples.jsonl"


class PolicyAndValueModel(nn.Module):
    """The policy and the value model as one module: one optimiser, one DDP wrapper and one forward per update."""

    _keys_to_ignore_on_save = None  # read by the Trainer after loading a checkpoint (`_issue_warnings_after_load`)

    def __init__(self, policy: PreTrainedModel | PeftModel, value_model: PreTrainedModel):
        super().__init__()
        self.policy = policy
        self.value_model = value_model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        response_length: int,
        ptx_input_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Policy logits (B, R, vocab) and values (B, R) of the positions that predict the last `response_length`
        tokens, and the LM loss of a pretraining batch if one is given."""
        logits = response_logits(self.policy, input_ids, attention_mask, response_length)
        values = token_scores(self.value_model, input_ids, attention_mask)[:, -response_length - 1 : -1]
        ptx_loss = None
        if ptx_input_ids is not None:
            ptx_loss = self.policy(input_ids=ptx_input_ids, labels=ptx_input_ids, use_cache=False).loss
        return logits, values, ptx_loss

    def activation_checkpointing_enable(
        self, activation_checkpointing_kwargs: dict | None = None, every_n_layers: int = 1, offload: bool = False
    ) -> None:
        """What the Trainer calls with `activation_checkpointing: true`: both models recompute their layers."""
        for model in (self.policy, self.value_model):
            model.activation_checkpointing_enable(
                activation_checkpointing_kwargs=activation_checkpointing_kwargs,
                every_n_layers=every_n_layers,
                offload=offload,
            )


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
    # the reward sources' weighted score before shaping (`scores` is after normalisation, penalty and clipping, what
    # PPO optimises), and the reference's log-probs (for kl_penalty="loss")
    raw_scores: torch.Tensor
    ref_logprobs: torch.Tensor

    @property
    def prompt_length(self) -> int:
        return self.query_responses.shape[1] - self.responses.shape[1]


# ---------------------------------------------------------------- the trainer


class PPOTrainer(Trainer):
    """PPO-ptx for any causal LM: `PPOTrainer(model, args, processing_class, reward_model, train_dataset)`.

    - `model`: the policy, started from the SFT model (or a trainable `PeftModel`; `peft_config` makes one; a LoRA
      SFT adapter must be merged first), a causal LM whose forward takes `logits_to_keep` (transformers' all do).
      The frozen reference is a copy of it taken here (for PEFT: the same model with the adapter disabled), or
      `ref_model` (required under DeepSpeed ZeRO-3).
    - `reward_model`: a one-output sequence classifier, which scores prompt + answer as reward training read them
      (`reward_texts`; its `config.reward_shift` is added); or a function
      `f(prompts, completions, completion_ids=...) -> list[float]` (prompts as given, answers as text); or a list of
      them, summed with `args.reward_weights` (`ppo_rewards.RemoteRewardModel` is a function that asks an HTTP server).
    - `reward_processing_class`: the tokenizer each reward model reads the text with (one, or a list aligned with a
      list of sources; default: the policy's). One of another vocabulary needs an explicit `value_model`.
    - `value_model`: default a (trainable) copy of the reward model (InstructGPT); required with a reward function
      and under DeepSpeed ZeRO-3.
    - `train_dataset`: prompts, as `prompt` (messages, rendered with the chat template, or text) or `input_ids`.
    - `ptx_dataset`: pretraining blocks (`input_ids` of equal length, e.g. `hf_instruct.data.pack_texts`), used
      when `args.ptx_coef > 0`; a streaming dataset works too.
    - `eval_dataset`: prompts; `evaluate()` reports their mean reward and KL.
    """

    def __init__(
        self,
        model: PreTrainedModel | PeftModel,
        args: PPOConfig,
        processing_class: PreTrainedTokenizerBase,
        reward_model: RewardSource | list[RewardSource],
        train_dataset: datasets.Dataset,
        value_model: PreTrainedModel | None = None,
        ref_model: PreTrainedModel | None = None,
        ptx_dataset: datasets.Dataset | datasets.IterableDataset | None = None,
        eval_dataset: datasets.Dataset | None = None,
        peft_config: PeftConfig | None = None,
        reward_processing_class: PreTrainedTokenizerBase | list[PreTrainedTokenizerBase | None] | None = None,
        callbacks: list | None = None,
    ):
        self._check_inputs(
            model, args, processing_class, reward_model, value_model, ptx_dataset, peft_config, reward_processing_class
        )
        if value_model is None:
            value_model = copied(reward_model, "value_model").requires_grad_(True)  # trained, even from a frozen one
        if peft_config is not None:
            model = get_peft_model(model, peft_config)
        if ref_model is None and not isinstance(model, PeftModel):
            ref_model = copied(model, "ref_model")
        for module in (model, value_model, ref_model, *as_list(reward_model)):
            if isinstance(module, nn.Module):
                disable_dropout(module)
        if not is_deepspeed_zero3_enabled():  # ZeRO-3 weights are shards until the engine runs
            check_no_dropout(model, "The policy", lambda ids: model(input_ids=ids).logits)
            check_no_dropout(
                value_model, "The value_model", lambda ids: token_scores(value_model, ids, torch.ones_like(ids))
            )
        for frozen in (ref_model, *as_list(reward_model)):
            if isinstance(frozen, nn.Module):
                frozen.eval().requires_grad_(False)
        # each reward model reads the text with its own tokenizer (default: the policy's)
        reward_tokenizers = reward_tokenizer_list(reward_processing_class, reward_model)
        reward_tokenizers = [tokenizer or processing_class for tokenizer in reward_tokenizers]
        for index, (source, tokenizer) in enumerate(zip(as_list(reward_model), reward_tokenizers, strict=True)):
            if isinstance(source, nn.Module):
                check_reward_tokenizer(source, tokenizer, "reward_model" if index == 0 else f"reward_model[{index}]")

        self.ptx_dataset = ptx_dataset
        self.reward_processing_class = reward_tokenizers[0]
        self.reward_processing_classes = reward_tokenizers
        self.reward_moments = RunningMoments()
        self._episodes = 0
        self.kl_controller = KLController(args.kl_coef, args.kl_target, args.kl_horizon)
        train_dataset = self._tokenized_prompts(train_dataset, processing_class, args, "train_dataset")
        answers = (
            args.max_steps * args.rollout_size * args.world_size
            if args.max_steps > 0
            else math.ceil(args.num_train_epochs * len(train_dataset) * args.num_samples_per_prompt)
        )
        if args.kl_target is not None and args.kl_horizon > answers:
            warnings.warn(
                f"kl_horizon={args.kl_horizon} is longer than this run ({answers} answers): the adaptive β can move "
                f"by at most ×{math.exp(0.2 * answers / args.kl_horizon):.2f} over it, a fixed β in disguise. Set "
                f"kl_horizon to a fraction of the run's answers (e.g. {max(answers // 5, 1)}: up to ×e).",
                stacklevel=2,
            )
        if eval_dataset is not None:
            eval_dataset = self._tokenized_prompts(eval_dataset, processing_class, args, "eval_dataset")
        # PPO accumulates within each minibatch itself (`_update`); the Trainer's loop would call training_step, a
        # whole PPO iteration, once per micro-batch
        self.gradient_accumulation_steps = args.gradient_accumulation_steps
        args = copy.copy(args)
        args.gradient_accumulation_steps = 1
        if args.rollout_batch_size is not None:  # the dataloader's batch is the rollout's prompts; minibatches follow
            args.num_mini_batches = args.rollout_size // args.per_device_train_batch_size
            args.per_device_train_batch_size, args.rollout_batch_size = args.rollout_batch_size, None
        super().__init__(
            model=PolicyAndValueModel(model, value_model),
            args=args,
            data_collator=self._left_pad,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            callbacks=callbacks,
        )
        if self.is_fsdp_enabled:
            raise ValueError(
                "PPOTrainer does not run under FSDP (the `fsdp` setting, or an accelerate config with "
                "distributed_type: FSDP): to shard policy, value, reference and reward model use DeepSpeed ZeRO-3 "
                "(recipes/accelerate/deepspeed_zero3.yaml); else DDP (recipes/accelerate/ddp.yaml)."
            )
        if self.is_deepspeed_enabled and args.value_max_grad_norm is not None:
            raise ValueError(
                f"value_max_grad_norm={args.value_max_grad_norm}: under DeepSpeed its engine clips the gradients of "
                "policy and value model together, at max_grad_norm. Leave value_max_grad_norm unset."
            )
        plugin = self.accelerator.state.deepspeed_plugin if self.is_deepspeed_enabled else None
        deepspeed_config = plugin.deepspeed_config if plugin is not None else {}
        for section, why in (
            ("scheduler", "it would step once per PPO update, num_ppo_epochs × num_mini_batches times per step"),
            ("optimizer", "it would train the value model at the policy's learning rate, not value_learning_rate"),
        ):
            if section in deepspeed_config:
                raise ValueError(
                    f"The DeepSpeed config has its own `{section}`: {why}. Remove it and set the Trainer's "
                    "(lr_scheduler_type, warmup_steps / optim, learning_rate) instead."
                )
        self.reward_sources = [self._placed(source) for source in as_list(reward_model)]
        self.ref_model = self._placed(ref_model)
        self.reward_model = self.reward_sources if isinstance(reward_model, list | tuple) else self.reward_sources[0]

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
        # The saved policy samples as the rollouts did: at the temperature its KL to the reference was held at
        if self.policy.generation_config is not None:
            self.policy.generation_config.update(do_sample=True, temperature=args.temperature, top_k=0, top_p=1.0)
        self._metrics: dict[str, list[torch.Tensor]] = defaultdict(list)
        self._ptx_rows: Iterator[dict] | None = None

    @staticmethod
    def _check_inputs(
        model: PreTrainedModel | PeftModel,
        args: PPOConfig,
        processing_class: PreTrainedTokenizerBase,
        reward_model: RewardSource | list[RewardSource],
        value_model: PreTrainedModel | None,
        ptx_dataset: datasets.Dataset | datasets.IterableDataset | None,
        peft_config: PeftConfig | None,
        reward_processing_class: PreTrainedTokenizerBase | list[PreTrainedTokenizerBase | None] | None,
    ) -> None:
        """Refuse, before any model is copied or wrapped, what PPO cannot train with; each error says the fix."""
        if processing_class.pad_token_id is None:
            raise ValueError("The tokenizer has no pad token: set tokenizer.pad_token (e.g. to its eos_token).")
        reward_tokenizer = reward_tokenizer_list(reward_processing_class, reward_model)[0]
        if (
            value_model is None
            and reward_tokenizer is not None
            and reward_tokenizer.get_vocab() != processing_class.get_vocab()
        ):
            raise ValueError(
                "The reward model's tokenizer differs from the policy's, and the default value model (a copy of the "
                "reward model) must read the policy's tokens: pass a value_model built on the policy's vocabulary."
            )
        if value_model is None and not isinstance(reward_model, nn.Module):
            raise ValueError(
                "With a reward function, pass a value_model (a one-output sequence classifier); likewise with several "
                "reward sources."
            )
        if args.reward_weights is not None and len(args.reward_weights) != len(as_list(reward_model)):
            raise ValueError(
                f"reward_weights has {len(args.reward_weights)} weights for {len(as_list(reward_model))} reward "
                "sources: give one weight per source."
            )
        for name, scorer in (
            *(("reward_model", source) for source in as_list(reward_model)),
            ("value_model", value_model),
        ):
            labels = getattr(getattr(scorer, "config", None), "num_labels", 1)
            if isinstance(scorer, nn.Module) and labels != 1:
                raise ValueError(
                    f"{name} has num_labels={labels}; PPO needs one scalar per sequence: a sequence classifier with "
                    "num_labels=1 (what hf-instruct reward trains)."
                )
        critic_name, critic = ("reward_model", reward_model) if value_model is None else ("value_model", value_model)
        if isinstance(critic, nn.Module) and not isinstance(getattr(critic, "score", None), nn.Module):
            raise ValueError(
                f"The {critic_name} ({type(critic).__name__}) has no `score` head to read a value at every position, "
                "as PPO's value model must (a BERT-style `classifier` reads one pooled position, and its encoder sees "
                "later tokens): pass a value_model that is a causal LM's sequence classifier, e.g. "
                "AutoModelForSequenceClassification.from_pretrained(<SFT model>, num_labels=1)."
            )
        if ptx_dataset is None and args.ptx_coef > 0:
            raise ValueError(f"ptx_coef={args.ptx_coef} needs a ptx_dataset of pretraining blocks (or ptx_coef=0).")
        if args.ptx_coef > 0 and "input_ids" not in (ptx_dataset.column_names or []):
            raise ValueError("ptx_dataset needs an `input_ids` column of equal-length blocks (see pack_texts).")
        if getattr(model, "_hf_peft_config_loaded", False):
            raise ValueError(
                "The policy carries a LoRA adapter loaded by from_pretrained(<adapter folder>): its weights are "
                "frozen, and a PEFT reference (adapters disabled) would switch that adapter off too. Merge it into "
                "its base first: peft.AutoPeftModelForCausalLM.from_pretrained(folder).merge_and_unload() "
                "(hf-instruct ppo does)."
            )
        # What trains: with peft_config a new adapter on the policy (frozen if the config is in inference mode, as one
        # read from a saved adapter is); without a value_model a copy of the reward model, made trainable
        policy_trains = (
            not peft_config.inference_mode
            if peft_config is not None
            else any(parameter.requires_grad for parameter in model.parameters())
        )
        value_model_trains = value_model is None or any(
            parameter.requires_grad for parameter in value_model.parameters()
        )
        for name, trains in (("policy", policy_trains), ("value_model", value_model_trains)):
            if not trains:
                raise ValueError(
                    f"The {name} has no trainable parameters, so PPO would not change it (a model or adapter loaded "
                    "for inference is frozen): unfreeze it (requires_grad_(True)), load a PEFT adapter with "
                    "is_trainable=True, or merge it (merge_and_unload) and pass peft_config."
                )

    @property
    def policy(self) -> PreTrainedModel | PeftModel:
        """The policy: the model `save_model` writes and a model card describes (the value model trains beside it and
        is kept in checkpoints only)."""
        return self.accelerator.unwrap_model(self.model).policy

    @property
    def value_model(self) -> PreTrainedModel:
        return self.accelerator.unwrap_model(self.model).value_model

    # ---- placement: devices, DeepSpeed

    @property
    def _zero3(self) -> bool:
        return self.is_deepspeed_enabled and self.accelerator.state.deepspeed_plugin.zero_stage == 3

    def _placed(self, frozen: nn.Module | RewardFunction | None) -> nn.Module | RewardFunction | None:
        """A frozen model (reference, reward) on this process's device; under DeepSpeed an inference engine, which
        shards it like the policy under ZeRO-3 and holds a whole copy otherwise (TRL's prepare_deepspeed)."""
        if not isinstance(frozen, nn.Module):
            return frozen
        if self.is_deepspeed_enabled:
            return prepare_deepspeed(frozen, self.accelerator)
        return frozen.to(self.args.device)

    @contextlib.contextmanager
    def _policy_for_generation(self) -> Iterator[PreTrainedModel | PeftModel]:
        """The policy with the model's own sampling settings switched off (`neutral_generation_defaults`). Under
        DeepSpeed ZeRO-3 each process holds a shard of every weight: its weights are gathered for the whole of
        `generate` (as TRL does), instead of fetched layer by layer for every sampled token."""
        with neutral_generation_defaults(self.policy):
            if not self._zero3:
                yield self.policy
                return
            import deepspeed

            if not self.args.ds3_gather_for_generation:
                yield self.policy
                return
            with deepspeed.zero.GatheredParameters(list(self.policy.parameters())):
                remove_hooks(self.model_wrapped)
                try:
                    yield self.policy
                finally:  # the engine needs its hooks back even when generate failed (e.g. out of memory)
                    add_hooks(self.model_wrapped)

    def _gathered_without_engine(self) -> contextlib.AbstractContextManager:
        """Under DeepSpeed ZeRO-3 before `train()` (an `evaluate()` first), policy and value model are shards that no
        engine gathers layer by layer as they run: gathered whole meanwhile."""
        if not self._zero3 or self.model_wrapped is not self.model:
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(self.model.parameters()))

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
                    # With the BOS where the tokenizer adds one, as TRL's SFT and GRPO tokenise text; without an EOS
                    # that it appends (the answer follows the prompt)
                    ids = tokenizer(prompt)["input_ids"]
                    return {"input_ids": ids[:-1] if len(ids) > 1 and ids[-1] == tokenizer.eos_token_id else ids}
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
            self._ptx_rows = itertools.islice(self._ptx_passes(shard), start, None)
        rows = [next(self._ptx_rows)["input_ids"] for _ in range(size)]
        return torch.tensor(rows, device=self.args.device)

    def _ptx_passes(self, shard: datasets.Dataset | datasets.IterableDataset) -> Iterator[dict]:
        """This process's pretraining blocks, pass after pass, each pass in another order (seeded by args.seed and
        the pass number, so a resumed run draws the same blocks): a fixed cycle would repeat the same neighbours."""
        if isinstance(shard, datasets.IterableDataset):
            shard = shard.shuffle(seed=self.args.seed, buffer_size=1000)
        for number in itertools.count():
            if isinstance(shard, datasets.IterableDataset):
                shard.set_epoch(number)
                yield from shard
            else:
                yield from shard.shuffle(seed=self.args.seed + number, keep_in_memory=True)

    # ---- rollout

    def _rollout(self, inputs: dict[str, torch.Tensor], evaluating: bool = False) -> Rollout:
        """Sample answers, score them, and compute log-probs, values, KL, advantages and returns. An evaluation
        rollout leaves the running reward statistics alone."""
        wrapper = self.accelerator.unwrap_model(self.model)
        wrapper.eval()
        prompt_ids, prompt_mask = inputs["input_ids"], inputs["attention_mask"]
        with torch.no_grad(), self._policy_for_generation() as policy:
            chunk_size = self.args.rollout_generation_batch_size or len(prompt_ids)
            responses = generate_in_chunks(policy, prompt_ids, prompt_mask, self.generation_config, chunk_size)
        response_length = responses.shape[1]
        is_stop = torch.isin(responses, self.stop_token_ids.to(responses.device))
        ended = is_stop.any(dim=1)
        first_stop = torch.where(ended, is_stop.int().argmax(dim=1), response_length - 1)
        mask = (torch.arange(response_length, device=responses.device)[None, :] <= first_stop[:, None]).long()
        responses = responses.masked_fill(mask == 0, self.processing_class.pad_token_id)
        query_responses = torch.cat([prompt_ids, responses], dim=1)
        attention_mask = torch.cat([prompt_mask, mask], dim=1)

        size = self.args.rollout_forward_batch_size
        chunks = [slice(start, start + size) for start in range(0, len(responses), size)]
        with torch.no_grad(), self.compute_loss_context_manager(), self._gathered_without_engine():
            statistics = [
                self._policy_statistics(
                    wrapper(query_responses[rows], attention_mask[rows], response_length), responses[rows]
                )
                for rows in chunks
            ]
            ref_logprobs = [
                self._ref_logprobs(query_responses[rows], attention_mask[rows], responses[rows]) for rows in chunks
            ]
            scores = self._scores(inputs.get("prompt"), prompt_ids, prompt_mask, responses, mask, ended)
        logprobs, entropy, values = (torch.cat(column) * mask for column in zip(*statistics, strict=True))
        ref_logprobs = torch.cat(ref_logprobs) * mask
        raw_scores, scores = scores, self._shaped_scores(scores, ended, evaluating)

        kl_coef = self.kl_controller.value if self.args.kl_penalty == "reward" else 0.0  # else in the loss
        rewards, kl = kl_penalised_rewards(scores, logprobs, ref_logprobs, mask, kl_coef, self.args.kl_estimator)
        advantages, returns = compute_gae(rewards, values, mask, self.args.gamma, self.args.lam)
        advantages = masked_whiten(advantages, mask, lambda tensor: self.accelerator.reduce(tensor, "sum"))
        return Rollout(
            query_responses=query_responses,
            attention_mask=attention_mask,
            responses=responses,
            mask=mask,
            logprobs=logprobs,
            values=values,
            advantages=advantages,
            returns=returns,
            kl=kl,
            scores=scores,
            ended=ended,
            entropy=masked_mean(entropy, mask),
            raw_scores=raw_scores,
            ref_logprobs=ref_logprobs,
        )

    def _shaped_scores(self, scores: torch.Tensor, ended: torch.Tensor, evaluating: bool) -> torch.Tensor:
        """The score PPO optimises: the reward model's, normalised by the running moments of all scores so far
        (`reward_normalization`; a training rollout adds its own, gathered from every process, first), minus
        `missing_eos_penalty` for a cut-off answer, clipped to ±`reward_clip`."""
        if self.args.reward_normalization:
            if not evaluating:
                moments = torch.stack(
                    [torch.tensor(float(len(scores)), device=scores.device), scores.sum(), (scores**2).sum()]
                )
                self.reward_moments.update(*self.accelerator.reduce(moments, "sum").tolist())
            scores = self.reward_moments.normalize(scores)
        scores = scores - self.args.missing_eos_penalty * (~ended).float()
        if self.args.reward_clip is not None:
            scores = scores.clamp(-self.args.reward_clip, self.args.reward_clip)
        return scores

    def _policy_statistics(self, outputs: tuple, responses: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Per response token (B, R), from a policy-and-value forward's outputs: the policy's log-prob and entropy,
        and the value."""
        logits, values, _ = outputs
        logits = logits.float() / self.args.temperature
        return selective_log_softmax(logits, responses), entropy_from_logits(logits), values.float()

    def _ref_logprobs(self, query_responses, attention_mask, responses) -> torch.Tensor:
        """Log-probs of the responses under the frozen reference (for PEFT: the policy without its adapter)."""
        reference = self.ref_model if self.ref_model is not None else self.policy
        with self.policy.disable_adapter() if self.ref_model is None else contextlib.nullcontext():
            logits = response_logits(reference, query_responses, attention_mask, responses.shape[1])
        return selective_log_softmax(logits.float() / self.args.temperature, responses)

    def _scores(self, prompts: list | None, prompt_ids, prompt_mask, responses, mask, ended) -> torch.Tensor:
        """The reward of each response: the reward function's, or the reward model's score (+ its reward_shift) of
        prompt + answer as reward training reads them (`reward_texts`). Prompts given only as token ids are text as
        the policy read it, special tokens (chat markup) included."""
        lengths = mask.sum(dim=1).tolist()
        completion_ids = [row[:length] for row, length in zip(responses.tolist(), lengths, strict=True)]
        completions = written_texts(self.processing_class, prompt_ids, prompt_mask, completion_ids)
        given_as_ids = prompts is None
        if given_as_ids:
            prompts = [
                self.processing_class.decode(ids[keep.bool()].tolist())
                for ids, keep in zip(prompt_ids, prompt_mask, strict=True)
            ]
        columns = []  # one score per answer from each reward source
        for source, tokenizer in zip(self.reward_sources, self.reward_processing_classes, strict=True):
            if not isinstance(source, nn.Module):
                values = source(prompts=prompts, completions=completions, completion_ids=completion_ids)
                columns.append(torch.tensor(values, dtype=torch.float, device=responses.device))
                continue
            texts = reward_texts(tokenizer, prompts, completions, ended.tolist())
            # RewardTrainer tokenises plain text with the tokenizer's special tokens (e.g. a BOS); a chat rendering,
            # or a prompt decoded from its ids, holds its own already
            add_special_tokens = isinstance(prompts[0], str) and not given_as_ids
            batch_size = self.args.rollout_forward_batch_size
            scores = reward_scores(source, tokenizer, texts, batch_size, add_special_tokens=add_special_tokens)
            columns.append(scores + (getattr(source.config, "reward_shift", 0.0) or 0.0))
        return weighted_scores(columns, self.args.reward_weights)

    # ---- update

    def training_step(self, model: nn.Module, inputs: dict, num_items_in_batch=None) -> torch.Tensor:
        """One PPO iteration: a rollout, then num_ppo_epochs × num_mini_batches updates. Every update but the last
        steps the optimiser here; the Trainer takes the last step (with its scheduler and callbacks). Returns the
        mean loss of the updates."""
        inputs = repeated_prompts(self._prepare_inputs(inputs), self.args.num_samples_per_prompt)
        batch_size = len(inputs["input_ids"])  # the last batch of an epoch may be smaller
        num_minibatches = min(self.args.num_mini_batches, batch_size)
        updates = self.args.num_ppo_epochs * num_minibatches
        rollout = self._rollout(inputs)
        episodes = batch_size * self.args.world_size
        self._episodes += episodes
        self._record_rollout(rollout)
        model.train()
        losses = []
        for update in range(updates):
            if update % num_minibatches == 0:  # a new pass over the rollout, in a new order
                minibatches = torch.randperm(batch_size, device=rollout.responses.device).tensor_split(num_minibatches)
                epoch_start = len(self._metrics["policy/approxkl"])
            losses.append(self._update(model, rollout, minibatches[update % num_minibatches]))
            if self._critic_warmup:  # no step at all for the policy (AdamW would still decay it)
                for parameter in self.policy.parameters():
                    parameter.grad = None
            epoch_ends = update % num_minibatches == num_minibatches - 1
            if update == updates - 1 or (epoch_ends and self._approx_kl_exceeded(epoch_start)):
                break
            self.optimizer.step()
            self.optimizer.zero_grad()
        self._metrics["policy/ppo_epochs"].append(torch.tensor((update + 1) / num_minibatches))
        self.kl_controller.update(self.accelerator.reduce(rollout.kl.sum(1).mean(), "mean").item(), episodes)
        return torch.stack(losses).mean()

    @property
    def _critic_warmup(self) -> bool:
        """The first `critic_warmup_steps` iterations train the value model only."""
        return self.state.global_step < self.args.critic_warmup_steps

    def _approx_kl_exceeded(self, start: int) -> bool:
        """Whether the epoch whose approx-KL statistics begin at `start` exceeded `max_approx_kl` (mean over its
        updates and all processes, so that every process stops at the same epoch)."""
        if self.args.max_approx_kl is None:
            return False
        approx_kl = torch.stack(self._metrics["policy/approxkl"][start:]).mean().to(self.args.device)
        return self.accelerator.reduce(approx_kl, "mean").item() > self.args.max_approx_kl

    def _update(self, model: nn.Module, rollout: Rollout, index: torch.Tensor) -> torch.Tensor:
        """The clipped gradient of one minibatch's loss, accumulated over `gradient_accumulation_steps` micro-batches:
        each one's PPO loss (a mean over its response tokens) weighs its share of the minibatch's response tokens, its
        pretraining loss its share of the pretraining rows, so the sum is the whole minibatch's loss. Returns it."""
        micro_batches = index.tensor_split(min(self.gradient_accumulation_steps, len(index)))
        ptx_parts = [(None, 1.0)] * len(micro_batches)  # (pretraining rows, their share)
        if self.args.ptx_coef > 0:
            ptx_input_ids = self._next_ptx_batch()
            ptx_parts = [(rows, len(rows) / len(ptx_input_ids)) for rows in ptx_input_ids.tensor_split(len(ptx_parts))]
        tokens = rollout.mask[index].sum()
        total = torch.zeros((), device=rollout.mask.device)
        for number, (rows, (ptx_rows, ptx_share)) in enumerate(zip(micro_batches, ptx_parts, strict=True)):
            last = number == len(micro_batches) - 1
            self.accelerator.gradient_state._set_sync_gradients(last)  # DeepSpeed reduces and steps on the last only
            # DDP: all-reduce on the last only. Its forward decides that, so it runs inside no_sync as well
            with contextlib.nullcontext() if last else self.accelerator.no_sync(model):
                with self.compute_loss_context_manager():
                    ppo_loss, ptx_loss = self._ppo_loss(model, rollout, rows, ptx_rows)
                    loss = ppo_loss * rollout.mask[rows].sum() / tokens
                    if ptx_loss is not None:
                        loss = loss + self.args.ptx_coef * ptx_loss * ptx_share
                self.accelerator.backward(loss)
            total += loss.detach()
        self._clip_gradients()
        return total

    def _ppo_loss(
        self, model: nn.Module, rollout: Rollout, index: torch.Tensor, ptx_input_ids: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Clipped policy loss + vf_coef × clipped value loss of these rows; the LM loss of the pretraining rows."""
        response_length = rollout.responses.shape[1]
        logits, values, ptx_loss = model(
            rollout.query_responses[index], rollout.attention_mask[index], response_length, ptx_input_ids
        )
        logprobs = selective_log_softmax(logits.float() / self.args.temperature, rollout.responses[index])
        mask = rollout.mask[index]
        policy_loss, policy_stats = clipped_policy_loss(
            logprobs, rollout.logprobs[index], rollout.advantages[index], mask, self.args.cliprange
        )
        value_loss, value_stats = clipped_value_loss(
            values.float(), rollout.values[index], rollout.returns[index], mask, self.args.cliprange_value
        )
        stats = {**policy_stats, **value_stats, "loss/policy": policy_loss, "loss/value": value_loss}
        if ptx_loss is not None:
            stats["loss/ptx"] = ptx_loss
        if self.args.kl_penalty == "loss":  # β × the updated policy's KL to the reference, in the policy's loss
            kl_loss = masked_mean(kl_estimate(logprobs, rollout.ref_logprobs[index], self.args.kl_estimator), mask)
            policy_loss = policy_loss + self.kl_controller.value * kl_loss
            stats["loss/kl"] = kl_loss
        for name, value in stats.items():
            self._metrics[name].append(value.detach())
        if self._critic_warmup:  # the policy's terms count 0, yet stay in the graph (DDP reduces every parameter)
            policy_loss = policy_loss * 0.0
            ptx_loss = ptx_loss * 0.0 if ptx_loss is not None else None
        return policy_loss + self.args.vf_coef * value_loss, ptx_loss

    def _clip_gradients(self) -> None:
        """Clip the policy's and the value model's gradients each to its own norm (max_grad_norm,
        value_max_grad_norm; 0: no clipping), so that large critic gradients early on do not shrink the policy's step,
        and record the norms before clipping. Under DeepSpeed the engine clips all together when it steps."""
        if self.is_deepspeed_enabled:
            norm = self.accelerator.deepspeed_engine_wrapped.get_global_grad_norm()
            if norm is not None:  # None before its first step
                self._metrics["grad_norm"].append(torch.tensor(float(norm)))
            return
        self.accelerator.unscale_gradients()  # mixed precision with a loss scaler
        value_max_grad_norm = self.args.value_max_grad_norm
        value_max_grad_norm = self.args.max_grad_norm if value_max_grad_norm is None else value_max_grad_norm
        norms = {
            name: torch.nn.utils.clip_grad_norm_(trained.parameters(), max_norm if max_norm > 0 else math.inf)
            for name, trained, max_norm in (
                ("policy/grad_norm", self.policy, self.args.max_grad_norm),
                ("val/grad_norm", self.value_model, value_max_grad_norm),
            )
        }
        norms["grad_norm"] = torch.linalg.vector_norm(torch.stack(list(norms.values())))
        for name, norm in norms.items():
            self._metrics[name].append(norm.detach())

    def _clip_grad_norm(self, model: nn.Module) -> None:
        """Nothing: `_update` clipped the last update already, per model."""

    def _get_grad_norm(self, model: nn.Module, grad_norm=None) -> None:
        """Nothing: `log` reports the mean gradient norm of the updates since the last log, not the last one's."""

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """The Trainer's optimiser with the value model's parameters in param groups of their own, at
        value_learning_rate (OpenRLHF's critic_learning_rate): a critic often wants another step size than the
        policy. Each of the Trainer's groups (with and without weight decay) is split in two. With `optim: muon` the
        value model's Muon group runs at muon_learning_rate × value_learning_rate / learning_rate."""
        if self.optimizer is not None:
            return self.optimizer
        optimizer = super().create_optimizer(model)
        value_parameters = set(self.value_model.parameters())
        groups = []
        for group in optimizer.param_groups:
            policy = [parameter for parameter in group["params"] if parameter not in value_parameters]
            value = [parameter for parameter in group["params"] if parameter in value_parameters]
            value_lr = group["lr"] if self.args.value_learning_rate is None else self.args.value_learning_rate
            if group.get("muon") and self.args.value_learning_rate is not None:
                value_lr = group["lr"] * self.args.value_learning_rate / self.args.learning_rate
            for params, lr in ((policy, group["lr"]), (value, value_lr)):
                if params:
                    groups.append({**group, "params": params, "lr": lr})
        optimizer.param_groups = groups
        return optimizer

    # ---- logging, evaluation

    def _record_rollout(self, rollout: Rollout) -> None:
        kl = rollout.kl.sum(dim=1)
        mask = rollout.mask
        advantages = rollout.returns - rollout.values  # before whitening
        stats = {
            "objective/scores": rollout.raw_scores.mean(),
            "objective/scores_std": rollout.raw_scores.std(correction=0),
            "objective/scores_min": rollout.raw_scores.min(),
            "objective/scores_max": rollout.raw_scores.max(),
            "objective/missing_eos_penalty": self.args.missing_eos_penalty * (~rollout.ended).float().mean(),
            "objective/kl": kl.mean(),
            "objective/rlhf_reward": (rollout.scores - self.kl_controller.value * kl).mean(),
            "objective/entropy": rollout.entropy,
            "objective/kl_coef": torch.tensor(self.kl_controller.value),
            "val/mean_response_length": rollout.mask.sum(dim=1).float().mean(),
            "val/ended_fraction": rollout.ended.float().mean(),
            "val/advantages_mean": masked_mean(advantages, mask),
            "val/advantages_std": masked_variance(advantages, mask).sqrt(),
            "val/returns_mean": masked_mean(rollout.returns, mask),
            "val/returns_std": masked_variance(rollout.returns, mask).sqrt(),
            "val/values_mean": masked_mean(rollout.values, mask),
            "val/explained_variance": explained_variance(rollout.values, rollout.returns, mask),
        }
        for name, value in stats.items():
            self._metrics[name].append(value.detach().to(self.args.device))
        self._metrics["episode"] = [torch.tensor(float(self._episodes))]  # the latest count, not a mean over steps
        if self.state.global_step % self.args.logging_steps == 0 and self.args.num_sample_completions > 0:
            self._log_samples(rollout)

    def _log_samples(self, rollout: Rollout, split: str = "train") -> None:
        """A table of sample completions on the console, also appended to <output_dir>/samples.jsonl (evaluation's to
        eval_samples.jsonl) and sent to the trackers (`send_sample_table`). `score` is the reward sources' score
        (before normalisation, missing_eos_penalty and clipping)."""
        if not self.is_world_process_zero():
            return
        count = self.args.num_sample_completions
        decode = self.processing_class.batch_decode
        prompts = decode(rollout.query_responses[:count, : rollout.prompt_length], skip_special_tokens=True)
        completions = decode(rollout.responses[:count], skip_special_tokens=True)
        rows = [
            {"step": self.state.global_step, "prompt": p, "completion": c, "score": round(s, 4)}
            for p, c, s in zip(prompts, completions, rollout.raw_scores[:count].tolist(), strict=True)
        ]
        os.makedirs(self.args.output_dir, exist_ok=True)
        with open(
            os.path.join(self.args.output_dir, SAMPLES_FILE if split == "train" else f"{split}_{SAMPLES_FILE}"),
            "a",
            encoding="utf-8",
        ) as f:
            f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        send_sample_table(
            self.callback_handler.callbacks, self.args, self.state, self.control, f"{split}/samples", rows
        )
        table = markdown_table(
            ["score", "prompt", "completion"],
            [[f"{row['score']:.3f}", table_cell(row["prompt"]), table_cell(row["completion"])] for row in rows],
        )
        print(f"ppo {split} samples at step {self.state.global_step}:", *table, sep="\n")

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the PPO statistics gathered since the last log (averaged over steps and processes; the `_min` and
        `_max` ones the least and greatest)."""
        for name, values in sorted(self._metrics.items()):
            stacked = torch.stack(values).to(self.args.device)
            if name.endswith(("_min", "_max")):
                extreme = torch.amin if name.endswith("_min") else torch.amax
                logs[name] = extreme(self.accelerator.gather(extreme(stacked).reshape(1))).item()
            else:
                logs[name] = self.accelerator.reduce(stacked.mean(), "mean").item()
        self._metrics.clear()
        super().log(logs, start_time)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Of sampled answers to the evaluation prompts: the reward sources' mean score (before missing_eos_penalty,
        reported apart), the KL to the reference, the response length and the fraction that ended; a table of samples.
        The training statistics gathered since the last log wait for the next one."""
        pending, self._metrics = self._metrics, defaultdict(list)
        columns = defaultdict(list)
        for number, inputs in enumerate(self.get_eval_dataloader(eval_dataset)):
            rollout = self._rollout(self._prepare_inputs(inputs), evaluating=True)
            if number == 0 and self.args.num_sample_completions > 0:
                self._log_samples(rollout, split=metric_key_prefix)
            for name, value in (
                ("reward", rollout.raw_scores),
                ("missing_eos_penalty", self.args.missing_eos_penalty * (~rollout.ended).float()),
                ("kl", rollout.kl.sum(dim=1)),
                ("mean_response_length", rollout.mask.sum(dim=1).float()),
                ("ended_fraction", rollout.ended.float()),
            ):
                columns[name].append(self.accelerator.gather_for_metrics(value))
        metrics = {f"{metric_key_prefix}_{name}": torch.cat(values).mean().item() for name, values in columns.items()}
        self.log(dict(metrics))
        self._metrics = pending
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    # ---- saving and resuming

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """The policy only (a normal model or adapter folder) and the tokenizer. Under DeepSpeed `state_dict` holds
        the policy-and-value module's weights, gathered from every process under ZeRO-3."""
        output_dir = output_dir or self.args.output_dir
        if not self.args.should_save:
            return
        self.policy.save_pretrained(output_dir, state_dict=submodule_state_dict(state_dict, "policy"))
        self.processing_class.save_pretrained(output_dir)

    def _save_checkpoint(self, model: nn.Module, trial) -> None:
        """A checkpoint also holds the value model and the KL coefficient (written before the Trainer's state)."""
        checkpoint = os.path.join(
            self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        )
        state_dict = self.accelerator.get_state_dict(self.deepspeed) if self._zero3 else None  # every process gathers
        if self.args.should_save:
            value_state_dict = submodule_state_dict(state_dict, "value_model")
            self.value_model.save_pretrained(os.path.join(checkpoint, VALUE_MODEL_DIR), state_dict=value_state_dict)
            with open(os.path.join(checkpoint, PPO_STATE_FILE), "w") as f:
                json.dump(
                    {
                        "kl_coef": self.kl_controller.value,
                        "reward_moments": self.reward_moments.state_dict(),
                        "episode": self._episodes,
                    },
                    f,
                )
        super()._save_checkpoint(model, trial)

    def _load_best_model(self) -> None:
        """`load_best_model_at_end`: the best checkpoint's policy, value model and β. The Trainer's own would load the
        policy's weights into the policy-and-value module, except under DeepSpeed (its checkpoints hold the module)."""
        if self.is_deepspeed_enabled:
            super()._load_best_model()
        else:
            self._load_from_checkpoint(self.state.best_model_checkpoint)
        self._load_kl_coef(self.state.best_model_checkpoint)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model=self.policy)
        super()._load_from_checkpoint(os.path.join(resume_from_checkpoint, VALUE_MODEL_DIR), model=self.value_model)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        """Also β: every resume comes here, under DeepSpeed too (whose weights load without _load_from_checkpoint)."""
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None:
            self._load_kl_coef(checkpoint)

    def _issue_warnings_after_load(self, load_result) -> None:
        """Keys missing from a policy or value model checkpoint because they are tied (an LM head tied to the
        embeddings, which every recipe's model has) are no loss: the loaded tensor is theirs too."""
        models = (self.policy, self.value_model)
        tied = {key for model in models for key in getattr(model, "all_tied_weights_keys", ())}
        missing = [key for key in load_result.missing_keys if key not in tied]
        super()._issue_warnings_after_load(load_result._replace(missing_keys=missing))

    def _load_rng_state(self, checkpoint: str | None) -> None:
        """The Trainer resumes without a word when the checkpoint has no RNG state; PPO's rollouts would then sample
        other answers than the uninterrupted run, so say so."""
        if checkpoint is not None:
            name = f"rng_state_{self.args.process_index}.pth" if self.args.world_size > 1 else "rng_state.pth"
            if not os.path.isfile(os.path.join(checkpoint, name)):
                warnings.warn(
                    f"ppo: {checkpoint} has no {name}: the resumed run samples other answers than the interrupted "
                    "run would have, so it will not end as an uninterrupted run (resume is not exact).",
                    stacklevel=2,
                )
        super()._load_rng_state(checkpoint)

    def _load_kl_coef(self, checkpoint: str) -> None:
        """β, and the running reward moments and episode count (absent from checkpoints of earlier versions)."""
        with open(os.path.join(checkpoint, PPO_STATE_FILE)) as f:
            state = json.load(f)
        self.kl_controller.value = state["kl_coef"]
        if "reward_moments" in state:
            self.reward_moments.load_state_dict(state["reward_moments"])
            self._episodes = state["episode"]
