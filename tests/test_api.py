"""The Python API on a plain (torchvision-style, no timm) nn.Module: binary input-sized masks,
the user's model left exactly as it was, stage taps found by one hooked forward pass."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import actmatch
from actmatch.api import frozen
from actmatch.explainers.classifier import state_fingerprint
from actmatch.explainers.taps import hook_count, stage_taps

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


class ThreeStageCNN(nn.Module):
    """conv stem → layer1 (/2) → layer2 (/4) → layer3 (/8) → pool → fc, torchvision naming."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()

        def stage(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))

        self.layer1, self.layer2, self.layer3 = stage(3, 8), stage(8, 16), stage(16, 16)
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.layer3(self.layer2(self.layer1(x)))).flatten(1))


@pytest.fixture()
def model() -> ThreeStageCNN:
    torch.manual_seed(0)
    net = ThreeStageCNN()
    net.train()  # as a notebook may hold it, mid-training
    net.layer1[1].eval()  # one submodule in another mode
    net.fc.bias.requires_grad_(False)  # one frozen parameter
    return net


@pytest.fixture()
def images() -> torch.Tensor:
    return torch.rand(2, 3, 40, 48, generator=torch.Generator().manual_seed(0))  # (B, 3, H, W), not square


def snapshot(net: nn.Module) -> tuple:
    return (state_fingerprint(net), [p.requires_grad for p in net.parameters()], [m.training for m in net.modules()])


def test_explain_returns_binary_input_sized_masks_and_leaves_the_model_alone(model, images):
    before = snapshot(model)
    result = actmatch.explain(model, images, mean=MEAN, std=STD, steps=2, seed=0)
    assert result.masks.shape == (2, 1, 40, 48)
    assert set(result.masks.unique().tolist()) <= {0.0, 1.0}
    assert result.label_kept.shape == (2,) and result.area.shape == (2,)
    assert snapshot(model) == before
    assert hook_count(model) == 0 and all(p.grad is None for p in model.parameters())


def test_captum_style_attribute(model, images):
    before = snapshot(model)
    explainer = actmatch.ActivationMatchingExplainer(model, mean=MEAN, std=STD, steps=2, input_size=32)
    masks = explainer.attribute(images)
    assert masks.shape == (2, 1, 40, 48) and masks.device == images.device  # resized back to the images
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    assert explainer.last.explanations.shape == images.shape
    assert snapshot(model) == before


def test_default_taps_are_the_stage_outputs(model, images):
    assert stage_taps(model, tuple(images.shape[-2:])) == ["layer1", "layer2", "layer3"]
    assert model.training and hook_count(model) == 0


def test_torchvision_resnet_stages():
    torchvision = pytest.importorskip("torchvision")
    assert stage_taps(torchvision.models.resnet18(), (64, 64)) == ["layer1", "layer2", "layer3", "layer4"]


def test_bad_tap_lists_valid_names(model, images):
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"unknown layer\(s\) \['layer9'\].*valid names: layer1, layer1\.0"):
        actmatch.explain(model, images, mean=MEAN, std=STD, taps=["layer9"], steps=2)
    assert snapshot(model) == before  # restored on failure too


def test_only_the_top1_target_is_explained(model, images):
    with torch.no_grad(), frozen(model):
        top1 = model((images - 0.5) / 0.25).argmax(-1)
    masks = actmatch.ActivationMatchingExplainer(model, mean=MEAN, std=STD, steps=2).attribute(images, target=top1)
    assert masks.shape == (2, 1, 40, 48)
    with pytest.raises(ValueError, match="top-1 decision.*pass target=None"):
        actmatch.explain(model, images, mean=MEAN, std=STD, target=(top1 + 1) % 3, steps=2)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"images": torch.rand(2, 3, 40, 48) * 255}, r"must be in \[0, 1\]"),
        ({"images": torch.rand(3, 40, 48)}, r"\(B, 3, H, W\)"),
        ({"weights": "model.pth"}, "load a classifier"),
        ({"stepz": 3}, r"unknown explainer setting\(s\) \['stepz'\]"),
    ],
)
def test_bad_calls_say_what_is_wrong(model, images, kwargs, message):
    kwargs = {"images": images, **kwargs}
    with pytest.raises(ValueError, match=message):
        actmatch.explain(model, kwargs.pop("images"), mean=MEAN, std=STD, steps=2, **kwargs)
