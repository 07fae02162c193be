"""Whether to train in bf16 by default: only where it is fast, never merely because it is supported.

On a GPU with bf16 support, yes. On a CPU no rule of thumb holds: with AVX2 only every bf16 matmul is emulated (many
times slower), with AMX or AVX-512 BF16 autocast can train faster while a plain small bf16 matmul still runs slower
than fp32 (benchmarks/README.md, "bf16 on CPUs"), and `torch` calls bf16 "supported" on all of them. So a CPU decides
by a short probe at the model's own shapes: a forward and backward pass of a model of the same width, depth and
vocabulary on a batch of the size it trains on, timed in fp32 and under bf16 autocast (well under a second for the
default model); bf16 when it trains at least `PROBE_SPEEDUP` times as many tokens per second. The probe runs once per
process and shape set; the choice, its reason and the measured speeds go into the run record. `HF_INSTRUCT_BF16=1` (or
`0`) overrides the decision for a whole process tree, e.g. to run the test suite as it runs on the other kind of CPU.

`python -m hf_instruct.precision` prints the probe at the default model's shapes: the figure to record as a pipeline's
`estimates.reference_speed` wherever its estimates are measured (`hf_instruct.pipeline` scales them by it).
"""

import functools
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace

import torch
from transformers.utils import logging

from .models.instructgpt import InstructGPTConfig, InstructGPTForCausalLM

logger = logging.get_logger(__name__)

PROBE_SPEEDUP = 1.2  # bf16 must beat fp32 by this factor in the probe to be worth its rounding
PROBE_SECONDS = 0.2  # timed per precision (the two alternate), after a warm-up pass of each
PROBE_PASSES = 5  # at most, so that a tiny model's probe takes milliseconds
PASS_FLOP = 10e9  # a probe pass at most (the default model's batch: 8e9); a bigger model's probe trains fewer rows
GIVE_UP = 10  # a bf16 warm-up pass this many times slower than an fp32 pass ends the probe (emulated bf16: ~12x)
FORCE_VARIABLE = "HF_INSTRUCT_BF16"
FORCE_VALUES = {"1": True, "true": True, "on": True, "0": False, "false": False, "off": False}
SET_IN_CONFIG = "set in the config"  # the reason of a bf16 the config chose (not the machine)
CHOSEN_AT_START = "chosen when the run starts"  # the reason of a bf16 left to the machine, until the run starts


@dataclass(frozen=True)
class PrecisionChoice:
    bf16: bool
    reason: str


@dataclass(frozen=True)
class ProbeShapes:
    """The model and batch the probe trains; the defaults are the default pipeline's model (0.66 M parameters) and
    batch (16 x 128 tokens), the shapes `estimates.reference_speed` is measured at."""

    hidden_size: int = 128
    intermediate_size: int = 384
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    vocab_size: int = 2048
    batch_size: int = 16
    sequence_length: int = 128

    @classmethod
    def of(cls, model_config: Mapping, batch_size: int, sequence_length: int) -> "ProbeShapes":
        """The shapes of a model config (a dict of Llama-style fields, e.g. a config.json; a field it lacks keeps the
        default model's) training on `batch_size` rows of `sequence_length` tokens."""
        model = {f.name: model_config[f.name] for f in fields(cls) if model_config.get(f.name) is not None}
        if "num_attention_heads" in model and "num_key_value_heads" not in model:
            model["num_key_value_heads"] = model["num_attention_heads"]
        return cls(**{**model, "batch_size": batch_size, "sequence_length": sequence_length})

    def flop_per_token(self, layers: int | None = None) -> float:
        """Forward and backward FLOP per token of the model's matmuls (6 per weight) in `layers` of its layers (all by
        default) and the LM head."""
        head_dim = self.hidden_size // self.num_attention_heads
        attention = 2 * self.hidden_size * (self.hidden_size + self.num_key_value_heads * head_dim)
        layer = attention + 3 * self.hidden_size * self.intermediate_size
        return 6 * (
            (self.num_hidden_layers if layers is None else layers) * layer + self.vocab_size * self.hidden_size
        )

    def within_budget(self) -> "ProbeShapes":
        """These shapes with as many rows as a pass of `PASS_FLOP` holds, and where not even one row fits, one row of
        at most 128 tokens through as many layers as fit (at least one): a large model's probe stays short, and its
        weight matrices, whose shapes decide bf16's speed, keep their shapes."""
        rows = int(PASS_FLOP / (self.flop_per_token() * self.sequence_length))
        if rows >= 1:
            return replace(self, batch_size=min(rows, self.batch_size))
        one_row = replace(self, batch_size=1, sequence_length=min(self.sequence_length, 128))
        layers = range(self.num_hidden_layers, 0, -1)
        fits = next((n for n in layers if one_row.flop_per_token(n) * one_row.sequence_length <= PASS_FLOP), 1)
        return replace(one_row, num_hidden_layers=fits)

    def __str__(self) -> str:
        return (
            f"hidden {self.hidden_size}, intermediate {self.intermediate_size}, {self.num_hidden_layers} layers, "
            f"vocabulary {self.vocab_size}, {self.batch_size} x {self.sequence_length} tokens"
        )


@dataclass(frozen=True)
class ProbeResult:
    """Training tokens per second (forward and backward) in fp32 and under bf16 autocast, and the probe's wall time."""

    fp32: float
    bf16: float
    seconds: float

    def speed(self, bf16: bool) -> float:
        return self.bf16 if bf16 else self.fp32


