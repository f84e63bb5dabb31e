"""Per-image fitting strategies: how a mask U-Net is fitted to the images it explains.

The explainer owns the computation of one step (mask, explanation, every loss term, one batched
classifier pass, :meth:`ActMatchExplainer.step`). A strategy owns everything around it: what
is minimised with the step's terms, how the U-Net is updated, and which of the masks seen
during the fit is returned. Each is chosen by ``class_path`` in a config, so every row of a
study is a file under ``experiments/explain/``.

* :class:`PenaltyFit`: a fixed weighted sum of the terms (with their warm-ups), Adam.
* :class:`ConstrainedFit`: minimise the other terms (area first) subject to the constraint
  term (:class:`~actmatch.explainers.losses.LabelMargin`: the label kept with a logit margin on
  the fill and on random backgrounds), with one Lagrange multiplier per image updated by dual
  ascent (GECO-style, multiplicative) instead of a fixed weight and a warm-up.

Override points: :meth:`FitStrategy.objective` (the per-image loss of a step) and
:meth:`FitStrategy.after_step` (state updates such as the multipliers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial

import torch
from einops import rearrange
from torch import nn

from actmatch.explainers.backgrounds import BackgroundSampler, make_fill
from actmatch.explainers.losses import logit_margin
from actmatch.explainers.metrics import border_band, cycled_backgrounds, top_fraction_mask
from actmatch.explainers.pruning import prune_cells

__all__ = ["FitStrategy", "PenaltyFit", "ConstrainedFit", "AreaContinuation", "TopArea", "FitResult", "SELECTIONS", "default_fitting"]

#: which of the masks seen during a fit is returned, per image
SELECTIONS = ("smallest_robust", "smallest_kept", "last")


@dataclass
class FitResult:
    """The selected masks of a fit and its per-step record."""

    masks: torch.Tensor  # (B, 1, H, W) hard
    soft: torch.Tensor  # (B, 1, H, W) the U-Net's probabilities at the selected step
    history: list[dict[str, float]] = field(default_factory=list)


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


def logistic_blobs(size: tuple[int, int], seed: int, scale: float) -> torch.Tensor:
    """(1, 1, H, W) logistic noise of the given scale, drawn at a quarter of the resolution and
    upsampled bilinearly (blobs, not speckle); the same for the same seed."""
    h, w = size
    generator = torch.Generator().manual_seed(1_000_003 * (seed + 1))
    u = torch.rand((1, 1, max(1, h // 4), max(1, w // 4)), generator=generator).clamp(1e-6, 1 - 1e-6)
    noise = scale * (u.log() - (-u).log1p())
    return torch.nn.functional.interpolate(noise, size=(h, w), mode="bilinear", align_corners=False)


def _areas_below(top: float, low: float, count: int, device) -> torch.Tensor:
    """``count`` areas from ``low`` up to (not including) ``top``, geometrically spaced, increasing."""
    return torch.logspace(math.log10(low), math.log10(top), count + 1, device=device)[:-1]


class FitStrategy:
    """Base class: Adam on the U-Net for ``steps`` steps, then a selection among the step masks.

    Args:
        lr: Adam learning rate of the U-Net.
        select: which mask to return per image: ``smallest_robust`` (the smallest whose
            explanation keeps the label with the fill and on every random background the fit's
            terms drew at that step; falls back to ``smallest_kept``), ``smallest_kept`` (with
            the fill only) or ``last``. Images never kept return their last mask.
        min_confidence: a mask counts as kept only when its explanation (with the fill) has the
            original top-1 label y and p_f(e)(y) ≥ min_confidence · p_f(x)(y) (0: top-1 is enough).
        verify: with ``smallest_robust``, check the ``candidates`` smallest robust masks of the fit
            on this many more random backgrounds of the fit's own (solid, uniform, gaussian; one
            batched forward pass each, no gradient) and return the smallest that keeps the label
            on at least ``verify_keep`` of them (0: no check). Filters masks that passed a step's
            few backgrounds by luck.
        verify_keep: the fraction of the verification backgrounds that must keep the label.
        verify_fallback: where no candidate passes the check, return the smallest robust mask
            (``smallest``) or the candidate that kept the label on the most verification backgrounds
            (``most_kept``, the smallest of those).
        candidates: how many of the smallest robust masks are kept for the check.
        scan: after the fit, cut the selected step's ranking (the U-Net's probabilities) at this
            many areas between ``scan_min_area`` and the selected mask's area (geometric grid,
            one batched forward pass per image, no gradient) and return the smallest cut that
            is kept (label and ``min_confidence``, with the fill). Where the fit never kept the
            label, the ranking is first cut at as many areas above the mask, up to the whole
            image, and the smallest kept cut taken. 0: no scan. Not with ``smallest_robust``: a
            cut is only checked with the fill.
        scan_min_area: the smallest area the scan tries.
        scan_draws: after the scan, cut this many noisy copies of the selected ranking below the
            current mask's area (the ranking's logits plus logistic noise, ``scan_noise`` times
            their spread, drawn at a quarter of the resolution and seeded by the draw) and keep
            the smallest kept cut: cheap extra candidates (forward passes only) near the ranking.
        scan_noise: the noise scale of those draws.
        prune: after the scan, cell sizes in pixels, coarse to fine (e.g. ``[16, 8]``): for each,
            drop every grid cell of the mask whose removal keeps the label, visiting the cells
            from the least to the most probable under the U-Net
            (:func:`~actmatch.explainers.pruning.prune_cells`; forward passes only). Empty: off.
        prune_batch: the most removals tested in one forward pass while pruning.
        prune_border_first: prune the cells on the image's border before the others.
        border_free: 0 (off), or s >= 1: where the returned mask still keeps pixels of the border
            band (``border_width`` × the short side, :func:`~actmatch.explainers.metrics.border_band`),
            also cut the same ranking with the band removed at ``scan`` areas up to the whole
            image (one forward pass), prune the smallest kept cut on the ``prune`` grids (least
            probable cell first, with the fill), and
            return it instead if it is at most s times the mask's area: a mask that leaves the
            border alone. Where no band-free mask that small keeps the label (evidence only the
            border holds, e.g. a watermark in the corner) the mask stays as it was. Needs ``scan``.
        border_width: the band's width as a fraction of the image's short side.
        prune_backgrounds: with > 0, a removal (and the mask pruned) must also keep the label on at
            least ``verify_keep`` of this many random backgrounds of the fit's own (solid, uniform,
            gaussian, drawn once per image): pruning that keeps a robust mask robust. Allowed with
            ``smallest_robust``.
        check_kinds: the kinds of the fit's own verification and pruning backgrounds, each drawn
            uniformly from this list (:class:`~actmatch.explainers.backgrounds.BackgroundSampler`;
            a repeated kind is drawn more often, e.g. ``[solid, solid, solid, uniform, gaussian]``).
        check_order: ``random`` (each background's kind drawn from ``check_kinds``) or ``cycle``
            (background j is of kind ``check_kinds[j % len]``, as the evaluation draws them: every
            kind is covered, however few backgrounds there are).
        check_margin: on those backgrounds, the label counts as kept only with a logit margin
            z_y − max_{k≠y} z_k ≥ check_margin (0: top-1 is enough). A mask that passes its own
            backgrounds with a margin is more likely to pass backgrounds it never saw.
    """

    def __init__(
        self,
        lr: float = 0.002,
        select: str = "smallest_robust",
        min_confidence: float = 0.0,
        verify: int = 0,
        verify_keep: float = 0.875,
        candidates: int = 6,
        scan: int = 0,
        scan_min_area: float = 0.005,
        *,
        scan_draws: int = 0,
        scan_noise: float = 0.5,
        prune: list[int] | tuple[int, ...] = (),
        prune_batch: int = 8,
        prune_border_first: bool = False,
        prune_backgrounds: int = 0,
        check_kinds: list[str] | tuple[str, ...] = ("solid", "uniform", "gaussian"),
        check_margin: float = 0.0,
        check_order: str = "random",
        verify_fallback: str = "smallest",
        border_free: float = 0.0,
        border_width: float = 0.03,
    ) -> None:
        if select not in SELECTIONS:
            raise ValueError(f"{type(self).__name__}: unknown select {select!r}; choose one of {SELECTIONS}")
        if not lr > 0:
            raise ValueError(f"{type(self).__name__}: lr must be > 0, got {lr}")
        if not 0 <= min_confidence <= 1:
            raise ValueError(f"{type(self).__name__}: min_confidence must be in [0, 1], got {min_confidence}")
        if verify < 0 or candidates < 1 or not 0 < verify_keep <= 1:
            raise ValueError(f"{type(self).__name__}: need verify >= 0, candidates >= 1 and 0 < verify_keep <= 1, got "
                             f"verify={verify}, candidates={candidates}, verify_keep={verify_keep}")
        if verify and select != "smallest_robust":
            raise ValueError(f"{type(self).__name__}: verify checks robust masks; it needs select='smallest_robust', "
                             f"got {select!r}")
        if scan < 0 or not 0 < scan_min_area < 1:
            raise ValueError(f"{type(self).__name__}: need scan >= 0 and 0 < scan_min_area < 1, got scan={scan}, "
                             f"scan_min_area={scan_min_area}")
        if scan and select == "smallest_robust":
            raise ValueError(f"{type(self).__name__}: scan checks cuts with the fill only; use select='smallest_kept' "
                             f"(or 'last') with scan, or scan=0 with 'smallest_robust'")
        if scan_draws < 0 or scan_noise < 0 or (scan_draws and not scan):
            raise ValueError(f"{type(self).__name__}: need scan_draws >= 0, scan_noise >= 0, and scan > 0 for draws, got "
                             f"scan_draws={scan_draws}, scan_noise={scan_noise}, scan={scan}")
        prune = [int(size) for size in prune]
        if any(size < 1 for size in prune) or prune_batch < 1 or prune_backgrounds < 0:
            raise ValueError(f"{type(self).__name__}: prune takes cell sizes >= 1 (pixels, e.g. [16, 8]), "
                             f"prune_batch >= 1 and prune_backgrounds >= 0, got prune={prune}, "
                             f"prune_batch={prune_batch}, prune_backgrounds={prune_backgrounds}")
        if prune and select == "smallest_robust" and not prune_backgrounds:
            raise ValueError(f"{type(self).__name__}: prune checks removals with the fill only; use "
                             f"select='smallest_kept' (or 'last') with prune, or prune_backgrounds > 0 to keep "
                             f"robust masks robust")
        self.prune, self.prune_batch, self.prune_border_first = prune, prune_batch, prune_border_first
        self.prune_backgrounds = prune_backgrounds
        if not (border_free == 0 or border_free >= 1) or not 0 < border_width < 0.5:
            raise ValueError(f"{type(self).__name__}: border_free is 0 (off) or a size factor >= 1, and 0 < border_width "
                             f"< 0.5, got border_free={border_free}, border_width={border_width}")
        if border_free and not scan:
            raise ValueError(f"{type(self).__name__}: border_free cuts the ranking as the scan does; it needs scan > 0 "
                             f"(e.g. scan: 24)")
        if border_free and prune_backgrounds:
            raise ValueError(f"{type(self).__name__}: border_free checks its band-free mask with the fill only; it "
                             f"cannot be combined with prune_backgrounds > 0")
        self.border_free, self.border_width = border_free, border_width
        if check_margin < 0:
            raise ValueError(f"{type(self).__name__}: check_margin must be >= 0 (a logit margin), got {check_margin}")
        if check_order not in ("random", "cycle"):
            raise ValueError(f"{type(self).__name__}: check_order is 'random' or 'cycle', got {check_order!r}")
        if verify_fallback not in ("smallest", "most_kept"):
            raise ValueError(f"{type(self).__name__}: verify_fallback is 'smallest' or 'most_kept', got {verify_fallback!r}")
        self.check_kinds, self.check_margin, self.check_order = list(check_kinds), check_margin, check_order
        self.verify_fallback = verify_fallback
        try:
            self._check_sampler = BackgroundSampler(self.check_kinds)
        except ValueError as err:
            raise ValueError(f"{type(self).__name__}: check_kinds takes background kinds from "
                             f"{BackgroundSampler.KINDS}, got {self.check_kinds}") from err
        self.scan, self.scan_min_area = scan, scan_min_area
        self.scan_draws, self.scan_noise = scan_draws, scan_noise
        self.lr, self.select, self.min_confidence = lr, select, min_confidence
        self.verify, self.verify_keep, self.candidates = verify, verify_keep, candidates

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

    def kept(self, out, target: torch.Tensor) -> torch.Tensor:
        """(B,) bool: e has the label y and p_f(e)(y) ≥ min_confidence · p_f(x)(y)."""
        return self._kept(out.evidence.logits_e.detach(), out.evidence.logits, target)

    def _kept(self, logits_e: torch.Tensor, logits_x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        kept = logits_e.argmax(-1) == target
        if self.min_confidence > 0:
            p_e = logits_e.softmax(-1).gather(1, target[:, None]).squeeze(1)
            p_x = logits_x.softmax(-1).gather(1, target[:, None]).squeeze(1)
            kept &= p_e >= self.min_confidence * p_x
        return kept

    def own_backgrounds(self, image: torch.Tensor, n: int) -> torch.Tensor:
        """(n, 3, H, W) backgrounds of the fit's own for one image (1, 3, H, W): ``check_kinds``
        drawn at random or cycled (``check_order``), from the global RNG (the fit's seed)."""
        if self.check_order == "cycle":
            return cycled_backgrounds(image, n, tuple(self.check_kinds), None)
        return self._check_sampler(image.expand(n, -1, -1, -1))

    def _kept_on_background(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(N,) bool: the label y is top-1 of logits (N, K), with a margin of ``check_margin``."""
        target = target.expand(logits.shape[0])
        if self.check_margin > 0:
            return logit_margin(logits, target) >= self.check_margin
        return logits.argmax(-1) == target

    @torch.no_grad()
    def smallest_kept_cut(self, explainer, image, fill, scores, logits_x, target, fractions) -> torch.Tensor | None:
        """The smallest of the cuts top_a(scores), a in ``fractions`` (increasing), whose explanation
        a ⊙ x + (1 − a) ⊙ fill is kept; None if none is. One batched forward pass, no gradient.

        Shapes: image, fill (1, 3, H, W); scores (1, 1, H, W); logits_x (1, K); target (1,).
        """
        n = fractions.shape[0]
        cuts = top_fraction_mask(scores.expand(n, -1, -1, -1), fractions)  # (n, 1, H, W)
        kept = self.kept_explanations(explainer, cuts * image + (1 - cuts) * fill, logits_x, target)
        return cuts[int(kept.float().argmax())] if kept.any() else None

    @torch.no_grad()
    def kept_explanations(self, explainer, explanations, logits_x, target) -> torch.Tensor:
        """(n,) bool: which of n explanations (n, 3, H, W) of one image (logits_x (1, K), target (1,))
        are kept. One forward pass, no gradient."""
        n = explanations.shape[0]
        return self._kept(explainer.classifier(explanations), logits_x.expand(n, -1), target.expand(n))

    @torch.no_grad()
    def _scanned(self, explainer, images, target, logits_x, masks, soft_masks, lost: torch.Tensor) -> None:
        """Replace each mask by the smallest kept cut of its own ranking below its area (in place).
        Where the fit never kept the label (``lost``), first by the smallest kept cut above its area,
        up to the whole image (which is always kept)."""
        fill = make_fill(images, explainer.fill, explainer.classifier.data_config["mean"])
        for i in range(images.shape[0]):
            one = slice(i, i + 1)
            if lost[i]:
                low = max(masks[i].mean().item(), self.scan_min_area)
                grid = torch.logspace(math.log10(low), 0.0, self.scan + 1, device=images.device)[1:]
                cut = self.smallest_kept_cut(explainer, images[one], fill[one], soft_masks[one], logits_x[one], target[one], grid)
                if cut is not None:
                    masks[i] = cut
            area = masks[i].mean().item()
            if area <= self.scan_min_area:
                continue
            grid = _areas_below(area, self.scan_min_area, self.scan, images.device)
            cut = self.smallest_kept_cut(explainer, images[one], fill[one], soft_masks[one], logits_x[one], target[one], grid)
            if cut is not None:
                masks[i] = cut
            ranking = torch.logit(soft_masks[one].clamp(1e-6, 1 - 1e-6))
            for draw in range(self.scan_draws):
                area = masks[i].mean().item()
                if area <= self.scan_min_area:
                    break
                noisy = ranking + logistic_blobs(ranking.shape[-2:], draw, self.scan_noise).to(ranking) * ranking.std()
                grid = _areas_below(area, self.scan_min_area, self.scan, images.device)
                cut = self.smallest_kept_cut(explainer, images[one], fill[one], noisy, logits_x[one], target[one], grid)
                if cut is not None:
                    masks[i] = cut

    # ---------------------------------------------------------------- the loop
    def fit(self, explainer, images: torch.Tensor, unet: nn.Module, reference, steps: int, progress=None) -> FitResult:
        """Fit ``unet`` on ``images`` (B, 3, H, W) and return the selected masks."""
        optimizer = torch.optim.Adam(unet.parameters(), lr=self.lr)
        target = reference[0].argmax(-1)
        robust_best, kept_best = _Best(images), _Best(images)
        candidates = _Candidates(images.shape[0], self.candidates)
        history = []
        self.start(images)
        with torch.enable_grad():
            for i in range(steps):
                out = explainer.step(images, self.mask_model(unet), reference, progress=i / steps)
                mask, soft = out.evidence.mask.detach(), out.evidence.soft_mask.detach()
                kept = self.kept(out, target)
                robust = kept & explainer.kept_on_backgrounds(out, target)
                kept_best.offer(mask, soft, kept)
                robust_best.offer(mask, soft, robust)
                if self.verify:
                    candidates.offer(mask, soft, robust)
                loss = self.objective(explainer, out, i / steps)
                record = {"loss": loss.mean().item(), "area": mask.flatten(1).mean(1).mean().item(),
                          "kept": kept.float().mean().item(), "robust": robust.float().mean().item()}
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
        if self.verify:
            self._verified(explainer, images, target, candidates, masks, soft_masks)
        if self.scan:
            self._scanned(explainer, images, target, reference[0], masks, soft_masks, ~kept_best.found)
        if self.prune:
            self._pruned(explainer, images, target, reference[0], masks, soft_masks)
        if self.border_free:
            self._border_freed(explainer, images, target, reference[0], masks, soft_masks)
        return FitResult(masks, soft_masks, history)

    @torch.no_grad()
    def _border_freed(self, explainer, images, target, logits_x, masks, soft_masks) -> None:
        """Replace each mask that keeps border-band pixels by the smallest kept cut of its ranking
        with the band removed, pruned on the ``prune`` grids, where that is at most ``border_free`` × its
        area (in place)."""
        fill = make_fill(images, explainer.fill, explainer.classifier.data_config["mean"])
        band = border_band(masks[:1], self.border_width)  # (1, 1, H, W)
        for i in range(images.shape[0]):
            one = slice(i, i + 1)
            if not masks[one][band].any():
                continue
            area = masks[i].mean().item()
            grid = torch.logspace(math.log10(min(self.scan_min_area, area)), 0.0, self.scan, device=images.device)
            ranking = soft_masks[one].masked_fill(band, -1.0)  # band pixels rank last
            cut = self.smallest_kept_cut(explainer, images[one], fill[one], ranking, logits_x[one], target[one], grid)
            if cut is None:
                continue  # only with the border is the label kept: the mask stays
            cut = cut[None] * (~band)  # a cut larger than the interior reaches into the band
            cut = self._pruned_one(explainer, images[one], fill[one], logits_x[one], target[one], cut, soft_masks[one])
            if cut is None or cut.mean().item() > self.border_free * area:
                continue  # the interior alone needs a much larger mask: the mask stays
            masks[one] = cut

    @torch.no_grad()
    def _pruned(self, explainer, images, target, logits_x, masks, soft_masks) -> None:
        """Drop, per kept mask, the cells the label does not need, coarse to fine (in place)."""
        fill = make_fill(images, explainer.fill, explainer.classifier.data_config["mean"])
        for i in range(images.shape[0]):
            one = slice(i, i + 1)
            backgrounds = fill[one]
            if self.prune_backgrounds:
                backgrounds = torch.cat([backgrounds, self.own_backgrounds(images[one], self.prune_backgrounds)])
            pruned = self._pruned_one(explainer, images[one], backgrounds, logits_x[one], target[one], masks[one],
                                      soft_masks[one], self.prune_border_first)
            if pruned is not None:  # only a kept mask is pruned
                masks[one] = pruned

    def _pruned_one(self, explainer, image, backgrounds, logits_x, target, mask, soft, border_first=False):
        """``mask`` (1, 1, H, W) pruned on the ``prune`` grids, coarse to fine; None if it is not kept."""
        kept = partial(self.kept_masks, explainer, image, backgrounds, logits_x, target)
        if not kept(mask)[0]:
            return None
        for cell in self.prune:
            mask = prune_cells(kept, mask, soft, cell, self.prune_batch, border_first)[0]
        return mask

    @torch.no_grad()
    def kept_masks(self, explainer, image, backgrounds, logits_x, target, masks, stage: int = 2) -> torch.Tensor:
        """(n,) bool for a sequence of masks (n, 1, H, W) of one image: True for every mask before
        the first that is not kept, False from there on. Kept: the label (and ``min_confidence``)
        with ``backgrounds[0]`` (the fill) and, given more backgrounds b_1..b_k, the label on at
        least ``verify_keep`` of m ⊙ x + (1 − m) ⊙ b_j.

        This is all :func:`~actmatch.explainers.pruning.prune_cells` reads (the first removal that
        loses the label), so the masks are tested in stages: the fill, then ``stage`` backgrounds at
        a time, each stage only on the masks before the first one already lost. The answer is the
        same as testing every mask on every background; a removal that fails early costs less.
        """
        n, k = masks.shape[0], backgrounds.shape[0] - 1
        allowed = max(f for f in range(k + 1) if k == 0 or (k - f) / k >= self.verify_keep)  # failures allowed

        def classify(upto: int, group: torch.Tensor) -> torch.Tensor:  # (upto, len(group), K) logits
            m = masks[:upto, None]
            planted = m * image[None] + (1 - m) * group[None]
            return rearrange(explainer.classifier(planted.flatten(0, 1)), "(n k) c -> n k c", n=upto)

        kept = self._kept(classify(n, backgrounds[:1])[:, 0], logits_x.expand(n, -1), target.expand(n))
        alive = int(kept.float().argmin()) if not kept.all() else n  # masks before the first lost one
        failures = torch.zeros(n, dtype=torch.long, device=masks.device)
        for start in range(1, k + 1, stage):
            if not alive:
                break
            logits = classify(alive, backgrounds[start : start + stage])
            failures[:alive] += (~self._kept_on_background(logits.flatten(0, 1), target)).view(alive, -1).sum(1)
            lost = failures[:alive] > allowed
            alive = int(lost.float().argmax()) if lost.any() else alive
        return torch.arange(n, device=masks.device) < alive

    @torch.no_grad()
    def _verified(self, explainer, images, target, candidates: _Candidates, masks, soft_masks) -> None:
        """Replace each image's mask by its smallest candidate that survives ``verify`` more of the
        fit's own backgrounds (in place). Images without such a candidate keep their mask, or with
        ``verify_fallback: most_kept`` take the candidate that kept the label on the most of them."""
        for i, items in enumerate(candidates.items):
            x = images[i : i + 1]
            best_rate, best = -1.0, None
            for _, mask, soft in items:
                planted = mask * x + (1 - mask) * self.own_backgrounds(x, self.verify)  # (verify, 3, H, W)
                kept = self._kept_on_background(explainer.classifier(planted), target[i]).float().mean().item()
                if kept >= self.verify_keep:
                    masks[i], soft_masks[i] = mask, soft
                    break
                if kept > best_rate:  # the smallest of the most-kept so far
                    best_rate, best = kept, (mask, soft)
            else:
                if self.verify_fallback == "most_kept" and best is not None:
                    masks[i], soft_masks[i] = best

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
        select, min_confidence, verify, verify_keep, candidates, scan, scan_min_area: as in
            :class:`FitStrategy`.
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
        min_confidence: float = 0.0,
        verify: int = 0,
        verify_keep: float = 0.875,
        candidates: int = 6,
        scan: int = 0,
        scan_min_area: float = 0.005,
    ) -> None:
        super().__init__(lr, select, min_confidence, verify, verify_keep, candidates, scan, scan_min_area)
        if not (lambda_init > 0 and 0 < lambda_min <= lambda_max):
            raise ValueError(f"ConstrainedFit: need lambda_init > 0 and 0 < lambda_min <= lambda_max, got "
                             f"{lambda_init}, {lambda_min}, {lambda_max}")
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
            raise ValueError(f"ConstrainedFit: the constraint term {self.constraint!r} is not among the explainer's "
                             f"active loss terms {names}; add it (e.g. actmatch.explainers.losses.LabelMargin)")
        total = self._log_lambda.exp() * out.terms[self.constraint]
        for term in explainer.losses:
            if term.weight > 0 and term.name != self.constraint:
                total = total + term.weight_at(progress) * out.terms[term.name]
        return total

    @torch.no_grad()
    def after_step(self, explainer, out, satisfied: torch.Tensor) -> dict[str, float]:
        violated = out.terms[self.constraint].detach() > 0
        step = torch.where(violated, self.dual_up, -self.dual_down)
        lo, hi = math.log(self.lambda_min), math.log(self.lambda_max)
        self._log_lambda = (self._log_lambda + step).clamp(lo, hi)
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
        k = (self.area.to(logits) * n).round().long().clamp(1, n - 1)[:, None]  # (B, 1)
        ranked = logits.detach().flatten(1).sort(1, descending=True).values  # (B, N)
        t = (ranked.gather(1, k - 1) + ranked.gather(1, k)) / 2  # (B, 1)
        plateau = (ranked > t).sum(1, keepdim=True) < k / 2  # (B, 1): the cut falls inside a plateau
        if plateau.any():
            spread = ranked.std(1, keepdim=True).clamp_min(1.0)
            ramp = torch.linspace(0, 1, n, device=logits.device, dtype=logits.dtype).view_as(logits[:1])
            logits = logits + (1e-3 * spread * plateau).view(-1, 1, 1, 1) * ramp
            ranked = logits.detach().flatten(1).sort(1, descending=True).values
            t = (ranked.gather(1, k - 1) + ranked.gather(1, k)) / 2
        return logits - t.view(-1, 1, 1, 1)


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
            between a_min and a_i (one batched forward pass per image, no gradient) and jump a_i
            to the smallest cut that is kept (a line search along the U-Net's own ranking; 0: off).
        lookahead_every: steps between two lookaheads.
        explore: 0, or r in (0, 1): each step is taken at an area below the target, a_i · r^u with u
            from a low-discrepancy sequence over the steps (u_s = frac(s · φ), the same for every
            image, so batched fits equal one-image fits); a kept step moves the target to
            min(a_i · shrink, that area). Trains the ranking on cuts below the frontier instead
            of only at it.
        select, min_confidence, verify, verify_keep, candidates, scan, scan_min_area, scan_draws,
            scan_noise, prune, prune_batch, prune_border_first, prune_backgrounds, check_kinds,
            check_margin, check_order, verify_fallback, border_free, border_width: as in :class:`FitStrategy`.
    """

    def __init__(
        self,
        lr: float = 0.003,
        start_area: float = 0.5,
        shrink: float = 0.968,
        grow: float = 1.0,
        min_area: float = 0.002,
        select: str = "smallest_kept",
        min_confidence: float = 0.0,
        verify: int = 0,
        verify_keep: float = 0.875,
        candidates: int = 6,
        scan: int = 0,
        scan_min_area: float = 0.005,
        lookahead: int = 0,
        lookahead_every: int = 10,
        explore: float = 0.0,
        noise: float = 0.0,
        scan_draws: int = 0,
        scan_noise: float = 0.5,
        prune: list[int] | tuple[int, ...] = (),
        prune_batch: int = 8,
        prune_border_first: bool = False,
        prune_backgrounds: int = 0,
        check_kinds: list[str] | tuple[str, ...] = ("solid", "uniform", "gaussian"),
        check_margin: float = 0.0,
        check_order: str = "random",
        verify_fallback: str = "smallest",
        border_free: float = 0.0,
        border_width: float = 0.03,
    ) -> None:
        super().__init__(lr, select, min_confidence, verify, verify_keep, candidates, scan, scan_min_area,
                         scan_draws=scan_draws, scan_noise=scan_noise, prune=prune, prune_batch=prune_batch,
                         prune_border_first=prune_border_first, prune_backgrounds=prune_backgrounds,
                         check_kinds=check_kinds, check_margin=check_margin, check_order=check_order,
                         verify_fallback=verify_fallback, border_free=border_free, border_width=border_width)
        if not 0 <= explore < 1:
            raise ValueError(f"AreaContinuation: explore must be 0 (off) or in (0, 1), got {explore}")
        self.explore = explore
        if noise < 0:
            raise ValueError(f"AreaContinuation: noise must be >= 0, got {noise}")
        self.noise = noise
        if lookahead < 0 or lookahead_every < 1:
            raise ValueError(f"AreaContinuation: need lookahead >= 0 and lookahead_every >= 1, got {lookahead}, "
                             f"{lookahead_every}")
        self.lookahead, self.lookahead_every = lookahead, lookahead_every
        if not (0 < min_area <= start_area <= 1 and 0 < shrink < 1 <= grow):
            raise ValueError(f"AreaContinuation: need 0 < min_area <= start_area <= 1 and 0 < shrink < 1 <= grow, got "
                             f"min_area={min_area}, start_area={start_area}, shrink={shrink}, grow={grow}")
        self.start_area, self.shrink, self.grow, self.min_area = start_area, shrink, grow, min_area
        self._area: torch.Tensor | None = None

    def start(self, images: torch.Tensor) -> None:
        self._area = torch.full((images.shape[0],), self.start_area, device=images.device)
        self._step, self._images, self._found = 0, images, []

    def _step_area(self) -> torch.Tensor:
        if not self.explore:
            return self._area
        u = (self._step * 0.6180339887498949) % 1.0  # golden-ratio sequence, u_0 = 0
        return (self._area * self.explore**u).clamp_min(self.min_area)

    def _step_noise(self, images: torch.Tensor) -> torch.Tensor | None:
        """Logistic noise of scale ``noise`` (one draw per step, seeded by the step, shared by the batch)."""
        if not self.noise:
            return None
        return logistic_blobs(images.shape[-2:], self._step, self.noise)

    def mask_model(self, unet: nn.Module) -> nn.Module:
        return TopArea(unet, self._step_area(), self._step_noise(self._images))

    @torch.no_grad()
    def after_step(self, explainer, out, satisfied: torch.Tensor) -> dict[str, float]:
        if self.explore:
            shrunk = torch.minimum(self._area * self.shrink, self._step_area())
            self._area = torch.where(satisfied, shrunk, self._area * self.grow).clamp(self.min_area, 1.0)
        else:
            factor = torch.where(satisfied, self.shrink, self.grow)
            self._area = (self._area * factor).clamp(self.min_area, 1.0)
        self._step += 1
        if self.lookahead and self._step % self.lookahead_every == 0:
            self._look_ahead(explainer, out.evidence)
        return {"target_area": self._area.mean().item()}

    def found_masks(self) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        found, self._found = self._found, []
        return found

    def _look_ahead(self, explainer, ev) -> None:
        """Jump each a_i to the smallest kept cut of the step's ranking below it (and offer the cut
        for the selection: it is a kept mask the fit has checked)."""
        masks, kept = ev.mask.detach().clone(), torch.zeros(ev.images.shape[0], dtype=torch.bool, device=ev.images.device)
        for i in range(ev.images.shape[0]):
            top = self._area[i].item()
            if top <= self.min_area * 1.01:
                continue
            grid = _areas_below(top, self.min_area, self.lookahead, ev.images.device)
            one = slice(i, i + 1)
            cut = self.smallest_kept_cut(explainer, ev.images[one], ev.fill[one].detach(), ev.soft_mask[one].detach(),
                                         ev.logits[one], ev.target[one], grid)
            if cut is not None:
                self._area[i] = cut.mean()
                masks[i], kept[i] = cut, True
        if kept.any():
            self._found.append((masks, ev.soft_mask.detach(), kept))


def default_fitting() -> FitStrategy:
    """The default per-image fit (the ``minimal`` preset, docs/explainer-study.md): area
    continuation with a lookahead along the U-Net's ranking every 5 steps (12 cuts), the
    smallest kept cut of the selected step's ranking at 24 areas, then backward elimination of
    the cells the label does not need on grids of 32, 16 and 8 pixels, the image's border cells
    first, and a band-free cut of the same ranking where it needs at most 1.5 × the area
    (``border_free``: fewer masks keep pixels of the image's border band)."""
    return AreaContinuation(scan=24, lookahead=12, lookahead_every=5, prune=[32, 16, 8], prune_border_first=True,
                            border_free=1.5)
