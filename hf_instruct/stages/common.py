"""What every stage does around its trainer: parse the config, guard and resume the output dir, save, card.

A stage is one function `run_<stage>(config) -> output_dir`, called by the recipe script, the `hf-instruct`
command and the pipeline alike. Its config is a dataclass extending the stock trainer arguments, parsed from
`--config file.yaml` plus command-line overrides.
"""

import argparse
import atexit
import datetime
import difflib
import importlib.util
import json
import math
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TypeVar

import torch
import yaml
from datasets import Dataset
from peft import LoraConfig, PeftConfig, PeftModel
from transformers import (
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerState,
    TrainingArguments,
    set_seed,
)
from transformers.integrations import is_deepspeed_zero3_enabled
from transformers.trainer import TRAINER_STATE_NAME
from transformers.utils import logging
from trl import TrlParser

from ..allocator import keep_freed_memory
from ..checkpoints import (
    NO_SUCH_FOLDER,
    check_reward_model,
    checkpoint_problem,
    last_complete_checkpoint,
    missing_folder,
    saved_model_problem,
    shape_mismatch,
    tokenizer_problem,
)
from ..hub import push_to_hub
from ..model_card import RUN_FILE, plot_training_curves, read_history, stage_record, write_model_card, write_run_record
from ..models.instructgpt import InstructGPTConfig
from ..optimization import MUON, OptimizerArguments, optimizer_cls_and_kwargs
from ..precision import SET_IN_CONFIG, ProbeShapes, default_bf16
from ..staleness import input_fingerprints, lock_folder, recorded_run, run_settings, setting_changes
from ..trainers import PPOTrainer

logger = logging.get_logger(__name__)
LANGUAGE_MODELLING_STAGES = ("pretrain", "sft")
TRACKERS = ("tensorboard", "trackio")  # report_to names that are also their module names
ConfigT = TypeVar("ConfigT", bound=TrainingArguments)
# how alike a mistyped name and a field must be to suggest it (difflib's 0.6 offered 'ddp_backend' for 'backend')
HINT_CUTOFF = 0.8
# settings that make no sense at 0 or below: a run with them would train nothing, or crash inside torch
POSITIVE_FIELDS = (
    "learning_rate",
    "muon_learning_rate",
    "per_device_train_batch_size",
    "per_device_eval_batch_size",
    "gradient_accumulation_steps",
    "logging_steps",
    "save_steps",
)


