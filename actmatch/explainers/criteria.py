"""Acceptance criteria: does a mask keep the classifier's decision?

A criterion answers, for masks m of one image x with original top-1 label y = argmax f(x), which
explanations keep the decision. The fit's selection, its lookahead and every post-fit stage
(:mod:`actmatch.explainers.stages`: scan, pruning, border-free cut, verification) ask the recipe's
one criterion, so "what counts as sufficient" is chosen once, by ``class_path``.

* :class:`Sufficient`: argmax f(m ⊙ x + (1 − m) ⊙ fill) = y.
* :class:`Confident`: that, and p_f(e)(y) ≥ ratio · p_f(x)(y).
* :class:`RobustOn`: y kept (with an optional logit margin) on at least ``rate`` of n random
  backgrounds of the fit's own, m ⊙ x + (1 − m) ⊙ r_j.
* :class:`AllOf`: the conjunction, tested cheapest part first, each part only on the masks the
  parts before it accepted.

Override points: :meth:`Criterion.bind` (the criterion for one image: what it draws is drawn
there, once) returning a :class:`Check` whose :meth:`Check.accepts` and :meth:`Check.alive` test
masks, and :meth:`Criterion.accepts_step` (the answer from a fit step's own logits, no extra pass).
Every check classifies through the classifier it is given; the fit hands it a
:class:`CountedClassifier`, so each stage's forward passes are counted.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Iterable

import torch
from einops import rearrange

from actmatch.explainers.backgrounds import (
    FAMILY_OF_FILL,
    FAMILY_OF_KIND,
    FILLS,
    BackgroundSampler,
    cycled_backgrounds,
    make_fill,
)
from actmatch.explainers.losses import logit_margin

__all__ = ["Criterion", "Check", "Sufficient", "Confident", "RobustOn", "AllOf", "CountedClassifier"]


class CountedClassifier:
    """A classifier that adds the number of images of every call to ``passes[key]``."""

    def __init__(self, classifier, passes: dict[str, int], key: str) -> None:
        self.classifier, self.passes, self.key = classifier, passes, key

    @property
    def data_config(self) -> dict:
        return self.classifier.data_config

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.passes[self.key] = self.passes.get(self.key, 0) + images.shape[0]
        return self.classifier(images)


class Check:
    """A criterion bound to one image (1, 3, H, W): whatever it draws is drawn once, so every call
    asks the same question. ``cost``: the images it classifies per mask tested.

    Override :meth:`accepts`; :meth:`alive` (what pruning reads) defaults to it.
    """

    cost: int = 1

    def accepts(self, masks: torch.Tensor) -> torch.Tensor:
        """(n,) bool for masks (n, 1, H, W) of the image."""
        raise NotImplementedError

    def alive(self, masks: torch.Tensor, alive: int) -> int:
        """How many of ``masks[:alive]`` come before the first one this check rejects (the masks
        from ``alive`` on are not looked at)."""
        if not alive:
            return 0
        ok = self.accepts(masks[:alive])
        return int(ok.float().argmin()) if not ok.all() else alive

    def accepted_prefix(self, masks: torch.Tensor) -> torch.Tensor:
        """(n,) bool: True for every mask before the first rejected one, False from there on (all a
        backward elimination reads, :func:`~actmatch.explainers.pruning.prune_cells`)."""
        return torch.arange(masks.shape[0], device=masks.device) < self.alive(masks, masks.shape[0])


class Criterion:
    """Base class: does a mask keep the decision?

    Override :meth:`bind` (the check for one image) and :meth:`accepts_step`; state
    :attr:`families` (the perturbation families it uses:
    :data:`~actmatch.explainers.backgrounds.FAMILY_OF_KIND` and ``FAMILY_OF_FILL``).
    """

    @property
    def answered_by_step(self) -> bool:
        """Whether :meth:`accepts_step` answers the criterion from the step's own logits (a fill check);
        False where the check needs what only :meth:`bind` draws (the fit's own backgrounds). A
        subclass sets it as a class attribute."""
        return True

    def bind(self, classifier, image: torch.Tensor, logits_x: torch.Tensor, target: torch.Tensor) -> Check:
        """The check for one image (1, 3, H, W) with logits_x (1, K) and target (1,)."""
        raise NotImplementedError

    @torch.no_grad()
    def accepts(
        self, classifier, image: torch.Tensor, masks: torch.Tensor, logits_x: torch.Tensor, target: torch.Tensor
    ) -> torch.Tensor:
        """(n,) bool: which masks (n, 1, H, W) of one image keep the decision (no gradient)."""
        return self.bind(classifier, image, logits_x, target).accepts(masks)

    def accepts_step(self, out, target: torch.Tensor) -> torch.Tensor:
        """(B,) bool from a fit step's own logits (``out``: the step's
        :class:`~actmatch.explainers.module.StepOutput`), no extra forward pass."""
        raise NotImplementedError

    def accepts_logits(self, logits_e: torch.Tensor, logits_x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(B,) bool from the logits (B, K) of explanations built with the criterion's fill and of
        their originals, where :attr:`answered_by_step` (a fill check); ValueError otherwise."""
        raise ValueError(f"{self!r} needs its own backgrounds; ask it through bind(...).accepts(masks)")

    @property
    def parts(self) -> list[Criterion]:
        """The criteria this one is the conjunction of (itself for a single criterion)."""
        return [self]

    @property
    def families(self) -> frozenset[str]:
        raise NotImplementedError

    @property
    def fills(self) -> set[str]:
        """The fills its parts build explanations with."""
        return {part.fill for part in self.parts if isinstance(part, Sufficient)}

    @property
    def robust(self) -> bool:
        """Whether a part checks backgrounds of the fit's own (:class:`RobustOn`)."""
        return any(isinstance(part, RobustOn) for part in self.parts)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class Sufficient(Criterion):
    """Kept when the explanation with the fill keeps the label: argmax f(m ⊙ x + (1 − m) ⊙ fill) = y.

    Args:
        fill: ``mean`` (the dataset mean colour), ``black`` or ``blur``; the explainer's fill
            (the fit checks that they agree: a step's explanation is built with the explainer's).

    Cost: one image per mask.
    """

    def __init__(self, fill: str = "mean") -> None:
        if fill not in FILLS:
            raise ValueError(f"{type(self).__name__}: unknown fill {fill!r}; choose one of {FILLS}")
        self.fill = fill

    @property
    def families(self) -> frozenset[str]:
        return frozenset({FAMILY_OF_FILL[self.fill]})

    def kept(self, logits_e: torch.Tensor, logits_x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(n,) bool from the explanations' logits (n, K), the originals' (n, K) and targets (n,)."""
        return logits_e.argmax(-1) == target

    def accepts_step(self, out, target: torch.Tensor) -> torch.Tensor:
        return self.kept(out.evidence.logits_e.detach(), out.evidence.logits, target)

    def accepts_logits(self, logits_e: torch.Tensor, logits_x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.kept(logits_e, logits_x, target)

    def bind(self, classifier, image, logits_x, target) -> Check:
        return _FillCheck(self, classifier, image, logits_x, target)


class Confident(Sufficient):
    """Kept when the explanation with the fill keeps the label confidently: argmax f(e) = y and
    p_f(e)(y) ≥ ratio · p_f(x)(y), e = m ⊙ x + (1 − m) ⊙ fill.

    Args:
        ratio: in [0, 1]; 0 is :class:`Sufficient`.
        fill: as in :class:`Sufficient`.

    Cost: one image per mask.
    """

    def __init__(self, ratio: float = 0.8, fill: str = "mean") -> None:
        super().__init__(fill)
        if not 0 <= ratio <= 1:
            raise ValueError(f"Confident: ratio must be in [0, 1] (p_f(e)(y) >= ratio · p_f(x)(y)), got {ratio}")
        self.ratio = ratio

    def kept(self, logits_e, logits_x, target) -> torch.Tensor:
        kept = logits_e.argmax(-1) == target
        if self.ratio > 0:
            p_e = logits_e.softmax(-1).gather(1, target[:, None]).squeeze(1)
            p_x = logits_x.softmax(-1).gather(1, target[:, None]).squeeze(1)
            kept &= p_e >= self.ratio * p_x
        return kept


class _FillCheck(Check):
    def __init__(self, criterion: Sufficient, classifier, image, logits_x, target) -> None:
        self.criterion, self.classifier, self.image = criterion, classifier, image
        self.logits_x, self.target = logits_x, target
        self.fill = make_fill(image, criterion.fill, classifier.data_config["mean"])  # (1, 3, H, W)

    @torch.no_grad()
    def accepts(self, masks: torch.Tensor) -> torch.Tensor:
        n = masks.shape[0]
        logits = self.classifier(masks * self.image + (1 - masks) * self.fill)  # (n, K)
        return self.criterion.kept(logits, self.logits_x.expand(n, -1), self.target.expand(n))


class RobustOn(Criterion):
    """Kept when the label survives backgrounds of the fit's own: y is top-1 of
    f(m ⊙ x + (1 − m) ⊙ r_j), with z_y − max_{k≠y} z_k ≥ ``margin`` where margin > 0, for at least
    ``rate`` of n backgrounds r_1..r_n drawn per image (from the global RNG: the fit's seed).

    A mask that passes a step's few backgrounds by luck is filtered; with a margin, a mask that
    passes its own backgrounds is more likely to pass backgrounds it never saw.

    Args:
        kinds: the background kinds (:class:`~actmatch.explainers.backgrounds.BackgroundSampler`);
            a repeated kind is drawn more often, e.g. ``[solid, solid, solid, uniform, gaussian]``.
        n: backgrounds per image.
        rate: the fraction of them that must keep the label (at most ⌊n·(1 − rate)⌋ failures).
        margin: the logit margin (0: top-1 is enough).
        order: ``random`` (each background's kind drawn from ``kinds``) or ``cycle`` (background j
            is of kind ``kinds[j % len]``: every kind covered, however few backgrounds).

    Cost: n images per mask; tested for pruning (:meth:`Check.alive`) 2 backgrounds at a time,
    only on the masks before the first that already failed too often. A step cannot answer it
    (its backgrounds are drawn after the fit): :meth:`accepts_step` is True.
    """

    answered_by_step = False
    ORDERS = ("random", "cycle")
    #: backgrounds per forward pass in the staged test
    STAGE = 2

    def __init__(
        self,
        kinds: list[str] | tuple[str, ...] = ("solid", "uniform", "gaussian"),
        n: int = 8,
        rate: float = 0.875,
        margin: float = 0.0,
        order: str = "random",
    ) -> None:
        self.kinds = list(kinds)
        try:
            self._sampler = BackgroundSampler(self.kinds)
        except ValueError as err:
            raise ValueError(f"RobustOn: kinds takes background kinds from {BackgroundSampler.KINDS}, got {self.kinds}") from err
        if not 1 <= n <= 1024 or not 0 < rate <= 1:
            raise ValueError(f"RobustOn: need 1 <= n <= 1024 backgrounds and 0 < rate <= 1, got n={n}, rate={rate}")
        if margin < 0:
            raise ValueError(f"RobustOn: margin must be >= 0 (a logit margin), got {margin}")
        if order not in self.ORDERS:
            raise ValueError(f"RobustOn: order is 'random' or 'cycle', got {order!r}")
        self.n, self.rate, self.margin, self.order = n, rate, margin, order

    @property
    def families(self) -> frozenset[str]:
        return frozenset(FAMILY_OF_KIND[kind] for kind in self.kinds)

    @property
    def allowed_failures(self) -> int:
        """The most backgrounds that may lose the label: max f with (n − f) / n ≥ rate."""
        return max(f for f in range(self.n + 1) if (self.n - f) / self.n >= self.rate)

    def backgrounds(self, image: torch.Tensor) -> torch.Tensor:
        """(n, 3, H, W) backgrounds of the fit's own for one image (1, 3, H, W), from the global RNG."""
        if self.order == "cycle":
            return cycled_backgrounds(image, self.n, tuple(self.kinds))
        return self._sampler(image.expand(self.n, -1, -1, -1))

    def kept_on(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(N,) bool: y is top-1 of logits (N, K), with a margin of ``margin`` where it is > 0."""
        target = target.expand(logits.shape[0])
        if self.margin > 0:
            return logit_margin(logits, target) >= self.margin
        return logits.argmax(-1) == target

    def accepts_step(self, out, target: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(target, dtype=torch.bool)

    def bind(self, classifier, image, logits_x, target) -> _BackgroundCheck:
        return _BackgroundCheck(self, classifier, image, target)


class _BackgroundCheck(Check):
    def __init__(self, criterion: RobustOn, classifier, image, target) -> None:
        self.criterion, self.classifier, self.image, self.target = criterion, classifier, image, target
        self.backgrounds = criterion.backgrounds(image)  # (n, 3, H, W), drawn once
        self.cost = criterion.n

    def _logits(self, masks: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
        """(m, len(group), K): every mask (m, 1, H, W) planted on every background of ``group``,
        one pass (mask-major)."""
        planted = masks[:, None] * self.image[None] + (1 - masks[:, None]) * group[None]  # (m, g, 3, H, W)
        return rearrange(self.classifier(planted.flatten(0, 1)), "(m g) k -> m g k", m=masks.shape[0])

    @torch.no_grad()
    def kept_counts(self, masks: torch.Tensor) -> torch.Tensor:
        """(m,) how many backgrounds keep the label, for masks (m, 1, H, W); one pass of m·n images."""
        logits = self._logits(masks, self.backgrounds)
        return self.criterion.kept_on(logits.flatten(0, 1), self.target).view(masks.shape[0], -1).sum(1)

    def accepts(self, masks: torch.Tensor) -> torch.Tensor:
        return self.criterion.n - self.kept_counts(masks) <= self.criterion.allowed_failures

    @torch.no_grad()
    def alive(self, masks: torch.Tensor, alive: int) -> int:
        failures = torch.zeros(alive, dtype=torch.long, device=masks.device)
        for start in range(0, self.criterion.n, self.criterion.STAGE):
            if not alive:
                break
            logits = self._logits(masks[:alive], self.backgrounds[start : start + self.criterion.STAGE])
            failures[:alive] += (~self.criterion.kept_on(logits.flatten(0, 1), self.target)).view(alive, -1).sum(1)
            lost = failures[:alive] > self.criterion.allowed_failures
            alive = int(lost.float().argmax()) if lost.any() else alive
        return alive


def _conjunction(verdicts: Iterable[torch.Tensor]) -> torch.Tensor:
    """The elementwise AND of (B,) bool verdicts, in order (at least one)."""
    return functools.reduce(operator.and_, verdicts)


class AllOf(Criterion):
    """Kept when every one of ``criteria`` keeps it. Tested in stages, the cheapest part first
    (fewest images per mask; the fill before the backgrounds), each part only on the masks the
    parts before it accepted (for pruning: only on the masks before the first one rejected). The
    answer is the same as testing every mask on every part; a mask rejected early costs less.

    Args:
        criteria: the parts (nested :class:`AllOf` are flattened).
    """

    def __init__(self, criteria: list[Criterion]) -> None:
        criteria = list(criteria)
        if not criteria or not all(isinstance(c, Criterion) for c in criteria):
            raise ValueError(
                f"AllOf: criteria is a non-empty list of criteria (e.g. [Sufficient(), RobustOn()]), got {criteria!r}"
            )
        self.criteria = criteria

    @property
    def parts(self) -> list[Criterion]:
        return [part for c in self.criteria for part in c.parts]

    @property
    def answered_by_step(self) -> bool:
        return all(part.answered_by_step for part in self.parts)

    @property
    def families(self) -> frozenset[str]:
        return frozenset().union(*(c.families for c in self.criteria))

    def accepts_step(self, out, target: torch.Tensor) -> torch.Tensor:
        return _conjunction(part.accepts_step(out, target) for part in self.parts)

    def accepts_logits(self, logits_e: torch.Tensor, logits_x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return _conjunction(part.accepts_logits(logits_e, logits_x, target) for part in self.parts)

    def bind(self, classifier, image, logits_x, target) -> Check:
        return _AllChecks([part.bind(classifier, image, logits_x, target) for part in self.parts])


class _AllChecks(Check):
    def __init__(self, checks: list[Check]) -> None:
        self.checks = sorted(checks, key=lambda check: check.cost)  # stable: equal costs keep their order
        self.cost = sum(check.cost for check in checks)

    def accepts(self, masks: torch.Tensor) -> torch.Tensor:
        ok = torch.ones(masks.shape[0], dtype=torch.bool, device=masks.device)
        for check in self.checks:
            rows = ok.nonzero().flatten()
            if not len(rows):
                break
            ok[rows] = check.accepts(masks[rows])
        return ok

    def alive(self, masks: torch.Tensor, alive: int) -> int:
        for check in self.checks:
            alive = check.alive(masks, alive)
        return alive
