"""Per-image fitting strategies: how a mask U-Net is fitted to the images it explains.

The explainer owns the computation of one step (mask, explanation, every loss term, one batched
classifier pass, :meth:`ActMatchExplainer.step`). A strategy owns everything around it: what
is minimised with the step's terms, how the U-Net is updated, which of the masks seen during the
fit is selected, and the post-fit stages that refine it. Each is chosen by ``class_path`` in a
config, so every row of a study is a file under ``experiments/explain/``.

* :class:`PenaltyFit`: a fixed weighted sum of the terms (with their warm-ups), Adam.
* :class:`ConstrainedFit`: minimise the other terms (area first) subject to the constraint
  term (:class:`~actmatch.explainers.losses.LabelMargin`: the label kept with a logit margin on
  the fill and on random backgrounds), with one Lagrange multiplier per image updated by dual
  ascent (GECO-style, multiplicative) instead of a fixed weight and a warm-up.
* :class:`AreaContinuation`: each step keeps exactly a target fraction of the pixels, which
  shrinks while the step's mask is accepted.

What counts as keeping the decision is the strategy's ``criterion``
(:mod:`actmatch.explainers.criteria`); what happens after the loop is its list of ``stages``
(:mod:`actmatch.explainers.stages`), each asking that criterion.

Override points: :meth:`FitStrategy.objective` (the per-image loss of a step),
:meth:`FitStrategy.mask_model` (the module whose logits a step binarises),
:meth:`FitStrategy.after_step` (state updates such as the multipliers) and
:meth:`FitStrategy.found_masks` (masks the strategy checked itself, offered to the selection).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TypeVar

import torch
from torch import nn

from actmatch.explainers.backgrounds import FIT_KINDS
from actmatch.explainers.criteria import AllOf, Confident, CountedClassifier, Criterion, RobustOn, Sufficient
from actmatch.explainers.fit_checkpoint import network_spec
from actmatch.explainers.stages import (
    BandTrim,
    BorderFree,
    FitState,
    Grow,
    Scan,
    Stage,
    areas_below,
    logistic_blobs,
    smallest_accepted_cut,
)

__all__ = [
    "FitStrategy",
    "PenaltyFit",
    "ConstrainedFit",
    "AreaContinuation",
    "TopArea",
    "cut_between",
    "TopFraction",
    "RandomTopFraction",
    "FitResult",
    "SELECTIONS",
    "default_fitting",
]

_T = TypeVar("_T")


def _started(state: _T | None) -> _T:
    """A strategy's per-batch state, which its ``start(images)`` sets."""
    if state is None:
        raise RuntimeError("the fit strategy was not started: call start(images) first")
    return state


#: which of the masks seen during a fit is returned, per image
SELECTIONS = ("smallest_robust", "smallest_kept", "last")


@dataclass
class FitResult:
    """The selected masks of a fit, its per-step record and the images it classified.

    ``passes``: ``steps`` (the loop's batches, forward and backward), ``step_images`` (the images
    in them) and, per lookahead and stage (``lookahead``, ``verify``, ``scan``, ``prune``,
    ``border_free``), the images it classified forward-only.
    """

    masks: torch.Tensor  # (B, 1, H, W) hard
    soft: torch.Tensor  # (B, 1, H, W) the U-Net's probabilities at the selected step
    history: list[dict[str, float]] = field(default_factory=list)
    passes: dict[str, int] = field(default_factory=dict)

    @property
    def forward_only(self) -> int:
        """The images classified forward-only (lookahead and stages), over the whole batch."""
        return sum(count for key, count in self.passes.items() if key not in ("steps", "step_images"))


class _Best:
    """Per image, the smallest mask offered so far under a condition."""

    def __init__(self, images: torch.Tensor) -> None:
        b = images.shape[0]
        self.masks = torch.ones_like(images[:, :1])  # (B, 1, H, W)
        self.soft = torch.ones_like(images[:, :1])
        self.area = torch.full((b,), float("inf"), device=images.device)
        self.found = torch.zeros(b, dtype=torch.bool, device=images.device)

    def offer(self, mask: torch.Tensor, soft: torch.Tensor, ok: torch.Tensor) -> None:
        area = mask.flatten(1).float().mean(1)
        take = ok & (area < self.area)
        self.masks[take], self.soft[take] = mask[take].to(self.masks.dtype), soft[take].to(self.soft.dtype)
        self.area = torch.where(take, area, self.area)
        self.found |= ok


