"""A stage's run around its trainer: start (refuse a foreign output dir, leave a finished run, find the checkpoint
to resume, choose the precision), then train, evaluate, save, write the run record and card, push.

A stage is one function `run_<stage>(config) -> output_dir`, called by the recipe script, the `hf-instruct` command
and the pipeline alike: `start_run` first, `train_and_save` last. What a run does to the process (the bf16 probe, the
Hub token moved into the environment, the exit hook of a process group) happens here, not when its config is built.
"""

import atexit
import datetime
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import torch
from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainerState, TrainingArguments, set_seed
from transformers.trainer import TRAINER_STATE_NAME
from transformers.utils import logging

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
from ..optimization import MUON, optimizer_cls_and_kwargs
from ..precision import CHOSEN_AT_START, ProbeShapes, default_bf16
from ..staleness import input_fingerprints, lock_folder, recorded_run, run_settings, setting_changes
from ..trainers import PPOTrainer
from .arguments import StageArguments
from .stage import Stage

logger = logging.get_logger(__name__)


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
    """Move the Hub token into the environment, leave the process group at exit, seed every RNG (the model is built
    before the Trainer seeds), keep freed memory in the process (`keep_freed_memory`), refuse an output dir that holds
    another run, leave a finished run as it is (`finished`: whether the output dir holds a run that `config` asks no
    more of; default `is_finished`, a trained model; `more` says how to ask for more), find the newest complete
    checkpoint to resume from, and choose the precision. Writes nothing but the run marker of a new output dir."""
    if config.hub_token:  # to the environment, out of every file the run writes (training_args.bin pickles config)
        os.environ["HF_TOKEN"], config.hub_token = config.hub_token, None
    atexit.unregister(leave_the_process_group)  # registered once, however many stages the process runs
    atexit.register(leave_the_process_group)
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
    choose_precision(config)
    if resume_from:
        logger.warning(f"{stage}: resuming from {resume_from}")
    return RunStart(resume_from=resume_from)


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


def choose_precision(config: StageArguments) -> None:
    """bf16 where it is fast (`hf_instruct.precision`), for a config that left it unset: chosen as the run starts, as a
    CPU probes the shapes of the model the run trains (in a pipeline, written by the stages ahead of it just now). The
    mixed precision the stock arguments derived from bf16 when the config was built follows the choice."""
    if config.bf16_reason != CHOSEN_AT_START:
        return
    choice = default_bf16(probe_shapes(config))
    config.bf16, config.bf16_reason = choice.bf16, choice.reason
    if choice.bf16 and config.fp16:
        raise ValueError("At most one of fp16 and bf16 can be True, but not both")  # as TrainingArguments says it
    if choice.bf16:
        config.mixed_precision = "bf16"
        if config.deepspeed_plugin is not None:  # DeepSpeed took its precision from the config when it was built
            config.deepspeed_plugin.deepspeed_config["bf16"] = {"enabled": True}


def probe_shapes(config: TrainingArguments) -> ProbeShapes:
    """The model and batch a stage trains, as far as its config tells before anything is loaded, for the precision
    probe: the config.json of a local `model_name_or_path`, else a new model's `model_config` (pretrain), on rows of
    `block_size` or `max_length` tokens. A model not on disk (a Hub id) is probed as the default model and batch, one
    probe per process for them all."""
    model_dir = getattr(config, "model_name_or_path", None)
    if model_dir and (Path(model_dir) / "config.json").is_file():
        model = json.loads((Path(model_dir) / "config.json").read_text())
    elif not model_dir and hasattr(config, "model_config"):  # pretrain builds a new model
        model = {**InstructGPTConfig(**(config.model_config or {})).to_dict(), "vocab_size": config.vocab_size}
    else:
        return ProbeShapes()
    length = getattr(config, "block_size", None) or getattr(config, "max_length", None)
    return ProbeShapes.of(model, config.per_device_train_batch_size, length or ProbeShapes.sequence_length)


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
    stage: Stage,
    tokenizer: PreTrainedTokenizerBase,
    resume_from: str | None,
    extra_metrics: dict | None = None,
) -> str:
    """Train (resuming if asked), evaluate, save model + tokenizer + metrics + the card `stage` declares, push if
    configured."""
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
        if stage.language_modelling:  # the eval loss is a per-token cross-entropy
            metrics["eval_perplexity"] = math.exp(metrics["eval_loss"])
    # `_internal_call`: no Trainer push with its generic card; `push_if_asked` pushes once, below, with ours
    trainer.save_model(config.output_dir, _internal_call=True)
    trainer.log_metrics("all", metrics)
    trainer.save_metrics("all", metrics)
    trainer.save_state()
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(config.output_dir)
        record = stage_record(
            stage=stage.name,
            model=saved_model(trainer),
            base_model=config.model_name_or_path,
            data=config.data_source,
            steps=trainer.state.global_step,
            wall_time_s=time.time() - start,
            hyperparameters={
                **card_hyperparameters(config, stage.card_hyperparameters),
                "bf16_reason": config.bf16_reason,
                "allocator": config.allocator,
            },
            metrics={k: metrics[k] for k in stage.card_metrics if k in metrics},
        )
        # what `hf-instruct pipeline` compares to tell whether the run is still what its config asks for
        record.update(settings=run_settings(config), inputs=input_fingerprints(config))
        write_run_record(config.output_dir, read_history(config.model_name_or_path) + [record])
        plot_training_curves(trainer.state.log_history, stage.name, config.output_dir, stage.plotted)
        write_model_card(config.output_dir)
        push_if_asked(config, stage.name)
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


def card_hyperparameters(config: TrainingArguments, names: tuple[str, ...]) -> dict:
    """The settings `names` of `config` that a reader needs to reproduce the run (enums as their values; epochs only
    without max_steps; the optimizer and Muon's settings only where it is Muon, the scheduler's arguments only where
    there are some)."""
    values = {name: getattr(config, name) for name in names}
    if config.max_steps > 0:
        values.pop("num_train_epochs", None)
    if values.get("optim") != MUON:
        values = {name: value for name, value in values.items() if name != "optim" and not name.startswith("muon_")}
    if not values.get("lr_scheduler_kwargs"):
        values.pop("lr_scheduler_kwargs", None)
    return {name: value.value if isinstance(value, Enum) else value for name, value in values.items()}
