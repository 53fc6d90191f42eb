"""Wall-clock time as dise measures it: the device synchronised before and after (a GPU runs
asynchronously), a warm-up round left out, and runs that are compared alternating within each round,
so that all of them see the same machine load."""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def sync(device: torch.device) -> None:
    """Wait for ``device`` to finish its queued work (nothing to wait for on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds(fn: Callable[[], object], device: torch.device) -> float:
    """Wall-clock seconds of one call of ``fn``, the device's queued work included."""
    sync(device)
    began = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - began


def alternating_medians(runners: dict[str, Callable[[], object]], repeats: int,
                        device: torch.device) -> dict[str, float]:
    """Median seconds of each runner over ``repeats`` rounds that call them in turn, after one
    warm-up round."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    for r in range(repeats + 1):
        for name, fn in runners.items():
            took = seconds(fn, device)
            if r:
                times[name].append(took)
    return {name: statistics.median(v) for name, v in times.items()}
