"""Metrics for explanations: plain per-image functions, and torchmetrics ``Metric``s over them.

Conventions: images (B, 3, H, W) in [0, 1]; binary masks (B, 1, H, W), 1 = kept; saliency maps
(B, 1, H, W), higher = more relevant; ``target`` (B,) class indices (default: the top-1 class
of the original image). A *masker* (:mod:`~actmatch.evaluation.maskers`) turns (images, masks)
into logits; the exam's perturbation families (:mod:`~actmatch.evaluation.families`) fill the
removed pixels from a seed stream no fit uses.

Metrics (each a function returning one value per image or map):

* mask area            |m| / (H·W)
* label kept           argmax f(e) = y
* confidence delta     p_f(e)(y) − p_f(x)(y)
* insertion / deletion RISE protocol (Petsiuk et al. 2018): insertion starts from a blurred copy of
  AUC                  x (``start="heavy"``: σ = 1/20 of the short side; ``start="rise"``: the
                       published 11×11 kernel, σ = 5, :func:`rise_blur`) and inserts pixels in
                       decreasing saliency; deletion starts from x and replaces them by the mean
                       colour (``fill="mean"``) or by the heavy blur (``fill="blur"``, a fill no fit
                       uses). ``steps`` + 1 points, AUC by the trapezoid rule, p = softmax prob.
* robustness           the region planted on the exam's draws (:class:`~actmatch.evaluation.families.Exam`):
                       the fraction that keeps the label
* smallest sufficient  smallest fraction k such that the top-k of the map keeps the label with the
  area                 mean fill: grid scan, then bisection below the first kept grid point
* robust-sufficient    the same, but a cut counts only when it keeps the label on at least ``rate``
  area                 of the exam's draws (checked in stages, a cut out as soon as it cannot pass)
* dilation             the region with every pixel next to it added (3×3 max filter; Springer et
                       al. 2022's test of sufficient subsets): label kept and p(e)/p(x)
* shift / read-back    the region moved by one pixel in each direction; the region written as a
                       mask file at the photo's size (nearest) and read back at the model's size
                       (the loader's bicubic resize, threshold 0.5)
* saliency score       Dabkowski & Gal 2017: log max(a, 0.05) − log p, a the area of the tightest
                       box around the region, p the label's probability on that box cropped and
                       resized to the input (``dg_scores``; and on the box kept with the mean fill)
* rank correlation     Spearman's ρ between two maps (the model-randomisation sanity check,
                       Adebayo et al. 2018) and the IoU of their top-k cuts
* pointing game        the saliency maximum within 15 px of the ground truth (TorchRay)
* mask precision       |m ∧ g| / |m|

Perturbed copies are built lazily (:class:`~actmatch.evaluation.batching.Job`) and classified in
chunks (:func:`~actmatch.evaluation.batching.classify`). docs/benchmark.md ("Protocol") lists where
these definitions deviate from the published ones, with the measured size of each deviation.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import Metric

from actmatch.evaluation.batching import Job, PassCounter, classify
from actmatch.evaluation.families import Exam, ExamDraws
from actmatch.evaluation.maskers import Masker
from actmatch.explainers.backgrounds import gaussian_blur, make_fill
from actmatch.explainers.classifier import FrozenClassifier
from actmatch.explainers.masks import cut, keep_count, pixel_ranks

__all__ = [
    "mask_area",
    "label_kept",
    "confidence_delta",
    "rise_blur",
    "insertion_start",
    "perturbation_curve",
    "insertion_auc",
    "deletion_auc",
    "robustness",
    "robustness_by_family",
    "smallest_sufficient_area",
    "robust_sufficient_area",
    "allowed_failures",
    "dilate",
    "shifted",
    "read_back",
    "bounding_boxes",
    "crop_resize",
    "dg_score",
    "spearman",
    "top_iou",
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
    "DELETION_FILLS",
    "INSERTION_STARTS",
]

#: fractions scanned by :func:`smallest_sufficient_area` before bisection
SUFFICIENCY_GRID = (0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
#: the start of the insertion path: ``heavy`` (σ = 1/20 of the short side) or ``rise`` (as published)
INSERTION_STARTS = ("heavy", "rise")
DELETION_FILLS = ("mean", "blur")  # what the deletion path puts in: the mean colour, or the heavy blur of x


def _target(classifier: nn.Module, images: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    if target is not None:
        return torch.as_tensor(target, device=images.device).long().reshape(-1)
    return classifier(images).argmax(-1)


def mask_area(masks: torch.Tensor) -> torch.Tensor:
    """(B,) fraction of kept pixels."""
    return masks.detach().flatten(1).float().mean(1)


@torch.no_grad()
def label_kept(masker: Masker, images: torch.Tensor, masks: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) bool: the masked image gets label ``target`` (default: the original top-1)."""
    target = _target(masker.classifier, images, target)
    return masker(images, masks).argmax(-1) == target


