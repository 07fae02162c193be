"""Keep the memory that a training step frees inside the process, on Linux with glibc.

Every CPU training step frees and allocates the same large buffers (activations, logits, gradients); glibc hands
large freed blocks back to the system and the next step faults them in again, page by page. With glibc's mmap
threshold at its maximum and a high trim threshold the blocks stay in the process. It is on by default
(`keep_freed_memory`, applied when a stage starts, never on import) because every stage trains faster with it
(benchmarks/README.md, "Freed memory kept in the process"); the cost is that the process keeps its peak memory until
it ends. What was done goes into the run record.
"""

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's cap on 64-bit systems: blocks above it are always mapped
TRIM_THRESHOLD = 1024 * 1024 * 1024
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES", "LD_PRELOAD")


def keep_freed_memory() -> str:
    """Raise glibc's mmap and trim thresholds for this process; returns what was done, for the run record. Leaves
    the allocator alone off Linux/glibc and where the user chose one (the environment variables that set glibc's
    thresholds, or a preloaded allocator such as jemalloc)."""
    if chosen := [name for name in USER_SETTINGS if os.environ.get(name)]:
        return f"left as the environment sets it ({', '.join(chosen)})"
    if not sys.platform.startswith("linux"):
        return f"left as it is (not Linux: {sys.platform})"
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return "left as it is (no glibc)"
    if not (mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        return "left as it is (glibc refused the thresholds)"
    return "glibc keeps freed memory in the process (mmap threshold 32 MiB, trim threshold 1 GiB)"
