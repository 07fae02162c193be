"""Direct preference optimisation: learn from comparisons without a reward model or RL (an alternative to PPO).

The stock TRL `DPOTrainer` tunes the SFT model on comparisons in any shape `hf_instruct.data` knows. The frozen
reference is the SFT checkpoint itself, reloaded from `model_name_or_path` (TRL reloads it from the model's
`_name_or_path`, which is why the stage always starts from a saved model, never from one built in memory). A LoRA
SFT output (an adapter folder) is merged into its base, for the policy and for the reference.
"""

import copy
from dataclasses import dataclass

from transformers import AutoModelForCausalLM, TrainerCallback
from trl import DPOConfig, DPOTrainer

from ..data import load_preference_dataset
from .arguments import TuningArguments
from .lifecycle import leave_finished_run, start_run, train_and_save
from .loading import count_kept, is_adapter, load_held_out, load_tokenizer, load_trainable
from .stage import TRAINING_HYPERPARAMETERS, Stage


@dataclass
class DPOStageConfig(TuningArguments, DPOConfig):
    """TRL's `DPOConfig` plus the SFT model and the comparisons, with CPU-sensible defaults."""


def run_dpo(config: DPOStageConfig, callbacks: list[TrainerCallback] | None = None) -> str:
    """Align `config.model_name_or_path` with DPO; save model, tokenizer, metrics and card to `config.output_dir`."""
    # ---- seed, refuse a foreign run in output_dir, leave a finished one, find a complete checkpoint to resume
    start = start_run(config, "dpo")
    if start.finished:
        return leave_finished_run(config, "dpo")

    # ---- tokenizer and comparisons, with held-out pairs
    tokenizer = load_tokenizer(config)
    train_pairs, eval_pairs = load_held_out(config, load_preference_dataset)

    # ---- policy from the saved SFT model; the reference is reloaded from the same folder by DPOTrainer, but an
    # adapter folder holds no model to reload (it would give the base): then the reference is a copy of the merged one
    path = config.model_name_or_path
    model = load_trainable(AutoModelForCausalLM, path, **(config.model_init_kwargs or {}))
    reference = copy.deepcopy(model).eval() if is_adapter(path) else None
    trainer = DPOTrainer(
        model=model,
        ref_model=reference,
        args=config,
        train_dataset=train_pairs,
        eval_dataset=eval_pairs,
        processing_class=tokenizer,
        callbacks=callbacks,
    )

    why = f"have a prompt that fills max_length={config.max_length} tokens, and DPOTrainer drops such pairs"
    count_kept(trainer, train_pairs, "dpo", "comparisons", why)

    # ---- train, evaluate, save, card
    return train_and_save(trainer, config, DPO, tokenizer, start.resume_from)


DPO = Stage(
    name="dpo",
    config_class=DPOStageConfig,
    run=run_dpo,
    card_metrics=("train_loss", "eval_loss", "eval_rewards/accuracies", "eval_rewards/margins"),
    card_hyperparameters=(*TRAINING_HYPERPARAMETERS, "max_length", "beta"),
    plotted=("loss", "rewards/margins"),
)
