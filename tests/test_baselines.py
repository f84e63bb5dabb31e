"""Baseline explainers: one interface, input-sized maps, usable with a frozen model and no grad."""

from __future__ import annotations

import pytest
import torch

from actmatch.explainers import baselines as B
from actmatch.explainers.classifier import load_classifier, state_fingerprint
from actmatch.explainers.convad import ConvADOcclusion
from actmatch.explainers.taps import hook_count

# cheap settings: a handful of forward passes per image
METHODS = {
    "saliency": (B.Saliency, {}),
    "gradcam": (B.GradCAM, {}),
    "occlusion": (B.Occlusion, {"window": 32, "stride": 32}),
    "ig": (B.IntegratedGradients, {"steps": 4}),
    "rise": (B.RISE, {"masks": 8, "batch": 8}),
    "convad": (ConvADOcclusion, {"window": 32, "stride": 32}),
}


@pytest.fixture(scope="module")
def resnet():
    return load_classifier("test_resnet", pretrained=False)


@pytest.mark.parametrize("name", list(METHODS))
def test_methods_return_input_sized_maps_for_a_batch(resnet, name):
    cls, kwargs = METHODS[name]
    images = torch.rand(2, 3, 64, 96)
    before = state_fingerprint(resnet)
    maps = cls(resnet, **kwargs).attribute(images, torch.tensor([3, 7]))
    assert maps.shape == (2, 1, 64, 96)
    assert torch.isfinite(maps).all()
    assert not maps.requires_grad
    assert state_fingerprint(resnet) == before
    assert hook_count(resnet) == 0


@pytest.mark.parametrize("name", ["saliency", "gradcam", "ig"])
def test_gradient_methods_work_inside_no_grad_and_inference_mode(resnet, name):
    cls, kwargs = METHODS[name]
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        a = cls(resnet, **kwargs).attribute(images)
    with torch.inference_mode():
        b = cls(resnet, **kwargs).attribute(images)
    assert a.abs().sum() > 0
    torch.testing.assert_close(a, b)


def test_gradcam_layer_comes_from_timm_feature_info(resnet):
    assert B.gradcam_layer(resnet) == resnet.model.feature_info[-1]["module"]
    with pytest.raises(ValueError, match="no module"):
        B.GradCAM(resnet, layer="nope")


def test_rise_favours_the_region_the_model_depends_on():
    class LeftBright(torch.nn.Module):
        """Class 1 iff the left half is bright: RISE should light up the left half."""

        data_config = {"mean": (0.5, 0.5, 0.5)}

        def forward(self, x):
            score = (x[..., : x.shape[-1] // 2].mean((1, 2, 3)) - 0.75) * 40
            return torch.stack([-score, score], 1)

    images = torch.ones(1, 3, 32, 32)
    maps = B.RISE(LeftBright(), masks=200, cells=4).attribute(images, torch.tensor([1]))
    assert maps[..., :16].mean() > maps[..., 16:].mean()


def test_bad_inputs_are_named(resnet):
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        B.Saliency(resnet).attribute(torch.rand(3, 32, 32))
    with pytest.raises(ValueError, match="one class per image"):
        B.Saliency(resnet).attribute(torch.rand(2, 3, 32, 32), torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="RISE"):
        B.RISE(resnet, masks=0)


@pytest.mark.skipif(B.torchray_available(), reason="TorchRay is installed")
def test_extremal_perturbation_says_torchray_is_missing(resnet):
    with pytest.raises(ImportError, match="TorchRay"):
        B.ExtremalPerturbation(resnet)
