"""Lightweight mask U-Net with a straight-through binary output.

The network sees the image (in [0, 1]), optionally at a reduced working size, and returns
mask logits at the input's resolution. ``binarize`` turns logits into a hard {0, 1} mask in
the forward pass while the gradient flows through the sigmoid (straight-through estimator).
"""

from __future__ import annotations

from typing import Literal, cast

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MaskUNet", "binarize"]


class _StraightThrough(torch.autograd.Function):
    """Forward 1[σ(z) > t]; backward ∂m/∂z = max(σ'(z), floor)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, threshold: float, floor: float) -> torch.Tensor:
        soft = torch.sigmoid(logits)
        ctx.save_for_backward(soft)
        ctx.floor = floor
        return (soft > threshold).to(logits.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (soft,) = ctx.saved_tensors
        return grad * (soft * (1 - soft)).clamp_min(ctx.floor), None, None


def binarize(logits: torch.Tensor, threshold: float = 0.5, floor: float = 0.02) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard mask with a straight-through gradient.

    Forward: m = 1[σ(z) > t], exactly 0 or 1. Backward: ∂m/∂z = max(σ'(z), floor). The floor
    keeps saturated pixels trainable: with the plain σ' a pixel pushed far below the threshold
    gets a gradient under Adam's ε and can never come back (the mask "dies").

    Returns:
        (mask, soft): the straight-through hard mask and the sigmoid probabilities.
    """
    return _StraightThrough.apply(logits, threshold, floor), torch.sigmoid(logits)


_PaddingMode = Literal["zeros", "replicate", "reflect"]  # MaskUNet.PADDING_MODES


def _block(c_in: int, c_out: int, padding_mode: _PaddingMode = "zeros") -> nn.Sequential:
    groups = max(1, min(8, c_out // 4))
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, padding_mode=padding_mode),
        nn.GroupNorm(groups, c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, padding_mode=padding_mode),
        nn.GroupNorm(groups, c_out),
        nn.ReLU(inplace=True),
    )


class MaskUNet(nn.Module):
    """U-Net that maps images to mask logits at the input's resolution.

    Args:
        width: channels of the first level; level i has ``width * 2**i``.
        depth: number of down/up-sampling levels.
        working_size: the short side the image is resized to before the U-Net (None keeps
            the input size); the logits are upsampled back bilinearly.
        init_keep: initial bias of the output so that a fresh U-Net keeps (almost) every pixel
            (σ(init_keep) > 0.5 for a positive value).
        in_channels: image channels.
        padding_mode: padding of the 3×3 convolutions (``zeros``, ``replicate`` or ``reflect``).
            With ``zeros`` per-image fits on Lite0 often keep a thin frame along the image
            border; ``replicate`` removes it but scored worse on 12 benchmark images
            (docs/benchmark.md), so ``zeros`` stays the default.
    """

    PADDING_MODES = ("zeros", "replicate", "reflect")

    def __init__(
        self,
        width: int = 16,
        depth: int = 3,
        working_size: int | None = 112,
        init_keep: float = 0.5,
        in_channels: int = 3,
        padding_mode: str = "zeros",
    ) -> None:
        super().__init__()
        if padding_mode not in self.PADDING_MODES:
            raise ValueError(f"MaskUNet: unknown padding_mode {padding_mode!r}; choose one of {self.PADDING_MODES}")
        if width < 1 or depth < 1:
            raise ValueError(f"MaskUNet needs width >= 1 and depth >= 1, got width={width}, depth={depth}")
        if working_size is not None and working_size < 2**depth:
            raise ValueError(f"working_size={working_size} is smaller than 2**depth={2**depth}")
        self.width, self.depth, self.working_size, self.init_keep = width, depth, working_size, init_keep
        self.in_channels, self.padding_mode = in_channels, padding_mode
        mode = cast(_PaddingMode, padding_mode)  # one of PADDING_MODES, checked above
        chans = [width * 2**i for i in range(depth + 1)]
        self.encoders = nn.ModuleList(
            [_block(in_channels, chans[0], mode)] + [_block(chans[i], chans[i + 1], mode) for i in range(depth)]
        )
        self.decoders = nn.ModuleList([_block(chans[i + 1] + chans[i], chans[i], mode) for i in reversed(range(depth))])
        self.head = nn.Conv2d(chans[0], 1, 1)
        self.reset_parameters()

    def init_args(self) -> dict:
        """The constructor arguments that rebuild this architecture (saved with amortized checkpoints)."""
        return {
            "width": self.width,
            "depth": self.depth,
            "working_size": self.working_size,
            "init_keep": self.init_keep,
            "in_channels": self.in_channels,
            "padding_mode": self.padding_mode,
        }

    def reset_parameters(self) -> None:
        """Re-initialise every layer (uses the global torch RNG: seed it for reproducibility)."""
        for module in self.modules():
            reset = getattr(module, "reset_parameters", None)
            if module is not self and reset is not None:
                reset()
        with torch.no_grad():
            self.head.weight.mul_(0.1)
            assert self.head.bias is not None  # nn.Conv2d's bias=True
            self.head.bias.fill_(self.init_keep)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Mask logits, shape (B, 1, H, W) for images of shape (B, C, H, W)."""
        height, width = images.shape[-2:]
        x = images - 0.5
        if self.working_size is not None and min(height, width) != self.working_size:
            scale = self.working_size / min(height, width)
            size = (max(1, round(height * scale)), max(1, round(width * scale)))
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        # pad to a multiple of 2**depth so every level halves exactly
        h, w = x.shape[-2:]
        mult = 2**self.depth
        pad_h, pad_w = (-h) % mult, (-w) % mult
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        skips = []
        for i, encoder in enumerate(self.encoders):
            x = encoder(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for decoder, skip in zip(self.decoders, reversed(skips[:-1])):
            x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
            x = decoder(torch.cat([x, skip], dim=1))
        logits = self.head(x)[..., :h, :w]  # (B, 1, h, w)
        if logits.shape[-2:] != (height, width):
            logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
        return logits
