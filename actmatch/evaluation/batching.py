"""Batched classification of perturbed copies: lazy jobs packed into fixed-size forwards.

Every metric builds its perturbed copies as :class:`Job` s (inputs made on demand) and hands
them to :func:`classify`, which packs inputs across jobs into forwards of ``chunk`` images and
records in a :class:`PassCounter` how many images were classified and how long it took.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

__all__ = ["Job", "PassCounter", "classify"]


@dataclass
class Job:
    """``n`` classifier inputs built on demand: ``make(lo, hi)`` returns inputs lo … hi − 1.

    ``make`` returns one tensor (hi − lo, 3, H, W), or a tuple of tensors with that leading size
    (images and masks for a :class:`Masker`); the forward function gets them as arguments. Inputs
    are built only when their chunk is classified, so no job holds all its copies in memory.
    """

    n: int
    make: Callable[[int, int], torch.Tensor | tuple[torch.Tensor, ...]]


@dataclass
class PassCounter:
    """Images classified by the metrics, forward calls, and the time spent inside them.

    The *floor* is what classifying those images costs when nothing else is done:
    floor = images × t, with t the per-image time of a full chunk (the median over the full-chunk
    forwards timed; over all forwards when none was full).
    """

    images: int = 0
    forwards: int = 0
    seconds: float = 0.0
    full_chunk_seconds_per_image: list[float] = field(default_factory=list)

    def add(self, images: int, seconds: float, full: bool) -> None:
        """Record one forward of ``images`` inputs that took ``seconds``."""
        self.images += images
        self.forwards += 1
        self.seconds += seconds
        if full:
            self.full_chunk_seconds_per_image.append(seconds / max(images, 1))

    def merge(self, other: PassCounter) -> None:
        """Add another counter's records to this one (totals over images)."""
        self.images += other.images
        self.forwards += other.forwards
        self.seconds += other.seconds
        self.full_chunk_seconds_per_image += other.full_chunk_seconds_per_image

    @property
    def seconds_per_image(self) -> float:
        """t: per-image time of one batched forward of a full chunk."""
        if self.full_chunk_seconds_per_image:
            return statistics.median(self.full_chunk_seconds_per_image)
        return self.seconds / self.images if self.images else 0.0

    @property
    def floor(self) -> float:
        """images × t: seconds the classifier alone needs for these images."""
        return self.images * self.seconds_per_image


def classify(
    forward: Callable[..., torch.Tensor], jobs: list[Job], chunk: int = 32, counter: PassCounter | None = None
) -> list[torch.Tensor]:
    """Logits of every job's inputs, packed across jobs into forwards of ``chunk`` inputs.

    Job boundaries do not break chunks: jobs of 5, 3 and 9 inputs with ``chunk=4`` take five
    forwards (4, 4, 4, 4, 1). Returns one (n_j, K) tensor per job, in order.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    results: list[list[torch.Tensor]] = [[] for _ in jobs]
    pending: list[tuple[int, int, int]] = []  # (job, lo, hi)
    width = 0

    def flush(full: bool) -> int:
        parts = [jobs[j].make(lo, hi) for j, lo, hi in pending]
        inputs = [torch.cat(group) for group in zip(*(p if isinstance(p, tuple) else (p,) for p in parts))]
        start = time.perf_counter()
        logits = forward(*inputs)  # (n, K)
        if logits.is_cuda:
            torch.cuda.synchronize(logits.device)
        if counter is not None:
            counter.add(len(inputs[0]), time.perf_counter() - start, full)
        for (j, _, _), part in zip(pending, logits.split([hi - lo for _, lo, hi in pending])):
            results[j].append(part)
        pending.clear()
        return logits.shape[-1]

    classes = 0
    for j, job in enumerate(jobs):
        lo = 0
        while lo < job.n:
            hi = min(job.n, lo + chunk - width)
            pending.append((j, lo, hi))
            width, lo = width + hi - lo, hi
            if width == chunk:
                classes, width = flush(True), 0
    if pending:
        classes = flush(False)
    return [torch.cat(parts) if parts else torch.empty(0, classes) for parts in results]
