"""Metrics for explanations: plain per-image functions, and torchmetrics ``Metric``s over them.

Conventions: images (B, 3, H, W) in [0, 1]; binary masks (B, 1, H, W), 1 = kept; saliency maps
(B, 1, H, W), higher = more relevant; ``target`` (B,) class indices (default: the top-1 class
of the original image). A *masker* turns (images, masks) into logits: :class:`PixelFill`
(removed pixels take the model's mean colour, zero in normalized space) or
:class:`DeactivationMasker` (ConvAD: the occluded region is switched off inside the network).

Metrics (each a function returning one value per image, and a distributed-safe ``Metric``
accumulating its mean):

* mask area            |m| / (H·W)
* label kept           argmax f(e) = y
* confidence delta     p_f(e)(y) − p_f(x)(y)
* insertion AUC        RISE protocol (Petsiuk et al. 2018): start from a blurred copy of x and
                       insert pixels in decreasing saliency; deletion AUC: start from x and
                       replace pixels in decreasing saliency by the mean colour. Curves have
                       ``steps`` + 1 points (default 50 steps, i.e. 2 % of the pixels per step),
                       AUC by the trapezoid rule over the fraction of pixels, p = softmax prob.
* robustness           the explanation m ⊙ x planted on n random backgrounds (solid colours,
                       noise, other images): the fraction that keeps the label
* smallest sufficient  smallest fraction k such that the top-k of the saliency map keeps the
  area                 label: grid scan, then bisection below the first kept grid point
* pointing game        the saliency maximum within 15 px of the ground truth (TorchRay)
* mask precision       |m ∧ g| / |m|

Every perturbed copy is built lazily (:class:`Job`) and classified in chunks (:func:`classify`),
across steps, backgrounds and images; :func:`score_maps` scores many maps of one image (the
benchmark's methods) in one such pass and counts the images classified (:class:`PassCounter`).
docs/benchmark.md ("Protocol") lists where these definitions deviate from the published ones.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import Metric

from actmatch.explainers.backgrounds import BackgroundSampler, gaussian_blur, make_fill
from actmatch.explainers.convad import deactivate

__all__ = [
    "Job",
    "PassCounter",
    "classify",
    "score_maps",
    "SCORE_KEYS",
    "FIXED_AREAS",
    "Masker",
    "PixelFill",
    "DeactivationMasker",
    "rank_pixels",
    "top_fraction_mask",
    "border_band",
    "cycled_backgrounds",
    "mask_area",
    "label_kept",
    "confidence_delta",
    "perturbation_curve",
    "insertion_auc",
    "deletion_auc",
    "robustness",
    "smallest_sufficient_area",
    "pointing_game",
    "mask_precision",
    "MeanMetric",
    "MaskArea",
    "LabelKept",
    "ConfidenceDelta",
    "InsertionAUC",
    "DeletionAUC",
    "Robustness",
    "SmallestSufficientArea",
    "PointingGame",
    "MaskPrecision",
    "SUFFICIENCY_GRID",
]

#: fractions scanned by :func:`smallest_sufficient_area` before bisection
SUFFICIENCY_GRID = (0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


# ---------------------------------------------------------------------------------- maskers
class Masker:
    """Base class: logits (N, K) of ``images`` (N, 3, H, W) with ``masks`` (N, 1, H, W) applied."""

    def __init__(self, classifier: nn.Module) -> None:
        self.classifier = classifier

    def __call__(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class PixelFill(Masker):
    """f(m ⊙ x + (1 − m) ⊙ fill); ``fill`` as in :func:`make_fill` (default: mean colour)."""

    def __init__(self, classifier: nn.Module, fill: str = "mean") -> None:
        super().__init__(classifier)
        self.fill = fill

    def __call__(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        fill = make_fill(images, self.fill, self.classifier.data_config["mean"])
        return self.classifier(masks * images + (1 - masks) * fill)


class DeactivationMasker(Masker):
    """ConvAD: the classifier with the region where m = 0 deactivated (no pixel fill)."""

    def __init__(self, classifier: nn.Module, tau: float = 0.5) -> None:
        super().__init__(classifier)
        self.tau = tau

    def __call__(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return deactivate(self.classifier, images, masks, self.tau)


# ---------------------------------------------------------------------------------- batched classification
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


def _target(classifier: nn.Module, images: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    if target is not None:
        return torch.as_tensor(target, device=images.device).long().reshape(-1)
    return classifier(images).argmax(-1)


# ---------------------------------------------------------------------------------- maps -> masks
def rank_pixels(saliency: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """(B, H·W) pixel indices by decreasing saliency; ties broken in a seeded random order.

    Random tie-breaking keeps binary or flat maps from being read in raster order.
    """
    flat = saliency.detach().flatten(1).float()  # (B, H·W)
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(flat.shape[1], generator=gen).to(flat.device)
    order = torch.argsort(flat[:, perm], dim=1, descending=True, stable=True)
    return perm[order]


def _ranks(saliency: torch.Tensor, seed: int) -> torch.Tensor:
    """(B, H·W) rank of every pixel, 0 = most salient (the inverse of :func:`rank_pixels`)."""
    b, hw = saliency.shape[0], saliency[0].numel()
    ranks = torch.empty(b, hw, dtype=torch.long, device=saliency.device)
    return ranks.scatter_(1, rank_pixels(saliency, seed), torch.arange(hw, device=saliency.device).expand(b, -1))


def _keep_count(fraction: float | list[float] | torch.Tensor, pixels: int, rows: int, device) -> torch.Tensor:
    """(rows,) k = round(fraction · pixels), the fraction taken in float32."""
    fraction = torch.as_tensor(fraction, dtype=torch.float32, device=device).expand(rows)
    return (fraction * pixels).round().long().clamp(0, pixels)


def _cut(ranks: torch.Tensor, k: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Binary masks (B, 1, H, W): the k[b] top-ranked pixels of row b of ``ranks`` (B, H·W)."""
    return (ranks < k[:, None]).float().view(-1, 1, *size)


