"""Activation taps: correct post-activation values, hooks always removed, clear errors."""

from __future__ import annotations

import pytest
import timm
import torch

from actmatch.explainers.classifier import FrozenClassifier
from actmatch.explainers.taps import ActivationTaps, default_taps, hook_count


@pytest.fixture(scope="module")
def resnet():
    return FrozenClassifier(timm.create_model("resnet18", pretrained=False, num_classes=10), "resnet18")


def test_taps_survive_in_place_operations(resnet):
    """layer1.0.bn2's output is later modified in place by `x += shortcut`: the tap keeps the
    value bn2 produced, and the in-place ReLU act1 is captured post-activation."""
    x = torch.rand(2, 3, 64, 64)
    with ActivationTaps(resnet, ["maxpool", "layer1.0.act1", "layer1.0.bn2"]) as taps:
        resnet(x)
    block = resnet.model.layer1[0]
    with torch.no_grad():
        after_act1 = torch.relu(block.bn1(block.conv1(taps.features["maxpool"])))
        after_bn2 = block.bn2(block.conv2(after_act1))
    torch.testing.assert_close(taps.features["layer1.0.act1"], after_act1)
    torch.testing.assert_close(taps.features["layer1.0.bn2"], after_bn2)
    assert taps.features["layer1.0.act1"].min() >= 0


def test_hooks_removed_on_success_and_on_error(resnet):
    assert hook_count(resnet) == 0
    with ActivationTaps(resnet, ["layer1", "layer2"]):
        assert hook_count(resnet) == 2
        resnet(torch.rand(1, 3, 32, 32))
    assert hook_count(resnet) == 0
    with pytest.raises(RuntimeError), ActivationTaps(resnet, ["layer1"]):
        resnet(torch.rand(1, 5, 32, 32))  # wrong channel count fails inside the forward
    assert hook_count(resnet) == 0


def test_unknown_layer_lists_valid_names(resnet):
    with pytest.raises(ValueError, match=r"unknown layer\(s\) \['layer9'\].*valid names: .*layer1"):
        ActivationTaps(resnet, ["layer1", "layer9"])
    with pytest.raises(ValueError, match="tap list is empty"):
        ActivationTaps(resnet, [])


def test_default_taps_follow_feature_info(resnet, lite0):
    assert default_taps(resnet) == ["act1", "layer1", "layer2", "layer3", "layer4"]
    assert default_taps(lite0) == [info["module"] for info in lite0.model.feature_info]


@pytest.mark.parametrize(
    "name, kwargs, prefix",
    [
        ("vit_tiny_patch16_224", {}, 1),
        ("vit_tiny_patch16_224", {"reg_tokens": 4}, 5),
        ("deit_tiny_distilled_patch16_224", {}, 2),
        ("swin_tiny_patch4_window7_224", {}, 0),
    ],
)
def test_transformer_taps_are_maps_without_prefix_tokens(name, kwargs, prefix):
    model = timm.create_model(name, pretrained=False, num_classes=10, **kwargs)
    assert getattr(model, "num_prefix_tokens", 0) == prefix
    classifier = FrozenClassifier(model, name)
    layers = default_taps(classifier)
    assert 1 <= len(layers) <= 4
    with ActivationTaps(classifier, layers) as taps:
        classifier(torch.rand(1, 3, 224, 224))
    for layer in layers:
        fmap = taps.features[layer]
        assert fmap.dim() == 4 and fmap.shape[0] == 1
        if name.startswith(("vit", "deit")):
            assert fmap.shape[-2:] == (14, 14)  # 196 patch tokens, prefix tokens left out
    assert hook_count(classifier) == 0
