"""Pluggable loss terms of the activation-matching explainer.

Every term is an ``nn.Module`` that sees tensors only (an :class:`Evidence` bundle) and returns
one loss value per image, shape (B,). The explainer multiplies it by ``term.weight`` and sums.
A term that needs the classifier's opinion of extra images (robustness, necessity) returns them
from :meth:`LossTerm.perturb`; the explainer classifies them in the same batched forward pass as
the explanation and hands the logits back to :meth:`LossTerm.forward`.

Sources: activation matching, KL, CE, area, binarization and total variation follow
"Activation Matching for Explanation Generation" (and its circuit-discovery follow-up);
robustness is the abductive condition of "Explaining image classifiers with robust / abductive
explanations"; necessity is the deletion counterpart used by extremal perturbations
(Fong et al. 2019).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from actmatch.explainers.backgrounds import FAMILY_OF_KIND, FIT_KINDS, BackgroundSampler

__all__ = [
    "Evidence",
    "LossTerm",
    "ActivationMatching",
    "KLDivergence",
    "CrossEntropy",
    "Area",
    "AreaBudget",
    "Binarization",
    "TotalVariation",
    "Robustness",
    "Necessity",
    "LabelMargin",
    "MaskDistillation",
    "logit_margin",
    "default_loss_terms",
    "amortized_loss_terms",
]


def logit_margin(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(N,) z_y − max_{k≠y} z_k: positive exactly when y is the top-1 class."""
    z_y = logits.gather(1, target[:, None]).squeeze(1)
    others = logits.scatter(1, target[:, None], float("-inf"))
    return z_y - others.amax(1)


def planted_on_backgrounds(evidence: Evidence, sampler: BackgroundSampler, n: int) -> torch.Tensor:
    """(n·B, 3, H, W) background-major copies m ⊙ x + (1 − m) ⊙ r_k, k = 1..n, r_k from ``sampler``."""
    x, m = evidence.images, evidence.mask
    return torch.cat([m * x + (1 - m) * sampler(x) for _ in range(n)])


@dataclass
class Evidence:
    """What a loss term may look at (all tensors; x is in [0, 1] pixel space)."""

    images: torch.Tensor  # (B, 3, H, W) original x
    mask: torch.Tensor  # (B, 1, H, W) hard mask, straight-through gradient
    soft_mask: torch.Tensor  # (B, 1, H, W) sigmoid probabilities
    fill: torch.Tensor  # (B, 3, H, W) value of removed pixels
    explanation: torch.Tensor  # (B, 3, H, W) e = m ⊙ x + (1 − m) ⊙ fill
    target: torch.Tensor  # (B,) y = argmax f(x)
    logits: torch.Tensor  # (B, K) f(x), constant
    logits_e: torch.Tensor  # (B, K) f(e)
    features: dict[str, torch.Tensor] = field(default_factory=dict)  # φ_l(x), constant
    features_e: dict[str, torch.Tensor] = field(default_factory=dict)  # φ_l(e)
    mask_target: torch.Tensor | None = None  # (B, 1, H, W) in {0, 1}: a mask to learn from, where the data has one
    mask_logits: torch.Tensor | None = None  # (B, 1, H, W) z, the mask network's output (mask = 1[z > 0])


