"""experiments/evaluation/amortized_latency.py --freeze: the frozen pass computes what the eager one does."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_helpers import evaluation_script


class LeftHalf(nn.Module):
    """Mask logits +1 on the left half of the image, −1 on the right."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        return torch.cat([torch.ones_like(x[:, :1, :, :half]), -torch.ones_like(x[:, :1, :, half:])], -1)


class PixelSum(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum((1, 2, 3))[:, None]


def test_mask_and_forward_keeps_the_masked_pixels_and_fills_the_rest():
    """Fill 0.5, a 2 × 4 image of ones kept on its left half: the classifier (a pixel sum) sees 3 channels ×
    (4 pixels of 1 + 4 of 0.5) = 18, worked out by hand; the frozen pass gives the same."""
    script = evaluation_script("amortized_latency")
    x = torch.ones(1, 3, 2, 4)
    module = script.MaskAndForward(LeftHalf(), PixelSum(), torch.full_like(x, 0.5))
    assert module(x).item() == pytest.approx(18.0)
    with torch.inference_mode():
        assert script.frozen_pass(module, x)(x).item() == pytest.approx(18.0)
