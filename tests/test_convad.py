"""ConvAD: exact with an all-ones mask, blind to the removed pixels' values, different with a partial
mask, hooks always removed; the mask's propagation checked against a direct numpy computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from actmatch.explainers.classifier import load_classifier
from actmatch.explainers.convad import Deactivation, deactivate, propagate_mask
from actmatch.explainers.taps import hook_count


@pytest.fixture(scope="module", params=["tf_efficientnet_lite0", "resnet18"])
def cnn(request):
    return load_classifier(request.param, pretrained=False)


def test_all_ones_mask_gives_the_original_logits_exactly(cnn):
    images = torch.rand(1, 3, 64, 80)
    with torch.no_grad():
        assert torch.equal(deactivate(cnn, images, torch.ones(1, 1, 64, 80)), cnn(images))
    assert hook_count(cnn) == 0


def test_partial_mask_changes_the_logits(cnn):
    images = torch.rand(2, 3, 64, 64)
    masks = torch.ones(2, 1, 64, 64)
    masks[..., :32] = 0
    with torch.no_grad():
        original, deactivated = cnn(images), deactivate(cnn, images, masks)
    assert not torch.allclose(original, deactivated)
    assert hook_count(cnn) == 0


def test_hooks_are_removed_when_the_forward_fails(cnn):
    with pytest.raises(RuntimeError), Deactivation(cnn, torch.ones(1, 1, 64, 64)):
        cnn(torch.rand(1, 5, 64, 64))  # wrong channel count
    assert hook_count(cnn) == 0


def test_mask_propagation_follows_the_layer_geometry():
    conv = torch.nn.Conv2d(1, 1, 3, stride=2, padding=1)
    mask = torch.ones(1, 1, 8, 8)
    mask[..., :4] = 0
    out = propagate_mask(mask, conv, (4, 4), tau=0.5)
    assert out.shape == (1, 1, 4, 4)
    assert out[..., :2].sum() == 0 and out[..., 2:].min() == 1
    assert propagate_mask(torch.ones(1, 1, 8, 8), conv, (4, 4), tau=0.0).min() == 1


def test_bad_masks_are_named(cnn):
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        deactivate(cnn, torch.rand(1, 3, 32, 32), torch.ones(1, 32, 32))
    with pytest.raises(ValueError, match="differ in size"):
        deactivate(cnn, torch.rand(1, 3, 32, 32), torch.ones(1, 1, 16, 16))


def test_the_removed_pixels_values_do_not_matter(cnn):
    """Two images that differ only where the mask is 0 give the same logits, bit for bit: the first
    layer sees m ⊙ x and every later layer only activations computed from it. The kept pixels do matter."""
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 64, 80, generator=gen)
    masks = torch.ones(2, 1, 64, 80)
    masks[0, :, 10:40, 20:60] = 0  # a block
    masks[1] = (torch.rand(1, 64, 80, generator=gen) > 0.5).float()  # scattered pixels
    b = torch.where(masks.bool(), a, torch.rand(2, 3, 64, 80, generator=gen))
    c = torch.where(masks.bool(), torch.rand(2, 3, 64, 80, generator=gen), a)
    with torch.no_grad():
        assert torch.equal(deactivate(cnn, a, masks), deactivate(cnn, b, masks))
        assert not torch.allclose(deactivate(cnn, a, masks), deactivate(cnn, c, masks))


def majority(mask: np.ndarray, kernel: int, stride: int, padding: int, tau: float) -> np.ndarray:
    """The documented rule, directly: output position p keeps iff 1 − A(p) ≤ τ, A(p) the kept share of
    the in-image positions of its window (padding excluded)."""
    h, w = mask.shape
    out_h, out_w = (h + 2 * padding - kernel) // stride + 1, (w + 2 * padding - kernel) // stride + 1
    out = np.zeros((out_h, out_w))
    for i in range(out_h):
        for j in range(out_w):
            top, left = i * stride - padding, j * stride - padding
            window = mask[max(top, 0) : top + kernel, max(left, 0) : left + kernel]
            out[i, j] = 1 - window.mean() <= tau
    return out


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "tau"), [(3, 1, 1, 0.5), (5, 1, 2, 0.5), (3, 2, 1, 0.5), (5, 2, 2, 0.0), (3, 1, 1, 0.8)]
)
def test_mask_propagation_equals_the_rule_computed_directly(kernel, stride, padding, tau):
    mask = (torch.rand(1, 1, 13, 17, generator=torch.Generator().manual_seed(kernel + stride)) > 0.4).float()
    mask[..., 3:9, 4:12] = 1
    conv = torch.nn.Conv2d(1, 1, kernel, stride=stride, padding=padding)
    expected = majority(mask[0, 0].numpy(), kernel, stride, padding, tau)
    out = propagate_mask(mask, conv, expected.shape, tau)
    np.testing.assert_array_equal(out[0, 0].numpy(), expected)


class FiveByFive(torch.nn.Module):
    """A stem (3×3, stride 2) and five 5×5 convolutions at one resolution, like EfficientNet-Lite0's
    last stage (five 5×5 depthwise layers at 7×7), a global average and a linear head."""

    data_config = {"mean": (0.5, 0.5, 0.5)}

    def __init__(self) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.stem = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.blocks = torch.nn.ModuleList(torch.nn.Conv2d(8, 8, 5, padding=2) for _ in range(5))
            self.global_pool = torch.nn.AdaptiveAvgPool2d(1)
            self.head = torch.nn.Linear(8, 4)
        self.eval()

    def forward(self, x):
        x = torch.relu(self.stem(x))
        for block in self.blocks:
            x = x + torch.relu(block(x))
        return self.head(self.global_pool(x).flatten(1))


def test_a_region_narrower_than_the_kernel_is_switched_off_before_the_head():
    """Why ``kept_equal_area_convad`` is 0 for every method: at τ = 0.5 the rule is a majority filter, and
    a stack of 5×5 layers at one resolution erodes any region a few positions wide to nothing. The logits
    are then those of an empty mask (the head's bias, whatever the image), so no small cut keeps a label.

    A 6×6 region of a 28×28 image (4.6 %) is at most 3×3 positions after the stem; a 5×5 window around
    any of them holds at most 9 of 25 kept positions, under half, so the first 5×5 layer switches it
    off. A 20×20 region (51 %) survives."""
    net = FiveByFive()
    image = torch.rand(1, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    small, large, empty = torch.zeros(1, 1, 28, 28), torch.zeros(1, 1, 28, 28), torch.zeros(1, 1, 28, 28)
    small[..., 10:16, 10:16] = 1
    large[..., 4:24, 4:24] = 1
    stem_mask = majority(small[0, 0].numpy(), 3, 2, 1, 0.5)
    rows, cols = np.nonzero(stem_mask)
    assert 0 < stem_mask.sum() <= 9 and np.ptp(rows) <= 2 and np.ptp(cols) <= 2
    assert majority(stem_mask, 5, 1, 2, 0.5).sum() == 0
    assert majority(majority(large[0, 0].numpy(), 3, 2, 1, 0.5), 5, 1, 2, 0.5).sum() > 0
    with torch.no_grad():
        assert torch.equal(deactivate(net, image, small), deactivate(net, image, empty))
        assert torch.allclose(deactivate(net, image, empty), net.head.bias[None])
        assert not torch.allclose(deactivate(net, image, large), deactivate(net, image, empty))
