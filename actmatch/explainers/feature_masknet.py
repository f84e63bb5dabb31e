"""A mask network that reads the classifier's own features (the real-time saliency design).

Dabkowski & Gal (2017) train their amortized masking model on the feature pyramid of a
pretrained classifier, with a small trainable decoder: the encoder already knows what the
object is, so the decoder only learns where it is. :class:`FeatureMaskNet` does the same with a
frozen copy of the explained classifier: mask logits = decoder(features of x), at the input's
resolution. With ``class_map`` the decoder corrects the class activation map of the classifier's
own prediction (CAM, Zhou et al. 2016; for a global-pool + linear head it ranks the pixels as
Grad-CAM does), so training starts from Grad-CAM's ranking instead of from noise. It takes
images like :class:`~actmatch.explainers.unet.MaskUNet`, so it plugs into amortized training,
per-image fits and warm starts unchanged; only the decoder is trained.
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

    With ``class_map``, for the predicted class y = argmax f(x) and the final features A (C, h, w)
    that the head pools, the class activation map CAM = W_y · A + b_y, standardised per image
    (zero mean, unit spread over the h × w cells), is one more lateral input of the decoder and is
    added to the logits with a learned scale s (initially 1):

        logits = head(decoder(Σ lateral(stage features) + lateral(CAM))) + s · CAM.

    Args:
        backbone: the classifier whose features are read (its offline or hub weights, as
            :func:`~actmatch.explainers.classifier.load_classifier` loads them); it should be the
            explained classifier.
        stages: feature stages to decode (default: strides 8, 16 and 32 of a 5-stage CNN).
        width: decoder channels.
        init_keep: initial bias of the head (σ(init_keep) > 0.5 keeps every pixel at first).
        pretrained: load the backbone's weights (False: random, for tests).
        class_map: read and correct the class activation map of the predicted class (the
            classifier's head must be global pooling and one linear layer, as timm's CNNs).
    """

    def __init__(
        self,
        backbone: str = "efficientnet_lite0",
        stages: list[int] | tuple[int, ...] = (2, 3, 4),
        width: int = 32,
        init_keep: float = 0.5,
        pretrained: bool = True,
        class_map: bool = False,
    ) -> None:
        super().__init__()
        if width < 1 or not stages:
            raise ValueError(f"FeatureMaskNet needs width >= 1 and at least one stage, got width={width}, stages={stages}")
        self.backbone, self.stages, self.width = backbone, tuple(int(s) for s in stages), width
        self.init_keep, self.pretrained, self.class_map = init_keep, pretrained, bool(class_map)
        encoder = load_classifier(backbone, pretrained=pretrained)
        encoder.requires_grad_(False)
        self.encoder = encoder.eval()
        info = getattr(encoder.model, "feature_info", None)
        if info is None or max(self.stages) >= len(info):
            raise ValueError(f"FeatureMaskNet: {backbone} has no feature stages {self.stages} (timm feature_info)")
        channels = [info[s]["num_chs"] for s in self.stages]
        self.lateral = nn.ModuleList([nn.Conv2d(c, width, 1) for c in channels])
        self.class_lateral = nn.Conv2d(1, width, 1) if self.class_map else None
        self.class_scale = nn.Parameter(torch.ones(())) if self.class_map else None
        if self.class_map and not isinstance(getattr(encoder.model, "get_classifier", lambda: None)(), nn.Linear):
            raise ValueError(f"FeatureMaskNet(class_map=True) needs a linear classifier head; {backbone} has none")
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
            "class_map": self.class_map,
        }

    def reset_parameters(self) -> None:
        """Re-initialise the decoder (the encoder stays the classifier's); uses the global torch RNG."""
        extra = [self.class_lateral] if self.class_lateral is not None else []
        for module in [*self.lateral, *extra, *self.decoder, self.head]:
            reset = getattr(module, "reset_parameters", None)
            if reset is not None:
                reset()
        with torch.no_grad():
            self.head.weight.mul_(0.1)
            assert self.head.bias is not None
            self.head.bias.fill_(self.init_keep)
            if self.class_scale is not None:
                self.class_scale.fill_(1.0)

    def train(self, mode: bool = True) -> FeatureMaskNet:
        super().train(mode)
        self.encoder.eval()  # frozen: batch norm keeps its statistics
        return self

    def class_activation_map(self, final: torch.Tensor) -> torch.Tensor:
        """(B, 1, h, w) CAM = W_y · A + b_y of the predicted class y, standardised per image."""
        model = cast(Any, self.encoder.model)
        linear: nn.Linear = model.get_classifier()
        y = model.forward_head(final).argmax(-1)
        cam = torch.einsum("bc,bchw->bhw", linear.weight[y], final)[:, None]
        if linear.bias is not None:
            cam = cam + linear.bias[y].view(-1, 1, 1, 1)
        flat = cam.flatten(1)
        return (cam - flat.mean(1).view(-1, 1, 1, 1)) / flat.std(1).clamp_min(1e-6).view(-1, 1, 1, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Mask logits, shape (B, 1, H, W), for images (B, 3, H, W) in [0, 1]."""
        height, width = images.shape[-2:]
        intermediates = cast(Any, self.encoder.model).forward_intermediates  # timm's feature pyramid
        with torch.no_grad():
            out = intermediates(self.encoder.normalize(images), indices=list(self.stages), intermediates_only=not self.class_map)
            features, cam = (out[1], self.class_activation_map(out[0])) if self.class_map else (out, None)
        size = features[0].shape[-2:]
        inputs: list[tuple[nn.Module, torch.Tensor]] = list(zip(self.lateral, features))
        if cam is not None:
            assert self.class_lateral is not None
            inputs.append((self.class_lateral, cam))
        x = _resized(inputs[0][0](inputs[0][1]), size)
        for lateral, f in inputs[1:]:
            x = x + _resized(lateral(f), size)
        logits = F.interpolate(self.head(self.decoder(x)), size=(height, width), mode="bilinear", align_corners=False)
        if cam is not None:
            assert self.class_scale is not None
            logits = logits + self.class_scale * F.interpolate(cam, size=(height, width), mode="bilinear", align_corners=False)
        return logits


def _resized(x: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """x bilinearly resized to ``size`` (unchanged where it has that size)."""
    return x if x.shape[-2:] == size else F.interpolate(x, size=size, mode="bilinear", align_corners=False)
