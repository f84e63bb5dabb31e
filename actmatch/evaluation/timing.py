"""Timings that are compared as ratios: each round runs every task once, in a fresh random order.

Pairing the tasks by round puts each ratio under the same machine load, so the median of the per-round
ratios (with :func:`~actmatch.evaluation.statistics.bootstrap_ci` over rounds) compares them, where two
medians of separate runs would also compare the load (``experiments/evaluation/amortized_latency.py``,
``experiments/evaluation/read_sizes.py``). Torch-free.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Hashable

__all__ = ["interleaved_seconds"]


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
