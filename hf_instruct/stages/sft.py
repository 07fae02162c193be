"""Stage 1: supervised instruction tuning of any causal LM.

Instruction data in any shape `hf_instruct.data` knows is normalised to chat messages, then trained with the stock
TRL `SFTTrainer` (assistant-only loss, optional packing) or, with `sft_backend: collator`, a stock `Trainer` and
`DataCollatorForInstructionTuning`. Optional LoRA through `peft`. The loss on held-out examples is measured before
and after training.
"""

import inspect
from dataclasses import dataclass, field

from peft import get_peft_model
from transformers import AutoModelForCausalLM, Trainer, TrainerCallback
from trl import SFTConfig, SFTTrainer

from ..collator import DataCollatorForInstructionTuning
from ..data import load_instruction_dataset
from ..tokenization import end_of_turn_token_id
from .arguments import LoraArguments, TuningArguments
from .lifecycle import leave_finished_run, start_run, train_and_save
from .loading import count_kept, load_held_out, load_tokenizer, load_trainable
from .stage import TRAINING_HYPERPARAMETERS, Stage

BACKENDS = ("trl", "collator")


@dataclass
class SFTStageConfig(TuningArguments, LoraArguments, SFTConfig):
    """TRL's `SFTConfig` plus the model, the data and LoRA, with CPU-sensible defaults."""

    sft_backend: str = field(
        default="trl", metadata={"help": "'trl': SFTTrainer; 'collator': Trainer + DataCollatorForInstructionTuning."}
    )
    assistant_only_loss: bool = field(default=True, metadata={"help": "Train only on assistant turns."})

    def __post_init__(self):
        if self.sft_backend not in BACKENDS:
            raise ValueError(f"--sft_backend must be one of {BACKENDS}, got {self.sft_backend!r}.")
        if self.sft_backend == "collator":
            self.remove_unused_columns = False  # the collator reads the raw `messages` column
        super().__post_init__()


def run_sft(config: SFTStageConfig, callbacks: list[TrainerCallback] | None = None) -> str:
    """Instruction-tune `config.model_name_or_path`; save model, tokenizer, metrics and card to `config.output_dir`."""
    # ---- seed, refuse a foreign run in output_dir, leave a finished one, find a complete checkpoint to resume
    start = start_run(config, "sft")
    if start.finished:
        return leave_finished_run(config, "sft")

    # ---- tokenizer with a chat template
    tokenizer = load_tokenizer(config)
    if config.chat_template_path and config.chat_template_path.endswith((".jinja", ".j2")):
        with open(config.chat_template_path, encoding="utf-8") as f:
            tokenizer.chat_template = f.read()
    if tokenizer.chat_template is None and not (config.chat_template_path and config.sft_backend == "trl"):
        raise ValueError(
            f"The tokenizer of {config.tokenizer_name_or_path or config.model_name_or_path} has no chat template, "
            "so instructions cannot be rendered. Use a tokenizer with one (hf-instruct pretrain saves one), or set "
            "--chat_template_path to a .jinja file."
        )

    # ---- data: any instruction shape -> messages, with held-out examples
    train_examples, eval_examples = load_held_out(config, load_instruction_dataset)

    # ---- model (+ LoRA)
    model = load_trainable(AutoModelForCausalLM, config.model_name_or_path, **(config.model_init_kwargs or {}))
    peft_config = config.lora_config()

    # ---- generation stops at the end of an assistant turn, not only at the end of a document
    end_of_turn = end_of_turn_token_id(tokenizer)
    model.generation_config.eos_token_id = sorted({end_of_turn, tokenizer.eos_token_id} - {None})

    # ---- trainer: stock SFTTrainer, or stock Trainer + our collator
    if config.sft_backend == "trl":
        trainer = SFTTrainer(
            model=model,
            args=config,
            train_dataset=train_examples,
            eval_dataset=eval_examples,
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=callbacks,
        )
    else:
        trainer = Trainer(
            model=get_peft_model(model, peft_config) if peft_config else model,
            args=config,
            train_dataset=train_examples,
            eval_dataset=eval_examples,
            data_collator=DataCollatorForInstructionTuning(
                tokenizer,
                max_length=config.max_length,
                padding_free=config.padding_free,
                # the LM head only where a label is trained, for the models that take `logits_to_keep` (most do)
                trained_logits_only="logits_to_keep" in inspect.signature(model.forward).parameters,
            ),
            processing_class=tokenizer,
            callbacks=callbacks,
        )

    if config.sft_backend == "trl" and not config.packing:  # packing changes the count: nothing to compare
        why = f"have a prompt that fills max_length={config.max_length} tokens, and SFTTrainer drops such records"
        count_kept(trainer, train_examples, "sft", "records", why)

    # ---- train, evaluate, save, card
    before = {"eval_loss_before_training": trainer.evaluate()["eval_loss"]} if eval_examples is not None else {}
    return train_and_save(trainer, config, SFT, tokenizer, start.resume_from, extra_metrics=before)


SFT = Stage(
    name="sft",
    config_class=SFTStageConfig,
    run=run_sft,
    card_metrics=(
        "train_loss",
        "eval_loss_before_training",
        "eval_loss",
        "eval_perplexity",
        "eval_mean_token_accuracy",
    ),
    card_hyperparameters=(*TRAINING_HYPERPARAMETERS, "max_length", "packing", "use_peft"),
    language_modelling=True,
)