@dataclass
class StageArguments(OptimizerArguments):
    """The fields every stage adds to its stock trainer arguments: `class XStageConfig(StageArguments, XConfig)`."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "The causal LM to start from: a local folder or a Hub id."}
    )
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "Default: the model's (pretrain without a model trains one on the corpus)."}
    )
    train_files: list[str] | None = field(
        default=None, metadata={"help": "Local data files (.txt/.jsonl/.json/.parquet), folders or globs."}
    )
    dataset_name: str | None = field(default=None, metadata={"help": "A Hub dataset, used when no train_files."})
    dataset_split: str = field(default="train", metadata={"help": "Split of dataset_name."})
    report_to: None | str | list[str] = field(
        default="auto", metadata={"help": "'auto': tensorboard and/or trackio when installed, else none."}
    )
    bf16: bool | None = field(
        default=None,
        metadata={
            "help": "bf16 mixed precision; default: where it is fast (a GPU with bf16, a CPU with AMX/AVX-512 "
            "BF16 or that a matmul probe finds faster), else fp32."
        },
    )
    bf16_reason: str = field(default=SET_IN_CONFIG, init=False, repr=False)  # why bf16 is on or off
    keep_freed_memory: bool = field(
        default=True,
        metadata={
            "help": "On Linux with glibc, keep the memory a training step frees in the process instead of mapping "
            "it again every step (hf_instruct.allocator; faster on CPU; the process keeps its peak memory)."
        },
    )
    allocator: str = field(  # what keep_freed_memory did
        default="left as it is (keep_freed_memory: false)", init=False, repr=False
    )
    # A stage pushes the finished model once, with its card (`push_if_asked`); the Trainer's other hub strategies
    # would push at every save, with its generic card.
    push_to_hub: bool = field(
        default=False,
        metadata={
            "help": "Push the finished model with its card to hub_model_id (default: the output_dir's folder name "
            "under the token's user), in one commit when the run ends."
        },
    )
    hub_strategy: str = field(
        default="end", metadata={"help": "When to push: 'end' only (once, when the run ends).", "choices": ["end"]}
    )

    def __post_init__(self):
        if not self.train_files and not self.dataset_name:
            raise ValueError("Set --train_files (local data files) or --dataset_name (a Hub dataset).")
        if isinstance(self.train_files, str):  # `train_files: one.txt` in a YAML file
            self.train_files = [self.train_files]
        check_numbers(self)
        resolve_defaults(self)
        if self.hub_token:  # to the environment, out of every file the run writes (training_args.bin pickles us)
            os.environ["HF_TOKEN"], self.hub_token = self.hub_token, None
        super().__post_init__()

    @property
    def data_source(self) -> list[str] | str:
        return self.train_files or self.dataset_name


@dataclass
class TuningArguments(StageArguments):
    """The fields of the stages that tune a saved model on records (SFT, reward, DPO)."""

    on_bad_record: str = field(default="error", metadata={"help": "'error' or 'skip' (skipped records are counted)."})
    eval_examples: int = field(default=64, metadata={"help": "Records held out for evaluation (0: none)."})
    # TRL turns activation checkpointing on everywhere; off unless asked (it slows small CPU runs down).
    gradient_checkpointing: bool | None = field(
        default=None, metadata={"help": "Deprecated alias of activation_checkpointing (off unless set)."}
    )

    def __post_init__(self):
        if not self.model_name_or_path:
            raise ValueError("Set --model_name_or_path: the model to start from (e.g. the previous stage's output).")
        super().__post_init__()


@dataclass
class LoraArguments:
    """LoRA adapters instead of full fine-tuning (the SFT and PPO stages)."""

    use_peft: bool = field(default=False, metadata={"help": "Train LoRA adapters instead of all weights."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["all-linear"], metadata={"help": "Modules that get adapters."}
    )

    def lora_config(self) -> LoraConfig | None:
        """The causal-LM `LoraConfig` these fields describe, or None without `use_peft`."""
        if not self.use_peft:
            return None
        targets = self.lora_target_modules
        return LoraConfig(
            r=self.lora_r,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            target_modules="all-linear" if targets == ["all-linear"] else targets,
            task_type="CAUSAL_LM",
        )


@dataclass
class RewardModelArguments:
    """The reward model the RL stages (PPO, GRPO) optimise against."""

    reward_model_path: str | None = field(
        default=None,
        metadata={"help": "The reward model: an `hf-instruct reward` output (or any 1-label classifier)."},
    )

    def __post_init__(self):
        if not self.reward_model_path:
            raise ValueError("Set --reward_model_path: the reward model to optimise against (hf-instruct reward).")
        super().__post_init__()


@atexit.register
def leave_the_process_group() -> None:
    """Under torchrun, leave the process group before the interpreter exits: a gloo group torn down at exit can abort
    the process ("terminate called without an active exception") after the run has finished, when one process tears
    its connections down while another still uses them. So the processes first meet at a barrier (gloo's bounded
    one: a process that died is waited for 30 s at most), then leave together."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        if torch.distributed.get_backend() == "gloo":
            try:
                torch.distributed.monitored_barrier(timeout=datetime.timedelta(seconds=30))
            except RuntimeError:  # another process is gone or stuck: leave without it
                pass
        torch.distributed.destroy_process_group()


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


def check_numbers(config: TrainingArguments) -> None:
    """Refuse settings that would train nothing or crash mid-run, before anything is written."""
    for name in POSITIVE_FIELDS:
        value = getattr(config, name, None)
        if value is not None and value <= 0:
            raise ValueError(f"--{name} must be above 0, got {value}.")
    if config.max_steps == 0 or config.max_steps < -1:
        raise ValueError(
            f"--max_steps must be a number of steps above 0, or -1 to train for --num_train_epochs; got "
            f"{config.max_steps}."
        )
    if config.max_steps == -1 and config.num_train_epochs <= 0:
        raise ValueError(f"--num_train_epochs must be above 0 (or set --max_steps), got {config.num_train_epochs}.")


