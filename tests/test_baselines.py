"""Baseline explainers: one interface, input-sized maps, usable with a frozen model and no grad."""

from __future__ import annotations

import itertools

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


class RedPatchNet(torch.nn.Module):
    """A hand-built CNN whose evidence is exactly the saturated red pixels.

    detect = ReLU(r − g − b − 0.5) (1×1 conv: 0.5 on pure red, 0 on every desaturated colour of the
    synthetic images), a 3×3 mean filter, ReLU, and the global average: class 1's logit is 1000 × that
    average, class 0's a constant 3. An 8×8 red patch on 64×64 gives 1000 · 0.5 · 64 / 4096 = 7.8 > 3."""

    data_config = {"mean": (0.485, 0.456, 0.406)}

    def __init__(self) -> None:
        super().__init__()
        self.detect = torch.nn.Conv2d(3, 1, 1)
        self.smooth = torch.nn.Conv2d(1, 1, 3, padding=1)
        self.global_pool = torch.nn.AdaptiveAvgPool2d(1)
        with torch.no_grad():
            self.detect.weight.copy_(torch.tensor([1.0, -1.0, -1.0]).view(1, 3, 1, 1))
            self.detect.bias.fill_(-0.5)
            self.smooth.weight.fill_(1 / 9)
            self.smooth.bias.zero_()
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        red = self.global_pool(torch.relu(self.smooth(torch.relu(self.detect(x))))).flatten(1)
        return torch.cat([torch.full_like(red, 3.0), 1000 * red], 1)


# a handful of passes each on 3 images of 64×64
LOCALISING = {
    "saliency": lambda net: B.Saliency(net),
    "gradcam": lambda net: B.GradCAM(net, layer="smooth"),
    "occlusion": lambda net: B.Occlusion(net, window=8, stride=4),
    "ig": lambda net: B.IntegratedGradients(net, steps=16),
    "rise": lambda net: B.RISE(net, masks=200, cells=8, batch=100),
    "convad": lambda net: ConvADOcclusion(net, window=8, stride=4),
}


@pytest.fixture(scope="module")
def shortcut_images():
    """Synthetic shortcut images of class 0, whose planted patch is pure red (``PATCH_COLOURS[0]``)."""
    from actmatch.datamodules.synthetic import SyntheticEvidence

    data = SyntheticEvidence(40, num_classes=4, image_size=64, variant="shortcut", background="clutter", seed=5)
    items = list(itertools.islice((item for item in map(data.__getitem__, range(len(data))) if int(item["label"]) == 0), 3))
    images = torch.stack([item["image"] for item in items])
    patches = torch.stack([item["evidence_mask"] for item in items])
    net = RedPatchNet()
    with torch.no_grad():
        assert (net(images).argmax(-1) == 1).all()  # the patch decides
        assert (torch.relu(net.detect(images)) * (1 - patches)).max() == 0  # and nothing else is red
    return net, images, patches


def top_share_on_patch(maps: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
    """(B,) share of the map's top-|patch| pixels that lie on the patch (chance: the patch's area, 1/64)."""
    k = int(patches[0].sum())
    top = maps.flatten(1).argsort(1, descending=True)[:, :k]
    return patches.flatten(1).gather(1, top).mean(1)


@pytest.mark.parametrize("name", list(LOCALISING))
def test_every_baseline_finds_the_planted_patch(shortcut_images, name):
    from actmatch.evaluation.metrics import pointing_game

    net, images, patches = shortcut_images
    maps = LOCALISING[name](net).attribute(images, torch.ones(len(images), dtype=torch.long))
    assert maps.shape == patches.shape
    assert pointing_game(maps, patches, tolerance=0).all()  # the maximum is on the patch
    area = patches.flatten(1).mean(1)
    share = top_share_on_patch(maps, patches)
    # measured: 1.0 for the gradient methods, 0.69-0.94 for occlusion, RISE and ConvAD occlusion
    assert (share >= 0.5).all() and (share > 20 * area).all(), share
    # the check can fail: a map that ignores the patch is at chance
    noise = torch.rand(maps.shape, generator=torch.Generator().manual_seed(0))
    assert (top_share_on_patch(noise, patches) < 0.2).all()


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


def test_centre_prior_ranks_by_distance_from_the_middle(resnet):
    """Worked out by hand on a 4 × 6 image: u = (i + ½)/4 − ½ ∈ {∓3/8, ∓1/8}, v = (j + ½)/6 − ½ ∈ {∓5/12, ∓3/12, ∓1/12};
    the four pixels with |u| = 1/8 and |v| = 1/12 come first, then the four with |u| = 1/8, |v| = 3/12 (1/64 + 1/16
    against 9/64 + 1/144 for |u| = 3/8, |v| = 1/12)."""
    images = torch.rand(2, 3, 4, 6)
    maps = B.CentrePrior(resnet).attribute(images)
    assert maps.shape == (2, 1, 4, 6)
    torch.testing.assert_close(maps[0], maps[1])  # the image is never read
    assert maps[0, 0, 1, 2].item() == pytest.approx(-(1 / 64 + 1 / 144))
    order = maps[0, 0].flatten().argsort(descending=True, stable=True).tolist()
    assert sorted(order[:4]) == [8, 9, 14, 15]  # rows 1-2, columns 2-3
    assert sorted(order[4:8]) == [7, 10, 13, 16]  # rows 1-2, columns 1 and 4
    # in fractions of each side the top half is the disc u² + v² ≤ ρ² of area π ρ² = ½ (an ellipse in pixels)
    big = B.CentrePrior(resnet).attribute(torch.rand(1, 3, 200, 100))[0, 0]
    top = big >= big.flatten().kthvalue(big.numel() - big.numel() // 2 + 1).values
    u = (torch.arange(200) + 0.5) / 200 - 0.5
    v = (torch.arange(100) + 0.5) / 100 - 0.5
    ellipse = u[:, None] ** 2 + v[None, :] ** 2 <= 0.5 / torch.pi
    assert (top != ellipse).float().mean() < 0.01
