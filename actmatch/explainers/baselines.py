"""Baseline explainers behind one interface: ``attribute(images, target) -> (B, 1, H, W)``.

Every method takes images in [0, 1] pixel space (the :class:`FrozenClassifier` convention) and
returns one non-negative-or-signed relevance map per image at input resolution; higher means
more evidence for ``target``. The maps are ranked by the metrics (insertion/deletion, top-k
cuts), so only their order matters.

Sources and libraries:

* :class:`Saliency` — vanilla gradient (Simonyan et al. 2014), Captum ``Saliency``;
  map = max over colour channels of |∂f_y/∂x|.
* :class:`GradCAM` — Selvaraju et al. 2017, pytorch-grad-cam ``GradCAM`` on the last timm
  ``feature_info`` stage (so any timm CNN works without naming a layer).
* :class:`Occlusion` — Zeiler & Fergus 2014, Captum ``Occlusion`` with the model's mean colour
  as the baseline.
* :class:`IntegratedGradients` — Sundararajan et al. 2017, Captum ``IntegratedGradients`` from
  the mean-colour image; map = Σ_c attribution.
* :class:`RISE` — Petsiuk et al. 2018, written here (no maintained package: the only PyPI one,
  ``captum-rise`` 1.0, is a single 2023 beta release):
  S(p) = 1/(N·p₁) · Σ_i f_y(x ⊙ M_i + (1 − M_i) ⊙ μ) · M_i(p), M_i upsampled random grids.
* :class:`ExtremalPerturbation` — Fong et al. 2019 through TorchRay, only if TorchRay is
  installed (it is not a dependency: TorchRay 1.0.0.2, 2019, is CC BY-NC 4.0, incompatible with
  this MIT project's commercial users).

Gradient methods run under ``torch.inference_mode(False)`` and ``torch.enable_grad()`` on a
detached copy of the input that requires grad, so they work on the frozen classifier (whose
parameters need no grad) and inside Lightning's validation/test/predict loops.
"""

from __future__ import annotations

import contextlib
import importlib.util

import torch
import torch.nn.functional as F
from torch import nn

from actmatch.explainers.backgrounds import make_fill
from actmatch.explainers.classifier import FrozenClassifier

__all__ = [
    "AttributionMethod",
    "Saliency",
    "GradCAM",
    "Occlusion",
    "IntegratedGradients",
    "RISE",
    "ExtremalPerturbation",
    "CentrePrior",
    "gradcam_layer",
    "torchray_available",
]


def _timm_model(classifier: nn.Module) -> nn.Module:
    return getattr(classifier, "model", classifier)


def gradcam_layer(classifier: nn.Module) -> str:
    """Name of the last timm ``feature_info`` module (the deepest spatial stage)."""
    info = getattr(_timm_model(classifier), "feature_info", None)
    names = [entry.get("module") for entry in info] if isinstance(info, list) else []
    names = [n for n in names if n]
    if not names:
        raise ValueError(
            f"{type(_timm_model(classifier)).__name__} has no timm feature_info; "
            f"pass GradCAM(classifier, layer='<module name>') explicitly"
        )
    return names[-1]


def torchray_available() -> bool:
    """Whether TorchRay (extremal perturbation) can be imported."""
    return importlib.util.find_spec("torchray") is not None


