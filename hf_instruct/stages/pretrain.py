"""Stage 0: pretrain a causal LM on raw text with the stock `Trainer`.

Trains a tokenizer (or loads one), builds an `InstructGPTConfig` from the YAML `model_config` (or continues from a
checkpoint), packs the text into blocks with EOS between documents, trains, and reports the perplexity of held-out
blocks.
"""

import json
import os
from dataclasses import dataclass, field

from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from ..data import load_text_dataset, pack_texts
from ..models.instructgpt import InstructGPTConfig, InstructGPTForCausalLM
from ..tokenization import train_tokenizer
from .common import StageArguments, start_run, train_and_save


@dataclass
class PretrainStageConfig(StageArguments, TrainingArguments):
    """`TrainingArguments` plus where the text, tokenizer and model come from."""

    text_field: str = field(default="text", metadata={"help": "Column or JSON field that holds the text."})
    streaming: bool = field(default=False, metadata={"help": "Stream the corpus (then set max_steps)."})
    vocab_size: int = field(default=8192, metadata={"help": "Vocabulary size of the tokenizer trained here."})
    model_config: dict | str | None = field(
        default=None, metadata={"help": "InstructGPTConfig fields of a new model (a YAML mapping or JSON string)."}
    )
    block_size: int = field(default=256, metadata={"help": "Tokens per training block."})
    eval_blocks: int = field(default=64, metadata={"help": "Blocks held out to report perplexity (0: none)."})

    def __post_init__(self):
        if isinstance(self.model_config, str):
            self.model_config = json.loads(self.model_config)
        super().__post_init__()


def run_pretrain(config: PretrainStageConfig, callbacks: list[TrainerCallback] | None = None) -> str:
    """Pretrain and save model, tokenizer, metrics (incl. eval perplexity) and card into `config.output_dir`."""
    # ---- seed, refuse a foreign run in output_dir, find a checkpoint to resume
    resume_from = start_run(config, "pretrain")

    # ---- data
    texts = load_text_dataset(config.data_source, config.dataset_split, config.text_field, config.streaming)

    # ---- tokenizer: the given one, the continued model's, or one trained once by the main process and then read
    # by every process (and by a resumed run) from output_dir
    tokenizer_path = config.tokenizer_name_or_path or config.model_name_or_path or config.output_dir
    with config.main_process_first(desc="training the tokenizer"):
        trained = os.path.isfile(os.path.join(config.output_dir, "tokenizer.json"))
        if tokenizer_path == config.output_dir and not trained:
            new_tokenizer = train_tokenizer((row["text"] for row in texts), vocab_size=config.vocab_size)
            new_tokenizer.save_pretrained(tokenizer_path)
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)

    # ---- packed blocks, with held-out blocks for perplexity
    with config.main_process_first(desc="packing the corpus"):
        blocks = pack_texts(texts, tokenizer, config.block_size)
    if config.eval_blocks == 0:
        train_blocks, eval_blocks = blocks, None
    elif config.streaming:
        train_blocks, eval_blocks = blocks.skip(config.eval_blocks), blocks.take(config.eval_blocks)
    else:
        split = blocks.train_test_split(test_size=config.eval_blocks, seed=config.seed)
        train_blocks, eval_blocks = split["train"], split["test"]

    # ---- model: continue a checkpoint, or a new InstructGPT model sized by the YAML
    if config.model_name_or_path:
        model = AutoModelForCausalLM.from_pretrained(config.model_name_or_path)
    else:
        model_config = InstructGPTConfig(
            **{
                "max_position_embeddings": max(1024, config.block_size),
                **(config.model_config or {}),
                "vocab_size": len(tokenizer),
                "pad_token_id": tokenizer.pad_token_id,
                "bos_token_id": tokenizer.bos_token_id,
                "eos_token_id": tokenizer.eos_token_id,
            }
        )
        model = InstructGPTForCausalLM(model_config)

    # ---- train, evaluate, save, card
    trainer = Trainer(
        model=model,
        args=config,
        train_dataset=train_blocks,
        eval_dataset=eval_blocks,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    return train_and_save(trainer, config, "pretrain", tokenizer, resume_from)
