"""The fields every stage adds to its stock trainer arguments, and the checks and defaults they get when a config is
built. Building a config has no side effect: the bf16 probe, the Hub token and the exit hook wait for `start_run`."""

import importlib.util
from dataclasses import dataclass, field

import torch
from peft import LoraConfig
from transformers import TrainingArguments

from ..optimization import OptimizerArguments
from ..precision import CHOSEN_AT_START, SET_IN_CONFIG

TRACKERS = ("tensorboard", "trackio")  # report_to names that are also their module names
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


def resolve_defaults(config: TrainingArguments) -> None:
    """CPU-sensible defaults, set before the stock arguments set up the device: on a machine without an accelerator,
    CPU mode (multi-process runs become gloo DDP) without pinned memory; report to tensorboard/trackio when
    installed. A bf16 left unset is chosen when the run starts (`start_run`: a CPU decides by a probe at the shapes of
    the model it trains) and is off until then; TRL's configs would turn it on."""
    if config.report_to == "auto":
        config.report_to = [name for name in TRACKERS if importlib.util.find_spec(name)] or "none"
    if getattr(config, "bf16", False) is None:
        config.bf16, config.bf16_reason = False, CHOSEN_AT_START
    if not torch.cuda.is_available() and not torch.backends.mps.is_available():
        config.use_cpu = True  # also what makes torchrun / accelerate launch run gloo DDP instead of N lone copies
        config.dataloader_pin_memory = False