class StageParser(TrlParser):
    """`TrlParser` whose errors are one-line `ValueError`s (the CLI prints them) instead of a usage dump, exit 2."""

    def error(self, message: str):
        raise ValueError(f"{message} (see --help).")


def parse_config(config_class: type[ConfigT], args: list[str] | None = None, prog: str | None = None) -> ConfigT:
    """`--config file.yaml` (every key a field of `config_class`) plus `--field value` overrides; `prog` names the
    command in `--help` ("hf-instruct sft")."""
    args = list(sys.argv[1:] if args is None else args)
    parser = StageParser([config_class], prog=prog)
    if "--config" in args:
        index = args.index("--config") + 1
        path = args[index] if index < len(args) else None
        if path is None or not os.path.isfile(path):
            raise FileNotFoundError(f"--config {path}: no such file.")
        check_config_file(parser, path)
    (config,) = parser.parse_args_and_config(args)
    return config


def parse_fields(config_class: type[ConfigT], fields: dict, where: str) -> ConfigT:
    """A stage config from a mapping of its fields (a section of a pipeline YAML), checked, converted and built as
    the keys of a `--config` file are; every error starts with `where`."""
    parser = StageParser([config_class])
    check_config_values(parser, fields, where)
    parser.set_defaults_with_config(**fields)
    try:
        (config,) = parser.parse_args_into_dataclasses(args=[])
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}: {error}") from error
    return config


def did_you_mean(name: str, names: Iterable[str], otherwise: str = "") -> str:
    """ "did you mean '<closest>'?" for a mistyped name (config keys, model_config keys, pipeline stages), else
    `otherwise`."""
    close = difflib.get_close_matches(name, names, n=1, cutoff=HINT_CUTOFF)
    return f"did you mean {close[0]!r}?" if close else otherwise


def read_config_file(path: str | os.PathLike, where: str | None = None) -> dict:
    """The fields of a stage's YAML file (a mapping of field: value); an error starts with `where` (else the path)."""
    with open(path, encoding="utf-8") as f:
        values = yaml.safe_load(f)  # a yaml.YAMLError names the file, line and column
    if not isinstance(values, dict):
        raise ValueError(f"{where or path}: must be a YAML mapping of field: value.")
    return values


def check_config_file(parser: argparse.ArgumentParser, path: str) -> None:
    """`check_config_values` for a YAML file, said with the file's name."""
    check_config_values(parser, read_config_file(path), path)


def check_config_values(parser: argparse.ArgumentParser, values: dict, where: str) -> None:
    """Every key a field, every scalar value one the field accepts, said with `where` (the file, the section).
    `TrlParser` makes the values argparse defaults: a bad string fails naming neither file nor key, and a bad number
    or bool is not checked at all (it fails later, deep in the trainer)."""
    actions = {}
    for action in parser._actions:  # the field's own action, not the `--no_<field>` complement of a bool
        actions.setdefault(action.dest, action)
    for key, value in values.items():
        if key == "env":  # TrlParser sets these environment variables
            continue
        if key not in actions:
            hint = did_you_mean(key, actions, otherwise="see --help for the fields")
            raise ValueError(f"{where}: unknown key {key!r} ({hint}).")
        action = actions[key]
        for item in value if isinstance(value, list) else [value]:
            if action.type is None or not isinstance(item, str | int | float | bool):
                continue
            try:
                converted = action.type(str(item))
            except (TypeError, ValueError, argparse.ArgumentTypeError):
                expected = {"int": "an integer", "float": "a number", "string_to_bool": "true or false"}
                kind = expected.get(getattr(action.type, "__name__", ""), "another value")
                raise ValueError(f"{where}: {key}: {item!r} is not valid: expected {kind}.") from None
            if action.choices is not None and converted not in action.choices:
                choices = ", ".join(str(getattr(choice, "value", choice)) for choice in action.choices)
                quote = " (YAML reads an unquoted no/yes/off/on as a bool: quote it)" if isinstance(item, bool) else ""
                raise ValueError(f"{where}: {key}: {item!r} is not valid: expected one of {choices}{quote}.")


