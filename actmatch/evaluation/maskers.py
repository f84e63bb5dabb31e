"""Maskers: how an evaluation removes the pixels a mask drops before classifying.

A masker turns (images, masks) into logits: :class:`PixelFill` replaces the removed pixels
by a fill (the model's mean colour by default), :class:`DeactivationMasker` (ConvAD) switches
the removed region off inside the network instead.
"""

from __future__ import annotations

import torch
from torch import nn

from actmatch.explainers.backgrounds import make_fill
from actmatch.explainers.classifier import FrozenClassifier
from actmatch.explainers.convad import deactivate

__all__ = ["Masker", "PixelFill", "DeactivationMasker"]


class Masker:
    """Base class: logits (N, K) of ``images`` (N, 3, H, W) with ``masks`` (N, 1, H, W) applied."""

    def __init__(self, classifier: nn.Module) -> None:
        self.classifier = classifier

    def __call__(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class PixelFill(Masker):
    """f(m ⊙ x + (1 − m) ⊙ fill); ``fill`` as in :func:`~actmatch.explainers.backgrounds.make_fill`
    (default: the model's mean colour)."""

    classifier: FrozenClassifier

    def __init__(self, classifier: FrozenClassifier, fill: str = "mean") -> None:
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
