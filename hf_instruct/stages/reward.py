"""Stage 2: a reward model learned from human comparisons (InstructGPT step 2).

TRL's `RewardTrainer` trains a sequence classifier with one output, initialised from the SFT checkpoint's backbone (a
new `score` head), on comparisons in any shape `hf_instruct.data` knows. Comparisons with a `group` (the prompt's
index, as `hf-instruct collect_comparisons` writes them) train a prompt's pairs together, each prompt weighing the same
(`hf_instruct.trainers.GroupedRewardTrainer`), and are held out by whole prompts. Held-out pairwise accuracy is
reported. As in the paper, rewards are then shifted so that the SFT demonstrations score 0 on average: the shift is
stored in the saved config as `reward_shift`, for the RL stage to subtract.
"""

from dataclasses import dataclass, field
from functools import partial

from transformers import AutoModelForSequenceClassification, TrainerCallback
from trl import RewardConfig

from ..data import load_instruction_dataset, load_preference_dataset
from ..trainers.reward import GroupedRewardTrainer
from ..utils import reward_scores
from .arguments import TuningArguments
from .lifecycle import leave_finished_run, start_run, train_and_save
from .loading import count_kept, load_held_out, load_tokenizer, load_trainable
from .stage import TRAINING_HYPERPARAMETERS, Stage


@dataclass
class RewardStageConfig(TuningArguments, RewardConfig):
    """TRL's `RewardConfig` plus the SFT model, the comparisons and the demonstrations that centre the rewards."""

    demonstration_files: list[str] | None = field(
        default=None, metadata={"help": "SFT demonstrations whose mean reward is shifted to 0 (InstructGPT)."}
    )
    max_demonstrations: int = field(default=256, metadata={"help": "At most this many demonstrations are scored."})


def run_reward(config: RewardStageConfig, callbacks: list[TrainerCallback] | None = None) -> str:
    """Train the reward model; save it with its `reward_shift`, tokenizer, metrics and card to `config.output_dir`."""
    # ---- seed, refuse a foreign run in output_dir, leave a finished one, find a complete checkpoint to resume
    start = start_run(config, "reward")
    if start.finished:
        return leave_finished_run(config, "reward")

    # ---- tokenizer and comparisons, with held-out pairs
    tokenizer = load_tokenizer(config)
    train_pairs, eval_pairs = load_held_out(config, partial(load_preference_dataset, keep_groups=True))
    # the demonstrations that centre the rewards, read now: a bad file fails before training, not after it
    demonstrations = None
    if config.demonstration_files:
        demonstrations = load_instruction_dataset(config.demonstration_files)["messages"][: config.max_demonstrations]

    # ---- model: the SFT backbone with a new one-output `score` head; a pad token always set
    model = load_trainable(AutoModelForSequenceClassification, config.model_name_or_path, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id

    # ---- train, centre the rewards on the demonstrations, save, card
    trainer = GroupedRewardTrainer(
        model=model,
        args=config,
        train_dataset=train_pairs,
        eval_dataset=eval_pairs,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    why = f"are longer than max_length={config.max_length} tokens, and RewardTrainer drops such pairs"
    count_kept(trainer, train_pairs, "reward", "comparisons", why)
    trainer.add_callback(RewardShiftCallback(demonstrations, tokenizer))
    return train_and_save(trainer, config, REWARD, tokenizer, start.resume_from)


class RewardShiftCallback(TrainerCallback):
    """At the end of training, score the demonstrations (conversations; None: none) and store minus their mean in
    `config.reward_shift`."""

    def __init__(self, demonstrations: list[list[dict]] | None, tokenizer):
        self.demonstrations, self.tokenizer = demonstrations, tokenizer

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.demonstrations:
            model.config.reward_shift = -mean_reward(model, self.tokenizer, self.demonstrations)


def mean_reward(model, tokenizer, conversations: list[list[dict]], batch_size: int = 16) -> float:
    """Mean score of whole conversations rendered with the chat template."""
    texts = [tokenizer.apply_chat_template(conversation, tokenize=False) for conversation in conversations]
    return reward_scores(model.eval(), tokenizer, texts, batch_size).mean().item()


REWARD = Stage(
    name="reward",
    config_class=RewardStageConfig,
    run=run_reward,
    card_metrics=("train_loss", "eval_loss", "eval_accuracy", "eval_margin"),
    card_hyperparameters=(*TRAINING_HYPERPARAMETERS, "max_length"),
    plotted=("loss", "accuracy"),
)
