"""Shared fixtures and helpers: tiny configs, the Trainer settings of few-step runs, a real byte-level BPE tokenizer
trained on the spot (no downloads), a pretrain → SFT → reward chain, and DDP and DeepSpeed launchers."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import LlamaConfig, PreTrainedTokenizerFast  # noqa: E402

from hf_instruct import InstructGPTConfig, InstructGPTForCausalLM, train_tokenizer  # noqa: E402
from hf_instruct.stages import (  # noqa: E402
    PretrainStageConfig,
    RewardStageConfig,
    SFTStageConfig,
    run_pretrain,
    run_reward,
    run_sft,
)

pytest_plugins = ["hub_server"]  # the `hub_server` fixture: a local Hub-protocol server

if os.environ.get("PYTEST_XDIST_WORKER"):  # one thread per test worker: `pytest -n 2` runs one worker per core
    torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
# The real data lies beside the checkout (../shared/data). Tests that read it skip where it is missing, except in CI.
needs_shared = pytest.mark.skipif(
    not SHARED.exists() and not os.environ.get("CI"), reason="../shared/data is not here"
)

CLI_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}

TINY = dict(
    vocab_size=320,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    rms_norm_eps=1e-5,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)

TEXT = (
    "The quick brown fox jumps over the lazy dog. A model learns only what the labels say. "
    "Instruction tuning teaches a pretrained model to follow instructions; a reward model learns "
    "which of two answers people prefer, and PPO makes the policy prefer them too. "
)


# Trainer settings of every few-step test run, of a stock Trainer or a stage: three steps on the CPU in fp32 (TRL
# configs default to bf16 and activation checkpointing, stages pick bf16 by the machine), logged, nothing saved.
SMOKE_TRAINING = dict(
    max_steps=3,
    per_device_train_batch_size=4,
    learning_rate=3e-3,
    logging_steps=1,
    save_strategy="no",
    report_to="none",
    use_cpu=True,
    bf16=False,
    disable_tqdm=True,
)


def flags(**values) -> list[str]:
    """A command line's `--name value` pairs: flags(max_steps=3, output_dir=path) == ["--max_steps", "3",
    "--output_dir", str(path)]."""
    return [item for name, value in values.items() for item in (f"--{name}", str(value))]


def logged_losses(trainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def tiny_config(**overrides) -> InstructGPTConfig:
    return InstructGPTConfig(**{**TINY, "tie_word_embeddings": False, **overrides})


def tiny_llama_config(**overrides) -> LlamaConfig:
    return LlamaConfig(**{**TINY, "tie_word_embeddings": False, **overrides})


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    """A real byte-level BPE tokenizer with the ChatML training template, trained in a fraction of a second."""
    tok = train_tokenizer([TEXT] * 20, vocab_size=TINY["vocab_size"], show_progress=False)
    assert len(tok) <= TINY["vocab_size"]
    return tok


@pytest.fixture
def tiny_model_dir(tmp_path, tokenizer) -> Path:
    """A saved tiny InstructGPT model + tokenizer: what `hf-instruct pretrain` leaves behind."""
    path = tmp_path / "base"
    InstructGPTForCausalLM(tiny_config()).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def instructions(tmp_path) -> Path:
    """Alpaca-style instruction records in a .jsonl file."""
    sentences = [s.strip() for s in TEXT.split(".") if s.strip()]
    rows = [{"instruction": f"Repeat: {s}", "input": "", "output": s + "."} for s in sentences * 8]
    path = tmp_path / "instructions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# Runs a stage under torchrun and writes, per rank, a digest of the trained weights (for DDP, equal on every rank).
DDP_SCRIPT = """
import hashlib, os, sys
from transformers import TrainerCallback
from hf_instruct.stages import STAGES, parse_config

class WeightsDigest(TrainerCallback):
    def on_train_end(self, args, state, control, model=None, **kwargs):
        digest = hashlib.sha256()
        for name, tensor in sorted(model.state_dict().items()):
            digest.update(name.encode() + tensor.detach().cpu().numpy().tobytes())
        with open(os.path.join(args.output_dir, f"rank{args.process_index}.sha256"), "w") as f:
            f.write(f"{digest.hexdigest()} {args.world_size}")

