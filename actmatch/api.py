"""Python API: explain any ``nn.Module`` classifier (timm, torchvision, your own).

Two entry points over the same engine as ``actmatch explain``
(:class:`~actmatch.explainers.module.ActMatchExplainer`)::

    import actmatch

    # images: (B, 3, H, W) float in [0, 1]; mean/std: how the model normalises its input
    result = actmatch.explain(model, images, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                              taps=["layer2", "layer4"], steps=100)
    result.masks, result.label_kept, result.area   # the Explanation dataclass

    explainer = actmatch.ActivationMatchingExplainer(model, mean=..., std=...)   # Captum-style
    masks = explainer.attribute(images)            # (B, 1, H, W) in {0, 1}

The model receives ``(images − mean) / std``. During the call it is frozen (eval mode, no
parameter requires grad); afterwards its weights, ``requires_grad`` flags and train/eval
modes are exactly as they were. Masks come back at the images' size.

Only the model's own top-1 decision is explained: a ``target`` other than the top-1 class
raises a ``ValueError`` (the fitted mask must keep the label the model gives).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from actmatch.explainers.backgrounds import make_fill
from actmatch.explainers.classifier import FrozenClassifier
from actmatch.explainers.module import ActMatchExplainer, Explanation
from actmatch.explainers.taps import stage_taps

__all__ = ["explain", "ActivationMatchingExplainer", "frozen", "wrap_model"]

#: ActMatchExplainer arguments that load a classifier; the API takes the model itself
_LOADING_ARGS = ("backbone", "weights", "pretrained", "num_classes", "classifier", "labels", "mean", "std", "input_size")


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Freeze ``model`` (eval mode, no parameter requires grad) for the body, then restore
    every parameter's ``requires_grad`` flag and every module's training mode as they were,
    also when the body raises."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.requires_grad_(False)
        model.eval()
        yield model
    finally:
        for param, flag in flags:
            param.requires_grad_(flag)
        for module, mode in modes:
            module.training = mode


def wrap_model(
    model: nn.Module,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    input_size: int | None = None,
    class_names: list[str] | None = None,
    name: str | None = None,
) -> FrozenClassifier:
    """``model`` as a :class:`FrozenClassifier` (taking [0, 1] images, normalising itself).

    This freezes ``model`` in place; use it inside :func:`frozen` to get the flags back.

    Args:
        model: maps normalised (B, 3, H, W) images to logits (B, K); a FrozenClassifier is
            returned as is.
        mean: per-channel mean (R, G, B) the model expects its input normalised with; default:
            the model's timm ``pretrained_cfg``, else ImageNet's.
        std: per-channel std (R, G, B); default as ``mean``.
        input_size: the model's input side (default: its timm data config, else 224).
        class_names: readable names of the classes (default: ImageNet's for a 1000-class timm
            model, else the indices).
        name: a name for summaries (default: the model's class name).
    """
    if isinstance(model, FrozenClassifier):
        return model
    return FrozenClassifier(model, name or type(model).__name__, class_names, mean, std, input_size)


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a (B, 3, H, W) tensor, got {shape}")
    if not images.is_floating_point():
        raise ValueError(f"images must be float in [0, 1], got {images.dtype}; divide uint8 images by 255")
    low, high = float(images.min()), float(images.max())
    if low < -1e-3 or high > 1 + 1e-3:
        raise ValueError(
            f"images must be in [0, 1] (pass the model's normalisation as mean/std instead), got values in "
            f"[{low:.3g}, {high:.3g}]"
        )


def _check_target(classifier: FrozenClassifier, images: torch.Tensor, target) -> None:
    """Only the top-1 decision is explained: refuse any other target, naming the images."""
    if target is None:
        return
    with torch.no_grad():
        top1 = classifier(images).argmax(-1).cpu()  # (B,)
    wanted = torch.as_tensor(target).flatten().cpu().long()
    if wanted.numel() == 1:
        wanted = wanted.expand_as(top1)
    if wanted.shape != top1.shape:
        raise ValueError(f"target must be one class or one per image ({top1.numel()}), got {wanted.numel()}")
    differ = (wanted != top1).nonzero().flatten().tolist()
    if differ:
        raise ValueError(
            f"actmatch explains the model's own top-1 decision; target differs from the top-1 class for image(s) "
            f"{differ} (target {wanted[differ].tolist()}, top-1 {top1[differ].tolist()}); pass target=None"
        )


def _settings(config: str | None, settings: dict) -> dict:
    """The explainer's init args: the YAML ``config``'s, then ``settings`` (Python objects as given)."""
    valid = [p for p in inspect.signature(ActMatchExplainer).parameters if p not in _LOADING_ARGS]
    refused = sorted(set(settings) & set(_LOADING_ARGS))
    if refused:
        raise ValueError(
            f"{refused} load a classifier; the API explains the model you pass (give mean/std/input_size to describe it)"
        )
    unknown = sorted(set(settings) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown explainer setting(s) {unknown}; valid: mean, std, target, seed, config, input_size, {', '.join(valid)}"
        )
    init = {}
    if config is not None:
        from actmatch.commands.explain import explainer_init_args

        init = {k: v for k, v in explainer_init_args(config).items() if k not in _LOADING_ARGS}
    init.update({k: v for k, v in settings.items() if v is not None})
    return init


def _model_device(model: nn.Module, images: torch.Tensor) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else images.device


def explain(
    model: nn.Module,
    images: torch.Tensor,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    taps: list[str] | None = None,
    target: int | Sequence[int] | torch.Tensor | None = None,
    steps: int | None = None,
    seed: int | None = 0,
    config: str | None = None,
    input_size: int | None = None,
    **settings,
) -> Explanation:
    """Fit per-image activation-matching masks for ``model``'s decisions on ``images``.

    Args:
        model: any classifier mapping normalised (B, 3, H, W) images to logits. Left as it was:
            weights, ``requires_grad`` flags and train/eval modes.
        images: (B, 3, H, W) float in [0, 1].
        mean: per-channel mean (R, G, B) the model normalises with (default: the model's timm
            ``pretrained_cfg``, else ImageNet's).
        std: per-channel std (R, G, B).
        taps: layers whose activations are matched (``named_modules()`` names); default: timm's
            ``feature_info`` stages, else the last module of each spatial stage
            (:func:`~actmatch.explainers.taps.stage_taps`). A bad name lists the valid ones.
        target: the class to explain; only the top-1 class is supported (None: top-1), any
            other raises ``ValueError``.
        steps: per-image optimisation steps (default: the explainer's or the config's).
        seed: seeds the U-Net initialisation and the random backgrounds.
        config: YAML with the explainer's init args, as ``actmatch explain --config``
            (its classifier arguments are ignored); keywords override it.
        input_size: explain at this short side (images resized, masks resized back); default:
            the images as given.
        **settings: any other :class:`ActMatchExplainer` argument: ``losses``, ``fitting``,
            ``unet``, ``fill``, ``lr``.

    Returns:
        The :class:`Explanation` (on CPU): ``masks`` (B, 1, H, W) in {0, 1} at the images'
        size, ``explanations``, ``label``, ``label_kept``, ``area``, confidences.

    Raises:
        ValueError: bad images, an unknown setting or tap, a target other than the top-1 class.
    """
    _check_images(images)
    init = _settings(config, {"steps": steps, "taps": taps, **settings})
    device = _model_device(model, images)
    height, width = images.shape[-2:]
    with frozen(model):
        classifier = wrap_model(model, mean, std, input_size or min(height, width))
        work = images.detach().to(device)
        if input_size is not None and input_size != min(height, width):
            scale = input_size / min(height, width)
            size = (max(1, round(height * scale)), max(1, round(width * scale)))
            work = F.interpolate(work, size=size, mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
        _check_target(classifier, work, target)
        if init.get("taps") is None and not isinstance(getattr(classifier.model, "feature_info", None), list):
            init["taps"] = stage_taps(classifier.model, (work.shape[-2], work.shape[-1]))
        explainer = ActMatchExplainer(**init, classifier=classifier).to(device)
        result = explainer.fit_images(work, seed=seed)
        if work.shape[-2:] != images.shape[-2:]:
            result = _at_size(explainer, images, result)
    return result


def _at_size(explainer: ActMatchExplainer, images: torch.Tensor, result: Explanation) -> Explanation:
    """``result`` with masks (nearest) and explanations recomputed at the images' size."""
    size = tuple(images.shape[-2:])
    masks = F.interpolate(result.masks, size=size, mode="nearest")  # (B, 1, H, W)
    images = images.detach().cpu()
    fill = make_fill(images, explainer.fill, explainer.classifier.data_config["mean"])
    result.masks, result.explanations = masks, masks * images + (1 - masks) * fill
    if result.soft_masks is not None:
        result.soft_masks = F.interpolate(result.soft_masks, size=size, mode="bilinear", align_corners=False)
    return result


class ActivationMatchingExplainer:
    """Captum-style explainer: ``ActivationMatchingExplainer(model).attribute(inputs)``.

    Args:
        model: any classifier mapping normalised (B, 3, H, W) images to logits.
        mean: per-channel mean (R, G, B) the model normalises with.
        std: per-channel std (R, G, B).
        taps: layers to match (default: the model's stages).
        **settings: every other keyword of :func:`explain` (``steps``, ``seed``, ``config``,
            ``losses``, ``fitting``, ``unet``, ...).
    """

    def __init__(
        self,
        model: nn.Module,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        taps: list[str] | None = None,
        **settings,
    ) -> None:
        self.model = model
        self.settings = {"mean": mean, "std": std, "taps": taps, **settings}
        self.last: Explanation | None = None

    def explain(self, inputs: torch.Tensor, target=None) -> Explanation:
        """The full :class:`Explanation` of ``inputs`` (B, 3, H, W) in [0, 1]."""
        self.last = explain(self.model, inputs, target=target, **self.settings)
        return self.last

    def attribute(self, inputs: torch.Tensor, target=None) -> torch.Tensor:
        """Binary masks (B, 1, H, W) in {0, 1}, on ``inputs``' device: 1 where the pixels kept
        suffice for the model's top-1 decision. ``target`` must be None or the top-1 class.
        The full result of the last call is in :attr:`last`."""
        return self.explain(inputs, target).masks.to(inputs.device)
