"""The mask contract of the U-Net: binary, input-sized, straight-through gradients."""

from __future__ import annotations

import pytest
import torch

from actmatch.explainers.unet import MaskUNet, binarize


@pytest.mark.parametrize("size", [(64, 64), (97, 131), (224, 224), (40, 300)])
@pytest.mark.parametrize("working_size", [None, 48])
def test_mask_is_binary_and_input_sized(size, working_size):
    unet = MaskUNet(width=4, depth=2, working_size=working_size)
    logits = unet(torch.rand(2, 3, *size))
    mask, soft = binarize(logits)
    assert mask.shape == (2, 1, *size)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert ((soft > 0) & (soft < 1)).all()


def test_straight_through_gradient_reaches_the_unet():
    unet = MaskUNet(width=4, depth=2, working_size=None)
    mask, _ = binarize(unet(torch.rand(1, 3, 32, 32)))
    mask.mean().backward()
    grads = [p.grad for p in unet.parameters()]
    assert all(g is not None for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0


def test_fresh_unet_keeps_everything():
    mask, _ = binarize(MaskUNet(width=4, depth=2)(torch.rand(1, 3, 64, 64)))
    assert mask.mean() == 1


def test_reset_is_seeded():
    unet = MaskUNet(width=4, depth=2)
    torch.manual_seed(3)
    unet.reset_parameters()
    a = [p.clone() for p in unet.parameters()]
    torch.manual_seed(3)
    unet.reset_parameters()
    assert all(torch.equal(x, y) for x, y in zip(a, unet.parameters()))


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="width >= 1"):
        MaskUNet(width=0)
    with pytest.raises(ValueError, match="smaller than 2\\*\\*depth"):
        MaskUNet(depth=4, working_size=8)


def test_saturated_pixels_keep_a_gradient():
    """A pixel far below the threshold must still be trainable (the mask must not 'die')."""
    logits = torch.full((1, 1, 4, 4), -30.0, requires_grad=True)
    mask, _ = binarize(logits)
    assert mask.sum() == 0
    mask.sum().backward()
    assert (logits.grad > 1e-3).all()


def test_replicate_padding_has_no_border_effect():
    """On a flat image, zero padding makes the border pixels' logits differ (the frame seen in
    per-image fits); replicate padding keeps every pixel alike."""
    flat = torch.full((1, 3, 32, 32), 0.7)
    torch.manual_seed(0)
    zeros = MaskUNet(width=4, depth=2, working_size=None)(flat)
    torch.manual_seed(0)
    replicate = MaskUNet(width=4, depth=2, working_size=None, padding_mode="replicate")(flat)
    assert zeros.std() > 1e-4
    assert replicate.std() < 1e-6
    with pytest.raises(ValueError, match="unknown padding_mode 'circles'"):
        MaskUNet(padding_mode="circles")
