"""Stage 3: PPO-ptx against the reward model (InstructGPT step 3), with `hf_instruct.PPOTrainer`.

The policy and its frozen reference start from the SFT model, the value model from the reward model (as in the
paper). Prompts come from any instruction, comparison or prompt file; with `ptx_coef > 0` every update also trains
on a batch of the pretraining corpus. The mean reward of held-out prompts is measured before and after training.
"""

import copy
from dataclasses import dataclass, field

from peft import AutoPeftModelForCausalLM, PeftModel
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    TrainerCallback,
)

from ..data import load_prompt_dataset, load_text_dataset, pack_texts
from ..data.text import NotEnoughTextError
from ..trainers import PPOConfig, PPOTrainer, RemoteRewardModel
from .arguments import LoraArguments, RewardModelArguments, TuningArguments
from .lifecycle import leave_finished_run, start_run, train_and_save
from .loading import check_adapter_can_merge, is_adapter, load_held_out, load_tokenizer, load_trainable
from .stage import TRAINING_HYPERPARAMETERS, Stage


@dataclass
class PPOStageConfig(TuningArguments, LoraArguments, RewardModelArguments, PPOConfig):
    """`hf_instruct.PPOConfig` plus the SFT policy, the reward model, the prompts and the pretraining corpus."""

    value_model_path: str | None = field(default=None, metadata={"help": "Default: the reward model (InstructGPT)."})
    remote_reward_url: str | None = field(
        default=None,
        metadata={
            "help": "Score answers with a reward served over HTTP instead of reward_model_path's model (OpenRLHF's "
            "--remote_rm_url: POST {query, prompts, completions} -> {rewards}); reward_model_path then only starts "
            "the value model (or set value_model_path)."
        },
    )
    ptx_files: list[str] | None = field(
        default=None, metadata={"help": "Pretraining text for PPO-ptx (files, folders or globs; with ptx_coef > 0)."}
    )
    ptx_block_size: int = field(default=256, metadata={"help": "Tokens per pretraining block."})
    ptx_streaming: bool = field(
        default=False, metadata={"help": "Stream the pretraining corpus instead of loading it."}
    )

    def __post_init__(self):
        if self.ptx_coef > 0 and not self.ptx_files:
            raise ValueError(f"ptx_coef={self.ptx_coef} needs --ptx_files: the pretraining corpus (or ptx_coef 0).")
        super().__post_init__()


def run_ppo(config: PPOStageConfig, callbacks: list[TrainerCallback] | None = None) -> str:
    """Optimise the SFT policy against the reward model; save policy, tokenizer, metrics, samples and card."""
    # ---- seed, refuse a foreign run in output_dir, leave a finished one, find a complete checkpoint to resume
    start = start_run(config, "ppo")
    if start.finished:
        return leave_finished_run(config, "ppo")

    # ---- tokenizers (the reward model reads text with its own; the value model must read the policy's tokens) and
    # prompts, with held-out prompts
    tokenizer = load_tokenizer(config)
    reward_tokenizer = AutoTokenizer.from_pretrained(config.reward_model_path)
    if config.value_model_path is None and reward_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise ValueError(
            f"The reward model's tokenizer differs from the policy's, and the value model would start from the reward "
            f"model ({config.reward_model_path}), which reads other tokens than the policy writes: pass "
            "--value_model_path (a one-output classifier on the policy's vocabulary, e.g. a reward model trained "
            "from the SFT model)."
        )
    train_prompts, eval_prompts = load_held_out(config, load_prompt_dataset)

    # ---- pretraining blocks for PPO-ptx (the trainer draws them in a new seeded order every pass)
    ptx_blocks = None
    if config.ptx_coef > 0:
        texts = load_text_dataset(config.ptx_files, streaming=config.ptx_streaming)
        with config.main_process_first(desc="packing the pretraining corpus"):
            try:
                ptx_blocks = pack_texts(texts, tokenizer, config.ptx_block_size)
            except NotEnoughTextError as error:
                raise ValueError(
                    f"--ptx_files {' '.join(config.ptx_files)}: {error} (ptx_block_size): add text or lower "
                    "--ptx_block_size."
                ) from None

    # ---- policy and reference from the SFT model (+ LoRA), reward and value models from the reward model
    policy, ref_model = load_policy(config)
    if config.remote_reward_url:  # a reward function: it renders chat prompts with the policy's template
        reward_model, reward_processing_class = RemoteRewardModel(config.remote_reward_url, tokenizer), None
    else:
        reward_model = AutoModelForSequenceClassification.from_pretrained(config.reward_model_path)
        reward_processing_class = reward_tokenizer
    value_model = AutoModelForSequenceClassification.from_pretrained(
        config.value_model_path or config.reward_model_path
    )
    trainer = PPOTrainer(
        model=policy,
        args=config,
        processing_class=tokenizer,
        reward_model=reward_model,
        value_model=value_model,
        ref_model=ref_model,
        train_dataset=train_prompts,
        eval_dataset=eval_prompts,
        ptx_dataset=ptx_blocks,
        peft_config=None if isinstance(policy, PeftModel) else config.lora_config(),
        reward_processing_class=reward_processing_class,
        callbacks=callbacks,
    )

    # ---- train, evaluate, save, card
    before = {"eval_reward_before_training": trainer.evaluate()["eval_reward"]} if eval_prompts is not None else {}
    return train_and_save(trainer, config, PPO, tokenizer, start.resume_from, extra_metrics=before)


def load_policy(config: PPOStageConfig) -> tuple[PreTrainedModel | PeftModel, PreTrainedModel | None]:
    """The SFT model as the starting policy, and the KL reference where the trainer cannot copy it (under ZeRO-3 the
    weights are sharded as they load). A LoRA SFT output is merged for full PPO; LoRA PPO trains that adapter on,
    against a merged copy: with the adapter disabled the reference would lose the SFT weights."""
    path = config.model_name_or_path
    if not (config.use_peft and is_adapter(path)):
        reference = None if config.use_peft or is_adapter(path) else AutoModelForCausalLM.from_pretrained(path)
        return load_trainable(AutoModelForCausalLM, path), reference
    check_adapter_can_merge(path)
    sft = AutoPeftModelForCausalLM.from_pretrained(path, is_trainable=True)
    return sft, copy.deepcopy(sft).merge_and_unload()


PPO = Stage(
    name="ppo",
    config_class=PPOStageConfig,
    run=run_ppo,
    card_metrics=("train_loss", "eval_reward_before_training", "eval_reward", "eval_kl"),
    card_hyperparameters=(
        *TRAINING_HYPERPARAMETERS,
        "use_peft",
        "reward_model_path",
        "kl_coef",
        "kl_target",
        "ptx_coef",
        "num_ppo_epochs",
        "response_length",
    ),
    plotted=("objective/scores", "objective/kl", "loss/ptx"),
)
