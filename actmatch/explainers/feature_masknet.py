"""A mask network that reads the classifier's own features (the real-time saliency design).

Dabkowski & Gal (2017) train their amortized masking model on the feature pyramid of a
pretrained classifier, with a small trainable decoder: the encoder already knows what the
object is, so the decoder only learns where it is. :class:`FeatureMaskNet` does the same with a
frozen copy of the explained classifier: mask logits = decoder(features of x), at the input's
resolution. It takes images like :class:`~actmatch.explainers.unet.MaskUNet`, so it plugs into
amortized training, per-image fits and warm starts unchanged; only the decoder is trained.
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from actmatch.explainers.classifier import load_classifier

__all__ = ["FeatureMaskNet"]


class FeatureMaskNet(nn.Module):
    """Mask logits from a frozen classifier's feature stages and a trainable decoder.

    The stages ``stages`` (timm ``feature_info`` indices) of ``backbone`` are each projected to
    ``width`` channels (1×1 convolution), upsampled to the finest chosen stage and summed; two
    3×3 convolution blocks and a 1×1 head give logits, upsampled bilinearly to the input.

    Args:
        backbone: the classifier whose features are read (its offline or hub weights, as
            :func:`~actmatch.explainers.classifier.load_classifier` loads them); it should be the
            explained classifier.
        stages: feature stages to decode (default: strides 8, 16 and 32 of a 5-stage CNN).
        width: decoder channels.
        init_keep: initial bias of the head (σ(init_keep) > 0.5 keeps every pixel at first).
        pretrained: load the backbone's weights (False: random, for tests).
    """

    def __init__(
        self,
        backbone: str = "efficientnet_lite0",
        stages: list[int] | tuple[int, ...] = (2, 3, 4),
        width: int = 32,
        init_keep: float = 0.5,
        pretrained: bool = True,
    ) -> None:
        super().__init__()
        if width < 1 or not stages:
            raise ValueError(f"FeatureMaskNet needs width >= 1 and at least one stage, got width={width}, stages={stages}")
        self.backbone, self.stages, self.width = backbone, tuple(int(s) for s in stages), width
        self.init_keep, self.pretrained = init_keep, pretrained
        encoder = load_classifier(backbone, pretrained=pretrained)
        encoder.requires_grad_(False)
        self.encoder = encoder.eval()
        info = getattr(encoder.model, "feature_info", None)
        if info is None or max(self.stages) >= len(info):
            raise ValueError(f"FeatureMaskNet: {backbone} has no feature stages {self.stages} (timm feature_info)")
        channels = [info[s]["num_chs"] for s in self.stages]
        self.lateral = nn.ModuleList([nn.Conv2d(c, width, 1) for c in channels])
        groups = max(1, min(8, width // 4))
        self.decoder = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1), nn.GroupNorm(groups, width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1), nn.GroupNorm(groups, width), nn.ReLU(inplace=True),
        )  # fmt: skip
        self.head = nn.Conv2d(width, 1, 1)
        self.reset_parameters()

    def init_args(self) -> dict:
        """The constructor arguments that rebuild this architecture (saved with amortized checkpoints)."""
        return {
            "backbone": self.backbone,
            "stages": list(self.stages),
            "width": self.width,
            "init_keep": self.init_keep,
            "pretrained": self.pretrained,
        }

    def reset_parameters(self) -> None:
        """Re-initialise the decoder (the encoder stays the classifier's); uses the global torch RNG."""
        for module in [*self.lateral, *self.decoder, self.head]:
            reset = getattr(module, "reset_parameters", None)
            if reset is not None:
                reset()
        with torch.no_grad():
            self.head.weight.mul_(0.1)
            assert self.head.bias is not None
            self.head.bias.fill_(self.init_keep)

    def train(self, mode: bool = True) -> FeatureMaskNet:
        super().train(mode)
        self.encoder.eval()  # frozen: batch norm keeps its statistics
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Mask logits, shape (B, 1, H, W), for images (B, 3, H, W) in [0, 1]."""
        height, width = images.shape[-2:]
        intermediates = cast(Any, self.encoder.model).forward_intermediates  # timm's feature pyramid
        with torch.no_grad():
            features = intermediates(self.encoder.normalize(images), indices=list(self.stages), intermediates_only=True)
        size = features[0].shape[-2:]
        x = sum(
            F.interpolate(lateral(f), size=size, mode="bilinear", align_corners=False) if f.shape[-2:] != size else lateral(f)
            for lateral, f in zip(self.lateral, features)
        )
        logits = self.head(self.decoder(x))
        return F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