class LossTerm(nn.Module):
    """Base class: a weighted, per-image loss.

    Override :meth:`forward` (and :meth:`perturb` if the term needs extra images classified).

    Args:
        weight: non-negative multiplier of the term in the total loss.
        warmup: fraction of the optimisation (per-image steps, or training steps) over which
            the weight ramps linearly from 0 to ``weight``; 0 applies it in full at once.
    """

    def __init__(self, weight: float = 1.0, warmup: float = 0.0) -> None:
        super().__init__()
        if not weight >= 0:
            raise ValueError(f"{type(self).__name__}: weight must be >= 0, got {weight}")
        if not 0 <= warmup <= 1:
            raise ValueError(f"{type(self).__name__}: warmup must be in [0, 1], got {warmup}")
        self.weight = float(weight)
        self.warmup = float(warmup)

    def weight_at(self, progress: float | None) -> float:
        """Effective weight: w · min(1, progress / warmup) (w when progress is unknown)."""
        if self.warmup == 0 or progress is None:
            return self.weight
        return self.weight * min(1.0, progress / self.warmup)

    @property
    def name(self) -> str:
        """Short key used in logs, e.g. ``area`` or ``activation_matching``."""
        import re

        return re.sub(r"(?<!^)(?=[A-Z])", "_", type(self).__name__).lower()

    def perturb(self, evidence: Evidence) -> torch.Tensor | None:
        """Extra images (n·B, 3, H, W) to classify alongside e, or None."""
        return None

    @property
    def families(self) -> set[str]:
        """The evaluation families (:data:`~actmatch.explainers.backgrounds.FAMILY_OF_KIND`) of the
        backgrounds this term draws; empty for a term that draws none."""
        sampler = getattr(self, "sampler", None)
        return {FAMILY_OF_KIND[kind] for kind in sampler.kinds} if sampler is not None and self.weight > 0 else set()

    def forward(self, evidence: Evidence, perturbed_logits: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"weight={self.weight}, warmup={self.warmup}"


class ActivationMatching(LossTerm):
    """L_am = Σ_l α_l · d(φ_l(x), φ_l(e)) over the tapped layers.

    d = ``mse``: ‖φ_l(x) − φ_l(e)‖² / ‖φ_l(x)‖² (MSE normalised by the original's energy, so
    layers of different scale weigh alike); d = ``cosine``: 1 − cos(φ_l(x), φ_l(e)) on the
    flattened maps. α_l comes from ``layer_weights`` (missing layers weigh 1), then the α are
    normalised to sum to one.

    Args:
        weight: weight of the term.
        distance: ``mse`` or ``cosine``.
        layer_weights: per-layer α_l by tap name; None weighs every tap equally.
    """

    distances = ("mse", "cosine")

    def __init__(
        self,
        weight: float = 1.0,
        distance: str = "mse",
        layer_weights: dict[str, float] | None = None,
        warmup: float = 0.0,
    ) -> None:
        super().__init__(weight, warmup)
        if distance not in self.distances:
            raise ValueError(f"ActivationMatching: unknown distance {distance!r}; choose one of {self.distances}")
        if layer_weights is not None and any(not w >= 0 for w in layer_weights.values()):
            raise ValueError(f"ActivationMatching: layer weights must be >= 0, got {layer_weights}")
        self.distance = distance
        self.layer_weights = dict(layer_weights) if layer_weights else None

    def forward(self, evidence: Evidence, perturbed_logits: torch.Tensor | None = None) -> torch.Tensor:
        if not evidence.features:
            raise ValueError("ActivationMatching needs tapped features; the explainer has no taps")
        alphas = {name: (self.layer_weights or {}).get(name, 1.0) for name in evidence.features}
        total_alpha = sum(alphas.values()) or 1.0
        loss = evidence.logits_e.new_zeros(evidence.logits_e.shape[0])
        for name, original in evidence.features.items():
            a = original.flatten(1)  # (B, C·h·w)
            b = evidence.features_e[name].flatten(1)
            if self.distance == "mse":
                d = (a - b).pow(2).mean(1) / a.pow(2).mean(1).clamp_min(1e-8)
            else:
                d = 1 - F.cosine_similarity(a, b, dim=1, eps=1e-8)
            loss = loss + alphas[name] / total_alpha * d
        return loss

    def extra_repr(self) -> str:
        return f"weight={self.weight}, distance={self.distance!r}, layer_weights={self.layer_weights}"


class KLDivergence(LossTerm):
    """L_kl = KL(softmax f(x) ‖ softmax f(e)) = Σ_c p_x(c) (log p_x(c) − log p_e(c))."""

    def forward(self, evidence: Evidence, perturbed_logits: torch.Tensor | None = None) -> torch.Tensor:
        log_px = evidence.logits.log_softmax(-1)
        log_pe = evidence.logits_e.log_softmax(-1)
        return (log_px.exp() * (log_px - log_pe)).sum(-1)


class CrossEntropy(LossTerm):
    """L_ce = −log p_f(e)(y) with y = argmax f(x): the explanation keeps the top-1 label."""

    def forward(self, evidence: Evidence, perturbed_logits: torch.Tensor | None = None) -> torch.Tensor:
        return F.cross_entropy(evidence.logits_e, evidence.target, reduction="none")


class Area(LossTerm):
    """L_area = ‖m‖₁ / (H·W): the fraction of pixels kept (minimality)."""

    def forward(self, evidence: Evidence, perturbed_logits: torch.Tensor | None = None) -> torch.Tensor:
        return evidence.mask.flatten(1).mean(1)


class AreaBudget(LossTerm):
    """L_budget = max(0, ‖m‖₁ / (H·W) − a): the area above a budget a, nothing below it.

    For amortized training: a fixed-weight :class:`Area` term trades area against the label
    with one exchange rate for every image, so masks collapse (weight too high) or stay large
    (too low); a budget lets the label terms grow each mask up to a and stops it there.

    Args:
        weight: weight of the term.
        budget: a, the fraction of the image a mask may keep without cost.
    """

    def __init__(self, weight: float = 1.0, budget: float = 0.2, warmup: float = 0.0) -> None:
        super().__init__(weight, warmup)
        if not 0 < budget <= 1:
            raise ValueError(f"AreaBudget: budget must be in (0, 1], got {budget}")
        self.budget = float(budget)

    def forward(self, evidence: Evidence, perturbed_logits: torch.Tensor | None = None) -> torch.Tensor:
        return (evidence.mask.flatten(1).mean(1) - self.budget).clamp_min(0)

    def extra_repr(self) -> str:
        return f"weight={self.weight}, budget={self.budget}, warmup={self.warmup}"


class Binarization(LossTerm):
    """L_bin = ‖s − s²‖₁ / (H·W) on the sigmoid mask s: zero exactly when s is 0 or 1."""

    def forward(self, evidence: Evidence, perturbed_logits: torch.Tensor | None = None) -> torch.Tensor:
        s = evidence.soft_mask
        return (s - s * s).flatten(1).mean(1)


class TotalVariation(LossTerm):
    """L_tv = Σ_ij (|m_ij − m_i+1,j| + |m_ij − m_i,j+1|) / (H·W): few, contiguous regions."""

    def forward(self, evidence: Evidence, perturbed_logits: torch.Tensor | None = None) -> torch.Tensor:
        m = evidence.mask
        height, width = m.shape[-2:]
        dv = (m[..., 1:, :] - m[..., :-1, :]).abs().flatten(1).sum(1)
        dh = (m[..., :, 1:] - m[..., :, :-1]).abs().flatten(1).sum(1)
        return (dv + dh) / (height * width)


class Robustness(LossTerm):
    """L_rob = −log p_f(ẽ)(y), ẽ = m ⊙ x + (1 − m) ⊙ r with r a random background.

    The kept pixels must suffice whatever fills the rest (abductive explanation). The loss is
    averaged over ``num_backgrounds`` backgrounds per image.

    Args:
        weight: weight of the term.
        backgrounds: background kinds to sample from (see :class:`BackgroundSampler`); None:
            :data:`~actmatch.explainers.backgrounds.FIT_KINDS` (no held-out evaluation family).
        num_backgrounds: backgrounds per image and step.
        gates: whether a step whose explanation loses the label on one of these backgrounds counts
            as not robust (a per-image fit then holds its area and does not select that step as
            robust); False: the term only shapes the ranking (expected sufficiency), and the fit's
            criterion alone decides.
    """

    def __init__(
        self,
        weight: float = 1.0,
        backgrounds: list[str] | None = None,
        num_backgrounds: int = 1,
        warmup: float = 0.0,
        gates: bool = True,
    ) -> None:
        super().__init__(weight, warmup)
        self.gates = gates
        if num_backgrounds < 1:
            raise ValueError(f"Robustness: num_backgrounds must be >= 1, got {num_backgrounds}")
        self.sampler = BackgroundSampler(backgrounds if backgrounds is not None else list(FIT_KINDS))
        self.num_backgrounds = num_backgrounds

    def perturb(self, evidence: Evidence) -> torch.Tensor:
        return planted_on_backgrounds(evidence, self.sampler, self.num_backgrounds)

    def forward(self, evidence: Evidence, perturbed_logits: torch.Tensor | None = None) -> torch.Tensor:
        target = evidence.target.repeat(self.num_backgrounds)
        assert perturbed_logits is not None  # the logits of perturb()'s images
        ce = F.cross_entropy(perturbed_logits, target, reduction="none")  # (n·B,)
        return ce.view(self.num_backgrounds, -1).mean(0)

    def extra_repr(self) -> str:
        return (
            f"weight={self.weight}, backgrounds={self.sampler.kinds}, num_backgrounds={self.num_backgrounds}, gates={self.gates}"
        )


class Necessity(LossTerm):
    """L_nec = max(0, p_f(x̄)(y) − margin), x̄ = (1 − m) ⊙ x + m ⊙ fill.

    Removing the kept pixels should break the decision (optional; off by default).

    Args:
        weight: weight of the term.
        margin: probability of the label tolerated once the kept pixels are removed.
    """

    def __init__(self, weight: float = 1.0, margin: float = 0.1, warmup: float = 0.0) -> None:
        super().__init__(weight, warmup)
        if not 0 <= margin <= 1:
            raise ValueError(f"Necessity: margin must be in [0, 1], got {margin}")
        self.margin = margin

    def perturb(self, evidence: Evidence) -> torch.Tensor:
        m = evidence.mask
        return (1 - m) * evidence.images + m * evidence.fill

    def forward(self, evidence: Evidence, perturbed_logits: torch.Tensor | None = None) -> torch.Tensor:
        assert perturbed_logits is not None  # the logits of perturb()'s images
        p = perturbed_logits.softmax(-1).gather(1, evidence.target[:, None]).squeeze(1)
        return (p - self.margin).clamp_min(0)


class LabelMargin(LossTerm):
    """L_margin = mean_{c ∈ {e, ẽ_1..ẽ_n}} max(0, τ − (z_y(c) − max_{k≠y} z_k(c))).

    A hinge on the logit margin of the label: zero exactly when the explanation with the fill
    and its copies on n random backgrounds ẽ_k = m ⊙ x + (1 − m) ⊙ r_k all rank y first by at
    least τ. Meant as the constraint of :class:`~actmatch.explainers.fitting.ConstrainedFit`
    (the label must be kept, robustly: the abductive condition), not as a fixed-weight penalty.

    Args:
        weight: weight when used as a penalty (ignored by a constrained fit).
        margin: τ, the logit margin required.
        backgrounds: background kinds (see :class:`BackgroundSampler`).
        num_backgrounds: n random backgrounds per image and step (0: the fill only).
    """

    def __init__(
        self,
        weight: float = 1.0,
        margin: float = 1.0,
        backgrounds: list[str] | None = None,
        num_backgrounds: int = 2,
        warmup: float = 0.0,
    ) -> None:
        super().__init__(weight, warmup)
        if num_backgrounds < 0 or not margin >= 0:
            raise ValueError(f"LabelMargin: need num_backgrounds >= 0 and margin >= 0, got {num_backgrounds}, {margin}")
        self.sampler = BackgroundSampler(backgrounds or ["solid", "uniform", "gaussian"])
        self.num_backgrounds, self.margin = num_backgrounds, float(margin)

    def perturb(self, evidence: Evidence) -> torch.Tensor | None:
        if self.num_backgrounds == 0:
            return None
        return planted_on_backgrounds(evidence, self.sampler, self.num_backgrounds)

    def forward(self, evidence: Evidence, perturbed_logits: torch.Tensor | None = None) -> torch.Tensor:
        logits = evidence.logits_e if perturbed_logits is None else torch.cat([evidence.logits_e, perturbed_logits])
        copies = 1 + (0 if perturbed_logits is None else self.num_backgrounds)
        margins = logit_margin(logits, evidence.target.repeat(copies))  # (copies·B,)
        return (self.margin - margins).clamp_min(0).view(copies, -1).mean(0)

    def extra_repr(self) -> str:
        return (
            f"weight={self.weight}, margin={self.margin}, backgrounds={self.sampler.kinds}, "
            f"num_backgrounds={self.num_backgrounds}"
        )


def default_loss_terms() -> list[LossTerm]:
    """The default per-image recipe (the ``faithful`` preset, docs/method.md): at the area the fit
    sets, keep the label with the fill (CE) and on 2 backgrounds of the fit's own per step
    (expected sufficiency; the term shapes the ranking and does not gate the area), match
    activations lightly, prefer few regions (TV)."""
    return [
        ActivationMatching(weight=0.1, distance="mse"),
        CrossEntropy(weight=1.0),
        Robustness(weight=1.0, num_backgrounds=2, gates=False),
        TotalVariation(weight=0.05),
    ]


def amortized_loss_terms() -> list[LossTerm]:
    """The default recipe for amortized training, where a weighted area term sets the size."""
    return [
        ActivationMatching(weight=1.0, distance="mse"),
        KLDivergence(weight=0.0),
        CrossEntropy(weight=1.0),
        Area(weight=16.0, warmup=0.5),
        Binarization(weight=0.1),
        TotalVariation(weight=0.1),
        Robustness(weight=0.5),
    ]


class MaskDistillation(LossTerm):
    """L_distil = BCE(σ(κ (ẑ − c)), m*), averaged over the pixels: the mask network's *ranking* against
    a target mask m* (for amortized training: the per-image fit's masks of the training photos, read by
    ``ImageNetDataModule(mask_targets=DIR)``).

    ẑ = (z − mean z) / std z are the network's logits standardised per image and c is the value of ẑ
    that keeps exactly the target's area above it, so the term asks only for the order (the target's
    pixels first), at any logit scale and wherever the recipe cuts the ranking (a plain BCE on
    σ(z − t) with the cut t at a fixed area grew with the logits' scale and fought the other terms).

    Args:
        sharpness: κ, the logistic slope in units of the logits' standard deviation.
    """

    def __init__(self, weight: float = 1.0, sharpness: float = 3.0, warmup: float = 0.0) -> None:
        super().__init__(weight, warmup)
        if not sharpness > 0:
            raise ValueError(f"MaskDistillation: sharpness must be > 0, got {sharpness}")
        self.sharpness = float(sharpness)

    def forward(self, evidence: Evidence, perturbed_logits: torch.Tensor | None = None) -> torch.Tensor:
        target, z = evidence.mask_target, evidence.mask_logits
        if target is None or z is None:
            raise ValueError(
                "MaskDistillation needs a target mask with every image: set data.init_args.mask_targets to the "
                "folder `actmatch explain TRAIN_IMAGES --out DIR` wrote (a per-image fit has no targets; drop the term there)"
            )
        if target.shape[-2:] != z.shape[-2:]:
            raise ValueError(f"MaskDistillation: target masks are {tuple(target.shape[-2:])}, the masks {tuple(z.shape[-2:])}")
        flat, goal = z.flatten(1), target.flatten(1).to(z)
        standard = (flat - flat.mean(1, keepdim=True)) / flat.std(1, correction=0, keepdim=True).clamp_min(1e-6)
        area = goal.mean(1).clamp(1 / goal.shape[1], 1 - 1 / goal.shape[1])  # (B,), never empty nor whole
        cut = torch.stack([row.detach().quantile(1 - a) for row, a in zip(standard, area.tolist())])[:, None]
        return F.binary_cross_entropy_with_logits(self.sharpness * (standard - cut), goal, reduction="none").mean(1)

    def extra_repr(self) -> str:
        return f"weight={self.weight}, sharpness={self.sharpness}, warmup={self.warmup}"