def resolve_defaults(config: TrainingArguments) -> None:
    """CPU-sensible defaults: bf16 only where it is fast (`hf_instruct.precision`); on a machine without an
    accelerator, CPU mode (multi-process runs become gloo DDP) without pinned memory; report to tensorboard/trackio
    when installed."""
    if config.report_to == "auto":
        config.report_to = [name for name in TRACKERS if importlib.util.find_spec(name)] or "none"
    if getattr(config, "bf16", False) is None:
        choice = default_bf16(probe_shapes(config))
        config.bf16, config.bf16_reason = choice.bf16, choice.reason
    if not torch.cuda.is_available() and not torch.backends.mps.is_available():
        config.use_cpu = True  # also what makes torchrun / accelerate launch run gloo DDP instead of N lone copies
        config.dataloader_pin_memory = False


def probe_shapes(config: TrainingArguments) -> ProbeShapes:
    """The model and batch a stage trains, as far as its config tells before anything is loaded, for the precision
    probe: the config.json of a local `model_name_or_path`, else a new model's `model_config` (pretrain), on rows of
    `block_size` or `max_length` tokens. A model not on disk (a Hub id; a pipeline's later stage before the stages
    ahead of it ran) is probed as the default model and batch, one probe per process for them all."""
    model_dir = getattr(config, "model_name_or_path", None)
    if model_dir and (Path(model_dir) / "config.json").is_file():
        model = json.loads((Path(model_dir) / "config.json").read_text())
    elif not model_dir and hasattr(config, "model_config"):  # pretrain builds a new model
        model = {**InstructGPTConfig(**(config.model_config or {})).to_dict(), "vocab_size": config.vocab_size}
    else:
        return ProbeShapes()
    length = getattr(config, "block_size", None) or getattr(config, "max_length", None)
    return ProbeShapes.of(model, config.per_device_train_batch_size, length or ProbeShapes.sequence_length)


@dataclass
class RunStart:
    """Where a stage starts: nothing to do (`finished`), from scratch, or from the checkpoint `resume_from`."""

    finished: bool = False
    resume_from: str | None = None


def start_run(
    config: TrainingArguments,
    stage: str,
    finished: Callable[[TrainingArguments, Path], bool] | None = None,
    more: str = "raise --max_steps or --num_train_epochs to train on",
) -> RunStart:
    """Seed every RNG (the model is built before the Trainer seeds), keep freed memory in the process
    (`keep_freed_memory`), refuse an output dir that holds another run, leave a finished run as it is (`finished`:
    whether the output dir holds a run that `config` asks no more of; default `is_finished`, a trained model; `more`
    says how to ask for more), and find the newest complete checkpoint to resume from. Writes nothing but the run
    marker of a new output dir."""
    set_seed(config.seed)
    if config.keep_freed_memory:
        config.allocator = keep_freed_memory()
    output_dir = Path(config.output_dir)
    marker = output_dir / RUN_FILE
    with config.main_process_first(desc="checking the output dir"):
        if output_dir.exists() and not output_dir.is_dir():
            raise ValueError(f"--output_dir {output_dir} is a file, not a folder: choose another --output_dir.")
        if output_dir.is_dir() and config.process_index == 0:
            lock_folder(output_dir)
        if output_dir.is_dir() and any(output_dir.iterdir()):
            previous = json.loads(marker.read_text()).get("stage") if marker.is_file() else None
            if previous != stage:
                what = f"a {previous} run" if previous else "files that are not an hf-instruct run"
                raise ValueError(
                    f"--output_dir {output_dir} holds {what}; a {stage} run would mix with it. "
                    "Choose a new --output_dir or delete the old one."
                )
            recorded = recorded_run(output_dir).get("settings")
            changes = setting_changes(recorded, run_settings(config), type(config)) if recorded is not None else []
            if (finished or is_finished)(config, output_dir):
                differ = f"; its settings differ from this command's ({', '.join(changes)})" if changes else ""
                logger.warning(
                    f"{stage}: {output_dir} holds a finished {stage} run{differ}; nothing to do ({more}, or choose a "
                    "new --output_dir to run with other settings)."
                )
                return RunStart(finished=True)
            if changes := [change for change in changes if not change.startswith(("max_steps ", "num_train_epochs "))]:
                logger.warning(f"{stage}: resuming a run started with other settings ({', '.join(changes)}).")
        check_model_sources(config)
        if not marker.is_file() and config.process_index == 0:
            output_dir.mkdir(parents=True, exist_ok=True)
            started = {"stage": stage, "settings": run_settings(config), "inputs": input_fingerprints(config)}
            marker.write_text(json.dumps(started, indent=2) + "\n")
            lock_folder(output_dir)
        resume_from = config.resume_from_checkpoint
        if resume_from and (problem := checkpoint_problem(Path(resume_from))):
            raise ValueError(f"--resume_from_checkpoint {resume_from}: {problem}.")
        if not resume_from and output_dir.is_dir():
            resume_from = last_complete_checkpoint(output_dir, rename_incomplete=config.process_index == 0)
    if resume_from:
        logger.warning(f"{stage}: resuming from {resume_from}")
    return RunStart(resume_from=resume_from)


