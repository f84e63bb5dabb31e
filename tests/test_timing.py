"""actmatch.evaluation.timing: interleaved rounds, counted by hand."""

from __future__ import annotations

import random

from actmatch.evaluation.timing import interleaved_seconds, ratio_table


def test_each_round_calls_every_task_once_after_the_warmup_in_the_given_order():
    """3 tasks, 2 warm-up rounds, 4 timed rounds: 6 untimed calls in the given order, then 4 blocks of 3 calls that
    each hold every task once; 4 seconds per task; sync around each of the 12 timed calls (24 calls)."""
    calls: list[str] = []
    syncs: list[int] = []
    tasks = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    times = interleaved_seconds(tasks, rounds=4, warmup=2, sync=lambda: syncs.append(1), rng=random.Random(0))
    assert calls[:6] == ["a", "b", "c", "a", "b", "c"]
    timed = calls[6:]
    assert len(timed) == 12 and all(sorted(timed[i : i + 3]) == ["a", "b", "c"] for i in range(0, 12, 3))
    assert {name: len(seconds) for name, seconds in times.items()} == {"a": 4, "b": 4, "c": 4}
    assert all(s >= 0 for seconds in times.values() for s in seconds)
    assert len(syncs) == 24


def test_the_order_is_shuffled_between_rounds():
    """With 6 tasks and 20 rounds, a fixed order would repeat 20 times; the seeded shuffle gives several orders."""
    calls: list[int] = []
    tasks = {i: (lambda i=i: calls.append(i)) for i in range(6)}
    interleaved_seconds(tasks, rounds=20, warmup=0, rng=random.Random(1))
    orders = {tuple(calls[i : i + 6]) for i in range(0, 120, 6)}
    assert len(orders) > 1


def test_ratio_table_reads_each_task_against_its_base_round_by_round():
    """forward 1, 2, 4 s and pass 2, 6, 4 s: per-round ratios 2, 3, 1 (median 2, every resample's median within
    [1, 3]), median 4000 ms; forward against itself 1.00 [1.00, 1.00] at 2000 ms."""
    lines = ratio_table({"forward": [1.0, 2.0, 4.0], "pass": [2.0, 6.0, 4.0]}, {"forward": "forward", "pass": "forward"}, width=8)
    assert lines[0].split() == ["median", "ms", "×", "forward", "95", "%", "interval"]
    assert lines[1].split() == ["forward", "2000.0", "1.00", "[1.00,", "1.00]"]
    name, ms, ratio, low, high = lines[2].split()
    assert (name, ms, ratio) == ("pass", "4000.0", "2.00")
    assert 1.0 <= float(low.strip("[,")) <= 2.0 <= float(high.strip("]")) <= 3.0
