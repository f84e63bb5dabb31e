"""Timings that are compared as ratios: each round runs every task once, in a fresh random order.

Pairing the tasks by round puts each ratio under the same machine load, so the median of the per-round
ratios (with :func:`~actmatch.evaluation.statistics.bootstrap_ci` over rounds) compares them, where two
medians of separate runs would also compare the load (``experiments/evaluation/amortized_latency.py``,
``experiments/evaluation/read_sizes.py``); :func:`ratio_table` prints them. Torch-free.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Hashable

from actmatch.evaluation.statistics import bootstrap_ci

__all__ = ["interleaved_seconds", "ratio_table"]


def interleaved_seconds(
    tasks: dict[Hashable, Callable[[], object]],
    rounds: int,
    warmup: int = 3,
    sync: Callable[[], object] = lambda: None,
    rng: random.Random | None = None,
) -> dict[Hashable, list[float]]:
    """Seconds of each task in each of ``rounds`` rounds, after ``warmup`` untimed rounds in the given order.
    Every round calls each task once, in an order shuffled by ``rng`` (default: the ``random`` module);
    ``sync`` runs before and after each timed call (e.g. ``torch.cuda.synchronize``)."""
    shuffle = (rng or random).shuffle
    for _ in range(warmup):
        for task in tasks.values():
            task()
    times: dict[Hashable, list[float]] = {name: [] for name in tasks}
    order = list(tasks)
    for _ in range(rounds):
        shuffle(order)
        for name in order:
            sync()
            start = time.perf_counter()
            tasks[name]()
            sync()
            times[name].append(time.perf_counter() - start)
    return times


def ratio_table(times: dict[Hashable, list[float]], base: dict[Hashable, Hashable], width: int = 22) -> list[str]:
    """Lines of a table, one per task of :func:`interleaved_seconds`: its median milliseconds, the median of its
    per-round ratios t_r / b_r to the task ``base[task]`` of the same round, and their bootstrap 95 % interval
    (5000 resamples of the rounds)."""
    lines = [f"{'':<{width}} {'median ms':>10} {'× forward':>10} {'95 % interval':>16}"]
    for name, seconds in times.items():
        ratios = [t / b for t, b in zip(seconds, times[base[name]])]
        low, high = bootstrap_ci(ratios, "median", n_boot=5000)
        ms, interval = 1000 * statistics.median(seconds), f"[{low:.2f}, {high:.2f}]"
        lines.append(f"{name!s:<{width}} {ms:>10.1f} {statistics.median(ratios):>10.2f} {interval:>16}")
    return lines
