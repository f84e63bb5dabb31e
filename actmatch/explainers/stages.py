"""Post-fit stages: what happens to the selected masks after the optimisation loop.

A fit (:class:`~actmatch.explainers.fitting.FitStrategy`) selects one mask per image among the
masks its steps produced; its ``stages`` then refine that mask in order, each asking the recipe's
one criterion (:mod:`actmatch.explainers.criteria`) whether a mask keeps the decision:

* :class:`Verify`: the smallest robust step mask that also passes the criterion's own backgrounds.
* :class:`Scan`: the smallest accepted cut of the selected step's ranking.
* :class:`Grow`: where the criterion refuses the mask, the smallest accepted cut above it.
* :class:`Prune`: backward elimination of the grid cells the decision does not need.
* :class:`BorderFree`: a cut that leaves the image's border band alone, where it is not much larger.
* :class:`BandTrim`: the mask without the border band, where that keeps the decision.

Every stage runs without gradient (forward passes only) and classifies through the fit's counted
classifier, so the fit result reports the images each one classified. Override point:
:meth:`Stage.run` (update :class:`FitState` in place) and :meth:`Stage.check` (refuse a recipe
the stage cannot serve, naming the fix).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TypeVar

import torch

from actmatch.explainers.criteria import Check, Criterion, RobustOn
from actmatch.explainers.masks import border_band, cut, keep_count, pixel_ranks
from actmatch.explainers.pruning import prune_cells

__all__ = [
    "Stage",
    "FitState",
    "Scan",
    "Grow",
    "Prune",
    "BorderFree",
    "BandTrim",
    "Verify",
    "logistic_blobs",
    "areas_below",
    "areas_above",
    "smallest_accepted_cut",
    "bisected_accepted_cut",
    "pruned",
]

_S = TypeVar("_S", bound="Stage")


@dataclass
class FitState:
    """What the stages read and update: the batch, its selected masks (changed in place) and what
    the fit kept for them.

    ``candidates[i]``: image i's smallest robust step masks, as (area, mask (1, H, W), soft), by
    increasing area (collected for the stages that ask for them, :attr:`Stage.candidates`).
    ``kept_found[i]``: whether any step (or lookahead cut) of image i was accepted.
    ``known[i]``: the recipe's criterion's verdict on ``masks[i]`` as given, where the caller already
    has it (an amortized pass classifies its own explanations); read by :meth:`known_verdict` only
    while the mask is unchanged.
    """

    classifier: object  # images (n, 3, H, W) -> logits (n, K), with a ``data_config``
    images: torch.Tensor  # (B, 3, H, W)
    logits_x: torch.Tensor  # (B, K) of the originals
    target: torch.Tensor  # (B,)
    masks: torch.Tensor  # (B, 1, H, W) hard, updated in place
    soft: torch.Tensor  # (B, 1, H, W) the U-Net's probabilities of the selected step: the ranking
    criterion: Criterion
    stages: list = field(default_factory=list)
    kept_found: torch.Tensor | None = None  # (B,) bool; None: all True
    candidates: list = field(default_factory=list)
    known: torch.Tensor | None = None  # (B,) bool; None: no verdict known

    def __post_init__(self) -> None:
        self._known_masks = self.masks.clone() if self.known is not None else None

    def check(self, i: int, criterion: Criterion | None = None) -> Check:
        """The recipe's criterion (or ``criterion``) bound to image i (what it draws is drawn here)."""
        one = slice(i, i + 1)
        return (criterion or self.criterion).bind(self.classifier, self.images[one], self.logits_x[one], self.target[one])

    def known_verdict(self, i: int, criterion: Criterion | None = None) -> bool | None:
        """The recipe's criterion's known verdict on image i's mask (:attr:`known`), if the mask is
        still the one it was given for and ``criterion`` is None (the recipe's); None otherwise."""
        if criterion is not None or self.known is None or self._known_masks is None:
            return None
        return bool(self.known[i]) if torch.equal(self.masks[i], self._known_masks[i]) else None

    def stage(self, kind: type[_S]) -> _S | None:
        """The first stage of the recipe of this class, if any."""
        return next((stage for stage in self.stages if isinstance(stage, kind)), None)


