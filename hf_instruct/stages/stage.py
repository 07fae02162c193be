"""A stage as the library knows it: one declaration at the end of its file, `DPO = Stage(...)`, listed once in
`hf_instruct.stages.STAGES`. The command, the model card, the training plot and the pipeline read what they need to
know of a stage from it, so a new stage is its file and one registry entry (docs/training.md, "Adding a stage")."""

from collections.abc import Callable
from dataclasses import dataclass

from transformers import TrainingArguments

from ..model_card import PLOTTED_BY_DEFAULT

# the settings of every training stage that a reader needs to reproduce its run (the card shows the optimizer and
# Muon's settings only where it is Muon, epochs only without max_steps, the scheduler's arguments only where set)
TRAINING_HYPERPARAMETERS = (
    "learning_rate",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "max_steps",
    "num_train_epochs",
    "optim",
    "muon_learning_rate",
    "muon_momentum",
    "muon_weight_decay",
    "lr_scheduler_type",
    "lr_scheduler_kwargs",
    "warmup_steps",
    "weight_decay",
    "seed",
    "bf16",
)


@dataclass(frozen=True)
class Stage:
    """A stage: `hf-instruct <name>` parses `config_class` and calls `run(config) -> output_dir`; the card of the
    model it saves shows `card_metrics` (those the run has) and the config's `card_hyperparameters`; its
    `training_curves.png` plots the logged quantities `plotted`; with `language_modelling` its eval loss is a
    per-token cross-entropy, so the card also gives the perplexity."""

    name: str
    config_class: type[TrainingArguments]
    run: Callable[..., str]
    card_metrics: tuple[str, ...]
    card_hyperparameters: tuple[str, ...]
    plotted: tuple[str, ...] = PLOTTED_BY_DEFAULT
    language_modelling: bool = False