@torch.no_grad()
def confidence_delta(
    masker: Masker, images: torch.Tensor, masks: torch.Tensor, target: torch.Tensor | None = None
) -> torch.Tensor:
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


def rise_blur(images: torch.Tensor) -> torch.Tensor:
    """The insertion start of RISE's reference code (``gkern(11, 5)``): the image convolved, with zero
    padding, with k = gaussian_filter(δ, σ = 5) on an 11×11 grid (scipy, ``reflect`` mode, so k sums to 1)."""
    from scipy.ndimage import gaussian_filter

    delta = np.zeros((11, 11))
    delta[5, 5] = 1.0
    kernel = torch.from_numpy(gaussian_filter(delta, 5)).to(images)  # (11, 11)
    channels = images.shape[1]
    weight = kernel.expand(channels, 1, 11, 11)
    return F.conv2d(images, weight, padding=5, groups=channels)


def insertion_start(images: torch.Tensor, start: str = "heavy") -> torch.Tensor:
    """The blurred copy the insertion path starts from (``heavy`` or ``rise``, see :data:`INSERTION_STARTS`)."""
    if start == "heavy":
        return gaussian_blur(images)
    if start == "rise":
        return rise_blur(images)
    raise ValueError(f"unknown insertion start {start!r}; choose one of {INSERTION_STARTS}")


