"""Timing and memory helpers shared by the JAX and PyTorch workers (no framework imports)."""
from __future__ import annotations

import resource
import statistics
import time
from typing import Callable, Sequence


def peak_rss_mb() -> float:
    """This process's peak resident set size so far: Linux's VmHWM, the high-water mark of this process's own
    memory. (getrusage's ru_maxrss is no good in a worker: exec keeps the parent's resident size at fork as a
    floor, so every worker smaller than the bench process reported the parent's size.)"""
    try:
        with open('/proc/self/status', encoding='ascii') as f:
            for line in f:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux, bytes on macOS


def current_rss_mb() -> float:
    import psutil
    return psutil.Process().memory_info().rss / 2 ** 20


def timed(fn: Callable[[], object]) -> float:
    """Wall time of `fn()` in seconds (fn must block until its work is done)."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def repeat_rates(run_steps: Callable[[int], None], steps: int, repeats: int, units_per_step: float) -> list[float]:
    """`repeats` measurements of units/s, each timing `run_steps(steps)` (which blocks until done)."""
    return [steps * units_per_step / timed(lambda: run_steps(steps)) for _ in range(repeats)]


def summary(values: Sequence[float]) -> dict[str, float]:
    return {'median': statistics.median(values), 'min': min(values), 'max': max(values)}
