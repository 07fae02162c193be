"""The configuration of `PPOTrainer`: `TrainingArguments` plus PPO-ptx's settings, checked when it is made."""

from dataclasses import dataclass, field

from transformers import TrainingArguments


@dataclass
class PPOConfig(TrainingArguments):
    """
    `TrainingArguments` plus PPO-ptx, the configuration of [`PPOTrainer`].

    A step is `per_device_train_batch_size` prompts per device, answered once and then learnt from in `num_ppo_epochs`
    × `num_mini_batches` optimiser steps, each over a minibatch whose gradient is accumulated over
    `gradient_accumulation_steps` forwards. With `rollout_batch_size` a step is that many prompts instead, and
    `per_device_train_batch_size` the minibatch; `num_samples_per_prompt` answers each prompt as often. Every field is
    also a `--flag` of `hf-instruct ppo` (its `help` is what the parser prints). The options beyond InstructGPT
    (OpenRLHF, verl and TRL names in docs/training.md) are off by default where they cost time.

    Parameters:
        > Parameters that control the prompts and the rollout

        remove_unused_columns (`bool`, *optional*, defaults to `False`):
            Keep the prompt columns: the reward model reads a `prompt` as it was trained to.
        max_prompt_length (`int`, *optional*, defaults to `256`):
            Longer prompts are left out (and counted in the log).
        response_length (`int`, *optional*, defaults to `64`):
            At most this many sampled tokens per response.
        temperature (`float`, *optional*, defaults to `0.7`):
            Sampling temperature of the rollouts; the saved policy's `generation_config` samples at it too.
        rollout_batch_size (`int` or `None`, *optional*, defaults to `None`):
            Prompts per device per PPO iteration (OpenRLHF's `rollout_batch_size` / processes). Set,
            `per_device_train_batch_size` becomes the answers per optimiser step (the minibatch) and the number of
            minibatches follows (leave `num_mini_batches` at 1).
        num_samples_per_prompt (`int`, *optional*, defaults to `1`):
            Answers sampled per prompt in a rollout (OpenRLHF's `n_samples_per_prompt`).
        rollout_generation_batch_size (`int` or `None`, *optional*, defaults to `None`):
            Prompts per `generate` call of a rollout, to bound the KV cache's memory (OpenRLHF's
            `micro_rollout_batch_size`). `None`: the whole rollout batch in one call (fastest). Other sizes sample
            other answers (other random draws).
        rollout_forward_batch_size (`int`, *optional*, defaults to `64`):
            Sequences per forward of each model (policy, reference, value, reward) in a rollout: bounds memory, not
            results.
        ds3_gather_for_generation (`bool`, *optional*, defaults to `True`):
            Under DeepSpeed ZeRO-3, gather the policy's whole weights for generation. `False` fetches them layer by
            layer for every sampled token: slow, but for a policy too large for one device.

        > Parameters that control the reward

        reward_weights (`list[float]` or `None`, *optional*, defaults to `None`):
            Weight of each reward source when `reward_model` is a list (default: 1 each); the scores sum.
        reward_normalization (`bool`, *optional*, defaults to `False`):
            Normalise the reward model's scores by the running mean and std of all scores so far (kept in
            checkpoints), before `missing_eos_penalty` and `reward_clip`.
        missing_eos_penalty (`float`, *optional*, defaults to `1.0`):
            Subtracted from the score of a response cut off at `response_length` (0: off). On by default: the reward
            model cannot tell a cut-off answer from a finished one by its last token alone. 1.0 as in TRL's PPO/RLOO
            examples: one unit on the scale of a centred reward model (`reward_shift`).
        reward_clip (`float` or `None`, *optional*, defaults to `None`):
            Clip each answer's final score to ±`reward_clip` (`None`: no clipping).

        > Parameters that control the KL penalty

        kl_coef (`float`, *optional*, defaults to `0.05`):
            β, the weight of the per-token KL penalty to the reference (its initial value if adaptive).
        kl_target (`float` or `None`, *optional*, defaults to `None`):
            Adapt β so that the response KL approaches this many nats (Ziegler et al. 2019; `None`: a fixed β).
        kl_horizon (`int`, *optional*, defaults to `10000`):
            Episodes (answers) over which the adaptive β moves by at most 20 %.
        kl_estimator (`str`, *optional*, defaults to `"k1"`):
            Per-token KL estimate: `"k1"` = log π − log π_ref (InstructGPT), or `"k3"` = r − 1 − log r with
            r = π_ref/π (Schulman's non-negative, lower-variance estimator; verl's `low_var_kl`).
        kl_penalty (`str`, *optional*, defaults to `"reward"`):
            Where β·KL goes: `"reward"` (subtracted from every token's reward, InstructGPT) or `"loss"` (β × the mean
            KL of the updated policy added to the policy loss, as GRPO and verl's `use_kl_loss`; use `"k3"`).

        > Parameters that control the PPO update

        learning_rate (`float`, *optional*, defaults to `1e-5`):
            Adam learning rate of the policy.
        value_learning_rate (`float` or `None`, *optional*, defaults to `None`):
            Learning rate of the value model, in param groups of its own (default: `learning_rate`).
        value_max_grad_norm (`float` or `None`, *optional*, defaults to `None`):
            Clipping norm of the value model's gradients (default: `max_grad_norm`). The policy's and the value
            model's gradients are clipped apart, so that large critic gradients early on do not shrink the policy's
            step.
        gradient_accumulation_steps (`int`, *optional*, defaults to `1`):
            Micro-batches per PPO minibatch: the same update, in less memory.
        num_ppo_epochs (`int`, *optional*, defaults to `4`):
            Passes over each rollout batch.
        num_mini_batches (`int`, *optional*, defaults to `1`):
            Optimiser steps per pass over a rollout batch.
        cliprange (`float`, *optional*, defaults to `0.2`):
            ε of the clipped policy ratio.
        cliprange_value (`float`, *optional*, defaults to `0.2`):
            Clip range of the value update.
        vf_coef (`float`, *optional*, defaults to `0.1`):
            Weight of the value loss.
        gamma (`float`, *optional*, defaults to `1.0`):
            Discount factor.
        lam (`float`, *optional*, defaults to `0.95`):
            λ of GAE.
        critic_warmup_steps (`int`, *optional*, defaults to `0`):
            Iterations at the start that train the value model only (verl's `critic_warmup`).
        max_approx_kl (`float` or `None`, *optional*, defaults to `None`):
            Skip a rollout's remaining PPO epochs once an epoch's mean approx-KL to the rollout policy exceeds this
            (SB3's `target_kl`; `None`: run all `num_ppo_epochs`).

        > Parameters that control the pretraining mix (PPO-ptx)

        ptx_coef (`float`, *optional*, defaults to `0.0`):
            γ of PPO-ptx: the weight of the pretraining LM loss in every update (0: plain PPO).
        ptx_batch_size (`int` or `None`, *optional*, defaults to `None`):
            Pretraining blocks per update (default: the PPO minibatch size).

        > Parameters that control logging

        num_sample_completions (`int`, *optional*, defaults to `4`):
            Completions logged (and appended to `samples.jsonl`) every logging step.
    """

    learning_rate: float = field(default=1e-5, metadata={"help": "Adam learning rate of the policy."})
    value_learning_rate: float | None = field(
        default=None, metadata={"help": "Learning rate of the value model (default: learning_rate)."}
    )
    value_max_grad_norm: float | None = field(
        default=None, metadata={"help": "Clipping norm of the value model's gradients (default: max_grad_norm)."}
    )
    gradient_accumulation_steps: int = field(
        default=1, metadata={"help": "Micro-batches per PPO minibatch (the same update, in less memory)."}
    )
    rollout_forward_batch_size: int = field(
        default=64, metadata={"help": "Sequences per forward of each model in a rollout (bounds memory, not results)."}
    )
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
    kl_horizon: int = field(
        default=10000, metadata={"help": "Episodes over which the adaptive β moves by at most 20 percent."}
    )
    cliprange: float = field(default=0.2, metadata={"help": "ε of the clipped policy ratio."})
    cliprange_value: float = field(default=0.2, metadata={"help": "Clip range of the value update."})
    vf_coef: float = field(default=0.1, metadata={"help": "Weight of the value loss."})
    gamma: float = field(default=1.0, metadata={"help": "Discount factor."})
    lam: float = field(default=0.95, metadata={"help": "GAE λ."})
    missing_eos_penalty: float = field(
        default=1.0, metadata={"help": "Subtracted from the score of a response cut off at response_length (0: off)."}
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
    ds3_gather_for_generation: bool = field(
        default=True,
        metadata={
            "help": "Under DeepSpeed ZeRO-3, gather the policy's whole weights for generation (fast; false: fetch "
            "them layer by layer for every sampled token, slow but for a policy too large for one device)."
        },
    )
    rollout_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "Prompts per device per PPO iteration (OpenRLHF's rollout_batch_size / processes). Set, "
            "per_device_train_batch_size becomes the answers per optimiser step (the minibatch) and num_mini_batches "
            "follows (leave it 1). Default: per_device_train_batch_size prompts, split in num_mini_batches."
        },
    )
    num_samples_per_prompt: int = field(
        default=1, metadata={"help": "Answers sampled per prompt in a rollout (OpenRLHF's n_samples_per_prompt)."}
    )
    rollout_generation_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "Prompts per `generate` call of a rollout, to bound the KV cache's memory (OpenRLHF's "
            "micro_rollout_batch_size). Default: the whole rollout batch in one call (fastest). Sampled answers "
            "then come from other random draws than one call's."
        },
    )
    reward_weights: list[float] | None = field(
        default=None,
        metadata={"help": "Weight of each reward source when reward_model is a list (default: 1 each); scores sum."},
    )
    reward_normalization: bool = field(
        default=False,
        metadata={
            "help": "Normalise the reward model's scores by the running mean and std of all scores so far (kept in "
            "checkpoints), before missing_eos_penalty and reward_clip."
        },
    )
    reward_clip: float | None = field(
        default=None, metadata={"help": "Clip each answer's final score to ±reward_clip (None: no clipping)."}
    )
    kl_estimator: str = field(
        default="k1",
        metadata={
            "help": "Per-token KL estimate: k1 = log π − log π_ref (InstructGPT), or k3 = r − 1 − log r with "
            "r = π_ref/π (Schulman's non-negative, lower-variance estimator; verl's low_var_kl)."
        },
    )
    kl_penalty: str = field(
        default="reward",
        metadata={
            "help": "Where β·KL goes: 'reward' (subtracted from every token's reward, InstructGPT) or 'loss' (β × the "
            "mean KL of the updated policy added to the policy loss, as GRPO and verl's use_kl_loss; use k3)."
        },
    )
    critic_warmup_steps: int = field(
        default=0,
        metadata={"help": "Iterations at the start that train the value model only (verl's critic_warmup)."},
    )
    max_approx_kl: float | None = field(
        default=None,
        metadata={
            "help": "Skip a rollout's remaining PPO epochs once an epoch's mean approx-KL to the rollout policy "
            "exceeds this (SB3's target_kl; None: run all num_ppo_epochs)."
        },
    )

    def __post_init__(self):
        if self.load_best_model_at_end and self.metric_for_best_model is None:
            self.metric_for_best_model = "reward"  # evaluate() has no loss (the Trainer's default metric)
        super().__post_init__()
        self._check_feature_settings()
        if self.per_device_train_batch_size % self.num_mini_batches:
            raise ValueError(
                f"per_device_train_batch_size={self.per_device_train_batch_size} must be a multiple of "
                f"num_mini_batches={self.num_mini_batches} (each minibatch is an equal share of a rollout batch)."
            )
        for name, rows in (
            ("per_device_train_batch_size / num_mini_batches", self.mini_batch_size),
            ("ptx_batch_size", self.ptx_batch_size or self.mini_batch_size),
        ):
            if rows % self.gradient_accumulation_steps:
                raise ValueError(
                    f"{name} = {rows} must be a multiple of gradient_accumulation_steps="
                    f"{self.gradient_accumulation_steps} (each micro-batch is an equal share of a minibatch)."
                )
        if self.rollout_forward_batch_size < 1:
            raise ValueError(f"rollout_forward_batch_size must be ≥ 1, got {self.rollout_forward_batch_size}.")
        for name, smallest in (("temperature", "> 0"), ("kl_target", "> 0 (or None: a fixed β)")):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be {smallest}, got {value}.")
        if self.num_ppo_epochs < 1:
            raise ValueError(f"num_ppo_epochs must be ≥ 1 (passes over a rollout batch), got {self.num_ppo_epochs}.")
        for name in (
            "kl_coef",
            "ptx_coef",
            "vf_coef",
            "cliprange",
            "cliprange_value",
            "missing_eos_penalty",
            "value_learning_rate",
            "value_max_grad_norm",
        ):
            if (getattr(self, name) or 0) < 0:
                raise ValueError(f"{name} must be ≥ 0, got {getattr(self, name)}.")

    @property
    def mini_batch_size(self) -> int:
        if self.rollout_batch_size is not None:
            return self.per_device_train_batch_size
        return self.per_device_train_batch_size * self.num_samples_per_prompt // self.num_mini_batches

    @property
    def rollout_size(self) -> int:
        """Answers per device per PPO iteration."""
        return (self.rollout_batch_size or self.per_device_train_batch_size) * self.num_samples_per_prompt

    def _check_feature_settings(self) -> None:
        """Refuse settings of the rollout layout, reward shaping, KL and update schedule that cannot work."""
        for name in ("num_samples_per_prompt", "rollout_batch_size", "rollout_generation_batch_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}.")
        for name in ("reward_clip", "max_approx_kl"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0 (or None: off), got {getattr(self, name)}.")
        if self.critic_warmup_steps < 0:
            raise ValueError(f"critic_warmup_steps must be ≥ 0, got {self.critic_warmup_steps}.")
        for name, choices in (("kl_estimator", ("k1", "k3")), ("kl_penalty", ("reward", "loss"))):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {getattr(self, name)!r}.")
        if self.rollout_batch_size is not None:
            if self.num_mini_batches != 1:
                raise ValueError(
                    f"num_mini_batches={self.num_mini_batches} with rollout_batch_size={self.rollout_batch_size}: "
                    "then per_device_train_batch_size sets the minibatch and the number of minibatches follows. "
                    "Leave num_mini_batches at 1."
                )
            if self.rollout_size % self.per_device_train_batch_size:
                raise ValueError(
                    f"rollout_batch_size × num_samples_per_prompt = {self.rollout_size} answers must be a multiple of "
                    f"per_device_train_batch_size={self.per_device_train_batch_size} (the answers per optimiser step)."
                )
