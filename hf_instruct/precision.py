"""Whether to train in bf16 by default: only where it is fast, never merely because it is supported.

On a GPU with bf16 support, yes. On a CPU it depends on the processor: with AMX or AVX-512 BF16 instructions a bf16
matmul runs several times faster than fp32 (measured 865 against 215 GFLOP/s on 2 Intel cores), but on a CPU with
AVX2 only, every bf16 matmul is emulated and runs 50-80x *slower* (1-2 against 85 GFLOP/s on 2 AMD EPYC cores; tiny
pretraining took 314 s instead of 26 s). `torch` reports bf16 as "supported" on both. So a CPU gets bf16 when it has
the instructions, else when a short matmul probe shows bf16 clearly faster, else fp32; the choice and its reason go
into the run record. `HF_INSTRUCT_BF16=1` (or `0`) overrides the decision for a whole process tree, e.g. to run the
test suite as it runs on the other kind of CPU.
"""

import functools
import os
import time
from dataclasses import dataclass

import torch

PROBE_SPEEDUP = 1.2  # bf16 must beat fp32 by this factor in the probe to be worth its rounding
FORCE_VARIABLE = "HF_INSTRUCT_BF16"
FORCE_VALUES = {"1": True, "true": True, "on": True, "0": False, "false": False, "off": False}


@dataclass(frozen=True)
class PrecisionChoice:
    bf16: bool
    reason: str


def decide_bf16(
    *,
    cuda: bool,
    cuda_bf16: bool = False,
    cpu_capabilities: dict | None = None,
    probe: tuple[float, float] | None = None,
) -> PrecisionChoice:
    """The decision alone, from what was found out: a GPU and its bf16 support, the CPU's instruction sets
    (`torch.cpu.get_capabilities()`), and the probe's (fp32, bf16) matmul throughputs in GFLOP/s."""
    if cuda:
        return PrecisionChoice(cuda_bf16, "GPU with bf16 support" if cuda_bf16 else "GPU without bf16 support")
    capabilities = cpu_capabilities or {}
    fast = [name for name in ("amx_bf16", "avx512_bf16") if capabilities.get(name)]
    if fast:
        return PrecisionChoice(True, f"CPU with {' and '.join(fast)} instructions")
    if probe is None:
        return PrecisionChoice(False, "CPU without AMX or AVX-512 BF16 instructions, not probed")
    fp32, bf16 = probe
    verdict = "faster" if bf16 >= PROBE_SPEEDUP * fp32 else "not faster"
    return PrecisionChoice(
        bf16 >= PROBE_SPEEDUP * fp32,
        f"CPU without AMX or AVX-512 BF16; a matmul probe found bf16 {verdict} ({bf16:.0f} against {fp32:.0f} "
        "GFLOP/s in fp32)",
    )


def matmul_gflops(dtype: torch.dtype, size: int = 256, seconds: float = 0.25) -> float:
    """Throughput of (size x size) matmuls in `dtype` on the CPU, run for about `seconds`."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b  # warm-up: the first call may pick and load a kernel
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        a @ b
        calls += 1
    return 2 * size**3 * calls / elapsed / 1e9


def forced_bf16() -> PrecisionChoice | None:
    """The choice `HF_INSTRUCT_BF16` forces, if it is set."""
    value = os.environ.get(FORCE_VARIABLE, "").strip().lower()
    if not value:
        return None
    if value not in FORCE_VALUES:
        raise ValueError(f"{FORCE_VARIABLE}={value!r} is not valid: expected 1 or 0 (true/false, on/off), or unset.")
    return PrecisionChoice(FORCE_VALUES[value], f"forced {'on' if FORCE_VALUES[value] else 'off'} by {FORCE_VARIABLE}")


@functools.cache
def default_bf16() -> PrecisionChoice:
    """The bf16 default for this machine (once per process): `HF_INSTRUCT_BF16` if set; else on a CPU without bf16
    instructions, decided by a half-second probe."""
    if (forced := forced_bf16()) is not None:
        return forced
    if torch.cuda.is_available():
        return decide_bf16(cuda=True, cuda_bf16=torch.cuda.is_bf16_supported())
    capabilities = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    choice = decide_bf16(cuda=False, cpu_capabilities=capabilities)
    if choice.bf16:
        return choice
    return decide_bf16(
        cuda=False, cpu_capabilities=capabilities, probe=(matmul_gflops(torch.float32), matmul_gflops(torch.bfloat16))
    )
