"""Stage 2: a reward model learned from human comparisons (InstructGPT step 2).

The stock TRL `RewardTrainer` trains a sequence classifier with one output, initialised from the SFT checkpoint's
backbone (a new `score` head), on comparisons in any shape `hf_instruct.data` knows. Held-out pairwise accuracy is
reported. As in the paper, rewards are then shifted so that the SFT demonstrations score 0 on average: the shift is
stored in the saved config as `reward_shift`, for the RL stage to subtract.
"""

from dataclasses import dataclass, field

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
from transformers.utils import logging
from trl import RewardConfig, RewardTrainer

from ..data import load_instruction_dataset, load_preference_dataset
from .common import StageArguments, start_run, train_and_save

logger = logging.get_logger(__name__)


@dataclass
class RewardStageConfig(StageArguments, RewardConfig):
    """TRL's `RewardConfig` plus the SFT model, the comparisons and the demonstrations that centre the rewards."""

    on_bad_record: str = field(default="error", metadata={"help": "'error' or 'skip' (skipped records are counted)."})
    eval_examples: int = field(default=64, metadata={"help": "Comparisons held out for pairwise accuracy (0: none)."})
    demonstration_files: list[str] | None = field(
        default=None, metadata={"help": "SFT demonstrations whose mean reward is shifted to 0 (InstructGPT)."}
    )
    max_demonstrations: int = field(default=256, metadata={"help": "At most this many demonstrations are scored."})
    gradient_checkpointing: bool | None = field(
        default=None, metadata={"help": "Deprecated alias of activation_checkpointing (off unless set)."}
    )

    def __post_init__(self):
        if not self.model_name_or_path:
            raise ValueError("Set --model_name_or_path: the SFT model the reward model starts from.")
        super().__post_init__()


def run_reward(config: RewardStageConfig, callbacks: list[TrainerCallback] | None = None) -> str:
    """Train the reward model; save it with its `reward_shift`, tokenizer, metrics and card to `config.output_dir`."""
    # ---- seed, refuse a foreign run in output_dir, find a checkpoint to resume
    resume_from = start_run(config, "reward")

    # ---- tokenizer and comparisons, with held-out pairs
    tokenizer = AutoTokenizer.from_pretrained(config.tokenizer_name_or_path or config.model_name_or_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    with config.main_process_first(desc="normalising comparisons"):
        comparisons = load_preference_dataset(config.data_source, config.on_bad_record, config.dataset_split)
    train_pairs, eval_pairs = comparisons, None
    if config.eval_examples:
        split = comparisons.train_test_split(test_size=config.eval_examples, seed=config.seed)
        train_pairs, eval_pairs = split["train"], split["test"]

    # ---- model: the SFT backbone with a new one-output `score` head; a pad token always set
    model = AutoModelForSequenceClassification.from_pretrained(config.model_name_or_path, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id

    # ---- train, centre the rewards on the demonstrations, save, card
    trainer = RewardTrainer(
        model=model,
        args=config,
        train_dataset=train_pairs,
        eval_dataset=eval_pairs,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    kept = len(trainer.train_dataset)
    if kept == 0:
        raise ValueError(
            f"All {len(train_pairs)} training comparisons are longer than max_length={config.max_length} tokens, "
            "and RewardTrainer drops such pairs: raise --max_length."
        )
    if kept < len(train_pairs):
        logger.warning(
            f"reward: {len(train_pairs) - kept} of {len(train_pairs)} training comparisons are longer than "
            f"max_length={config.max_length} tokens and are left out (RewardTrainer filters, it does not truncate)."
        )
    trainer.add_callback(RewardShiftCallback(config, tokenizer))
    return train_and_save(trainer, config, "reward", tokenizer, resume_from)


class RewardShiftCallback(TrainerCallback):
    """At the end of training, score the demonstrations and store minus their mean in `config.reward_shift`."""

    def __init__(self, config: RewardStageConfig, tokenizer):
        self.files, self.limit, self.tokenizer = config.demonstration_files, config.max_demonstrations, tokenizer

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if not self.files:
            return
        demonstrations = load_instruction_dataset(self.files)["messages"][: self.limit]
        model.config.reward_shift = -mean_reward(model, self.tokenizer, demonstrations)


@torch.no_grad()
def mean_reward(model, tokenizer, conversations: list[list[dict]], batch_size: int = 16) -> float:
    """Mean score of whole conversations rendered with the chat template (right-padded batches)."""
    model.eval()
    scores = []
    for start in range(0, len(conversations), batch_size):
        texts = [tokenizer.apply_chat_template(c, tokenize=False) for c in conversations[start : start + batch_size]]
        batch = tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=False).to(model.device)
        scores.append(model(**batch).logits[:, 0].float())
    return torch.cat(scores).mean().item()
