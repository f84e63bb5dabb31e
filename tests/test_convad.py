"""ConvAD: exact with an all-ones mask, different with a partial one, hooks always removed."""

from __future__ import annotations

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
    with pytest.raises(RuntimeError):
        with Deactivation(cnn, torch.ones(1, 1, 64, 64)):
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