class _Candidates:
    """Per image, the ``k`` smallest masks offered under a condition, by increasing area."""

    def __init__(self, batch: int, k: int) -> None:
        self.k = k
        self.items: list[list[tuple[float, torch.Tensor, torch.Tensor]]] = [[] for _ in range(batch)]

    def offer(self, mask: torch.Tensor, soft: torch.Tensor, ok: torch.Tensor) -> None:
        area = mask.flatten(1).mean(1).tolist()
        for i in ok.nonzero().flatten().tolist():
            if len(self.items[i]) < self.k or area[i] < self.items[i][-1][0]:
                self.items[i].append((area[i], mask[i].clone(), soft[i].clone()))
                self.items[i] = sorted(self.items[i], key=lambda item: item[0])[: self.k]


class FitStrategy:
    """Base class: Adam on the U-Net for ``steps`` steps, a selection among the step masks, then
    the post-fit stages.

    Each step's mask is *kept* when the criterion accepts it from the step's own logits
    (:meth:`~actmatch.explainers.criteria.Criterion.accepts_step`: the fill) and *robust* when it is
    kept and the label also survives every random background the step's loss terms drew.

    Args:
        lr: Adam learning rate of the U-Net.
        select: which mask to return per image: ``smallest_robust`` (the smallest robust one;
            falls back to ``smallest_kept``), ``smallest_kept`` or ``last``. Images never kept
            return their last mask.
        criterion: what keeps the decision (:mod:`actmatch.explainers.criteria`); None:
            :class:`~actmatch.explainers.criteria.Sufficient` with the mean fill. Every stage and
            the lookahead ask it.
        stages: post-fit stages, run in order on the selected masks (:mod:`actmatch.explainers.stages`:
            ``Verify``, ``Scan``, ``Grow``, ``Prune``, ``BorderFree``, ``BandTrim``); None: none.
    """

    def __init__(
        self,
        lr: float = 0.002,
        select: str = "smallest_robust",
        criterion: Criterion | None = None,
        stages: list[Stage] | None = None,
    ) -> None:
        if select not in SELECTIONS:
            raise ValueError(f"{type(self).__name__}: unknown select {select!r}; choose one of {SELECTIONS}")
        if not lr > 0:
            raise ValueError(f"{type(self).__name__}: lr must be > 0, got {lr}")
        criterion = Sufficient() if criterion is None else criterion
        if not isinstance(criterion, Criterion):
            raise ValueError(
                f"{type(self).__name__}: criterion must be a Criterion (actmatch.explainers.criteria, "
                f"e.g. Sufficient()), got {criterion!r}"
            )
        stages = list(stages or [])
        if not all(isinstance(stage, Stage) for stage in stages):
            raise ValueError(
                f"{type(self).__name__}: stages is a list of Stage (actmatch.explainers.stages, e.g. "
                f"[Scan(), Prune()]), got {stages!r}"
            )
        self.lr, self.select, self.criterion, self.stages = lr, select, criterion, stages
        for stage in stages:
            try:
                stage.check(self)
            except ValueError as err:
                raise ValueError(f"{type(self).__name__}: {err}") from None

    @property
    def families(self) -> frozenset[str]:
        """The perturbation families the criterion and the stages use (the loss terms' and the
        explainer's fill are the explainer's)."""
        return frozenset(self.criterion.families).union(*(stage.families for stage in self.stages))

    # ---------------------------------------------------------------- override points
    def start(self, images: torch.Tensor) -> None:
        """Reset per-fit state (called once before the first step)."""

    def objective(self, explainer, out, progress: float) -> torch.Tensor:
        """(B,) loss of one step; default: the explainer's weighted sum with warm-ups."""
        return out.loss

    def mask_model(self, unet: nn.Module) -> nn.Module:
        """The module whose logits the step binarises; default: the U-Net itself."""
        return unet

    def after_step(self, explainer, out, satisfied: torch.Tensor) -> dict[str, float]:
        """Update state after a step (``satisfied``: (B,) the step's mask was kept and robust);
        return extra values for the history."""
        return {}

    def found_masks(self) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Masks the strategy checked itself since the last call (e.g. a lookahead's cuts), as
        (mask (B, 1, H, W), soft (B, 1, H, W), kept (B,)) for the smallest-kept selection."""
        return []

    def check_fill(self, fill: str) -> None:
        """Raise ValueError, naming the fix, where the criterion checks with another fill than
        the explainer's ``fill`` (the one its masks are fitted and read with)."""
        fills = self.criterion.fills - {fill}
        if fills:
            raise ValueError(
                f"{type(self).__name__}: the criterion {self.criterion!r} checks with the fill "
                f"{sorted(fills)}, but the explainer's steps fill with {fill!r}; set the "
                f"criterion's fill to {fill!r} (or the explainer's fill to match)"
            )

    # ---------------------------------------------------------------- the loop
    def counted(self, explainer, key: str) -> CountedClassifier:
        """The explainer's classifier, counting the images it classifies under ``passes[key]``."""
        return CountedClassifier(explainer.classifier, self._passes, key)

    def fit(self, explainer, images: torch.Tensor, unet: nn.Module, reference, steps: int, progress=None) -> FitResult:
        """Fit ``unet`` on ``images`` (B, 3, H, W), select a mask per image and run the stages."""
        self.check_fill(explainer.fill)
        optimizer = torch.optim.Adam(unet.parameters(), lr=self.lr)
        target = reference[0].argmax(-1)
        robust_best, kept_best = _Best(images), _Best(images)
        k = max((stage.candidates for stage in self.stages), default=0)
        candidates = _Candidates(images.shape[0], max(k, 1))
        history = []
        self._passes = {"steps": 0, "step_images": 0}
        self.start(images)
        with torch.enable_grad():
            for i in range(steps):
                out = explainer.step(images, self.mask_model(unet), reference, progress=i / steps)
                mask, soft = out.evidence.mask.detach(), out.evidence.soft_mask.detach()
                self._passes["steps"] += 1
                self._passes["step_images"] += len(mask) + sum(len(v) for v in out.perturbed.values())
                kept = self.criterion.accepts_step(out, target)
                robust = kept & explainer.kept_on_backgrounds(out, target)
                kept_best.offer(mask, soft, kept)
                robust_best.offer(mask, soft, robust)
                if k:
                    candidates.offer(mask, soft, robust)
                loss = self.objective(explainer, out, i / steps)
                record = {
                    "loss": loss.mean().item(),
                    "area": mask.flatten(1).mean(1).mean().item(),
                    "kept": kept.float().mean().item(),
                    "robust": robust.float().mean().item(),
                }
                if i < steps - 1:  # the last update would never be evaluated
                    optimizer.zero_grad(set_to_none=True)
                    loss.sum().backward()  # Σ_i L_i: each image's U-Net gets exactly its own gradient
                    optimizer.step()
                record.update(self.after_step(explainer, out, robust))
                for found, found_soft, found_kept in self.found_masks():
                    kept_best.offer(found, found_soft, found_kept)
                history.append(record)
                if progress is not None:
                    progress(i + 1, steps)
        # start from the last mask, then let each rule override it where it found one (later wins)
        masks, soft_masks = mask.clone(), soft.clone()
        rules = {"smallest_robust": [kept_best, robust_best], "smallest_kept": [kept_best], "last": []}[self.select]
        for rule in rules:
            masks[rule.found], soft_masks[rule.found] = rule.masks[rule.found], rule.soft[rule.found]
        state = FitState(
            explainer.classifier,
            images,
            reference[0],
            target,
            masks,
            soft_masks,
            self.criterion,
            self.stages,
            kept_best.found,
            candidates.items,
        )
        for stage in self.stages:
            state.classifier = self.counted(explainer, stage.name)
            stage.run(state)
        return FitResult(state.masks, state.soft, history, dict(self._passes))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class PenaltyFit(FitStrategy):
    """Minimise the fixed weighted sum Σ_t w_t(progress) · L_t of the explainer's loss terms.

    w_t ramps from 0 over the term's ``warmup`` fraction of the steps (the area warm-up keeps
    the mask from collapsing before the label terms have shaped it).
    """


class ConstrainedFit(FitStrategy):
    """min_θ Σ_{t ≠ c} w_t · L_t(m_θ)  subject to  L_c(m_θ) = 0, by a per-image Lagrangian.

    L_c is the constraint term (default ``label_margin``: a hinge on the logit margin of the
    explanation with the fill and on random backgrounds). The loss of image i is
    Σ_{t≠c} w_t L_t + λ_i L_c; after each step the multiplier follows dual ascent in log space
    (Rezende & Viola 2018, "Taming VAEs" / GECO, with a sign step):

        λ_i ← clip(λ_i · exp(+η_up)) if L_c,i > 0   else  clip(λ_i · exp(−η_down)),

    so the pressure to keep the label grows while it is violated and relaxes while it holds,
    letting the area term shrink the mask right to the constraint's boundary (no warm-up).

    Args:
        lr: Adam learning rate of the U-Net.
        constraint: name of the loss term treated as the constraint (its weight is ignored).
        lambda_init: initial multiplier.
        dual_up: η_up, log-step of λ while the constraint is violated.
        dual_down: η_down, log-step of λ while it holds.
        lambda_min: lower clip of λ.
        lambda_max: upper clip of λ.
        select, criterion, stages: as in :class:`FitStrategy`.
    """

    def __init__(
        self,
        lr: float = 0.01,
        constraint: str = "label_margin",
        lambda_init: float = 1.0,
        dual_up: float = 0.3,
        dual_down: float = 0.1,
        lambda_min: float = 1e-3,
        lambda_max: float = 1e3,
        select: str = "smallest_robust",
        criterion: Criterion | None = None,
        stages: list[Stage] | None = None,
    ) -> None:
        super().__init__(lr, select, criterion, stages)
        if not (lambda_init > 0 and 0 < lambda_min <= lambda_max):
            raise ValueError(
                f"ConstrainedFit: need lambda_init > 0 and 0 < lambda_min <= lambda_max, got "
                f"{lambda_init}, {lambda_min}, {lambda_max}"
            )
        if dual_up < 0 or dual_down < 0:
            raise ValueError(f"ConstrainedFit: dual steps must be >= 0, got {dual_up}, {dual_down}")
        self.constraint = constraint
        self.lambda_init, self.dual_up, self.dual_down = lambda_init, dual_up, dual_down
        self.lambda_min, self.lambda_max = lambda_min, lambda_max
        self._log_lambda: torch.Tensor | None = None

    def start(self, images: torch.Tensor) -> None:
        self._log_lambda = torch.full((images.shape[0],), math.log(self.lambda_init), device=images.device)

    def objective(self, explainer, out, progress: float) -> torch.Tensor:
        if self.constraint not in out.terms:
            names = sorted(out.terms)
            raise ValueError(
                f"ConstrainedFit: the constraint term {self.constraint!r} is not among the explainer's "
                f"active loss terms {names}; add it (e.g. actmatch.explainers.losses.LabelMargin)"
            )
        total = _started(self._log_lambda).exp() * out.terms[self.constraint]
        for term in explainer.losses:
            if term.weight > 0 and term.name != self.constraint:
                total = total + term.weight_at(progress) * out.terms[term.name]
        return total

    @torch.no_grad()
    def after_step(self, explainer, out, satisfied: torch.Tensor) -> dict[str, float]:
        violated = out.terms[self.constraint].detach() > 0
        step = torch.where(violated, self.dual_up, -self.dual_down)
        lo, hi = math.log(self.lambda_min), math.log(self.lambda_max)
        self._log_lambda = (_started(self._log_lambda) + step).clamp(lo, hi)
        return {"lambda": self._log_lambda.exp().mean().item(), "violated": violated.float().mean().item()}


class TopArea(nn.Module):
    """Wraps a mask network so that exactly a fraction ``area[i]`` of image i's pixels is kept.

    The logits z are shifted per image by the midpoint t between the k-th and (k+1)-th largest
    value (k = round(a·H·W)): z' = z − t, so 1[z' > 0] keeps the k highest-ranked pixels. t is
    treated as a constant, so the straight-through gradient teaches the network the *ranking*.
    Where the k-th and (k+1)-th values are equal, no shift separates them and 1[z' > 0] keeps
    fewer than k pixels. A tie of a few pixels (bilinear upsampling makes some) is left as it is,
    as every measured recipe ran. Where the cut would keep fewer than k/2 (a plateau of identical
    logits, e.g. from dead ReLUs; the mask can come out empty), the image's ties are broken by a
    constant ramp over the pixel index, 10⁻³ of its logit spread (at least 10⁻³) in size.
    """

    def __init__(self, net: nn.Module, area: torch.Tensor, noise: torch.Tensor | None = None) -> None:
        super().__init__()
        self.net, self.area, self.noise = net, area, noise

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.net(images)  # (B, 1, H, W)
        if self.noise is not None:  # (1, 1, H, W), in units of each image's logit spread
            logits = logits + self.noise.to(logits) * logits.detach().flatten(1).std(1).view(-1, 1, 1, 1)
        n = logits[0].numel()
        k = (self.area.to(logits) * n).round().long().clamp(1, n - 1)  # (B,)
        flat = logits.detach().flatten(1)  # (B, N)
        t = cut_between(flat, k)  # (B, 1)
        plateau = (flat > t).sum(1, keepdim=True) < k[:, None] / 2  # (B, 1): the cut falls inside a plateau
        if plateau.any():
            spread = flat.std(1, keepdim=True).clamp_min(1.0)
            ramp = torch.linspace(0, 1, n, device=logits.device, dtype=logits.dtype).view_as(logits[:1])
            logits = logits + (1e-3 * spread * plateau).view(-1, 1, 1, 1) * ramp
            t = cut_between(logits.detach().flatten(1), k)
        return logits - t.view(-1, 1, 1, 1)


def cut_between(values: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """(B, 1): per row of ``values`` (B, N), the midpoint between its k-th and (k+1)-th largest
    value (1 <= k < N), with k (B,) per row. Two order statistics per row (``kthvalue``, linear
    time) instead of a sort: the same numbers as ``sorted(descending)[k − 1]`` and ``[k]``."""
    n = values.shape[1]
    rows = []
    for row, k_row in zip(values, k.tolist()):
        above = row.kthvalue(n - k_row + 1).values  # the k-th largest
        below = row.kthvalue(n - k_row).values  # the (k+1)-th largest
        rows.append((above + below) / 2)
    return torch.stack(rows)[:, None]


class TopFraction(nn.Module):
    """A mask network that keeps exactly the fraction ``area`` of every image: the wrapped network
    ranks the pixels and :class:`TopArea` cuts each image's ranking there.

    For amortized training: a mask network that sets its own size (``1[z > 0]``) under an area
    penalty collapses to empty masks or stays large, all images at once; with the size fixed the
    network only learns *where* to look. The per-image fit wraps it again with its own areas, so
    a checkpoint warm-starts it as it would a bare network.

    Args:
        net: the ranking network (e.g. :class:`~actmatch.explainers.unet.MaskUNet`).
        area: the fraction of pixels kept, in (0, 1).
    """

    def __init__(self, net: nn.Module, area: float = 0.2) -> None:
        super().__init__()
        if not 0 < area < 1:
            raise ValueError(f"TopFraction: area must be in (0, 1), got {area}")
        self.net, self.area = net, float(area)

    def init_args(self) -> dict:
        """The constructor arguments that rebuild this network (saved with amortized checkpoints)."""
        cls = type(self.net)
        net = network_spec(self.net) or {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": {}}
        return {"net": net, "area": self.area}

    def reset_parameters(self) -> None:
        self.net.reset_parameters()  # type: ignore[operator]  # every mask network has it

    def areas(self, images: torch.Tensor) -> torch.Tensor:
        """(B,) the fraction kept of each image: ``area``."""
        return torch.full((images.shape[0],), self.area, device=images.device)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return TopArea(self.net, self.areas(images))(images)


class RandomTopFraction(TopFraction):
    """:class:`TopFraction` whose training steps keep a random fraction of each image, a_i ~ U[low, high]
    (global torch RNG), so the terms train the whole ranking instead of its order around one cut; in
    eval mode (validation, ``explain``) it keeps ``area``, as :class:`TopFraction` does.

    Args:
        net: the ranking network.
        area: the fraction kept in eval mode, in (0, 1).
        low, high: the range of the training fractions, 0 < low <= high < 1.
    """

    def __init__(self, net: nn.Module, area: float = 0.25, low: float = 0.1, high: float = 0.5) -> None:
        super().__init__(net, area)
        if not 0 < low <= high < 1:
            raise ValueError(f"RandomTopFraction: need 0 < low <= high < 1, got low={low}, high={high}")
        self.low, self.high = float(low), float(high)

    def init_args(self) -> dict:
        return {**super().init_args(), "low": self.low, "high": self.high}

    def areas(self, images: torch.Tensor) -> torch.Tensor:
        """(B,) a_i ~ U[low, high] in training mode, ``area`` in eval mode."""
        if not self.training:
            return super().areas(images)
        return torch.empty(images.shape[0]).uniform_(self.low, self.high).to(images.device)


class AreaContinuation(FitStrategy):
    """Continuation on the mask area: the U-Net ranks pixels, the strategy sets how many are kept.

    Each step keeps exactly a_i of image i's pixels (:class:`TopArea`) and minimises the
    explainer's terms (cross-entropy, robustness, activation matching, ...) at that area. The
    target shrinks geometrically while the step's mask is kept and robust, and backtracks when
    the label is lost (as extremal perturbation's area constraint, with the area chosen by the
    fit instead of given):

        a_i ← max(a_min, a_i · shrink) if satisfied   else  min(1, a_i · grow).

    The defaults are the study's ``minimal`` recipe (docs/explainer-study.md): 3.2 % smaller per
    kept step, hold (no backtracking) when the label is lost, the smallest kept mask returned.

    Args:
        lr: Adam learning rate of the U-Net.
        start_area: a_0.
        shrink: factor applied while the constraint holds (< 1).
        grow: factor applied when it is violated (>= 1; 1 gives a fixed geometric schedule).
        min_area: a_min.
        lookahead: every ``lookahead_every`` steps, cut the step's ranking at this many areas
            between a_min and a_i (one forward pass per image through the criterion, no gradient)
            and jump a_i to the smallest cut the criterion accepts (a line search along the
            U-Net's own ranking; 0: off). Counted as ``lookahead`` in the fit's passes.
        lookahead_every: steps between two lookaheads.
        lookahead_first: the step after which the first lookahead runs (default ``lookahead_every``;
            1: right after the first step, e.g. for a fit warm-started from a trained network whose
            ranking is already good), then every ``lookahead_every`` steps.
        explore: 0, or r in (0, 1): each step is taken at an area below the target, a_i · r^u with u
            from a low-discrepancy sequence over the steps (u_s = frac(s · φ), the same for every
            image, so batched fits equal one-image fits); a kept step moves the target to
            min(a_i · shrink, that area). Trains the ranking on cuts below the frontier instead
            of only at it.
        select, criterion, stages: as in :class:`FitStrategy`.
    """

    def __init__(
        self,
        lr: float = 0.003,
        start_area: float = 0.5,
        shrink: float = 0.968,
        grow: float = 1.0,
        min_area: float = 0.002,
        select: str = "smallest_kept",
        criterion: Criterion | None = None,
        stages: list[Stage] | None = None,
        lookahead: int = 0,
        lookahead_every: int = 10,
        lookahead_first: int | None = None,
        explore: float = 0.0,
        noise: float = 0.0,
    ) -> None:
        super().__init__(lr, select, criterion, stages)
        if not 0 <= explore < 1:
            raise ValueError(f"AreaContinuation: explore must be 0 (off) or in (0, 1), got {explore}")
        self.explore = explore
        if noise < 0:
            raise ValueError(f"AreaContinuation: noise must be >= 0, got {noise}")
        self.noise = noise
        if lookahead < 0 or lookahead_every < 1:
            raise ValueError(
                f"AreaContinuation: need lookahead >= 0 and lookahead_every >= 1, got {lookahead}, {lookahead_every}"
            )
        self.lookahead, self.lookahead_every = lookahead, lookahead_every
        self.lookahead_first = lookahead_every if lookahead_first is None else lookahead_first
        if self.lookahead_first < 1:
            raise ValueError(
                f"AreaContinuation: lookahead_first is the step after which the first lookahead runs (>= 1), "
                f"got {lookahead_first}"
            )
        if not (0 < min_area <= start_area <= 1 and 0 < shrink < 1 <= grow):
            raise ValueError(
                f"AreaContinuation: need 0 < min_area <= start_area <= 1 and 0 < shrink < 1 <= grow, got "
                f"min_area={min_area}, start_area={start_area}, shrink={shrink}, grow={grow}"
            )
        self.start_area, self.shrink, self.grow, self.min_area = start_area, shrink, grow, min_area
        self._area: torch.Tensor | None = None

    def start(self, images: torch.Tensor) -> None:
        self._area = torch.full((images.shape[0],), self.start_area, device=images.device)
        self._step, self._images = 0, images
        self._found: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def _step_area(self) -> torch.Tensor:
        area = _started(self._area)
        if not self.explore:
            return area
        u = (self._step * 0.6180339887498949) % 1.0  # golden-ratio sequence, u_0 = 0
        return (area * self.explore**u).clamp_min(self.min_area)

    def _step_noise(self, images: torch.Tensor) -> torch.Tensor | None:
        """Logistic noise of scale ``noise`` (one draw per step, seeded by the step, shared by the batch)."""
        if not self.noise:
            return None
        return logistic_blobs((images.shape[-2], images.shape[-1]), self._step, self.noise)

    def mask_model(self, unet: nn.Module) -> nn.Module:
        return TopArea(unet, self._step_area(), self._step_noise(self._images))

    @torch.no_grad()
    def after_step(self, explainer, out, satisfied: torch.Tensor) -> dict[str, float]:
        area = _started(self._area)
        if self.explore:
            shrunk = torch.minimum(area * self.shrink, self._step_area())
            self._area = torch.where(satisfied, shrunk, area * self.grow).clamp(self.min_area, 1.0)
        else:
            factor = torch.where(satisfied, self.shrink, self.grow)
            self._area = (area * factor).clamp(self.min_area, 1.0)
        self._step += 1
        since_first = self._step - self.lookahead_first
        if self.lookahead and since_first >= 0 and since_first % self.lookahead_every == 0:
            self._look_ahead(explainer, out.evidence)
        return {"target_area": self._area.mean().item()}

    def found_masks(self) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        found, self._found = self._found, []
        return found

    def _look_ahead(self, explainer, ev) -> None:
        """Jump each a_i to the smallest kept cut of the step's ranking below it (and offer the cut
        for the selection: it is a kept mask the fit has checked)."""
        masks = ev.mask.detach().clone()
        kept = torch.zeros(ev.images.shape[0], dtype=torch.bool, device=ev.images.device)
        area = _started(self._area)  # updated in place
        for i in range(ev.images.shape[0]):
            top = area[i].item()
            if top <= self.min_area * 1.01:
                continue
            grid = areas_below(top, self.min_area, self.lookahead, ev.images.device)
            one = slice(i, i + 1)
            classifier = self.counted(explainer, "lookahead")
            check = self.criterion.bind(classifier, ev.images[one], ev.logits[one], ev.target[one])
            cut = smallest_accepted_cut(check.accepts, ev.soft_mask[one].detach(), grid)
            if cut is not None:
                area[i] = cut.mean()
                masks[i], kept[i] = cut, True
        if kept.any():
            self._found.append((masks, ev.soft_mask.detach(), kept))


def default_fitting() -> FitStrategy:
    """The default per-image fit (the ``faithful`` preset, version 4, docs/method.md): area
    continuation at 5 % per step while the explanation stays confident, with a lookahead along the
    network's ranking every 10 steps (12 cuts), the network updated by Adam at lr 0.0003 (the fit
    stays near the class activation map it starts from); then the smallest confident cut of the
    selected step's ranking at 16 areas, a band-free cut of the same ranking where it needs at
    most 1.5 × the area, and a bounded grow: where the mask does not also keep the label on 6 of 8
    backgrounds of the fit's own kinds, the smallest cut of the ranking in (a, 3a] that does (the
    mask stays where none does); last, where the mask keeps pixels of the border band, the mask
    without them, else a band-free cut of the ranking up to 2 × the area, if it keeps the label at
    ≥ 0.5 · p_f(x)(y) and on 6 of 8 such backgrounds. Accepted by the steps and the cuts: the label
    with the mean fill and p_f(e)(y) ≥ 0.9 · p_f(x)(y) (:class:`Confident`), headroom so that the
    explanation stays confident when it is perturbed."""
    robust = RobustOn(kinds=list(FIT_KINDS), n=8, rate=0.75, order="cycle")
    band_free = AllOf([Confident(0.5), robust])
    stages = [
        Scan(areas=16),
        BorderFree(factor=1.5),
        Grow(areas=16, criterion=AllOf([Confident(0.9), robust]), max_factor=3.0),
        BandTrim(criterion=band_free),
        BorderFree(factor=2.0, criterion=band_free),
    ]
    return AreaContinuation(lr=0.0003, shrink=0.95, lookahead=12, lookahead_every=10, criterion=Confident(0.9), stages=stages)