def check_model_sources(config: TrainingArguments) -> None:
    """The models and tokenizer a run reads must be whole before it writes anything (the loaders' own errors name
    neither the field nor the file). Names that are not local folders are left to the Hub."""
    for name in ("model_name_or_path", "tokenizer_name_or_path", "reward_model_path", "value_model_path"):
        path = getattr(config, name, None)
        if path and missing_folder(path):
            raise FileNotFoundError(f"--{name} {path}: {NO_SUCH_FOLDER}.")
        if not path or not os.path.isdir(path):
            continue  # unset, or a Hub id
        if name == "tokenizer_name_or_path":
            problem = tokenizer_problem(Path(path))
        else:  # the model's own tokenizer is read unless another is given (PPO reads the reward model's)
            problem = saved_model_problem(
                path, with_tokenizer=name != "model_name_or_path" or not config.tokenizer_name_or_path
            )
        if problem:
            raise ValueError(f"--{name} {path}: {problem}.")
        if name in ("reward_model_path", "value_model_path"):
            check_reward_model(path, f"--{name}")


def asks_for_more(config: TrainingArguments, state: dict) -> bool:
    """Whether `config` asks for more training than the saved trainer `state` holds."""
    if config.max_steps > 0:
        return config.max_steps > state["global_step"]
    return config.num_train_epochs > state["epoch"] + 1e-6


def is_finished(config: TrainingArguments, output_dir: Path) -> bool:
    """Whether `output_dir` holds the whole result of a run that `config` asks no more of (a model that loads, its
    metrics and state); says why a finished-looking run will be trained again."""
    state_file = output_dir / TRAINER_STATE_NAME
    if not (output_dir / "all_results.json").is_file() or not state_file.is_file():
        return False
    if problem := saved_model_problem(output_dir):
        logger.warning(f"{output_dir} held a finished run, but its model is incomplete ({problem}): training again.")
        return False
    return not asks_for_more(config, json.loads(state_file.read_text()))


def saved_model(trainer: Trainer) -> PreTrainedModel | PeftModel:
    """The model a stage saves and its card describes: the Trainer's, or PPO's policy (`PPOTrainer.policy`)."""
    return trainer.policy if isinstance(trainer, PPOTrainer) else trainer.model


