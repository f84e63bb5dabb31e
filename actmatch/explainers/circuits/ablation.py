"""Faithfulness of a circuit: ablate every channel outside it and see whether the label survives.

At each tapped layer, a forward hook replaces the channels outside the circuit,

    a'_c = a_c if c ∈ circuit else r_c,

with r_c = 0 (:class:`ZeroAblation`) or the channel's mean activation (:class:`MeanAblation`:
over reference images when given, else over the positions of the input itself). Keeping every
channel reproduces the model exactly. Hooks live only inside :func:`ablated`, which removes them
on success and on error.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from actmatch.explainers.taps import validate_layers

__all__ = [
    "Ablation",
    "ZeroAblation",
    "MeanAblation",
    "ABLATIONS",
    "make_ablation",
    "ablated",
    "Faithfulness",
    "faithfulness",
    "ablated_logits",
]


def _channel_view(output: torch.Tensor, layer: str) -> torch.Tensor:
    if output.dim() not in (2, 4):
        raise ValueError(
            f"ablation needs (B, C, h, w) or (B, C) outputs, but layer {layer!r} gives {tuple(output.shape)}; "
            f"tap convolutional layers"
        )
    return output


class Ablation:
    """Base class: what replaces an ablated channel. Override :meth:`fill`."""

    name = "base"

    def fill(self, layer: str, output: torch.Tensor) -> torch.Tensor:
        """Replacement values, broadcastable to ``output`` (B, C, h, w) or (B, C)."""
        raise NotImplementedError


class ZeroAblation(Ablation):
    """r_c = 0."""

    name = "zero"

    def fill(self, layer: str, output: torch.Tensor) -> torch.Tensor:
        return torch.zeros((), dtype=output.dtype, device=output.device)


class MeanAblation(Ablation):
    """r_c = mean activation of channel c.

    Args:
        means: layer -> (C,) mean activation over reference images (e.g. from
            :meth:`from_images`); layers missing here use the input's own spatial mean.
    """

    name = "mean"

    def __init__(self, means: Mapping[str, torch.Tensor] | None = None) -> None:
        self.means = dict(means or {})

    def fill(self, layer: str, output: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (output.dim() - 2)
        if layer in self.means:
            return self.means[layer].to(output).view(shape)
        if output.dim() != 4:
            raise ValueError(f"mean ablation of the (B, C) layer {layer!r} needs reference means: use MeanAblation.from_images")
        return output.mean((2, 3), keepdim=True)  # (B, C, 1, 1) the input's own spatial mean

    @classmethod
    @torch.no_grad()
    def from_images(cls, classifier: nn.Module, images: list[torch.Tensor] | torch.Tensor, layers: list[str]) -> MeanAblation:
        """Per-channel mean activations over ``images`` (each (1, 3, H, W) or a batch)."""
        from actmatch.explainers.taps import ActivationTaps

        sums: dict[str, torch.Tensor] = {}
        count = 0
        for batch in images if isinstance(images, (list, tuple)) else [images]:
            with ActivationTaps(classifier, layers) as taps:
                classifier(batch)
            for name, fmap in taps.features.items():
                sums[name] = sums.get(name, 0) + fmap.flatten(2).mean(-1).sum(0).cpu()
            count += batch.shape[0]
        return cls({name: total / count for name, total in sums.items()})


ABLATIONS: dict[str, type[Ablation]] = {cls.name: cls for cls in (ZeroAblation, MeanAblation)}


def make_ablation(ablation: str | Ablation) -> Ablation:
    """An :class:`Ablation` from a name in :data:`ABLATIONS` (or the instance itself)."""
    if isinstance(ablation, Ablation):
        return ablation
    if ablation not in ABLATIONS:
        raise ValueError(f"unknown ablation {ablation!r}; choose one of {sorted(ABLATIONS)}")
    return ABLATIONS[ablation]()


@contextmanager
def ablated(classifier: nn.Module, keep: Mapping[str, torch.Tensor], ablation: str | Ablation = "zero") -> Iterator[None]:
    """Within the block, channels outside ``keep`` are ablated at each layer of ``keep``.

    Args:
        classifier: a FrozenClassifier or a plain model.
        keep: layer -> (C,) bool mask of the channels in the circuit, or (B, C): one per batch item.
        ablation: ``zero``, ``mean`` or an :class:`Ablation`.
    """
    ablation = make_ablation(ablation)
    model = getattr(classifier, "model", classifier)
    validate_layers(classifier, list(keep))
    modules = dict(model.named_modules())

    def hook_for(layer: str, mask: torch.Tensor):
        def hook(_module: nn.Module, _inputs, output: torch.Tensor) -> torch.Tensor:
            out = _channel_view(output, layer)
            if mask.shape[-1] != out.shape[1] or (mask.dim() == 2 and mask.shape[0] != out.shape[0]):
                raise ValueError(
                    f"keep mask for {layer!r} has shape {tuple(mask.shape)}; the layer's output is {tuple(out.shape)}"
                )
            if bool(mask.all()):
                return output
            shape = (mask.shape[0] if mask.dim() == 2 else 1, -1) + (1,) * (out.dim() - 2)
            return torch.where(mask.to(out.device).view(shape), out, ablation.fill(layer, out))

        return hook

    handles = []
    try:
        for layer, mask in keep.items():
            handles.append(modules[layer].register_forward_hook(hook_for(layer, mask.bool())))
        yield
    finally:
        for handle in handles:
            handle.remove()


@dataclass
class Faithfulness:
    """Result of running an input through the model with only the circuit's channels."""

    label: int  # the label that should survive (the original top-1)
    label_ablated: int  # top-1 with the circuit only
    confidence: float  # p(label) with the circuit only
    confidence_full: float  # p(label) with the whole model
    logits: torch.Tensor  # (K,) logits with the circuit only

    @property
    def label_kept(self) -> bool:
        return self.label_ablated == self.label


@torch.no_grad()
def faithfulness(
    classifier: nn.Module,
    image: torch.Tensor,
    keep: Mapping[str, torch.Tensor],
    label: int | None = None,
    ablation: str | Ablation = "zero",
    full_logits: torch.Tensor | None = None,
) -> Faithfulness:
    """Classify ``image`` (1, 3, H, W) with every channel outside ``keep`` ablated.

    Args:
        label: the label that should survive; default: the unablated top-1.
        full_logits: (K,) logits of the unablated model, if already known.
    """
    full = (classifier(image)[0] if full_logits is None else full_logits).softmax(-1)
    label = int(full.argmax()) if label is None else int(label)
    with ablated(classifier, keep, ablation):
        logits = classifier(image)[0]
    probs = logits.softmax(-1)
    return Faithfulness(label, int(probs.argmax()), float(probs[label]), float(full[label]), logits.cpu())


@torch.no_grad()
def ablated_logits(
    classifier: nn.Module,
    image: torch.Tensor,
    keeps: list[dict[str, torch.Tensor]],
    ablation: str | Ablation = "zero",
    chunk: int = 4,
) -> torch.Tensor:
    """(len(keeps), K) logits of ``image`` (1, 3, H, W) under several circuits, batched ``chunk`` at a time."""
    rows = []
    for start in range(0, len(keeps), chunk):
        part = keeps[start : start + chunk]
        stacked = {layer: torch.stack([keep[layer] for keep in part]) for layer in part[0]}  # (b, C)
        with ablated(classifier, stacked, ablation):
            rows.append(classifier(image.expand(len(part), -1, -1, -1)).cpu())
    return torch.cat(rows)
