"""The one timing harness: interleaved rounds, robust statistics, and what the timings ran on.

Latency on shared machines drifts by tens of percent within minutes, so nothing is timed alone:
every runner is timed in every round, in an order that alternates direction each round and rotates
every other round (two runners swap places; three go through all six orders), so that drift
favours no runner. Only ratios within one run are meaningful.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import re
import statistics
import time
from pathlib import Path
from typing import Callable, Hashable

import timm
import torch

from ..export import RUNTIME_PACKAGES
from ..utils import package_versions

__all__ = ["interleaved", "summarize", "machine_info", "torch_threads"]


def interleaved(runners: list[tuple[Hashable, Callable[[], object]]], *, warmup: int = 10, rounds: int = 10,
                iters: int = 10, on_round: Callable[[], None] | None = None) -> dict[Hashable, list[float]]:
    """Seconds of every call: ``warmup`` untimed calls each, then ``rounds`` rounds of ``iters`` calls
    per runner; ``on_round`` is called after each runner's share of a round (progress)."""
    for _, fn in runners:
        for _ in range(warmup):
            fn()
    samples = {key: [] for key, _ in runners}
    for r in range(rounds):
        shift = (r // 2) % max(len(runners), 1)
        order = runners[shift:] + runners[:shift]
        if r % 2:
            order = order[::-1]  # rotate every other round, reverse in between: no runner always first
        for key, fn in order:
            for _ in range(iters):
                start = time.perf_counter()
                fn()
                samples[key].append(time.perf_counter() - start)
            if on_round is not None:
                on_round()
    return samples


def summarize(samples: list[float]) -> dict:
    """Median, p10/p90, IQR, mean, std and spread (p90-p10 over the median) in milliseconds."""
    ms = sorted(s * 1e3 for s in samples)
    # 5% steps: q[1]=p10, q[4]=p25, q[14]=p75, q[17]=p90
    q = statistics.quantiles(ms, n=20, method="inclusive") if len(ms) > 1 else ms * 19
    median = statistics.median(ms)
    return {"median_ms": median, "p10_ms": q[1], "p90_ms": q[17], "iqr_ms": q[14] - q[4],
            "mean_ms": statistics.fmean(ms), "std_ms": statistics.pstdev(ms),
            "spread_pct": 100 * (q[17] - q[1]) / median, "n": len(ms)}


@contextlib.contextmanager
def torch_threads(threads: int):
    """PyTorch's intra-op thread count for the block (restored after)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def machine_info() -> dict:
    """CPU, core count, Python, platform, date, GPU and the versions of every runtime."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        match = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        cpu = match.group(1).strip() if match else cpu
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "versions": {**package_versions(RUNTIME_PACKAGES), "timm": timm.__version__}}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info
