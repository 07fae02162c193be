"""What a stage loads before it trains: the tokenizer, a model with every weight trainable (a LoRA adapter merged
into its base), and its records with some held out for evaluation."""

import os
import random
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from datasets import Dataset
from peft import PeftConfig, PeftModel
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase, Trainer
from transformers.integrations import is_deepspeed_zero3_enabled
from transformers.utils import logging

from .arguments import StageArguments, TuningArguments

logger = logging.get_logger(__name__)


def load_tokenizer(config: StageArguments) -> PreTrainedTokenizerBase:
    """The tokenizer of the run (default: the model's), with a pad token other than EOS where it has one to spare:
    with pad = EOS a reward model, which scores the last token that is not padding, never reads an answer's EOS
    (Huang et al. 2024, "The N+ implementation details of RLHF with PPO"). A tokenizer without a pad token, or whose
    pad token is its EOS, pads with its unknown token (Llama, Mistral); one without another spare token (GPT-2) keeps
    EOS, with a warning. No token is added, so no model's embeddings change size."""
    tokenizer = AutoTokenizer.from_pretrained(config.tokenizer_name_or_path or config.model_name_or_path)
    if tokenizer.pad_token is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return tokenizer
    spare = tokenizer.unk_token_id not in (None, tokenizer.eos_token_id, tokenizer.bos_token_id)
    if spare:
        tokenizer.pad_token = tokenizer.unk_token
    else:
        tokenizer.pad_token = tokenizer.eos_token
        logger.warning(
            f"The tokenizer has no pad token other than its EOS {tokenizer.eos_token!r}: padding with it, a reward "
            "model reads answers without their EOS. Pass one with a pad token of its own (--tokenizer_name_or_path)."
        )
    return tokenizer


def is_adapter(path: str | os.PathLike) -> bool:
    """Whether `path` is a PEFT adapter folder (what `--use_peft true` saves), not a whole model."""
    return (Path(path) / "adapter_config.json").is_file()


def check_adapter_can_merge(path: str) -> None:
    """Under DeepSpeed ZeRO-3 the base weights are sharded as they load, so an adapter cannot be merged into them."""
    if is_deepspeed_zero3_enabled():
        raise ValueError(
            f"--model_name_or_path {path} is a LoRA adapter, which cannot be merged here under DeepSpeed ZeRO-3 (the "
            "base weights are sharded as they load): merge it first (peft's merge_and_unload) and save the result."
        )


def load_trainable(auto_class: type, path: str, **kwargs) -> PreTrainedModel:
    """`auto_class.from_pretrained(path)` with every weight trainable, also when `path` is a LoRA adapter folder (a
    LoRA SFT output). `from_pretrained` would give base + adapter with the adapted layers frozen: a stage would train
    only embeddings and norms and save the adapter unchanged, without a word. The adapter is merged into its base."""
    if not is_adapter(path):
        return auto_class.from_pretrained(path, **kwargs)
    check_adapter_can_merge(path)
    adapter = PeftConfig.from_pretrained(path)
    adapter.task_type = None  # only the adapted layers matter: a reward model also starts from a causal-LM adapter
    base = auto_class.from_pretrained(adapter.base_model_name_or_path, **kwargs)
    return PeftModel.from_pretrained(base, path, config=adapter).merge_and_unload().requires_grad_(True)


def load_held_out(config: TuningArguments, load: Callable[..., Dataset]) -> tuple[Dataset, Dataset | None]:
    """(train, eval) records of `config.data_source` normalised by `load` (a `hf_instruct.data` loader; the main
    process first), with `config.eval_examples` of them held out at random (seeded). Records with a `group` column
    (the comparisons of one prompt) are held out by whole groups, until at least `eval_examples` records are."""
    with config.main_process_first(desc="normalising records"):
        records = load(config.data_source, config.on_bad_record, config.dataset_split)
    if not config.eval_examples:
        return records, None
    groups = records["group"] if "group" in records.column_names else None
    taken = held_out_groups(groups, config.eval_examples, config.seed) if groups else set()
    if config.eval_examples >= len(records) or (groups and taken == set(groups)):
        raise ValueError(
            f"--eval_examples {config.eval_examples} would hold out all {len(records)} records of "
            f"{config.data_source}: lower it (0: no held-out set)."
        )
    if groups:
        held_out = [group in taken for group in groups]
        return (
            records.select([i for i, held in enumerate(held_out) if not held]),
            records.select([i for i, held in enumerate(held_out) if held]),
        )
    split = records.train_test_split(test_size=config.eval_examples, seed=config.seed)
    return split["train"], split["test"]


def held_out_groups(groups: Sequence[int], count: int, seed: int) -> set[int]:
    """Groups drawn at random (seeded) until their records number at least `count`."""
    sizes = Counter(groups)
    order = sorted(sizes)
    random.Random(seed).shuffle(order)
    taken, records = set(), 0
    for group in order:
        if records >= count:
            break
        taken.add(group)
        records += sizes[group]
    return taken


def count_kept(trainer: Trainer, records: Dataset, stage: str, noun: str, why: str) -> None:
    """Say how many training records (`noun`: "comparisons") the trainer left out, and `why` (TRL drops some for
    their length without a word); refuse a run that would keep none."""
    total, kept = len(records), len(trainer.train_dataset)
    if kept == 0:
        raise ValueError(f"All {total} training {noun} {why}: raise --max_length.")
    if kept < total:
        logger.warning(
            f"{stage}: {total - kept} of {total} training {noun} {why}, so they are left out ({total} → {kept} "
            f"{noun}): raise --max_length to keep them."
        )