def _path_ends(
    images: torch.Tensor, mode: str, mean, start: str = "heavy", fill: str = "mean"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(start, finish) of the insertion (blur → x) or deletion (x → mean colour, or x → heavy blur) path."""
    if mode == "insertion":
        return insertion_start(images, start), images
    return images, make_fill(images, fill, mean)  # the mean colour, or the heavy blur of x (make_fill's "blur")


def _curve_job(start: torch.Tensor, finish: torch.Tensor, ranks: torch.Tensor, counts: torch.Tensor) -> Job:
    """Inputs of one curve: at step i the ``counts[i]`` top-ranked pixels of ``start`` (1, 3, H, W)
    take the values of ``finish``: changed ⊙ finish + (1 − changed) ⊙ start."""
    h, w = start.shape[-2:]

    def make(lo: int, hi: int) -> torch.Tensor:
        changed = (ranks[None] < counts[lo:hi, None]).float().view(-1, 1, h, w)  # (n, 1, H, W)
        return changed * finish + (1 - changed) * start

    return Job(len(counts), make)


def _check_curve(mode: str, steps: int, fill: str = "mean") -> None:
    if mode not in ("insertion", "deletion"):
        raise ValueError(f"mode must be 'insertion' or 'deletion', got {mode!r}")
    if fill not in DELETION_FILLS:
        raise ValueError(f"unknown deletion fill {fill!r}; choose one of {DELETION_FILLS}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")


@torch.no_grad()
def perturbation_curve(
    classifier: FrozenClassifier,
    images: torch.Tensor,
    saliency: torch.Tensor,
    target: torch.Tensor | None = None,
    mode: str = "deletion",
    steps: int = 50,
    batch: int = 32,
    seed: int = 0,
    counter: PassCounter | None = None,
    start: str = "heavy",
    fill: str = "mean",
) -> torch.Tensor:
    """(B, steps + 1) p_f(·)(y) along the RISE insertion or deletion path.

    Step i has the top ⌈i·H·W/steps⌉ pixels of the map inserted into the blurred copy
    (``insertion``) or replaced by the mean colour (``deletion``; ``fill="blur"``: by the heavy
    blur of x instead). All steps of all images go through the classifier in chunks of ``batch``
    inputs. ``start`` picks the insertion's blur.
    """
    _check_curve(mode, steps, fill)
    target = _target(classifier, images, target)
    b, _, h, w = images.shape
    ranks = pixel_ranks(saliency, seed)  # (B, H·W)
    counts = _step_counts(steps, h * w, images.device)  # (S + 1,)
    begin, finish = _path_ends(images, mode, classifier.data_config["mean"], start, fill)
    jobs = [_curve_job(begin[i : i + 1], finish[i : i + 1], ranks[i], counts) for i in range(b)]
    logits = classify(classifier, jobs, batch, counter)
    return torch.stack([lg.softmax(-1)[:, y] for lg, y in zip(logits, target.tolist())])


def _auc(curve: torch.Tensor) -> torch.Tensor:
    """Trapezoid area under a curve sampled at steps + 1 equally spaced points of [0, 1]:
    AUC = (1/S) · (Σ_i c_i − (c_0 + c_S)/2)."""
    return torch.trapezoid(curve, dx=1.0 / (curve.shape[-1] - 1), dim=-1)


def insertion_auc(
    classifier: FrozenClassifier, images: torch.Tensor, saliency: torch.Tensor, target: torch.Tensor | None = None, **kw
) -> torch.Tensor:
    """(B,) area under the insertion curve (higher is better); see :func:`perturbation_curve`."""
    return _auc(perturbation_curve(classifier, images, saliency, target, "insertion", **kw))


def deletion_auc(
    classifier: FrozenClassifier, images: torch.Tensor, saliency: torch.Tensor, target: torch.Tensor | None = None, **kw
) -> torch.Tensor:
    """(B,) area under the deletion curve (lower is better); see :func:`perturbation_curve`."""
    return _auc(perturbation_curve(classifier, images, saliency, target, "deletion", **kw))


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
    ranks = pixel_ranks(saliency, seed)  # (B, H·W)
    k = keep_count(fractions, h * w, len(fractions), images.device)  # (G,)

    def scan_job(i: int) -> Job:
        def make(lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
            return images[i : i + 1].expand(hi - lo, -1, -1, -1), cut(ranks[i].expand(hi - lo, -1), k[lo:hi], (h, w))

        return Job(len(fractions), make)

    logits = classify(masker, [scan_job(i) for i in range(b)], batch, counter)
    kept = torch.stack([lg.argmax(-1) == y for lg, y in zip(logits, target.tolist())])  # (B, G)

    def is_kept(rows: list[int], mids: list[float]) -> list[bool]:
        masks = cut(ranks[rows], keep_count(mids, h * w, len(rows), images.device), (h, w))
        job = Job(len(rows), lambda lo, hi: (images[rows[lo:hi]], masks[lo:hi]))
        return (classify(masker, [job], batch, counter)[0].argmax(-1) == target[rows]).tolist()

    return torch.tensor(_bisect(*_bracket(kept, fractions), refine, is_kept), device=images.device)


# ---------------------------------------------------------------------------------- the exam's families
def allowed_failures(draws: int, rate: float) -> int:
    """The most draws a region may lose while keeping the label on at least ``rate`` of ``draws``:
    max f such that (draws − f) / draws ≥ rate (3 of 16 at rate 0.8)."""
    if not 0 < rate <= 1 or draws < 1:
        raise ValueError(f"need draws >= 1 and 0 < rate <= 1, got {draws}, {rate}")
    return max(f for f in range(draws + 1) if (draws - f) >= rate * draws - 1e-9)


def _planted_job(draws: ExamDraws, masks: torch.Tensor, which: list[int]) -> Job:
    """Inputs of masks (n, 1, H, W) planted on the draws ``which``, mask-major (n · len(which));
    ROAD's imputations are solved once for all masks, up front."""
    per = len(which)
    imputed = draws.imputations(masks) if draws.needs_imputation(which) else None

    def make(lo: int, hi: int) -> torch.Tensor:
        first, last = lo // per, -(-hi // per)
        rows = draws.planted(masks[first:last], which, None if imputed is None else imputed[first:last])
        return rows[lo - first * per :][: hi - lo]

    return Job(masks.shape[0] * per, make)


def _kept_on_draws(
    classifier: nn.Module,
    draws: ExamDraws,
    masks: torch.Tensor,
    y: int,
    which: list[int],
    chunk: int,
    counter: PassCounter | None,
) -> torch.Tensor:
    """(n, len(which)) bool: mask i planted on draw which[j] keeps label y."""
    if not len(masks) or not which:
        return torch.zeros(len(masks), len(which), dtype=torch.bool)
    logits = classify(classifier, [_planted_job(draws, masks, which)], chunk, counter)[0]
    return (logits.argmax(-1) == y).view(len(masks), len(which)).cpu()


@torch.no_grad()
def robustness_by_family(
    classifier: nn.Module,
    image: torch.Tensor,
    masks: torch.Tensor,
    draws: ExamDraws,
    target: int,
    chunk: int = 32,
    counter: PassCounter | None = None,
) -> dict[str, torch.Tensor]:
    """Per family of the exam (and ``all``): (n,) the fraction of its draws on which
    m ⊙ x + (1 − m) ⊙ r keeps the label, for masks (n, 1, H, W) of one image (1, 3, H, W)."""
    kept = _kept_on_draws(classifier, draws, masks, int(target), list(range(len(draws))), chunk, counter).float()
    out = {"all": kept.mean(1)}
    for name in dict.fromkeys(draws.names):
        columns = [j for j, n in enumerate(draws.names) if n == name]
        out[name] = kept[:, columns].mean(1)
    return out


@torch.no_grad()
def robustness(
    classifier: nn.Module,
    images: torch.Tensor,
    masks: torch.Tensor,
    exam: Exam,
    keys: list[str],
    target: torch.Tensor | None = None,
    chunk: int = 32,
    counter: PassCounter | None = None,
) -> torch.Tensor:
    """(B,) fraction of the exam's draws on which m ⊙ x + (1 − m) ⊙ r keeps the label.

    Image i's draws come from the exam's generator for ``keys[i]`` (its name), so every map of
    an image is judged on the same draws, whatever the order of the images.
    """
    if len(keys) != images.shape[0]:
        raise ValueError(f"robustness needs one key per image, got {len(keys)} keys for {images.shape[0]} images")
    target = _target(classifier, images, target)
    rates = [robustness_by_family(classifier, images[i : i + 1], masks[i : i + 1], exam.draws(images[i : i + 1], keys[i]),
                                  int(target[i]), chunk, counter)["all"][0] for i in range(images.shape[0])]  # fmt: skip
    return torch.stack(rates).to(images.device)


@torch.no_grad()
def robust_sufficient_area(
    classifier: nn.Module,
    image: torch.Tensor,
    maps: torch.Tensor,
    draws: ExamDraws,
    target: int,
    rate: float = 0.8,
    grid: tuple[float, ...] = SUFFICIENCY_GRID,
    refine: int = 4,
    stage: int = 4,
    group: int = 3,
    seed: int = 0,
    chunk: int = 32,
    counter: PassCounter | None = None,
) -> torch.Tensor:
    """(M,) the smallest top-k fraction of each map whose cut keeps the label on at least ``rate``
    of the exam's draws: the grid's first such fraction, then ``refine`` bisections below it.

    The grid is walked upwards, ``group`` fractions per map at a time, until a fraction passes (the
    larger ones are then never checked); a cut is checked ``stage`` draws at a time (the draws are
    interleaved by family) and dropped as soon as it has lost more than :func:`allowed_failures`
    of them, so a cut that is far from robust costs one stage. The answer is exactly that of checking
    every cut of the grid on every draw and taking the first that passes. The whole image always
    passes (x itself gets y), so the answer is at most 1.
    """
    m, (h, w) = maps.shape[0], image.shape[-2:]
    ranks = pixel_ranks(maps, seed)  # (M, H·W)
    allowed = allowed_failures(len(draws), rate)
    fractions = _grid(grid)
    y = int(target)

    def passes(rows: list[int], areas: list[float]) -> list[bool]:
        """Whether the cut of map rows[i] at areas[i] keeps the label on ``rate`` of the draws."""
        masks = cut(ranks[rows], keep_count(areas, h * w, len(rows), image.device), (h, w))
        failures = torch.zeros(len(rows), dtype=torch.long)
        alive = torch.tensor([a < 1.0 for a in areas])  # the whole image is x itself
        for lo in range(0, len(draws), stage):
            idx = alive.nonzero().flatten()
            if not len(idx):
                break
            kept = _kept_on_draws(classifier, draws, masks[idx.to(masks.device)], y, list(range(lo, min(lo + stage, len(draws)))),
                                  chunk, counter)  # fmt: skip
            failures[idx] += (~kept).sum(1)
            alive &= failures <= allowed
        return [bool(f <= allowed) for f in failures]

    kept = torch.zeros(m, len(fractions), dtype=torch.bool)  # True at each map's first passing fraction only
    start = [0] * m
    while True:
        todo = [(i, j) for i in range(m) if not kept[i].any() for j in range(start[i], min(start[i] + group, len(fractions)))]
        if not todo:
            break
        for (i, j), ok in zip(todo, passes([i for i, _ in todo], [fractions[j] for _, j in todo])):
            if ok and not kept[i].any():
                kept[i, j] = True  # todo lists each map's fractions in increasing order
        for i in range(m):
            start[i] += group
    return torch.tensor(_bisect(*_bracket(kept, torch.tensor(fractions)), refine, passes), device=image.device)


# ---------------------------------------------------------------------------------- perturbing the region
def dilate(masks: torch.Tensor, size: int = 3) -> torch.Tensor:
    """(B, 1, H, W) the masks with every pixel within the ``size`` × ``size`` window of a kept pixel added."""
    return F.max_pool2d(masks, size, stride=1, padding=size // 2)


def shifted(masks: torch.Tensor) -> torch.Tensor:
    """(4B, 1, H, W): each mask moved one pixel right, left, down and up (the pixels moved in are
    removed), shift-major: rows 0..B−1 are the masks moved right."""
    right = F.pad(masks[..., :, :-1], (1, 0, 0, 0))
    left = F.pad(masks[..., :, 1:], (0, 1, 0, 0))
    down = F.pad(masks[..., :-1, :], (0, 0, 1, 0))
    up = F.pad(masks[..., 1:, :], (0, 0, 0, 1))
    return torch.cat([right, left, down, up])


def read_back(masks: torch.Tensor, file_size: tuple[int, int]) -> torch.Tensor:
    """(B, 1, H, W) the masks as a user gets them back from ``mask.png``: written at the photo's size
    ``file_size`` (nearest, as ``actmatch explain`` writes it), then resized to the model's size with the
    loader's resize (bicubic, antialiased) and thresholded at 0.5."""
    size = masks.shape[-2:]
    written = F.interpolate(masks.float(), size=file_size, mode="nearest")  # the file's pixels
    back = F.interpolate(written, size=size, mode="bicubic", align_corners=False, antialias=True)
    return (back > 0.5).to(masks.dtype)


def bounding_boxes(masks: torch.Tensor) -> list[tuple[int, int, int, int]]:
    """The tightest box (top, left, bottom, right), bottom/right exclusive, around each mask's kept
    pixels; the whole image for an empty mask."""
    boxes = []
    h, w = masks.shape[-2:]
    for mask in masks[:, 0] > 0:
        rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
        if not len(rows):
            boxes.append((0, 0, h, w))
        else:
            boxes.append((int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1))
    return boxes


def crop_resize(image: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
    """(1, 3, H, W): the box of ``image`` (1, 3, H, W) cropped and resized (bilinear) to the image's size."""
    top, left, bottom, right = box
    crop = image[..., top:bottom, left:right]
    return F.interpolate(crop, size=image.shape[-2:], mode="bilinear", align_corners=False).clamp(0, 1)


def dg_score(box_area: torch.Tensor | float, probability: torch.Tensor | float) -> torch.Tensor:
    """Dabkowski & Gal's saliency metric s(a, p) = log max(a, 0.05) − log p (lower is better)."""
    a = torch.as_tensor(box_area, dtype=torch.float64)
    p = torch.as_tensor(probability, dtype=torch.float64)
    return torch.log(a.clamp_min(0.05)) - torch.log(p.clamp_min(1e-30))


# ---------------------------------------------------------------------------------- comparing two maps
def _average_ranks(values: torch.Tensor) -> torch.Tensor:
    """(B, N) ranks 1..N of each row, ties given their average rank (as scipy.stats.rankdata)."""
    from scipy.stats import rankdata

    return torch.from_numpy(rankdata(values.detach().double().cpu().numpy(), axis=1)).to(torch.float64)


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B,) Spearman's ρ between maps a and b (B, 1, H, W): Pearson's r of their average ranks
    (NaN where a map is constant)."""
    ra, rb = _average_ranks(a.flatten(1)), _average_ranks(b.flatten(1))
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    denominator = (ra.pow(2).sum(1) * rb.pow(2).sum(1)).sqrt()
    return torch.where(denominator > 0, (ra * rb).sum(1) / denominator.clamp_min(1e-300), torch.nan)


def top_iou(a: torch.Tensor, b: torch.Tensor, fraction: float = 0.1, seed: int = 0) -> torch.Tensor:
    """(B,) |A ∩ B| / |A ∪ B| of the top ``fraction`` cuts of maps a and b (B, 1, H, W)."""
    h, w = a.shape[-2:]
    k = keep_count(fraction, h * w, a.shape[0], a.device)
    ca, cb = cut(pixel_ranks(a, seed), k, (h, w)).flatten(1), cut(pixel_ranks(b, seed), k, (h, w)).flatten(1)
    return (ca * cb).sum(1) / (ca + cb).clamp_max(1).sum(1).clamp_min(1)


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
    total: torch.Tensor  # states (add_state)
    count: torch.Tensor

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
    classifier: FrozenClassifier  # kept by _keep

    def __init__(self, classifier: FrozenClassifier, steps: int = 50, batch: int = 32, **kwargs) -> None:
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
    """Mean fraction of the exam's draws that keep the label. ``update(images, masks, keys, target=None)``."""

    higher_is_better = True
    classifier: nn.Module  # kept by _keep
    exam: Exam

    def __init__(self, classifier: nn.Module, exam: Exam, **kwargs) -> None:
        super().__init__(**kwargs)
        self._keep(classifier=classifier, exam=exam)

    def values(
        self, images: torch.Tensor, masks: torch.Tensor, keys: list[str], target: torch.Tensor | None = None
    ) -> torch.Tensor:
        return robustness(self.classifier, images, masks, self.exam, keys, target)


class SmallestSufficientArea(MeanMetric):
    """Mean smallest sufficient top-k fraction. ``update(images, saliency, target=None)``."""

    higher_is_better = False
    masker: Masker  # kept by _keep

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