def top_fraction_mask(saliency: torch.Tensor, fraction: float | torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Binary masks (B, 1, H, W) keeping the top ``fraction`` of pixels of each map.

    ``fraction`` is a float or a (B,) tensor; k = round(fraction · H · W).
    """
    b, _, h, w = saliency.shape
    return _cut(_ranks(saliency, seed), _keep_count(fraction, h * w, b, saliency.device), (h, w))


def border_band(mask: torch.Tensor, band: float = 0.03) -> torch.Tensor:
    """Boolean map, shaped as ``mask`` (..., H, W), of the pixels within ``band`` × short side of the
    image border (at least 1 pixel): where a frame along the border shows up."""
    height, width = mask.shape[-2:]
    k = max(1, round(band * min(height, width)))
    outer = torch.ones_like(mask, dtype=torch.bool)
    outer[..., k:-k, k:-k] = False
    return outer


# ---------------------------------------------------------------------------------- per-image functions
def mask_area(masks: torch.Tensor) -> torch.Tensor:
    """(B,) fraction of kept pixels."""
    return masks.detach().flatten(1).float().mean(1)


@torch.no_grad()
def label_kept(masker: Masker, images: torch.Tensor, masks: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) bool: the masked image gets label ``target`` (default: the original top-1)."""
    target = _target(masker.classifier, images, target)
    return masker(images, masks).argmax(-1) == target


@torch.no_grad()
def confidence_delta(masker: Masker, images: torch.Tensor, masks: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) p_f(e)(y) − p_f(x)(y)."""
    p_x = masker.classifier(images).softmax(-1)
    target = p_x.argmax(-1) if target is None else _target(masker.classifier, images, target)
    p_e = masker(images, masks).softmax(-1)
    return (p_e.gather(1, target[:, None]) - p_x.gather(1, target[:, None])).squeeze(1)


def _step_counts(steps: int, pixels: int, device) -> torch.Tensor:
    """(steps + 1,) pixels changed at each step of a perturbation path: ⌈i · pixels / steps⌉.

    In integers: the float form ceil(linspace(0, 1) · pixels) overshoots by one pixel where
    i/steps is not exact in float32 (50 of the 225 points at 224 steps and 224² pixels; none at 50).
    """
    return (torch.arange(steps + 1, device=device) * pixels + steps - 1) // steps


def _path_ends(images: torch.Tensor, mode: str, mean) -> tuple[torch.Tensor, torch.Tensor]:
    """(start, finish) of the insertion (blur → x) or deletion (x → mean colour) path."""
    if mode == "insertion":
        return gaussian_blur(images), images
    return images, make_fill(images, "mean", mean)


def _curve_job(start: torch.Tensor, finish: torch.Tensor, ranks: torch.Tensor, counts: torch.Tensor) -> Job:
    """Inputs of one curve: at step i the ``counts[i]`` top-ranked pixels of ``start`` (1, 3, H, W)
    take the values of ``finish``: changed ⊙ finish + (1 − changed) ⊙ start."""
    h, w = start.shape[-2:]

    def make(lo: int, hi: int) -> torch.Tensor:
        changed = (ranks[None] < counts[lo:hi, None]).float().view(-1, 1, h, w)  # (n, 1, H, W)
        return changed * finish + (1 - changed) * start

    return Job(len(counts), make)


def _check_curve(mode: str, steps: int) -> None:
    if mode not in ("insertion", "deletion"):
        raise ValueError(f"mode must be 'insertion' or 'deletion', got {mode!r}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")


@torch.no_grad()
def perturbation_curve(
    classifier: nn.Module,
    images: torch.Tensor,
    saliency: torch.Tensor,
    target: torch.Tensor | None = None,
    mode: str = "deletion",
    steps: int = 50,
    batch: int = 32,
    seed: int = 0,
    counter: PassCounter | None = None,
) -> torch.Tensor:
    """(B, steps + 1) p_f(·)(y) along the RISE insertion or deletion path.

    Step i has the top ⌈i·H·W/steps⌉ pixels of the map inserted into the blurred copy
    (``insertion``) or replaced by the mean colour (``deletion``). All steps of all images go
    through the classifier in chunks of ``batch`` inputs.
    """
    _check_curve(mode, steps)
    target = _target(classifier, images, target)
    b, _, h, w = images.shape
    ranks = _ranks(saliency, seed)  # (B, H·W)
    counts = _step_counts(steps, h * w, images.device)  # (S + 1,)
    start, finish = _path_ends(images, mode, classifier.data_config["mean"])
    jobs = [_curve_job(start[i : i + 1], finish[i : i + 1], ranks[i], counts) for i in range(b)]
    logits = classify(classifier, jobs, batch, counter)
    return torch.stack([lg.softmax(-1)[:, y] for lg, y in zip(logits, target.tolist())])


def _auc(curve: torch.Tensor) -> torch.Tensor:
    """Trapezoid area under a curve sampled at steps + 1 equally spaced points of [0, 1]:
    AUC = (1/S) · (Σ_i c_i − (c_0 + c_S)/2)."""
    return torch.trapezoid(curve, dx=1.0 / (curve.shape[-1] - 1), dim=-1)


def insertion_auc(classifier: nn.Module, images: torch.Tensor, saliency: torch.Tensor, target: torch.Tensor | None = None, **kw) -> torch.Tensor:
    """(B,) area under the insertion curve (higher is better); see :func:`perturbation_curve`."""
    return _auc(perturbation_curve(classifier, images, saliency, target, "insertion", **kw))


def deletion_auc(classifier: nn.Module, images: torch.Tensor, saliency: torch.Tensor, target: torch.Tensor | None = None, **kw) -> torch.Tensor:
    """(B,) area under the deletion curve (lower is better); see :func:`perturbation_curve`."""
    return _auc(perturbation_curve(classifier, images, saliency, target, "deletion", **kw))


def _fit_pool(pool: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    """The pool images resized (bilinear) to the size of ``like``; None for no or an empty pool."""
    if pool is None or not len(pool):
        return None
    return F.interpolate(pool.to(like), size=like.shape[-2:], mode="bilinear", align_corners=False)


def cycled_backgrounds(image: torch.Tensor, n: int, kinds: tuple[str, ...], pool: torch.Tensor | None) -> torch.Tensor:
    """(n, 3, H, W) backgrounds for one image (1, 3, H, W), from the global RNG.

    Background j is of kind ``sources[j % len(sources)]``, sources = ``kinds`` then ``pool``
    (fitted images, taken in turn) when a pool is given.
    """
    sources = list(kinds) + (["pool"] if pool is not None else [])
    samplers = {k: BackgroundSampler([k]) for k in kinds}
    reps = image.expand(n, -1, -1, -1)
    bg = torch.empty_like(reps)
    for j in range(n):
        kind = sources[j % len(sources)]
        bg[j] = pool[(j // len(sources)) % len(pool)] if kind == "pool" else samplers[kind](reps[j : j + 1])[0]
    return bg


def _planted_job(image: torch.Tensor, mask: torch.Tensor, backgrounds: torch.Tensor) -> Job:
    """Inputs m ⊙ x + (1 − m) ⊙ r_j for one image and mask (1, ·, H, W) over ``backgrounds``."""
    return Job(len(backgrounds), lambda lo, hi: mask * image + (1 - mask) * backgrounds[lo:hi])


def _seeded_backgrounds(images: torch.Tensor, n: int, kinds: tuple[str, ...], pool: torch.Tensor | None, seed: int) -> list[torch.Tensor]:
    """:func:`cycled_backgrounds` of each image in turn, from ``seed``; the global RNG is left as it was."""
    with torch.random.fork_rng(devices=[images.device] if images.is_cuda else []):
        torch.manual_seed(seed)
        return [cycled_backgrounds(images[i : i + 1], n, kinds, pool) for i in range(images.shape[0])]


@torch.no_grad()
def robustness(
    classifier: nn.Module,
    images: torch.Tensor,
    masks: torch.Tensor,
    target: torch.Tensor | None = None,
    backgrounds: int = 16,
    kinds: tuple[str, ...] = ("solid", "uniform", "gaussian"),
    pool: torch.Tensor | None = None,
    batch: int = 32,
    seed: int = 0,
    counter: PassCounter | None = None,
) -> torch.Tensor:
    """(B,) fraction of random backgrounds r on which m ⊙ x + (1 − m) ⊙ r keeps the label.

    Backgrounds cycle through ``kinds`` (:class:`BackgroundSampler`: solid colours, noise) and,
    when ``pool`` (N, 3, H, W) other images is given, the pool's images (resized to fit). The
    same ``seed`` gives every call the same backgrounds, so maps of one image are judged alike.
    """
    if backgrounds < 1:
        raise ValueError(f"backgrounds must be >= 1, got {backgrounds}")
    target = _target(classifier, images, target)
    bgs = _seeded_backgrounds(images, backgrounds, tuple(kinds), _fit_pool(pool, images), seed)
    jobs = [_planted_job(images[i : i + 1], masks[i : i + 1], bg) for i, bg in enumerate(bgs)]
    logits = classify(classifier, jobs, batch, counter)
    return torch.stack([(lg.argmax(-1) == y).float().mean() for lg, y in zip(logits, target.tolist())])


def _grid(grid: tuple[float, ...]) -> list[float]:
    """The sufficiency grid: sorted, without duplicates, with 1.0; every fraction in (0, 1]."""
    bad = [g for g in grid if not 0 < g <= 1]
    if bad:
        raise ValueError(f"grid fractions must be in (0, 1], got {bad}")
    return sorted(set(grid) | {1.0})


def _bracket(kept: torch.Tensor, fractions: torch.Tensor) -> tuple[list[float], list[float], list[bool]]:
    """Per row of ``kept`` (B, G): (lo, hi, found), hi the first kept grid fraction (or the
    last when none is), lo the grid point below it (or 0)."""
    lo, hi, found = [], [], []
    for row in kept:
        first = int(row.float().argmax()) if row.any() else len(fractions) - 1
        hi.append(float(fractions[first]))
        lo.append(float(fractions[first - 1]) if first > 0 else 0.0)
        found.append(bool(row.any()))
    return lo, hi, found


def _bisect(lo: list[float], hi: list[float], found: list[bool], refine: int, is_kept) -> list[float]:
    """``refine`` bisections of [lo, hi] for every found row; ``is_kept(rows, mids)`` judges
    all rows of a round at once and returns one bool per row. Returns the final hi."""
    lo, hi = list(lo), list(hi)
    rows = [i for i, f in enumerate(found) if f]
    for _ in range(refine if rows else 0):
        mids = [(lo[i] + hi[i]) / 2 for i in rows]
        for i, mid, kept in zip(rows, mids, is_kept(rows, mids)):
            if kept:
                hi[i] = mid
            else:
                lo[i] = mid
    return hi


@torch.no_grad()
def smallest_sufficient_area(
    masker: Masker,
    images: torch.Tensor,
    saliency: torch.Tensor,
    target: torch.Tensor | None = None,
    grid: tuple[float, ...] = SUFFICIENCY_GRID,
    refine: int = 4,
    seed: int = 0,
    batch: int = 32,
    counter: PassCounter | None = None,
) -> torch.Tensor:
    """(B,) smallest fraction k of top-saliency pixels whose cut keeps the label.

    Scans ``grid`` (every fraction of every image in chunks of ``batch``), takes the first kept
    fraction, then bisects ``refine`` times between it and the grid point below (assuming
    monotonicity there; one forward per round for all images). The whole image always keeps
    the label, so the answer is at most 1.
    """
    target = _target(masker.classifier, images, target)
    b, _, h, w = images.shape
    fractions = torch.tensor(_grid(grid), device=images.device)  # (G,)
    ranks = _ranks(saliency, seed)  # (B, H·W)
    k = _keep_count(fractions, h * w, len(fractions), images.device)  # (G,)

    def scan_job(i: int) -> Job:
        def make(lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
            return images[i : i + 1].expand(hi - lo, -1, -1, -1), _cut(ranks[i].expand(hi - lo, -1), k[lo:hi], (h, w))

        return Job(len(fractions), make)

    logits = classify(masker, [scan_job(i) for i in range(b)], batch, counter)
    kept = torch.stack([lg.argmax(-1) == y for lg, y in zip(logits, target.tolist())])  # (B, G)

    def is_kept(rows: list[int], mids: list[float]) -> list[bool]:
        masks = _cut(ranks[rows], _keep_count(mids, h * w, len(rows), images.device), (h, w))
        job = Job(len(rows), lambda lo, hi: (images[rows[lo:hi]], masks[lo:hi]))
        return (classify(masker, [job], batch, counter)[0].argmax(-1) == target[rows]).tolist()

    return torch.tensor(_bisect(*_bracket(kept, fractions), refine, is_kept), device=images.device)


# ---------------------------------------------------------------------------------- all metrics of many maps
#: per-map keys of :func:`score_maps`
SCORE_KEYS = (
    "area", "kept_equal_area", "confidence_delta_equal_area", "kept_equal_area_convad", "kept_at_5", "kept_at_10",
    "kept_at_20", "robustness", "smallest_sufficient_area", "insertion_auc", "deletion_auc",
)  # fmt: skip
#: fixed cut areas of ``kept_at_<percent>``: the same area for every method, set by no method
FIXED_AREAS = (0.05, 0.10, 0.20)


def _blend_job(image: torch.Tensor, masks: torch.Tensor, fill: torch.Tensor) -> Job:
    """Inputs m_j ⊙ x + (1 − m_j) ⊙ fill for masks (n, 1, H, W): :class:`PixelFill` in pixel space."""
    return Job(len(masks), lambda lo, hi: masks[lo:hi] * image + (1 - masks[lo:hi]) * fill)


def _fixed_key(fraction: float) -> str:
    return f"kept_at_{round(100 * fraction):d}"


@torch.no_grad()
def score_maps(
    classifier: nn.Module,
    image: torch.Tensor,
    maps: torch.Tensor,
    target: int | torch.Tensor | None = None,
    area: float = 0.2,
    *,
    logits: torch.Tensor | None = None,
    steps: int = 50,
    backgrounds: int = 16,
    kinds: tuple[str, ...] = ("solid", "uniform", "gaussian"),
    pool: torch.Tensor | None = None,
    tau: float = 0.5,
    grid: tuple[float, ...] = SUFFICIENCY_GRID,
    refine: int = 4,
    fixed_areas: tuple[float, ...] = FIXED_AREAS,
    seed: int = 0,
    chunk: int = 32,
    counter: PassCounter | None = None,
) -> dict[str, torch.Tensor]:
    """Every benchmark metric of M maps of one image, in as few classifier passes as possible.

    The same numbers as the per-image functions called one map at a time (the ``benchmark``
    protocol), with the mean-colour fill as masker:

    * ``area`` |c| / (H·W) of the equal-area cut c = top ``area`` of the map;
    * ``kept_equal_area``: argmax f(c ⊙ x + (1 − c) ⊙ μ) = y; ``confidence_delta_equal_area``:
      p_f(e)(y) − p_f(x)(y); ``kept_equal_area_convad``: the cut judged by ConvAD (``tau``);
    * ``kept_at_<p>``: the label kept by the top p % of the map (``fixed_areas``);
    * ``robustness``: the share of ``backgrounds`` backgrounds r with argmax f(c ⊙ x + (1 − c) ⊙ r) = y;
    * ``smallest_sufficient_area``: :func:`smallest_sufficient_area` (``grid``, ``refine``);
    * ``insertion_auc`` / ``deletion_auc``: :func:`perturbation_curve` over ``steps`` steps, AUC
      by the trapezoid rule.

    Every perturbed copy of the image for every map is built lazily and classified in chunks of
    ``chunk`` inputs (:func:`classify`); copies shared by all maps are classified once (the
    blurred image, the mean-colour image) and those equal to x reuse ``logits``
    (the insertion end, the deletion start, the grid's 1.0). Per image and M maps that is
    M · (1 + |grid ∪ fixed_areas \\ {1}| + 2 (steps − 1) + backgrounds) + 2 plain inputs, M ConvAD
    inputs and at most M · ``refine`` inputs in ``refine`` bisection rounds.

    Args:
        classifier: the frozen classifier (images in [0, 1], with ``data_config["mean"]``).
        image: (1, 3, H, W).
        maps: (M, 1, H, W) relevance maps, higher = more relevant.
        target: the class y (default: the top-1 class of ``logits``).
        area: the fraction of pixels of the equal-area cut (every map gets the same).
        logits: (1, K) logits of ``image`` if already known (saves a pass).
        steps, backgrounds, kinds, pool, tau, grid, refine, fixed_areas, seed: as in the
            per-image functions; ``pool`` (N, 3, h, w) images are backgrounds too.
        chunk: inputs per forward.
        counter: records the images classified and the time spent in the classifier.

    Returns:
        ``SCORE_KEYS`` (with one ``kept_at_<p>`` per fixed area) -> (M,) float tensors.
    """
    if image.dim() != 4 or image.shape[0] != 1:
        raise ValueError(f"image must be (1, 3, H, W), got {tuple(image.shape)}")
    if maps.dim() != 4 or maps.shape[1] != 1 or maps.shape[-2:] != image.shape[-2:]:
        raise ValueError(f"maps must be (M, 1, H, W) with the image's size, got {tuple(maps.shape)} for {tuple(image.shape)}")
    if steps < 1 or backgrounds < 1:
        raise ValueError(f"steps and backgrounds must be >= 1, got {steps}, {backgrounds}")
    m, (h, w), device = maps.shape[0], image.shape[-2:], image.device
    if logits is None:
        logits = classify(classifier, [Job(1, lambda lo, hi: image)], chunk, counter)[0]
    y = int(logits.argmax(-1)) if target is None else int(torch.as_tensor(target).reshape(-1)[0])
    p_x = logits.softmax(-1)[0, y]
    full_kept = int(logits.argmax(-1)) == y
    fill = make_fill(image, "mean", classifier.data_config["mean"])  # (1, 3, H, W)
    ranks = _ranks(maps, seed)  # (M, H·W)
    cuts = _cut(ranks, _keep_count(area, h * w, m, device), (h, w))  # (M, 1, H, W)

    grid_values = _grid(grid)
    scanned = sorted(set(grid_values) | set(_grid(fixed_areas))) if fixed_areas else grid_values
    fractions = torch.tensor(scanned, device=device)  # (U,), the last is 1.0
    k_scan = _keep_count(fractions[:-1], h * w, len(fractions) - 1, device)
    counts = _step_counts(steps, h * w, device)[1:-1]  # interior steps only
    blurred = gaussian_blur(image)
    bgs = _seeded_backgrounds(image, backgrounds, tuple(kinds), _fit_pool(pool, image), seed)[0]

    def scan_job(i: int) -> Job:  # the map's top fractions of ``scanned`` except 1.0, mean-colour fill
        def make(lo: int, hi: int) -> torch.Tensor:
            masks = _cut(ranks[i].expand(hi - lo, -1), k_scan[lo:hi], (h, w))  # (n, 1, H, W)
            return masks * image + (1 - masks) * fill

        return Job(len(k_scan), make)

    jobs = [_blend_job(image, cuts, fill), Job(1, lambda lo, hi: blurred), Job(1, lambda lo, hi: fill)]
    for i in range(m):
        jobs += [
            scan_job(i),
            _curve_job(blurred, image, ranks[i], counts),
            _curve_job(image, fill, ranks[i], counts),
            _planted_job(image, cuts[i : i + 1], bgs),
        ]
    out = classify(classifier, jobs, chunk, counter)
    cut_logits, p_blur, p_fill, per_map = out[0], out[1].softmax(-1)[:, y], out[2].softmax(-1)[:, y], out[3:]
    convad = classify(
        DeactivationMasker(classifier, tau), [Job(m, lambda lo, hi: (image.expand(hi - lo, -1, -1, -1), cuts[lo:hi]))], chunk, counter
    )[0]

    full = torch.full((m, 1), full_kept, device=device)
    kept = torch.cat([torch.stack([lg.argmax(-1) == y for lg in per_map[0::4]]).reshape(m, -1), full], 1)  # (M, U)
    ends = p_x.reshape(1)
    insertion = torch.stack([torch.cat([p_blur, lg.softmax(-1)[:, y], ends]) for lg in per_map[1::4]])  # (M, S + 1)
    deletion = torch.stack([torch.cat([ends, lg.softmax(-1)[:, y], p_fill]) for lg in per_map[2::4]])

    def is_kept(rows: list[int], mids: list[float]) -> list[bool]:
        masks = _cut(ranks[rows], _keep_count(mids, h * w, len(rows), device), (h, w))
        return (classify(classifier, [_blend_job(image, masks, fill)], chunk, counter)[0].argmax(-1) == y).tolist()

    in_grid = [scanned.index(g) for g in grid_values]
    sufficient = _bisect(*_bracket(kept[:, in_grid], fractions[in_grid]), refine, is_kept)
    scores = {
        "area": mask_area(cuts),
        "kept_equal_area": (cut_logits.argmax(-1) == y).float(),
        "confidence_delta_equal_area": cut_logits.softmax(-1)[:, y] - p_x,
        "kept_equal_area_convad": (convad.argmax(-1) == y).float(),
        **{_fixed_key(f): kept[:, scanned.index(f)].float() for f in fixed_areas},
        "robustness": torch.stack([(lg.argmax(-1) == y).float().mean() for lg in per_map[3::4]]),
        "smallest_sufficient_area": torch.tensor(sufficient, device=device),
        "insertion_auc": _auc(insertion),
        "deletion_auc": _auc(deletion),
    }
    return scores


def pointing_game(saliency: torch.Tensor, ground_truth: torch.Tensor, tolerance: int = 15) -> torch.Tensor:
    """(B,) bool: the saliency maximum lies within ``tolerance`` pixels of the ground truth.

    TorchRay's pointing game (``torchray.benchmark.PointingGame``, after Zhang et al. 2016,
    default tolerance 15 px): with p the maximum of the map (the first in raster order), a hit
    when some ground-truth pixel q has ‖q − p‖² < tolerance² (a disk, not a square).
    ``tolerance=0`` counts a hit only when p itself is ground truth (TorchRay would never hit).
    """
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    gt = (ground_truth > 0).float()  # (B, 1, H, W)
    if tolerance > 0:
        offsets = torch.arange(-tolerance, tolerance + 1, dtype=torch.float32, device=gt.device)
        disk = ((offsets[:, None] ** 2 + offsets[None] ** 2) < tolerance**2).float()[None, None]  # (1, 1, 2t+1, 2t+1)
        gt = F.conv2d(gt, disk, padding=tolerance)  # > 0 within the tolerance of a ground-truth pixel
    index = saliency.flatten(1).argmax(1)
    return gt.flatten(1).gather(1, index[:, None]).squeeze(1) > 0


def mask_precision(masks: torch.Tensor, ground_truth: torch.Tensor) -> torch.Tensor:
    """(B,) |m ∧ g| / |m| (0 for an empty mask)."""
    m, g = masks.flatten(1).float(), (ground_truth.flatten(1) > 0).float()
    return (m * g).sum(1) / m.sum(1).clamp_min(1)


# ---------------------------------------------------------------------------------- torchmetrics
class MeanMetric(Metric):
    """Base class: the mean of a per-image value, with distributed-safe sum/count states.

    Override :meth:`values` (returns (B,) values for an ``update`` call). Models and maskers are
    kept outside the module tree, so the metric's state dict holds only its states.
    """

    higher_is_better: bool | None = None
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def _keep(self, **objects) -> None:
        for key, value in objects.items():
            object.__setattr__(self, key, value)  # not registered as a submodule

    def values(self, *args, **kwargs) -> torch.Tensor:
        raise NotImplementedError

    def update(self, *args, **kwargs) -> None:
        values = self.values(*args, **kwargs).detach().double().reshape(-1)
        self.total += values.sum().to(self.total.device)
        self.count += values.numel()

    def compute(self) -> torch.Tensor:
        return (self.total / self.count.clamp_min(1)).float()


class MaskArea(MeanMetric):
    """Mean |m| / (H·W). ``update(masks)``."""

    higher_is_better = False

    def values(self, masks: torch.Tensor) -> torch.Tensor:
        return mask_area(masks)


class LabelKept(MeanMetric):
    """Fraction of explanations that keep the label. ``update(logits_original, logits_explanation)``."""

    higher_is_better = True

    def values(self, logits: torch.Tensor, logits_explanation: torch.Tensor) -> torch.Tensor:
        return (logits.argmax(-1) == logits_explanation.argmax(-1)).float()


class ConfidenceDelta(MeanMetric):
    """Mean p_f(e)(y) − p_f(x)(y). ``update(logits_original, logits_explanation)``."""

    def values(self, logits: torch.Tensor, logits_explanation: torch.Tensor) -> torch.Tensor:
        y = logits.argmax(-1, keepdim=True)
        return (logits_explanation.softmax(-1).gather(1, y) - logits.softmax(-1).gather(1, y)).squeeze(1)


class _CurveAUC(MeanMetric):
    mode = "deletion"

    def __init__(self, classifier: nn.Module, steps: int = 50, batch: int = 32, **kwargs) -> None:
        super().__init__(**kwargs)
        self._keep(classifier=classifier)
        self.steps, self.batch = steps, batch

    def values(self, images: torch.Tensor, saliency: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        return _auc(perturbation_curve(self.classifier, images, saliency, target, self.mode, self.steps, self.batch))


class InsertionAUC(_CurveAUC):
    """Mean insertion AUC (RISE protocol, ``steps`` steps). ``update(images, saliency, target=None)``."""

    higher_is_better = True
    mode = "insertion"


class DeletionAUC(_CurveAUC):
    """Mean deletion AUC (RISE protocol, ``steps`` steps). ``update(images, saliency, target=None)``."""

    higher_is_better = False
    mode = "deletion"


class Robustness(MeanMetric):
    """Mean fraction of random backgrounds that keep the label. ``update(images, masks, target=None)``."""

    higher_is_better = True

    def __init__(self, classifier: nn.Module, backgrounds: int = 16, kinds: tuple[str, ...] = ("solid", "uniform", "gaussian"), **kwargs) -> None:
        super().__init__(**kwargs)
        self._keep(classifier=classifier)
        self.backgrounds, self.kinds = backgrounds, tuple(kinds)

    def values(self, images: torch.Tensor, masks: torch.Tensor, target: torch.Tensor | None = None, pool: torch.Tensor | None = None) -> torch.Tensor:
        return robustness(self.classifier, images, masks, target, self.backgrounds, self.kinds, pool)


class SmallestSufficientArea(MeanMetric):
    """Mean smallest sufficient top-k fraction. ``update(images, saliency, target=None)``."""

    higher_is_better = False

    def __init__(self, masker: Masker, **kwargs) -> None:
        super().__init__(**kwargs)
        self._keep(masker=masker)

    def values(self, images: torch.Tensor, saliency: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        return smallest_sufficient_area(self.masker, images, saliency, target)


class PointingGame(MeanMetric):
    """Pointing-game hit rate (TorchRay's 15 px tolerance by default). ``update(saliency, ground_truth)``."""

    higher_is_better = True

    def __init__(self, tolerance: int = 15, **kwargs) -> None:
        super().__init__(**kwargs)
        self.tolerance = tolerance

    def values(self, saliency: torch.Tensor, ground_truth: torch.Tensor) -> torch.Tensor:
        return pointing_game(saliency, ground_truth, self.tolerance).float()


class MaskPrecision(MeanMetric):
    """Mean |m ∧ g| / |m|. ``update(masks, ground_truth)``."""

    higher_is_better = True

    def values(self, masks: torch.Tensor, ground_truth: torch.Tensor) -> torch.Tensor:
        return mask_precision(masks, ground_truth)
