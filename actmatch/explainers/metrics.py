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
* pointing game        the saliency maximum falls inside the ground-truth mask
* mask precision       |m ∧ g| / |m|
"""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics import Metric

from actmatch.explainers.backgrounds import BackgroundSampler, gaussian_blur, make_fill
from actmatch.explainers.convad import deactivate

__all__ = [
    "Masker",
    "PixelFill",
    "DeactivationMasker",
    "rank_pixels",
    "top_fraction_mask",
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


def _batched(fn, n: int, batch: int):
    """Concatenate ``fn(start, stop)`` over [0, n) in chunks of ``batch``."""
    return torch.cat([fn(s, min(n, s + batch)) for s in range(0, n, batch)])


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


def top_fraction_mask(saliency: torch.Tensor, fraction: float | torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Binary masks (B, 1, H, W) keeping the top ``fraction`` of pixels of each map.

    ``fraction`` is a float or a (B,) tensor; k = round(fraction · H · W).
    """
    b, _, h, w = saliency.shape
    fraction = torch.as_tensor(fraction, dtype=torch.float32, device=saliency.device).expand(b)
    ranks = torch.empty_like(saliency.flatten(1), dtype=torch.long)
    order = rank_pixels(saliency, seed)
    ranks.scatter_(1, order, torch.arange(h * w, device=saliency.device).expand(b, -1))
    k = (fraction * h * w).round().long().clamp(0, h * w)
    return (ranks < k[:, None]).float().view(b, 1, h, w)


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
) -> torch.Tensor:
    """(B, steps + 1) p_f(·)(y) along the RISE insertion or deletion path.

    Step i has the top ⌈i·H·W/steps⌉ pixels of the map inserted into the blurred copy
    (``insertion``) or replaced by the mean colour (``deletion``).
    """
    if mode not in ("insertion", "deletion"):
        raise ValueError(f"mode must be 'insertion' or 'deletion', got {mode!r}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    target = _target(classifier, images, target)
    b, _, h, w = images.shape
    ranks = torch.empty(b, h * w, dtype=torch.long, device=images.device)
    ranks.scatter_(1, rank_pixels(saliency, seed), torch.arange(h * w, device=images.device).expand(b, -1))
    counts = torch.ceil(torch.linspace(0, 1, steps + 1, device=images.device) * h * w).long()  # (S,)
    if mode == "insertion":
        start, finish = gaussian_blur(images), images
    else:
        start, finish = images, make_fill(images, "mean", classifier.data_config["mean"])
    curves = []
    for i in range(b):
        def probs(lo: int, hi: int, i: int = i) -> torch.Tensor:
            changed = (ranks[i][None] < counts[lo:hi, None]).float().view(-1, 1, h, w)  # (n, 1, H, W)
            x = changed * finish[i : i + 1] + (1 - changed) * start[i : i + 1]
            return classifier(x).softmax(-1)[:, target[i]]

        curves.append(_batched(probs, steps + 1, batch))
    return torch.stack(curves)


def _auc(curve: torch.Tensor) -> torch.Tensor:
    return torch.trapezoid(curve, dx=1.0 / (curve.shape[-1] - 1), dim=-1)


def insertion_auc(classifier: nn.Module, images: torch.Tensor, saliency: torch.Tensor, target: torch.Tensor | None = None, **kw) -> torch.Tensor:
    """(B,) area under the insertion curve (higher is better); see :func:`perturbation_curve`."""
    return _auc(perturbation_curve(classifier, images, saliency, target, "insertion", **kw))


def deletion_auc(classifier: nn.Module, images: torch.Tensor, saliency: torch.Tensor, target: torch.Tensor | None = None, **kw) -> torch.Tensor:
    """(B,) area under the deletion curve (lower is better); see :func:`perturbation_curve`."""
    return _auc(perturbation_curve(classifier, images, saliency, target, "deletion", **kw))


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
) -> torch.Tensor:
    """(B,) fraction of random backgrounds r on which m ⊙ x + (1 − m) ⊙ r keeps the label.

    Backgrounds cycle through ``kinds`` (:class:`BackgroundSampler`: solid colours, noise) and,
    when ``pool`` (N, 3, H, W) other images is given, the pool's images (resized to fit).
    """
    if backgrounds < 1:
        raise ValueError(f"backgrounds must be >= 1, got {backgrounds}")
    target = _target(classifier, images, target)
    b, _, h, w = images.shape
    with torch.random.fork_rng(devices=[images.device] if images.is_cuda else []):
        torch.manual_seed(seed)
        return _robustness(classifier, images, masks, target, backgrounds, kinds, pool, batch)


