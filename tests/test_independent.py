"""Independent per-image U-Nets: a batched fit equals fitting each image alone."""

from __future__ import annotations

import pytest
import torch

from actmatch.explainers.classifier import load_classifier
from actmatch.explainers.fitting import AreaContinuation
from actmatch.explainers.independent import IndependentNets
from actmatch.explainers.losses import ActivationMatching, CrossEntropy, TotalVariation
from actmatch.explainers.module import ActMatchExplainer
from actmatch.explainers.stages import Prune, Scan
from actmatch.explainers.unet import MaskUNet


@pytest.fixture(scope="module")
def tiny_classifier():
    torch.manual_seed(0)  # the same random weights whatever ran before
    return load_classifier("resnet10t", pretrained=False, num_classes=5)


@pytest.mark.parametrize("vectorize", [False, True], ids=["loop", "vmap"])
def test_net_i_is_applied_to_image_i_only(vectorize):
    nets = [MaskUNet(width=4, depth=2, working_size=32) for _ in range(3)]
    images = torch.rand(3, 3, 40, 48)
    stacked = IndependentNets(nets, vectorize=vectorize)
    expected = torch.cat([net(images[i : i + 1]) for i, net in enumerate(nets)])
    torch.testing.assert_close(stacked(images), expected, rtol=1e-4, atol=1e-5)
    # gradients: image i's loss reaches only the parameters of net i
    stacked(images)[1].sum().backward()
    grads = next(iter(stacked.stacked.values())).grad  # (3, ...)
    assert grads[1].abs().sum() > 0 and grads[0].abs().sum() == 0 and grads[2].abs().sum() == 0
    # a standalone copy of net 2 reproduces its slot
    torch.testing.assert_close(stacked.net(2)(images[2:3]), expected[2:3], rtol=1e-4, atol=1e-5)


def test_batch_size_mismatch_is_named():
    stacked = IndependentNets([MaskUNet(width=4, depth=2, working_size=32)] * 2)
    with pytest.raises(ValueError, match="holds 2 networks but got a batch of 3"):
        stacked(torch.rand(3, 3, 32, 32))


@pytest.mark.parametrize(
    "fitting",
    [
        None,
        AreaContinuation(stages=[Scan(24)], lookahead=6, lookahead_every=3),
        AreaContinuation(explore=0.5, noise=0.5),
        AreaContinuation(stages=[Scan(8), Prune([16, 8, 4])]),
    ],
    ids=["default", "lookahead", "explore+noise", "scan+prune"],
)
def test_batched_fit_equals_one_image_at_a_time(tiny_classifier, fitting):
    """Loss terms that draw no random backgrounds, and strategies whose own draws (explored areas,
    ranking noise) depend on the step only: the batched fit is the same computation (one restart:
    batching images is under test; restarts have their own test below). Terms that draw backgrounds
    (the default's robustness term) draw other backgrounds in a batch, from the same distribution."""
    deterministic = [ActivationMatching(weight=0.1), CrossEntropy(), TotalVariation(weight=0.05)]
    explainer = ActMatchExplainer(
        classifier=tiny_classifier,
        unet=MaskUNet(width=4, depth=2, working_size=32),
        losses=deterministic,
        steps=8,
        restarts=1,
        fitting=fitting,
    )
    generator = torch.Generator().manual_seed(3)
    images = torch.rand(3, 3, 64, 64, generator=generator)
    batched = explainer.fit_images(images, seed=5)
    alone = [explainer.fit_images(images[i : i + 1], seed=5) for i in range(3)]
    for i, single in enumerate(alone):
        assert batched.label_kept[i] == single.label_kept[0]
        assert batched.area[i].item() == pytest.approx(single.area[0].item(), abs=0.01)
        agreement = (batched.masks[i] == single.masks[0]).float().mean().item()
        assert agreement > 0.98, f"image {i}: batched and single masks agree on {agreement:.3f} of pixels"
    # ... and the images got masks of their own (a shared U-Net would not pass the checks above)
    a, b = batched.masks[0].bool(), batched.masks[1].bool()
    assert (a & b).sum() < 0.8 * (a | b).sum(), "images 0 and 1 got (almost) the same mask"


def test_restarts_return_the_smallest_kept_of_the_seeded_fits():
    """restarts=k fits seeds s..s+k-1 in one batch and returns, per image, the smallest kept mask."""
    torch.manual_seed(0)  # this classifier keeps its label on cuts of these images
    tiny_classifier = load_classifier("resnet10t", pretrained=False, num_classes=5)
    unet = MaskUNet(width=4, depth=2, working_size=32)
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    both = ActMatchExplainer(classifier=tiny_classifier, unet=unet, steps=6, restarts=2).fit_images(images, seed=5)
    single = ActMatchExplainer(classifier=tiny_classifier, unet=unet, steps=6)
    alone = [single.fit_images(images, seed=s) for s in (5, 6)]
    compared = 0
    for i in range(2):
        options = [(r.area[i].item(), r) for r in alone if r.label_kept[i]]
        if not options:
            continue
        compared += 1
        area, chosen = min(options, key=lambda item: item[0])
        assert both.label_kept[i] and both.area[i].item() == pytest.approx(area, abs=0.01)
        assert (both.masks[i] == chosen.masks[i]).float().mean() > 0.98
    assert compared > 0, "no seed kept the label: the comparison would be empty"
    assert both.masks.shape == (2, 1, 64, 64)


def test_restarts_must_be_positive(tiny_classifier):
    with pytest.raises(ValueError, match="restarts must be >= 1"):
        ActMatchExplainer(classifier=tiny_classifier, restarts=0)