def decide_bf16(*, cuda: bool, cuda_bf16: bool = False, probe: ProbeResult | None = None) -> PrecisionChoice:
    """The decision alone, from what was found out: a GPU and its bf16 support, else the CPU probe's speeds."""
    if cuda:
        return PrecisionChoice(cuda_bf16, "GPU with bf16 support" if cuda_bf16 else "GPU without bf16 support")
    if probe is None:
        return PrecisionChoice(False, "CPU, not probed")
    ratio = probe.bf16 / probe.fp32
    faster = ratio >= PROBE_SPEEDUP
    return PrecisionChoice(
        faster,
        f"CPU; a {probe.seconds:.1f} s training probe found bf16 {'' if faster else 'not '}faster: "
        f"{probe.bf16 / 1e3:.1f} k tokens/s against {probe.fp32 / 1e3:.1f} k in fp32 ({ratio:.2f}x, "
        f"bf16 needs {PROBE_SPEEDUP}x)",
    )


def probe_model(shapes: ProbeShapes) -> tuple[InstructGPTForCausalLM, torch.Tensor]:
    """A model of `shapes` (fresh weights) and a batch of random tokens for it; the global RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = InstructGPTForCausalLM(
            InstructGPTConfig(
                hidden_size=shapes.hidden_size,
                intermediate_size=shapes.intermediate_size,
                num_hidden_layers=shapes.num_hidden_layers,
                num_attention_heads=shapes.num_attention_heads,
                num_key_value_heads=shapes.num_key_value_heads,
                vocab_size=shapes.vocab_size,
                max_position_embeddings=max(1024, shapes.sequence_length),
                use_cache=False,
            )
        )
        return model, torch.randint(shapes.vocab_size, (shapes.batch_size, shapes.sequence_length))


def training_pass(model: torch.nn.Module, batch: torch.Tensor) -> Callable[[bool], float]:
    """A function that runs one forward and backward pass of `model` on `batch` on the CPU, in fp32 or under bf16
    autocast (its argument), and returns the seconds it took."""

    def one_pass(bf16: bool) -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    return one_pass


def probe_speeds(shapes: ProbeShapes, run_pass: Callable[[bool], float] | None = None) -> ProbeResult:
    """Training tokens/s in fp32 and in bf16 of a model of `shapes` (`ProbeShapes.within_budget` of them) on a batch
    of random tokens: after a warm-up pass of each (the first pass picks and builds its kernels), bf16 and fp32 passes
    alternate, so that a change of load slows both alike, for about `PROBE_SECONDS` each (at most `PROBE_PASSES`),
    and each precision's fastest pass counts (a stall only slows a pass down). A bf16 warm-up pass `GIVE_UP` times as
    slow as an fp32 pass ends the probe (emulated bf16). `run_pass` (a `training_pass`) is built here unless given."""
    start = time.perf_counter()
    probed = shapes.within_budget()
    run_pass = run_pass or training_pass(*probe_model(probed))
    run_pass(False)
    times = {False: [run_pass(False)], True: []}
    warm_up = run_pass(True)
    emulated = warm_up > GIVE_UP * times[False][0]  # then measured by its warm-up pass alone
    times[True] += [warm_up] if emulated else []
    timed = time.perf_counter()
    while not emulated and (
        not times[True] or (time.perf_counter() - timed < 2 * PROBE_SECONDS and len(times[True]) < PROBE_PASSES)
    ):
        for bf16 in (True, False):
            times[bf16].append(run_pass(bf16))
    tokens = probed.batch_size * probed.sequence_length
    return ProbeResult(tokens / min(times[False]), tokens / min(times[True]), time.perf_counter() - start)


@functools.cache
def probe(shapes: ProbeShapes = ProbeShapes()) -> ProbeResult:
    """The probe at `shapes`, run once per process."""
    return probe_speeds(shapes)


def forced_bf16() -> PrecisionChoice | None:
    """The choice `HF_INSTRUCT_BF16` forces, if it is set."""
    value = os.environ.get(FORCE_VARIABLE, "").strip().lower()
    if not value:
        return None
    if value not in FORCE_VALUES:
        raise ValueError(f"{FORCE_VARIABLE}={value!r} is not valid: expected 1 or 0 (true/false, on/off), or unset.")
    return PrecisionChoice(FORCE_VALUES[value], f"forced {'on' if FORCE_VALUES[value] else 'off'} by {FORCE_VARIABLE}")


@functools.cache
def default_bf16(shapes: ProbeShapes = ProbeShapes()) -> PrecisionChoice:
    """The bf16 default for a model of `shapes` on this machine (once per process and shape set, said in one log
    line): `HF_INSTRUCT_BF16` if set; else on a GPU its bf16 support; else the CPU probe at `shapes`."""
    if (forced := forced_bf16()) is not None:
        return forced
    if torch.cuda.is_available():
        return decide_bf16(cuda=True, cuda_bf16=torch.cuda.is_bf16_supported())
    choice = decide_bf16(cuda=False, probe=probe(shapes))
    probed, fewer = shapes.within_budget(), ""
    if probed != shapes:
        fewer = (
            f" (probed on {probed.batch_size} x {probed.sequence_length} tokens, {probed.num_hidden_layers} layers)"
        )
    logger.warning(f"bf16 {'on' if choice.bf16 else 'off'} at {shapes}{fewer}: {choice.reason}")
    return choice


if __name__ == "__main__":
    result = probe()
    print(f"probe at {ProbeShapes()}: {decide_bf16(cuda=False, probe=result).reason}")
