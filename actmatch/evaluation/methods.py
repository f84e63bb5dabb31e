"""The methods a benchmark compares, by name, and the model-randomisation sanity check's model.

Every method answers ``attribute(images, target) -> (B, 1, H, W)``: the baselines of
:mod:`actmatch.explainers.baselines`, ConvAD's occlusion, and activation matching per image
(:class:`ActMatchMethod`) or amortized (:class:`AmortizedActMatchMethod`).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from actmatch.explainers.baselines import (
    RISE,
    AttributionMethod,
    CentrePrior,
    ExtremalPerturbation,
    GradCAM,
    IntegratedGradients,
    Occlusion,
    Saliency,
)
from actmatch.explainers.classifier import FrozenClassifier
from actmatch.explainers.convad import ConvADOcclusion

__all__ = ["ActMatchMethod", "AmortizedActMatchMethod", "METHODS", "randomized_top", "recipe_families"]


class ActMatchMethod(AttributionMethod):
    """Per-image activation matching (:meth:`ActMatchExplainer.fit_images`).

    The map is m + s: the binary mask m plus the U-Net's probability s at the kept step, so a
    cut at the mask's area is exactly the mask, and smaller or larger cuts (smallest sufficient
    area, insertion, deletion) follow the U-Net's own ranking instead of random tie-breaks.

    Args:
        classifier: the frozen classifier (shared with the explainer, loaded once).
        steps: per-image optimisation steps (None: the explainer's default).
        seed: U-Net initialisation seed (the fit's seed stream).
        checkpoint: unused here (see :class:`AmortizedActMatchMethod`).
        config: explainer YAML (as ``actmatch explain --config``: loss terms, U-Net, fitting, ...);
            None uses the built-in default recipe. The benchmark's classifier is used either way.
    """

    mode = "per_image"

    def __init__(
        self,
        classifier: FrozenClassifier,
        steps: int | None = None,
        seed: int = 0,
        checkpoint: str | None = None,
        config: str | None = None,
    ) -> None:
        from actmatch.commands.explain import build_explainer

        super().__init__(classifier)
        self.explainer = build_explainer(config, steps=steps, classifier=classifier, mode=self.mode)
        self.steps, self.seed, self.config = steps, seed, config

    @property
    def name(self) -> str:
        return "am"

    def compute(self, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.explainer.to(images.device)
        result = self.explainer.fit_images(images, steps=self.steps, seed=self.seed)
        assert result.soft_masks is not None  # a fit records them
        return (result.masks + result.soft_masks).to(images.device)


class AmortizedActMatchMethod(ActMatchMethod):
    """Amortized activation matching: the mask network of an ``actmatch fit`` checkpoint, one forward
    pass (with ``scan``: its mask cut at the smallest accepted of ``scan`` areas of its ranking; with
    ``grow``: where its mask is refused, the smallest accepted of ``grow`` larger cuts; and with
    ``border_free`` a band-free cut, as ``actmatch explain --amortized --scan N`` or ``--grow N``). The map is
    m + σ(z), as per image: the cut at the mask's area is the mask, other cuts follow the network's
    ranking."""

    mode = "amortized"

    def __init__(
        self,
        classifier: FrozenClassifier,
        checkpoint: str | None = None,
        scan: int | None = None,
        border_free: float | None = None,
        grow: int | None = None,
        bisect: bool = False,
        **settings,
    ) -> None:
        from actmatch.commands.explain import use_amortized_refinement, use_checkpoint

        if checkpoint is None:
            raise ValueError("am-amortized needs --checkpoint CKPT (an `actmatch fit` checkpoint)")
        if not Path(checkpoint).is_file():
            raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
        super().__init__(classifier, **settings)
        self.checkpoint = checkpoint
        use_checkpoint(self.explainer, checkpoint, amortized=True)
        # the smallest accepted of `scan` cuts of the pass's ranking, or of `grow` larger ones where refused
        use_amortized_refinement(self.explainer, scan, border_free, grow, bisect)

    @property
    def name(self) -> str:
        return "am-amortized"

    def compute(self, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.explainer.to(images.device)
        result = self.explainer.explain(images)
        assert result.soft_masks is not None  # one pass records them
        return (result.masks + result.soft_masks).to(images.device)


#: method name -> class; every class takes (classifier, **settings)
METHODS: dict[str, type[AttributionMethod]] = {
    "am": ActMatchMethod,
    "am-amortized": AmortizedActMatchMethod,
    "saliency": Saliency,
    "gradcam": GradCAM,
    "occlusion": Occlusion,
    "ig": IntegratedGradients,
    "rise": RISE,
    "convad": ConvADOcclusion,
    "ep": ExtremalPerturbation,
    "centre": CentrePrior,
}


def recipe_families(method: AttributionMethod) -> dict[str, str]:
    """The perturbation families an activation-matching method's fit uses (family -> where); {} for
    the baselines, which fit nothing."""
    explainer = getattr(method, "explainer", None)
    return dict(explainer.families) if explainer is not None else {}


def _top_modules(model: nn.Module) -> list[str]:
    """Names of the modules from the last timm feature stage on (that stage, the head and what is
    between), in definition order."""
    info = getattr(model, "feature_info", None)
    names = [entry.get("module") for entry in info] if isinstance(info, list) else []
    names = [n for n in names if n]
    if not names:
        raise ValueError(f"{type(model).__name__} has no timm feature_info: cannot tell its top blocks")
    last = names[-1]
    children = [name for name, _ in model.named_modules() if name]
    return children[children.index(last) :]


@torch.no_grad()
def randomized_top(classifier: FrozenClassifier, seed: int = 0) -> FrozenClassifier:
    """A copy of ``classifier`` whose top blocks are re-initialised (Adebayo et al. 2018's cascading
    model-parameter randomisation, stopped after the last feature stage): every module from the
    last timm ``feature_info`` stage to the head gets ``reset_parameters()`` from ``seed`` (batch
    norms: weight 1, bias 0, running mean 0, running variance 1). The original is untouched."""
    clone = copy.deepcopy(classifier)
    model = getattr(clone, "model", clone)
    names = _top_modules(model)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        modules = dict(model.named_modules())
        for name in names:
            module = modules[name]
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
            if hasattr(module, "reset_running_stats"):
                module.reset_running_stats()
    finally:
        torch.random.set_rng_state(generator_state)
    clone.randomized_modules = names  # type: ignore[assignment]  # torch types Module.__setattr__ for tensors and modules; any value is kept
    return clone