stage = STAGES[sys.argv[1]]
stage.run(parse_config(stage.config_class, sys.argv[2:]), callbacks=[WeightsDigest()])
"""


def free_port() -> int:
    """A free localhost port (a launcher's rendezvous, a server): tests on parallel workers never share a fixed one."""
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def torchrun_stage(stage: str, *args: str, tmp_path: Path) -> None:
    """Run `stage` as 2-process gloo DDP on CPU; assert both ranks end with the same weights."""
    script = tmp_path / "ddp_stage.py"
    script.write_text(DDP_SCRIPT)
    launcher = [sys.executable, "-m", "torch.distributed.run", *flags(nproc_per_node=2, master_port=free_port())]
    proc = subprocess.run(
        [*launcher, str(script), stage, *args], cwd=REPO, env=CLI_ENV, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    output_dir = Path(args[args.index("--output_dir") + 1])
    digests = [(output_dir / f"rank{rank}.sha256").read_text().split() for rank in (0, 1)]
    assert digests[0] == digests[1] and digests[0][1] == "2"  # same weights, and really two processes


# Runs a stage under accelerate + DeepSpeed and writes, per process, the ZeRO stage and world size it trained under.
DEEPSPEED_SCRIPT = """
import json, os, sys
from transformers import TrainerCallback
from hf_instruct.stages import STAGES, parse_config

class ZeroStage(TrainerCallback):
    def on_train_end(self, args, state, control, **kwargs):
        with open(os.path.join(args.output_dir, f"rank{args.process_index}.json"), "w") as f:
            json.dump([args.deepspeed_plugin.zero_stage, args.world_size], f)

stage = STAGES[sys.argv[1]]
stage.run(parse_config(stage.config_class, sys.argv[2:]), callbacks=[ZeroStage()])
"""


@pytest.fixture(scope="session")
def deepspeed_env(tmp_path_factory) -> dict[str, str]:
    """The environment of DeepSpeed launches. DeepSpeed JIT-builds its CPU shared-memory op under TORCH_EXTENSIONS_DIR
    behind a lock file, and a build killed mid-way (a timed-out test, a stopped session) leaves the lock behind: every
    later launch then waits on it forever. One folder per test session, shared by the xdist workers: the session
    builds the op once, and no earlier session's lock can hold it up."""
    session_dir = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        session_dir = session_dir.parent
    return {**CLI_ENV, "TORCH_EXTENSIONS_DIR": str(session_dir / "torch_extensions")}


def deepspeed_stage(
    stage: str, zero: int, *args: str, tmp_path: Path, env: dict[str, str]
) -> subprocess.CompletedProcess:
    """Run `stage` as 2 CPU processes under DeepSpeed ZeRO-`zero` (recipes/accelerate/deepspeed_zero<zero>.yaml) and
    assert both really trained under it. Without `--cpu`, which would make accelerate launch one process without
    DeepSpeed; fp32, as bf16 is slow on most CPUs. `env` is the `deepspeed_env` fixture."""
    script = tmp_path / "deepspeed_stage.py"
    script.write_text(DEEPSPEED_SCRIPT)
    launcher = ["accelerate", "launch", "--config_file", f"recipes/accelerate/deepspeed_zero{zero}.yaml"]
    launcher += ["--num_processes", "2", "--mixed_precision", "no", "--main_process_port", str(free_port())]
    proc = subprocess.run(
        [*launcher, str(script), stage, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    output_dir = Path(args[args.index("--output_dir") + 1])
    assert [json.loads((output_dir / f"rank{rank}.json").read_text()) for rank in (0, 1)] == [[zero, 2]] * 2
    return proc


# The `model_config` of the few-step pretraining runs that tests start from.
TINY_MODEL = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "tie_word_embeddings": True,
}


@pytest.fixture(scope="session")
def chain(tmp_path_factory) -> dict[str, Path]:
    """pretrain → SFT (LoRA and full) → reward, a few steps each, on a tiny corpus."""
    root = tmp_path_factory.mktemp("chain")
    corpus, instructions, pairs = root / "corpus.txt", root / "instructions.jsonl", root / "pairs.jsonl"
    corpus.write_text(TEXT * 40)
    sentences = [s.strip() for s in TEXT.split(".") if s.strip()]
    instructions.write_text(
        "".join(json.dumps({"instruction": f"Repeat: {s}", "output": s}) + "\n" for s in sentences * 8)
    )
    pairs.write_text(
        "".join(json.dumps({"prompt": f"Say {s}", "chosen": s, "rejected": "No."}) + "\n" for s in sentences * 8)
    )
    runs = {name: root / name for name in ("pretrain", "sft", "lora", "reward")}
    pretraining = dict(vocab_size=300, block_size=32, eval_blocks=4, model_config=TINY_MODEL, **SMOKE_TRAINING)
    run_pretrain(PretrainStageConfig(train_files=[str(corpus)], output_dir=str(runs["pretrain"]), **pretraining))
    tuning = dict(eval_examples=4, max_length=64, **SMOKE_TRAINING)
    sft = dict(model_name_or_path=str(runs["pretrain"]), train_files=[str(instructions)], **tuning)
    run_sft(SFTStageConfig(output_dir=str(runs["sft"]), **sft))
    run_sft(SFTStageConfig(output_dir=str(runs["lora"]), use_peft=True, **sft))
    reward = dict(model_name_or_path=str(runs["sft"]), train_files=[str(pairs)], **tuning)
    run_reward(RewardStageConfig(output_dir=str(runs["reward"]), **reward))
    return runs


def smoke_pipeline(output_dir):
    """`hf-instruct pipeline` on the smoke setup, as a user runs it."""
    config = ["--config", "recipes/smoke/pipeline.yaml", "--output_dir", str(output_dir)]
    return [sys.executable, "-m", "hf_instruct.cli", "pipeline", *config]


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """The smoke pipeline killed after SFT finished, then finished by the same command: its folder and the re-run."""
    output_dir = tmp_path_factory.mktemp("pipeline") / "smoke"
    command = smoke_pipeline(output_dir)
    first = subprocess.Popen(command, cwd=REPO, env=CLI_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (output_dir / "reward").exists():  # the pipeline moved on: SFT finished
        assert first.poll() is None and time.time() < deadline, "the first run ended before SFT finished"
        time.sleep(0.1)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert not (output_dir / "report.md").exists()
    second = subprocess.run(command, cwd=REPO, env=CLI_ENV, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-4000:]
    return output_dir, second.stderr + second.stdout