def _robustness(classifier, images, masks, target, backgrounds, kinds, pool, batch) -> torch.Tensor:
    b, _, h, w = images.shape
    sources = list(kinds) + (["pool"] if pool is not None and len(pool) else [])
    samplers = {k: BackgroundSampler([k]) for k in kinds}
    if pool is not None and len(pool):
        pool = torch.nn.functional.interpolate(pool.to(images), size=(h, w), mode="bilinear", align_corners=False)
    out = []
    for i in range(b):
        reps = images[i : i + 1].expand(backgrounds, -1, -1, -1)
        bg = torch.empty_like(reps)
        for j in range(backgrounds):
            kind = sources[j % len(sources)]
            bg[j] = pool[(j // len(sources)) % len(pool)] if kind == "pool" else samplers[kind](reps[j : j + 1])[0]
        planted = masks[i : i + 1] * reps + (1 - masks[i : i + 1]) * bg
        labels = _batched(lambda lo, hi: classifier(planted[lo:hi]).argmax(-1), backgrounds, batch)
        out.append((labels == target[i]).float().mean())
    return torch.stack(out)


@torch.no_grad()
def smallest_sufficient_area(
    masker: Masker,
    images: torch.Tensor,
    saliency: torch.Tensor,
    target: torch.Tensor | None = None,
    grid: tuple[float, ...] = SUFFICIENCY_GRID,
    refine: int = 4,
    seed: int = 0,
) -> torch.Tensor:
    """(B,) smallest fraction k of top-saliency pixels whose cut keeps the label.

    Scans ``grid`` (one batched pass per image), takes the first kept fraction, then bisects
    ``refine`` times between it and the grid point below (assuming monotonicity there). The
    whole image always keeps the label, so the answer is at most 1.
    """
    target = _target(masker.classifier, images, target)
    grid_t = torch.tensor(sorted(set(grid) | {1.0}), device=images.device)
    out = []
    for i in range(images.shape[0]):
        x, s, y = images[i : i + 1], saliency[i : i + 1], target[i]
        n = len(grid_t)
        masks = top_fraction_mask(s.expand(n, -1, -1, -1), grid_t, seed)
        kept = masker(x.expand(n, -1, -1, -1), masks).argmax(-1) == y
        first = int(kept.float().argmax()) if kept.any() else n - 1
        hi = float(grid_t[first])
        lo = float(grid_t[first - 1]) if first > 0 else 0.0
        for _ in range(refine if kept.any() else 0):
            mid = (lo + hi) / 2
            if bool(masker(x, top_fraction_mask(s, mid, seed)).argmax(-1) == y):
                hi = mid
            else:
                lo = mid
        out.append(hi)
    return torch.tensor(out, device=images.device)


def pointing_game(saliency: torch.Tensor, ground_truth: torch.Tensor, tolerance: int = 0) -> torch.Tensor:
    """(B,) bool: the saliency maximum lies inside ground truth (dilated by ``tolerance`` px)."""
    gt = ground_truth.float()
    if tolerance > 0:
        gt = torch.nn.functional.max_pool2d(gt, 2 * tolerance + 1, stride=1, padding=tolerance)
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
    """Pointing-game hit rate. ``update(saliency, ground_truth)``."""

    higher_is_better = True

    def __init__(self, tolerance: int = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.tolerance = tolerance

    def values(self, saliency: torch.Tensor, ground_truth: torch.Tensor) -> torch.Tensor:
        return pointing_game(saliency, ground_truth, self.tolerance).float()


class MaskPrecision(MeanMetric):
    """Mean |m ∧ g| / |m|. ``update(masks, ground_truth)``."""

    higher_is_better = True

    def values(self, masks: torch.Tensor, ground_truth: torch.Tensor) -> torch.Tensor:
        return mask_precision(masks, ground_truth)
