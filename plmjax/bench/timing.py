"""Timing and memory helpers shared by the JAX and PyTorch workers (no framework imports)."""
from __future__ import annotations

import resource
import statistics
import time
from typing import Callable, Sequence


def peak_rss_mb() -> float:
    """This process's peak resident set size so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


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
