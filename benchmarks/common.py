"""Measuring helpers shared by the benchmarks: peak resident memory, best/median summaries, markdown tables."""

import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from hf_instruct.utils import markdown_table


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_growth_mib(work: Callable[[], object]) -> float:
    """Peak resident-memory growth while `work()` runs.

    CPU tensors have no allocator statistics, so a thread samples the resident set every millisecond.
    """
    base, peak, done = rss_mib(), [0.0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_mib())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        work()
    finally:
        done.set()
        sampler.join()
    return max(peak[0], rss_mib()) - base


def run_memory_probe(script: str, *args: str) -> float:
    """Runs `script --memory-probe *args` in a fresh process (so runs never share an allocator); returns its MiB."""
    out = subprocess.run(
        [sys.executable, os.path.abspath(script), "--memory-probe", *args],
        env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"},  # return freed blocks to the OS at once
        check=True,
        capture_output=True,
        text=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def summarise(a: list[float], b: list[float], best: Callable = max) -> dict:
    """Best sample (largest rate, or smallest memory with `best=min`), median, and the ratio of medians a / b."""
    return {
        "a_best": best(a),
        "a_median": statistics.median(a),
        "b_best": best(b),
        "b_median": statistics.median(b),
        "ratio": statistics.median(a) / statistics.median(b),
    }


def print_table(rows: list[tuple[str, dict]], a_name: str, b_name: str) -> None:
    """The Markdown table of `summarise` results, one row per measure."""

    def number(x: float) -> str:
        return f"{x:.0f}" if abs(x) >= 10 else f"{x:.2f}"

    def best_median(summary: dict, side: str) -> str:
        return f"{number(summary[f'{side}_best'])} / {number(summary[f'{side}_median'])}"

    header = ["measure", f"{a_name} (best / median)", f"{b_name} (best / median)", "ratio of medians"]
    cells = [[label, best_median(r, "a"), best_median(r, "b"), f"{r['ratio']:.2f}"] for label, r in rows]
    print(*markdown_table(header, cells), sep="\n")