def train_and_save(
    trainer: Trainer,
    config: StageArguments,
    stage: str,
    tokenizer: PreTrainedTokenizerBase,
    resume_from: str | None,
    extra_metrics: dict | None = None,
) -> str:
    """Train (resuming if asked), evaluate, save model + tokenizer + metrics + card, push if configured."""
    start = time.time()
    metrics = dict(extra_metrics or {})
    if trainer.optimizer is None and (declared := optimizer_cls_and_kwargs(config)):
        trainer.optimizer_cls_and_kwargs = declared  # `optim: muon`; DPO's and GRPO's trainers take no such argument
    if resume_from and (mismatch := shape_mismatch(Path(resume_from), saved_model(trainer))):
        raise ValueError(
            f"{resume_from} holds a model of another shape than this run builds ({mismatch}): choose a new "
            "--output_dir, or run with the settings that made it."
        )
    state_file = Path(resume_from or "") / TRAINER_STATE_NAME
    if resume_from and not asks_for_more(config, json.loads(state_file.read_text())):
        # the run was stopped after its last step was saved: that checkpoint is the trained model (training from it
        # would take one step past the end)
        trainer._load_from_checkpoint(resume_from)
        trainer.state = TrainerState.load_from_json(str(state_file))
    else:
        metrics.update(trainer.train(resume_from_checkpoint=resume_from).metrics)
    if trainer.eval_dataset is not None:
        metrics.update(trainer.evaluate())
        if stage in LANGUAGE_MODELLING_STAGES:  # the eval loss is a per-token cross-entropy
            metrics["eval_perplexity"] = math.exp(metrics["eval_loss"])
    # `_internal_call`: no Trainer push with its generic card; `push_if_asked` pushes once, below, with ours
    trainer.save_model(config.output_dir, _internal_call=True)
    trainer.log_metrics("all", metrics)
    trainer.save_metrics("all", metrics)
    trainer.save_state()
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(config.output_dir)
        record = stage_record(
            stage=stage,
            model=saved_model(trainer),
            base_model=config.model_name_or_path,
            data=config.data_source,
            steps=trainer.state.global_step,
            wall_time_s=time.time() - start,
            hyperparameters={
                **card_hyperparameters(config),
                "bf16_reason": config.bf16_reason,
                "allocator": config.allocator,
            },
            metrics={k: metrics[k] for k in CARD_METRICS if k in metrics},
        )
        # what `hf-instruct pipeline` compares to tell whether the run is still what its config asks for
        record.update(settings=run_settings(config), inputs=input_fingerprints(config))
        write_run_record(config.output_dir, read_history(config.model_name_or_path) + [record])
        plot_training_curves(trainer.state.log_history, stage, config.output_dir)
        write_model_card(config.output_dir)
        push_if_asked(config, stage)
    trainer.accelerator.wait_for_everyone()  # the other ranks wait while the main one writes the card and pushes
    return config.output_dir


def leave_finished_run(config: StageArguments, stage: str) -> str:
    """A finished run is left as it is; pushed when asked (a re-run that adds --push_to_hub)."""
    if config.process_index == 0:
        push_if_asked(config, stage)
    return config.output_dir


def push_if_asked(config: StageArguments, stage: str) -> None:
    """With push_to_hub: upload the finished model and its card in one commit, to hub_model_id (default: the
    output_dir's folder name under the token's user)."""
    if config.push_to_hub:
        url = push_to_hub(
            config.output_dir,
            config.hub_model_id or Path(config.output_dir).name,
            private=config.hub_private_repo,
            revision=config.hub_revision,
            commit_message=f"hf-instruct {stage}",
        )
        logger.warning(f"{stage}: pushed to {url}")


def card_hyperparameters(config: TrainingArguments) -> dict:
    """The settings a reader needs to reproduce the run (enums as their values; epochs only without max_steps; the
    optimizer and Muon's settings only where it is Muon, the scheduler's arguments only where there are some)."""
    values = {name: getattr(config, name) for name in CARD_HYPERPARAMETERS if hasattr(config, name)}
    if config.max_steps > 0:
        values.pop("num_train_epochs")
    if values.get("optim") != MUON:
        values = {name: value for name, value in values.items() if name != "optim" and not name.startswith("muon_")}
    if not values.get("lr_scheduler_kwargs"):
        values.pop("lr_scheduler_kwargs", None)
    return {name: value.value if isinstance(value, Enum) else value for name, value in values.items()}


CARD_METRICS = (
    "train_loss",
    "eval_loss_before_training",
    "eval_loss",
    "eval_perplexity",
    "eval_mean_token_accuracy",
    "eval_accuracy",
    "eval_margin",
    "eval_rewards/accuracies",
    "eval_rewards/margins",
    "eval_reward_before_training",
    "eval_reward",
    "eval_kl",
)
CARD_HYPERPARAMETERS = (
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
    "block_size",
    "instruction_share",
    "max_length",
    "packing",
    "use_peft",
    "reward_model_path",
    "kl_coef",
    "kl_target",
    "ptx_coef",
    "num_ppo_epochs",
    "response_length",
    "num_generations",
    "beta",
)
