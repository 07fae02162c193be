"""GRPO against the reward model: RL without a value model (an alternative to PPO), with the stock TRL trainer.

The stock `GRPOTrainer` samples `num_generations` answers per prompt from the SFT policy and scores them with the
reward model (TRL loads it as a one-output sequence classifier from `reward_model_path`); each answer's advantage
is its reward relative to the others of its group, so no value model is trained. Prompts come from any
instruction, comparison or prompt file. The reference for the KL term (`beta > 0`) is reloaded from the saved SFT
model, which is why this stage, like DPO, always starts from a folder.
"""

from dataclasses import dataclass

from transformers import AutoModelForCausalLM, TrainerCallback
from trl import GRPOConfig, GRPOTrainer

from ..data import load_prompt_dataset
from .arguments import LoraArguments, RewardModelArguments, TuningArguments
from .lifecycle import leave_finished_run, start_run, train_and_save
from .loading import is_adapter, load_held_out, load_tokenizer, load_trainable
from .stage import TRAINING_HYPERPARAMETERS, Stage


@dataclass
class GRPOStageConfig(TuningArguments, LoraArguments, RewardModelArguments, GRPOConfig):
    """TRL's `GRPOConfig` plus the SFT policy, the reward model and the prompts, with CPU-sensible defaults."""


def run_grpo(config: GRPOStageConfig, callbacks: list[TrainerCallback] | None = None) -> str:
    """Optimise the SFT policy against the reward model with GRPO; save model, tokenizer, metrics and card."""
    # ---- seed, refuse a foreign run in output_dir, leave a finished one, find a complete checkpoint to resume
    start = start_run(config, "grpo")
    if start.finished:
        return leave_finished_run(config, "grpo")

    # ---- tokenizer and prompts, with held-out prompts
    tokenizer = load_tokenizer(config)
    train_prompts, eval_prompts = load_held_out(config, load_prompt_dataset)

    # ---- policy from the saved SFT model (+ LoRA); the reward model is loaded by GRPOTrainer from its folder
    if is_adapter(config.model_name_or_path) and config.beta > 0:
        raise ValueError(
            f"--model_name_or_path {config.model_name_or_path} is a LoRA adapter: GRPOTrainer reloads its KL "
            f"reference (beta={config.beta}) from the model's folder, which an adapter folder cannot give. Merge the "
            "adapter first (peft's merge_and_unload, then save_pretrained), or set --beta 0."
        )
    model = load_trainable(AutoModelForCausalLM, config.model_name_or_path, **(config.model_init_kwargs or {}))
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=config.reward_model_path,
        args=config,
        train_dataset=train_prompts,
        eval_dataset=eval_prompts,
        processing_class=tokenizer,
        peft_config=config.lora_config(),
        callbacks=callbacks,
    )

    # ---- train, evaluate, save, card
    return train_and_save(trainer, config, GRPO, tokenizer, start.resume_from)


GRPO = Stage(
    name="grpo",
    config_class=GRPOStageConfig,
    run=run_grpo,
    card_metrics=("train_loss", "eval_loss", "eval_reward", "eval_kl"),
    card_hyperparameters=(*TRAINING_HYPERPARAMETERS, "use_peft", "reward_model_path", "num_generations", "beta"),
    plotted=("reward", "kl"),
)