class AttributionMethod:
    """Base class: one relevance map per image, at input resolution.

    Override :meth:`compute` (returns (B, C, h, w) relevance at any resolution and channel
    count); the base class handles the grad context, channel reduction (:meth:`reduce`), the
    resize to (H, W) and detaching.

    Args:
        classifier: the frozen classifier (inputs in [0, 1]).
    """

    #: gradient methods need autograd even inside no-grad / inference-mode loops
    needs_grad: bool = False

    def __init__(self, classifier: FrozenClassifier) -> None:
        self.classifier = classifier

    @property
    def name(self) -> str:
        return type(self).__name__.lower()

    def fill(self, images: torch.Tensor) -> torch.Tensor:
        """The model's mean colour (zero in normalized space), shaped like ``images``."""
        return make_fill(images, "mean", self.classifier.data_config["mean"])

    def compute(self, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Raw relevance (B, C, h, w) for ``images`` (B, 3, H, W) and ``target`` (B,)."""
        raise NotImplementedError

    def reduce(self, relevance: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, 1, h, w); default: sum over channels."""
        return relevance.sum(1, keepdim=True)

    def attribute(self, images: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """Relevance maps (B, 1, H, W) for ``images`` (B, 3, H, W) in [0, 1].

        Args:
            images: the batch to explain.
            target: (B,) class indices; None explains the top-1 class of each image.
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W) in [0, 1], got shape {tuple(images.shape)}")
        images = images.detach()
        if target is None:
            with torch.no_grad():
                target = self.classifier(images).argmax(-1)
        target = torch.as_tensor(target, device=images.device).long().reshape(-1)
        if target.numel() != images.shape[0]:
            raise ValueError(f"target must hold one class per image: {target.numel()} for {images.shape[0]} images")
        grad = (torch.inference_mode(False), torch.enable_grad()) if self.needs_grad else (torch.no_grad(),)
        with contextlib.ExitStack() as stack:
            for ctx in grad:
                stack.enter_context(ctx)
            if self.needs_grad:
                images = images.clone().requires_grad_(True)  # a normal tensor, even from inference mode
            relevance = self.compute(images, target)
        relevance = self.reduce(relevance.detach().float())  # (B, 1, h, w)
        if relevance.shape[-2:] != images.shape[-2:]:
            relevance = F.interpolate(relevance, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return relevance

    __call__ = attribute


class CentrePrior(AttributionMethod):
    """The centre bias: a sanity baseline that reads neither the image nor the classifier.

    S(i, j) = −((u_i − ½)² + (v_j − ½)²), with u_i = (i + ½)/H and v_j = (j + ½)/W the pixel centres as
    fractions of each side, so every top-k cut is the centred ellipse of area k (a disc on a square image).
    Photos put their subject near the middle; an explainer that keeps no more labels than this at the same
    area has not shown that it reads the image.
    """

    @property
    def name(self) -> str:
        return "centre"

    def compute(self, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        b, _, h, w = images.shape
        u = (torch.arange(h, device=images.device, dtype=torch.float32) + 0.5) / h - 0.5
        v = (torch.arange(w, device=images.device, dtype=torch.float32) + 0.5) / w - 0.5
        return -(u[:, None] ** 2 + v[None, :] ** 2).expand(b, 1, h, w)


class Saliency(AttributionMethod):
    """Vanilla gradient saliency (Simonyan et al. 2014): S = max_c |∂f_y(x)/∂x_c| (Captum)."""

    needs_grad = True

    def compute(self, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        from captum.attr import Saliency as CaptumSaliency

        return CaptumSaliency(self.classifier).attribute(images, target=target, abs=True)

    def reduce(self, relevance: torch.Tensor) -> torch.Tensor:
        return relevance.amax(1, keepdim=True)


class GradCAM(AttributionMethod):
    """Grad-CAM (Selvaraju et al. 2017) through pytorch-grad-cam.

    L = ReLU(Σ_k α_k A^k), α_k = mean_ij ∂f_y/∂A^k_ij, at ``layer`` (default: the last timm
    ``feature_info`` module); pytorch-grad-cam upsamples and min-max normalises each map.

    Args:
        classifier: the frozen classifier.
        layer: module name inside the timm model; None derives it from timm.
    """

    needs_grad = True

    def __init__(self, classifier: FrozenClassifier, layer: str | None = None) -> None:
        super().__init__(classifier)
        self.layer = layer or gradcam_layer(classifier)
        modules = dict(_timm_model(classifier).named_modules())
        if self.layer not in modules:
            raise ValueError(f"GradCAM: no module {self.layer!r} in {type(_timm_model(classifier)).__name__}")
        self.module = modules[self.layer]

    def compute(self, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        from pytorch_grad_cam import GradCAM as LibGradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        targets = [ClassifierOutputTarget(int(t)) for t in target]
        with LibGradCAM(model=self.classifier, target_layers=[self.module]) as cam:  # removes its hooks
            maps = cam(input_tensor=images, targets=targets)  # numpy (B, H, W)
        return torch.from_numpy(maps).to(images.device)[:, None]


class Occlusion(AttributionMethod):
    """Occlusion (Zeiler & Fergus 2014), Captum: the drop of f_y when a window is greyed out.

    Args:
        classifier: the frozen classifier.
        window: side of the square occluding window, pixels.
        stride: step of the window, pixels (default: window // 2).
        batch: perturbed images classified per forward pass.
    """

    def __init__(self, classifier: FrozenClassifier, window: int = 32, stride: int | None = None, batch: int = 32) -> None:
        super().__init__(classifier)
        if window < 1 or (stride is not None and stride < 1) or batch < 1:
            raise ValueError(f"Occlusion: window, stride and batch must be >= 1 (got {window}, {stride}, {batch})")
        self.window, self.stride, self.batch = window, stride or max(1, window // 2), batch

    def compute(self, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        from captum.attr import Occlusion as CaptumOcclusion

        window = min(self.window, *images.shape[-2:])
        return CaptumOcclusion(self.classifier).attribute(
            images,
            sliding_window_shapes=(3, window, window),
            strides=(3, self.stride, self.stride),
            baselines=self.fill(images),
            target=target,
            perturbations_per_eval=self.batch,
        )


class IntegratedGradients(AttributionMethod):
    """Integrated gradients (Sundararajan et al. 2017), Captum, from the mean-colour image.

    IG_c(x) = (x − x') · ∫₀¹ ∂f_y(x' + α(x − x'))/∂x_c dα, map = Σ_c IG_c.

    Args:
        classifier: the frozen classifier.
        steps: Riemann steps of the path integral.
        batch: path points per forward pass.
    """

    needs_grad = True

    def __init__(self, classifier: FrozenClassifier, steps: int = 32, batch: int = 32) -> None:
        super().__init__(classifier)
        if steps < 1 or batch < 1:
            raise ValueError(f"IntegratedGradients: steps and batch must be >= 1 (got {steps}, {batch})")
        self.steps, self.batch = steps, batch

    def compute(self, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        from captum.attr import IntegratedGradients as CaptumIG

        return CaptumIG(self.classifier).attribute(
            images, baselines=self.fill(images), target=target, n_steps=self.steps, internal_batch_size=self.batch
        )


class RISE(AttributionMethod):
    """RISE (Petsiuk et al. 2018), written here: no maintained package provides it.

    N binary grids of ``cells``×``cells`` cells, each kept with probability p, are upsampled
    bilinearly to (H + cell, W + cell) and randomly shifted (cropped) to (H, W), giving smooth
    masks M_i. S(p) = 1/(N·p) · Σ_i f_y(M_i ⊙ x + (1 − M_i) ⊙ μ) · M_i(p), with μ the mean
    colour (zero in normalized space) and f_y the softmax probability.

    Args:
        classifier: the frozen classifier.
        masks: number of random masks N (the paper uses 4000–8000).
        cells: grid side s.
        p: keep probability.
        batch: masked images per forward pass.
        seed: seeds the masks (the same masks are used for every image of a call).
    """

    def __init__(
        self, classifier: FrozenClassifier, masks: int = 1000, cells: int = 7, p: float = 0.5, batch: int = 64, seed: int = 0
    ) -> None:
        super().__init__(classifier)
        if masks < 1 or cells < 1 or batch < 1 or not 0 < p < 1:
            raise ValueError(f"RISE: masks, cells, batch must be >= 1 and 0 < p < 1 (got {masks}, {cells}, {batch}, {p})")
        self.n_masks, self.cells, self.p, self.batch, self.seed = masks, cells, p, batch, seed

    def sample_masks(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        """(N, 1, H, W) smooth random masks in [0, 1]."""
        gen = torch.Generator().manual_seed(self.seed)
        grid = (torch.rand(self.n_masks, 1, self.cells, self.cells, generator=gen) < self.p).float()
        cell_h, cell_w = -(-height // self.cells), -(-width // self.cells)
        up = F.interpolate(
            grid, size=((self.cells + 1) * cell_h, (self.cells + 1) * cell_w), mode="bilinear", align_corners=False
        )
        dy = torch.randint(0, cell_h, (self.n_masks,), generator=gen)
        dx = torch.randint(0, cell_w, (self.n_masks,), generator=gen)
        rows = (dy[:, None] + torch.arange(height)[None]).view(self.n_masks, 1, height, 1).expand(-1, 1, height, width)
        cols = (dx[:, None] + torch.arange(width)[None]).view(self.n_masks, 1, 1, width).expand(-1, 1, height, width)
        flat = up.flatten(2)  # (N, 1, H'·W')
        index = (rows * up.shape[-1] + cols).flatten(2)
        return flat.gather(2, index).view(self.n_masks, 1, height, width).to(device)

    def compute(self, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        b, _, h, w = images.shape
        masks = self.sample_masks(h, w, images.device)  # (N, 1, H, W)
        fill = self.fill(images[:1])
        out = []
        for image, y in zip(images, target):
            saliency = torch.zeros(1, h, w, device=images.device)
            for start in range(0, self.n_masks, self.batch):
                m = masks[start : start + self.batch]
                probs = self.classifier(m * image[None] + (1 - m) * fill).softmax(-1)[:, y]  # (n,)
                saliency += (probs.view(-1, 1, 1, 1) * m).sum(0)
            out.append(saliency / (self.n_masks * self.p))
        return torch.stack(out)  # (B, 1, H, W)


class ExtremalPerturbation(AttributionMethod):
    """Extremal perturbation (Fong et al. 2019) through TorchRay, when it is installed.

    TorchRay is not a dependency (CC BY-NC 4.0, last release 2019); install it yourself for
    non-commercial comparisons. The map is the sum of the masks found at ``areas``.

    Args:
        classifier: the frozen classifier.
        areas: target areas of the extremal masks.
        steps: optimisation steps (TorchRay's ``max_iter``).
    """

    needs_grad = True

    def __init__(self, classifier: FrozenClassifier, areas: tuple[float, ...] = (0.05, 0.1, 0.2), steps: int = 200) -> None:
        super().__init__(classifier)
        if not torchray_available():
            raise ImportError(
                "extremal perturbation needs TorchRay, which is not installed (and is CC BY-NC 4.0): "
                "pip install torchray for non-commercial use, or drop 'ep' from --methods"
            )
        self.areas, self.steps = list(areas), steps

    def compute(self, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        from torchray.attribution.extremal_perturbation import extremal_perturbation

        out = []
        for image, y in zip(images, target):
            masks, _ = extremal_perturbation(self.classifier, image[None].detach(), int(y), areas=self.areas, max_iter=self.steps)
            out.append(masks.sum(0))
        return torch.stack(out)