def logistic_blobs(size: tuple[int, int], seed: int, scale: float) -> torch.Tensor:
    """(1, 1, H, W) logistic noise of the given scale, drawn at a quarter of the resolution and
    upsampled bilinearly (blobs, not speckle); the same for the same seed."""
    h, w = size
    generator = torch.Generator().manual_seed(1_000_003 * (seed + 1))
    u = torch.rand((1, 1, max(1, h // 4), max(1, w // 4)), generator=generator).clamp(1e-6, 1 - 1e-6)
    noise = scale * (u.log() - (-u).log1p())
    return torch.nn.functional.interpolate(noise, size=(h, w), mode="bilinear", align_corners=False)


def areas_below(top: float, low: float, count: int, device) -> torch.Tensor:
    """``count`` areas from ``low`` up to (not including) ``top``, geometrically spaced, increasing."""
    return torch.logspace(math.log10(low), math.log10(top), count + 1, device=device)[:-1]


def areas_above(low: float, count: int, device, high: float = 1.0) -> torch.Tensor:
    """``count`` areas above ``low`` (not including it) up to ``high`` (the whole image by default),
    geometrically spaced, increasing."""
    return torch.logspace(math.log10(low), math.log10(high), count + 1, device=device)[1:]


def cuts_of(scores: torch.Tensor, fractions: torch.Tensor) -> torch.Tensor:
    """The cuts top_a(scores), a in ``fractions`` (n,), as (n, 1, H, W) masks of one ranking of
    ``scores`` (1, 1, H, W), computed once (:func:`~actmatch.explainers.masks.top_fraction_mask`'s
    ranking and rounding)."""
    ranks = pixel_ranks(scores)  # (1, H·W)
    n = fractions.shape[0]
    return cut(ranks.expand(n, -1), keep_count(fractions, ranks.shape[1], n, scores.device), (scores.shape[-2], scores.shape[-1]))


@torch.no_grad()
def smallest_accepted_cut(accepts, scores: torch.Tensor, fractions: torch.Tensor) -> torch.Tensor | None:
    """The smallest of the cuts top_a(scores), a in ``fractions`` (increasing), that ``accepts``
    (masks (n, 1, H, W) -> (n,) bool, e.g. :meth:`Check.accepts`) keeps; None if none is.

    Shapes: scores (1, 1, H, W); returns (1, H, W).
    """
    cuts = cuts_of(scores, fractions)  # (n, 1, H, W)
    kept = accepts(cuts)
    return cuts[int(kept.float().argmax())] if kept.any() else None


@torch.no_grad()
def bisected_accepted_cut(accepts, scores: torch.Tensor, fractions: torch.Tensor) -> torch.Tensor | None:
    """A cut top_a(scores), a in ``fractions`` (increasing), that ``accepts`` keeps while it refuses
    the next smaller one, found by bisection, one mask at a time: the smallest accepted cut where
    acceptance only grows with the area; None if the largest is refused. Tests ⌈log2 n⌉ masks, and
    the largest only where every smaller one tested was refused (instead of all n at once).

    Shapes: scores (1, 1, H, W); returns (1, H, W).
    """

    ranks = pixel_ranks(scores)  # (1, H·W), once for every cut tested

    def cut_at(k: int) -> torch.Tensor:
        return cut(
            ranks, keep_count(fractions[k : k + 1], ranks.shape[1], 1, scores.device), (scores.shape[-2], scores.shape[-1])
        )

    refused, accepted, found = -1, fractions.shape[0] - 1, None  # the largest is taken as accepted until tested
    while accepted - refused > 1:
        middle = (refused + accepted) // 2
        mask = cut_at(middle)
        if accepts(mask)[0]:
            accepted, found = middle, mask
        else:
            refused = middle
    if found is None:  # every cut tested was refused: the largest decides
        found = cut_at(accepted)
        if not accepts(found)[0]:
            return None
    return found[0]


@torch.no_grad()
def pruned(
    check: Check, mask: torch.Tensor, soft: torch.Tensor, cells: list[int], batch: int, border_first: bool = False
) -> torch.Tensor | None:
    """``mask`` (1, 1, H, W) pruned on the grids ``cells``, coarse to fine, each removal accepted by
    ``check`` (:func:`~actmatch.explainers.pruning.prune_cells`); None if the mask is not accepted."""
    if not check.accepted_prefix(mask)[0]:
        return None
    for cell in cells:
        mask = prune_cells(check.accepted_prefix, mask, soft, cell, batch, border_first)[0]
    return mask


class Stage:
    """Base class: one post-fit step on the selected masks.

    Override :meth:`run`; :meth:`check` refuses recipes the stage cannot serve; :attr:`candidates`
    asks the fit to keep that many of each image's smallest robust step masks.
    """

    #: the key of its count of classified images in the fit result's ``passes``
    name: str = "stage"
    #: how many of each image's smallest robust step masks the stage reads (0: none)
    candidates: int = 0

    #: what the stage's checks ask instead of the recipe's criterion (None: the recipe's)
    criterion: Criterion | None = None

    @property
    def families(self) -> frozenset[str]:
        """Perturbation families the stage draws itself, beyond the recipe's criterion's (which
        every check here goes through): its own criterion's, if it has one."""
        return frozenset(self.criterion.families) if self.criterion is not None else frozenset()

    def _own_criterion(self, criterion: Criterion | None) -> Criterion | None:
        """``criterion`` as the stage's own, or ValueError naming the fix."""
        if criterion is not None and not isinstance(criterion, Criterion):
            raise ValueError(f"{type(self).__name__}: criterion must be a Criterion (e.g. RobustOn(n=8)), got {criterion!r}")
        return criterion

    def check(self, strategy) -> None:
        """Raise ValueError, naming the fix, where ``strategy`` (its ``select``, ``criterion`` and
        ``stages``) is a recipe this stage cannot serve."""

    def run(self, fit: FitState) -> None:
        raise NotImplementedError

    def _needs_robust_criterion(self, strategy, what: str) -> None:
        if strategy.select == "smallest_robust" and not strategy.criterion.robust:
            raise ValueError(
                f"{type(self).__name__} checks {what} with the fill only (criterion "
                f"{strategy.criterion!r}); after select='smallest_robust' use a robust criterion "
                f"(e.g. AllOf([Sufficient(), RobustOn(n=8)])) to keep robust masks robust, or "
                f"select='smallest_kept' (or 'last')"
            )

    def settings(self) -> dict:
        """What the stage was built with, as its repr (and so the recipe digest) shows it."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.settings().items())
        return f"{type(self).__name__}({args})"


class Scan(Stage):
    """The smallest accepted cut of the selected step's ranking (the U-Net's probabilities).

    Per image, with a the mask's area: cut the ranking at ``areas`` areas geometrically spaced in
    [min_area, a) and keep the smallest cut the criterion accepts. Where the fit never accepted a
    mask, first cut at ``areas`` areas in (a, 1] (the whole image, which keeps the label with the
    fill) and take the smallest accepted. Then ``draws`` times: cut a noisy copy of the ranking
    (its logits plus logistic blobs, ``noise`` × their spread, seeded by the draw) below the
    current area and keep the smallest accepted cut: cheap extra candidates near the ranking.

    Args:
        areas: cuts per scan (1..1024).
        min_area: the smallest area tried.
        draws: noisy copies scanned after it (0..256).
        noise: the noise scale of those draws.

    Cost: per image, one pass of ``areas`` masks through the criterion (two where the fit never
    accepted a mask), plus one per draw; at most (2 + draws) · areas masks.
    """

    name = "scan"

    def __init__(self, areas: int = 24, min_area: float = 0.005, draws: int = 0, noise: float = 0.5) -> None:
        if not 1 <= areas <= 1024 or not 0 < min_area < 1:
            raise ValueError(f"Scan: need 1 <= areas <= 1024 and 0 < min_area < 1, got areas={areas}, min_area={min_area}")
        if not 0 <= draws <= 256 or noise < 0:
            raise ValueError(f"Scan: need 0 <= draws <= 256 and noise >= 0, got draws={draws}, noise={noise}")
        self.areas, self.min_area, self.draws, self.noise = areas, min_area, draws, noise

    def check(self, strategy) -> None:
        self._needs_robust_criterion(strategy, "cuts")

    @torch.no_grad()
    def run(self, fit: FitState) -> None:
        masks, device = fit.masks, fit.images.device
        for i in range(fit.images.shape[0]):
            one = slice(i, i + 1)
            check = fit.check(i)
            if fit.kept_found is not None and not fit.kept_found[i]:
                grid = areas_above(max(masks[i].mean().item(), self.min_area), self.areas, device)
                cut = smallest_accepted_cut(check.accepts, fit.soft[one], grid)
                if cut is not None:
                    masks[i] = cut
            area = masks[i].mean().item()
            if area <= self.min_area:
                continue
            grid = areas_below(area, self.min_area, self.areas, device)
            cut = smallest_accepted_cut(check.accepts, fit.soft[one], grid)
            if cut is not None:
                masks[i] = cut
            ranking = torch.logit(fit.soft[one].clamp(1e-6, 1 - 1e-6))
            for draw in range(self.draws):
                area = masks[i].mean().item()
                if area <= self.min_area:
                    break
                noisy = (
                    ranking + logistic_blobs((ranking.shape[-2], ranking.shape[-1]), draw, self.noise).to(ranking) * ranking.std()
                )
                cut = smallest_accepted_cut(check.accepts, noisy, areas_below(area, self.min_area, self.areas, device))
                if cut is not None:
                    masks[i] = cut


class Grow(Stage):
    """Where the criterion refuses the mask, the smallest accepted cut of the same ranking above it.

    A step answers only the criterion's fill parts; a part it cannot answer
    (:class:`~actmatch.explainers.criteria.RobustOn`: the step's masks never met its backgrounds) may
    refuse the selected mask, and :class:`Scan` only looks below it. Per image, with a the mask's
    area: test the mask; if refused, cut the ranking at ``areas`` areas geometrically spaced in
    (a, 1] (in (a, min(1, max_factor · a)] with ``max_factor``) and keep the smallest cut the
    criterion accepts (the whole image, a = 1, always keeps the label). The same backgrounds judge
    the mask and its cuts.

    Args:
        areas: cuts above the mask (1..1024).
        criterion: what the mask must pass here, instead of the recipe's (e.g. ``RobustOn`` only at
            the end, so that the steps, the lookahead and the scan keep the recipe's own criterion).
        max_factor: the most the mask may grow: cuts in (a, min(1, max_factor · a)]; where none of
            them is accepted the mask stays as it is (None: up to the whole image, which always
            keeps the label). A classifier whose evidence does not survive other surroundings at any
            small size then keeps its small mask instead of most of the image.
        bisect: find the cut by bisection (:func:`bisected_accepted_cut`: about log2(areas) masks,
            one at a time; the smallest accepted where acceptance only grows with the area) instead
            of testing every cut in one pass (the smallest accepted, always).

    Cost: per image, one test of the mask (none where :attr:`FitState.known` has its verdict); where it
    is refused, one pass of ``areas`` masks (with ``bisect``, ⌈log2 areas⌉ to ⌈log2 areas⌉ + 1 passes of one).
    """

    name = "grow"

    def __init__(
        self, areas: int = 16, criterion: Criterion | None = None, max_factor: float | None = None, bisect: bool = False
    ) -> None:
        if not 1 <= areas <= 1024:
            raise ValueError(f"Grow: need 1 <= areas <= 1024, got areas={areas}")
        if max_factor is not None and not max_factor > 1:
            raise ValueError(f"Grow: max_factor must be > 1 (e.g. 2.0: at most twice the area) or None, got {max_factor}")
        self.areas, self.criterion, self.max_factor = areas, self._own_criterion(criterion), max_factor
        self.bisect = bisect

    def settings(self) -> dict:
        """As :meth:`Stage.settings`, without ``bisect`` where it is off: a recipe written before it
        existed keeps its digest."""
        settings = super().settings()
        if not self.bisect:
            del settings["bisect"]
        return settings

    @torch.no_grad()
    def run(self, fit: FitState) -> None:
        masks, device = fit.masks, fit.images.device
        for i in range(fit.images.shape[0]):
            one = slice(i, i + 1)
            known = fit.known_verdict(i, self.criterion)
            if known:
                continue
            check = fit.check(i, self.criterion)
            if known is None and check.accepts(masks[one])[0]:
                continue
            area = max(masks[i].mean().item(), 1.0 / masks[i].numel())
            high = 1.0 if self.max_factor is None else min(1.0, self.max_factor * area)
            if high <= area:
                continue
            grid = areas_above(area, self.areas, device, high)
            search = bisected_accepted_cut if self.bisect else smallest_accepted_cut
            cut = search(check.accepts, fit.soft[one], grid)
            if cut is not None:
                masks[i] = cut


class Prune(Stage):
    """Backward elimination: drop every grid cell of the mask whose removal the criterion accepts.

    Per image whose mask the criterion accepts, for each cell size c (coarse to fine): visit the
    c × c cells holding mask pixels from the least to the most probable under the U-Net (the
    border's cells first with ``border_first``) and drop each one whose removal is accepted:
    m ← m \\ cell if accepted(m \\ cell) (:func:`~actmatch.explainers.pruning.prune_cells`; up to
    ``batch`` cumulative removals per pass). With a robust criterion the criterion's backgrounds
    are drawn once per image, so every removal faces the same ones.

    Args:
        cells: cell sizes in pixels, coarse to fine (1 to 8 sizes, each >= 1), e.g. ``[32, 16, 8]``.
        batch: the most removals tested in one pass (1..1024).
        border_first: visit the cells on the image's border before the others.

    Cost: per image, one test of the mask, then per grid at most one pass per occupied cell
    (⌈H/c⌉·⌈W/c⌉ cells), each of up to ``batch`` removals; each removal through the criterion (the
    fill first, the backgrounds only up to the first removal rejected).
    """

    name = "prune"

    def __init__(self, cells: list[int] | tuple[int, ...] = (32, 16, 8), batch: int = 8, border_first: bool = False) -> None:
        cells = [int(size) for size in cells]
        if not 1 <= len(cells) <= 8 or any(size < 1 for size in cells) or not 1 <= batch <= 1024:
            raise ValueError(
                f"Prune: cells takes 1 to 8 cell sizes >= 1 (pixels, e.g. [16, 8]) and "
                f"1 <= batch <= 1024, got cells={cells}, batch={batch}"
            )
        self.cells, self.batch, self.border_first = cells, batch, border_first

    def check(self, strategy) -> None:
        self._needs_robust_criterion(strategy, "removals")

    @torch.no_grad()
    def run(self, fit: FitState) -> None:
        for i in range(fit.images.shape[0]):
            one = slice(i, i + 1)
            mask = pruned(fit.check(i), fit.masks[one], fit.soft[one], self.cells, self.batch, self.border_first)
            if mask is not None:  # only an accepted mask is pruned
                fit.masks[one] = mask


class BorderFree(Stage):
    """A mask that leaves the image's border alone, where one not much larger keeps the decision.

    Per image whose mask keeps pixels of the border band (``width`` × the short side,
    :func:`~actmatch.explainers.masks.border_band`): cut the same ranking with the band ranked last
    at the recipe's :class:`Scan` ``areas`` areas from min(min_area, a) up to the whole image, remove
    the band from the smallest accepted cut, prune it on the recipe's :class:`Prune` grids (least
    probable cell first, never border first; no pruning without a Prune stage), and return it
    instead if it is accepted and at most ``factor`` × the mask's area a. Where no band-free mask that
    small keeps the decision (evidence only the border holds, e.g. a watermark) the mask stays.

    Args:
        factor: the largest area ratio of the band-free mask to the mask it replaces (>= 1).
        width: the band's width as a fraction of the image's short side (0 < width < 0.5).
        criterion: what the band-free mask must pass, instead of the recipe's (e.g. the
            ``AllOf([Confident, RobustOn])`` of a :class:`Grow` before it, so that the cut keeps what
            the grown mask was accepted for).

    Cost: per image with band pixels, one pass of ``areas`` masks and one pruning (see :class:`Prune`).
    """

    name = "border_free"

    def __init__(self, factor: float = 1.5, width: float = 0.03, criterion: Criterion | None = None) -> None:
        if not factor >= 1 or not 0 < width < 0.5:
            raise ValueError(
                f"BorderFree: need factor >= 1 (a size ratio) and 0 < width < 0.5, got factor={factor}, width={width}"
            )
        self.factor, self.width, self.criterion = factor, width, self._own_criterion(criterion)

    def check(self, strategy) -> None:
        if not any(isinstance(stage, Scan) for stage in strategy.stages):
            raise ValueError(
                "BorderFree cuts the ranking as the scan does; it needs a Scan stage in the recipe's stages (e.g. Scan(areas=24))"
            )
        self._needs_robust_criterion(strategy, "its band-free mask")

    @torch.no_grad()
    def run(self, fit: FitState) -> None:
        scan, prune = fit.stage(Scan), fit.stage(Prune)
        cells, batch = (prune.cells, prune.batch) if prune is not None else ([], 1)
        assert scan is not None  # check() refused a recipe without a Scan stage
        masks, device = fit.masks, fit.images.device
        band = border_band(masks[:1], self.width)  # (1, 1, H, W)
        for i in range(fit.images.shape[0]):
            one = slice(i, i + 1)
            if not masks[one][band].any():
                continue
            area = masks[i].mean().item()
            grid = torch.logspace(math.log10(min(scan.min_area, area)), 0.0, scan.areas, device=device)
            ranking = fit.soft[one].masked_fill(band, -1.0)  # band pixels rank last
            check = fit.check(i, self.criterion)
            cut = smallest_accepted_cut(check.accepts, ranking, grid)
            if cut is None:
                continue  # only with the border is the decision kept: the mask stays
            cut = cut[None] * (~band)  # a cut larger than the interior reaches into the band
            cut = pruned(check, cut, fit.soft[one], cells, batch)
            if cut is None or cut.mean().item() > self.factor * area:
                continue  # the interior alone needs a much larger mask: the mask stays
            masks[one] = cut


class BandTrim(Stage):
    """The mask without the image's border band, where that alone keeps the decision.

    Per image whose mask keeps pixels of the border band (``width`` × the short side,
    :func:`~actmatch.explainers.masks.border_band`): m' = m ⊙ (1 − band); m' replaces m if the
    criterion accepts it. m' is never larger than m. Where the decision needs the band (a frame, a
    watermark, an object the border cuts), the mask stays; :class:`BorderFree` after it can then
    look for a larger band-free cut of the ranking.

    Args:
        width: the band's width as a fraction of the image's short side (0 < width < 0.5).
        criterion: what the trimmed mask must pass, instead of the recipe's.

    Cost: one test per image with band pixels.
    """

    name = "band_trim"

    def __init__(self, width: float = 0.03, criterion: Criterion | None = None) -> None:
        if not 0 < width < 0.5:
            raise ValueError(f"BandTrim: need 0 < width < 0.5 (a fraction of the short side), got width={width}")
        self.width, self.criterion = width, self._own_criterion(criterion)

    def check(self, strategy) -> None:
        self._needs_robust_criterion(strategy, "its trimmed mask")

    @torch.no_grad()
    def run(self, fit: FitState) -> None:
        masks = fit.masks
        band = border_band(masks[:1], self.width)  # (1, 1, H, W)
        for i in range(fit.images.shape[0]):
            one = slice(i, i + 1)
            if not masks[one][band].any():
                continue
            trimmed = masks[one] * ~band
            if fit.check(i, self.criterion).accepts(trimmed)[0]:
                masks[one] = trimmed


class Verify(Stage):
    """The smallest of the fit's robust step masks that also passes the criterion's own backgrounds.

    The fit keeps, per image, the ``candidates`` smallest masks that a step accepted and that kept
    the label on every background the step's loss terms drew. Each, smallest first, is checked
    on the :class:`~actmatch.explainers.criteria.RobustOn` parts of the criterion (fresh
    backgrounds per candidate; the fill parts a step already answered) and the first that passes
    is returned: filters masks that passed a step's few backgrounds by luck. Where none passes,
    the mask stays as selected (``smallest``) or becomes the candidate that kept the label on the
    most backgrounds, the smallest of those (``most_kept``).

    Args:
        candidates: robust step masks kept per image (1..64).
        fallback: ``smallest`` or ``most_kept``.

    Cost: per image, one pass of n images (the RobustOn's backgrounds) per candidate checked, at
    most ``candidates`` passes. Needs ``select: smallest_robust`` and a robust criterion; comes
    first among the stages (it replaces the selected mask by a step's).
    """

    name = "verify"
    FALLBACKS = ("smallest", "most_kept")

    def __init__(self, candidates: int = 6, fallback: str = "smallest") -> None:
        if not 1 <= candidates <= 64:
            raise ValueError(f"Verify: need 1 <= candidates <= 64, got {candidates}")
        if fallback not in self.FALLBACKS:
            raise ValueError(f"Verify: fallback is 'smallest' or 'most_kept', got {fallback!r}")
        self.candidates, self.fallback = candidates, fallback

    def check(self, strategy) -> None:
        if strategy.select != "smallest_robust":
            raise ValueError(f"Verify checks robust masks; it needs select='smallest_robust', got {strategy.select!r}")
        if not strategy.criterion.robust:
            raise ValueError(
                f"Verify checks candidates on backgrounds of the fit's own; the criterion "
                f"{strategy.criterion!r} has none: use e.g. AllOf([Sufficient(), RobustOn(n=8)])"
            )
        if strategy.stages[0] is not self:
            raise ValueError(
                "Verify replaces the selected mask by a step's mask; it must be the first stage "
                "(after another stage it would undo that stage's work)"
            )

    @torch.no_grad()
    def run(self, fit: FitState) -> None:
        parts = [part for part in fit.criterion.parts if isinstance(part, RobustOn)]
        for i, items in enumerate(fit.candidates):
            x, logits_x, target = fit.images[i : i + 1], fit.logits_x[i : i + 1], fit.target[i : i + 1]
            best_kept, best = -1, None
            for _, mask, soft in items:
                checks = [part.bind(fit.classifier, x, logits_x, target) for part in parts]
                counts = [int(check.kept_counts(mask[None])[0]) for check in checks]
                if all(part.n - count <= part.allowed_failures for part, count in zip(parts, counts)):
                    fit.masks[i], fit.soft[i] = mask, soft
                    break
                if sum(counts) > best_kept:  # the smallest of the most-kept so far
                    best_kept, best = sum(counts), (mask, soft)
            else:
                if self.fallback == "most_kept" and best is not None:
                    fit.masks[i], fit.soft[i] = best
