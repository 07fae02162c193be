"""Stage 0: pretrain a causal LM on raw text with the stock `Trainer`, optionally with instructions mixed in.

Trains a tokenizer (or loads one), builds an `InstructGPTConfig` from the YAML `model_config` (or continues from a
checkpoint), packs the text into blocks with EOS between documents (kept apart by default: each attends only to
itself), trains, and reports the perplexity of held-out blocks. With `instruction_files` and `instruction_share`
it is midtraining: chat-rendered instruction conversations make up that share of the tokens (`data/mixing.py`).
"""

import dataclasses
import itertools
import json
from dataclasses import dataclass, field

from huggingface_hub.errors import StrictDataclassError
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainerCallback, TrainingArguments

from ..data import load_instruction_dataset, load_text_dataset, pack_texts
from ..data.mixing import pack_mixture, render_conversations
from ..data.text import NotEnoughTextError, collate_blocks
from ..models.instructgpt import InstructGPTConfig, InstructGPTForCausalLM
from ..tokenization import CHAT_TEMPLATE, train_tokenizer
from .arguments import StageArguments
from .lifecycle import leave_finished_run, start_run, train_and_save
from .parsing import did_you_mean
from .stage import TRAINING_HYPERPARAMETERS, Stage


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
    keep_documents_apart: bool = field(
        default=True,
        metadata={"help": "Each packed document attends only to itself (position_ids restart, no label crosses)."},
    )
    instruction_files: list[str] | None = field(
        default=None,
        metadata={
            "help": "Instruction data (any shape the SFT stage reads), rendered with the chat template: a new "
            "tokenizer also learns from it, and instruction_share of the training tokens come from it."
        },
    )
    instruction_share: float = field(
        default=0.0, metadata={"help": "Share of training tokens from instruction_files (0: plain pretraining)."}
    )
    train_on_instruction_prompts: bool = field(
        default=False, metadata={"help": "Train on the whole mixed-in conversation, not only the assistant turns."}
    )

    def __post_init__(self):
        if isinstance(self.model_config, str):
            self.model_config = json.loads(self.model_config)
        check_model_config(self.model_config or {})
        if not 0 <= self.instruction_share < 1:
            raise ValueError(f"--instruction_share must be at least 0 and below 1, got {self.instruction_share}.")
        if self.instruction_share > 0 and not self.instruction_files:
            raise ValueError("--instruction_share > 0 needs --instruction_files (the instructions to mix in).")
        super().__post_init__()


def check_model_config(model_config: dict) -> None:
    """Before anything is written: a mistyped key would be ignored (the model built with the default) and kept in
    config.json, and a shape the config refuses (heads that do not divide the width) would fail after tokenizing."""
    known = {f.name for f in dataclasses.fields(InstructGPTConfig)} | {"attn_implementation"}
    for key in model_config:
        if key not in known:
            hint = did_you_mean(key, known, otherwise=f"the fields of InstructGPTConfig: {sorted(known)}")
            raise ValueError(f"--model_config: unknown key {key!r} ({hint}).")
    try:
        InstructGPTConfig(**model_config)
    except StrictDataclassError as error:
        raise ValueError(f"--model_config: {error.__cause__ or error}") from None


def run_pretrain(config: PretrainStageConfig, callbacks: list[TrainerCallback] | None = None) -> str:
    """Pretrain and save model, tokenizer, metrics (incl. eval perplexity) and card into `config.output_dir`."""
    # ---- seed, refuse a foreign run in output_dir, leave a finished one, find a complete checkpoint to resume
    start = start_run(config, "pretrain")
    if start.finished:
        return leave_finished_run(config, "pretrain")

    # ---- data: the corpus, and the instruction conversations to mix in
    texts = load_text_dataset(config.data_source, config.dataset_split, config.text_field, config.streaming)
    conversations = []
    if config.instruction_files:
        with config.main_process_first(desc="normalising instructions"):
            conversations = load_instruction_dataset(config.instruction_files)["messages"]

    # ---- tokenizer: the given one, the continued model's, or one trained by the main process and then read by every
    # process from output_dir. A resumed run reads the one its checkpoints were trained with; a new run trains its
    # own even where a failed run left one (it may have read another corpus).
    tokenizer_path = config.tokenizer_name_or_path or config.model_name_or_path or config.output_dir
    with config.main_process_first(desc="training the tokenizer"):
        if tokenizer_path == config.output_dir and not start.resume_from and config.local_process_index == 0:
            corpus = itertools.chain(
                (row["text"] for row in texts), render_conversations(conversations, CHAT_TEMPLATE)
            )
            new_tokenizer = train_tokenizer(corpus, vocab_size=config.vocab_size)
            new_tokenizer.save_pretrained(tokenizer_path)
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)

    # ---- packed blocks (documents and mixed-in conversations), with held-out blocks for perplexity
    source = " ".join(config.train_files) if config.train_files else config.dataset_name
    corpus = f"--{'train_files' if config.train_files else 'dataset_name'} {source}"
    with config.main_process_first(desc="packing the corpus"):
        try:
            if config.instruction_share > 0:
                blocks = pack_mixture(
                    texts,
                    conversations,
                    tokenizer,
                    config.block_size,
                    config.instruction_share,
                    config.seed,
                    config.train_on_instruction_prompts,
                    config.keep_documents_apart,
                )
            else:
                blocks = pack_texts(
                    texts, tokenizer, config.block_size, keep_documents_apart=config.keep_documents_apart
                )
            # a stream is read only as far as this check needs
            available = sum(1 for _ in blocks.take(config.eval_blocks + 1)) if config.streaming else len(blocks)
        except NotEnoughTextError as error:
            raise ValueError(f"{corpus}: {error} (block_size): add text or lower --block_size.") from None
    if available <= config.eval_blocks:
        raise ValueError(
            f"{corpus}: {available} blocks of {config.block_size} tokens, not more than the {config.eval_blocks} "
            "held out for evaluation (eval_blocks): lower --eval_blocks or add text."
        )
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
        data_collator=collate_blocks,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    return train_and_save(trainer, config, PRETRAIN, tokenizer, start.resume_from)


PRETRAIN = Stage(
    name="pretrain",
    config_class=PretrainStageConfig,
    run=run_pretrain,
    card_metrics=("train_loss", "eval_loss", "eval_perplexity"),
    card_hyperparameters=(*TRAINING_HYPERPARAMETERS, "block_size", "instruction_share"),
    language_modelling=True,
)
