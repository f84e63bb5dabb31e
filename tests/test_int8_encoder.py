"""experiments/evaluation/int8_encoder.py: the float rewrite it quantizes must be the classifier's own encoder."""

from __future__ import annotations

import pytest
import torch
from timm.layers.padding import pad_same

from actmatch.explainers.classifier import load_classifier
from lightning_helpers import evaluation_script


@pytest.mark.parametrize("size", [(7, 7), (8, 9), (224, 298), (59, 60)])
@pytest.mark.parametrize("kernel, stride", [((3, 3), (2, 2)), ((5, 5), (2, 2)), ((5, 5), (1, 1))])
def test_same_pad_is_timms(size, kernel, stride):
    x = torch.randn(1, 2, *size)
    ours = evaluation_script("int8_encoder").SamePad(kernel, stride, (1, 1))(x)
    assert torch.equal(ours, pad_same(x, list(kernel), list(stride)))


def test_the_folded_encoder_is_timms_forward_intermediates():
    """Batch norms folded into the convolutions: the same final features and stage outputs as timm's own pass
    (on an odd-sized image, so every "same" padding is asymmetric somewhere), to float32 rounding."""
    script = evaluation_script("int8_encoder")
    model = load_classifier("efficientnet_lite0").model.eval()
    assert script.block_stages(model, [1, 2, 3, 4]) == [1, 2, 4, 6]  # feature_info: blocks.1, .2, .4, .6
    x = torch.randn(1, 3, 97, 131, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        final, features = script.PlainEncoder(model, [1, 2, 4, 6]).eval()(x)
        timm_final, timm_features = model.forward_intermediates(x, indices=[1, 2, 3, 4])
    assert len(features) == 4
    for ours, theirs in zip([final, *features], [timm_final, *timm_features]):
        assert ours.shape == theirs.shape
        torch.testing.assert_close(ours, theirs, atol=1e-3, rtol=1e-4)


def test_convolution_kinds_and_their_times():
    """The --by-layer table's kinds, read by hand from each layer's shape; every kind present is timed."""
    script = evaluation_script("int8_encoder")
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2),  # full 3×3 stride 2
        torch.nn.Conv2d(8, 8, 5, stride=2, groups=8),  # depthwise 5×5 stride 2
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 1),  # pointwise
    )
    assert [script.conv_kind(m) for m in net] == ["full 3×3 stride 2", "depthwise 5×5 stride 2", None, "pointwise"]
    seconds = script.seconds_by_kind(net, torch.rand(1, 3, 32, 32), passes=2)
    assert set(seconds) == {"full 3×3 stride 2", "depthwise 5×5 stride 2", "pointwise"}
    assert all(value > 0 for value in seconds.values())
