"""Loss terms on hand-made tensors with known answers."""

from __future__ import annotations

import pytest
import torch

from actmatch.explainers import losses as L
from actmatch.explainers.backgrounds import BackgroundSampler, make_fill


def evidence(mask: torch.Tensor, logits_e: torch.Tensor | None = None, features=None, features_e=None) -> L.Evidence:
    b = mask.shape[0]
    images = torch.rand(b, 3, *mask.shape[-2:])
    logits = torch.tensor([[2.0, 0.0, -1.0]]).repeat(b, 1)
    fill = torch.zeros_like(images)
    return L.Evidence(
        images=images,
        mask=mask,
        soft_mask=mask,
        fill=fill,
        explanation=mask * images,
        target=logits.argmax(-1),
        logits=logits,
        logits_e=logits if logits_e is None else logits_e,
        features=features or {},
        features_e=features_e or {},
    )


def checkerboard(n: int) -> torch.Tensor:
    idx = torch.arange(n)
    return ((idx[:, None] + idx[None, :]) % 2).float()[None, None]  # (1, 1, n, n)


def test_total_variation_of_checkerboard_is_two_n_minus_one_over_n():
    n = 8
    tv = L.TotalVariation()(evidence(checkerboard(n)))
    # every one of the n(n-1) vertical and n(n-1) horizontal neighbour pairs differs
    assert tv.item() == pytest.approx(2 * n * (n - 1) / n**2)


def test_total_variation_of_constant_mask_is_zero():
    assert L.TotalVariation()(evidence(torch.ones(2, 1, 5, 7))).abs().max() == 0


def test_area_of_known_mask():
    mask = torch.zeros(1, 1, 10, 10)
    mask[..., :3, :5] = 1  # 15 of 100 pixels
    assert L.Area()(evidence(mask)).item() == pytest.approx(0.15)


def test_binarization_is_zero_on_binary_and_quarter_at_half():
    assert L.Binarization()(evidence(checkerboard(4))).item() == 0
    assert L.Binarization()(evidence(torch.full((1, 1, 4, 4), 0.5))).item() == pytest.approx(0.25)


def test_kl_zero_when_logits_equal_and_positive_otherwise():
    mask = torch.ones(1, 1, 4, 4)
    assert L.KLDivergence()(evidence(mask)).item() == pytest.approx(0.0, abs=1e-7)
    assert L.KLDivergence()(evidence(mask, torch.tensor([[0.0, 2.0, -1.0]]))).item() > 0.5


def test_cross_entropy_is_minus_log_prob_of_original_top1():
    logits_e = torch.tensor([[0.0, 0.0, 0.0]])
    ce = L.CrossEntropy()(evidence(torch.ones(1, 1, 2, 2), logits_e))
    assert ce.item() == pytest.approx(torch.log(torch.tensor(3.0)).item())


@pytest.mark.parametrize("distance", ["mse", "cosine"])
def test_activation_matching_zero_for_identical_features(distance):
    feats = {"a": torch.rand(2, 4, 3, 3) + 0.1, "b": torch.rand(2, 8, 2, 2) + 0.1}
    term = L.ActivationMatching(distance=distance)
    same = term(evidence(torch.ones(2, 1, 4, 4), features=feats, features_e={k: v.clone() for k, v in feats.items()}))
    assert torch.allclose(same, torch.zeros(2), atol=1e-6)
    other = term(evidence(torch.ones(2, 1, 4, 4), features=feats, features_e={k: torch.zeros_like(v) for k, v in feats.items()}))
    assert (other > 0.5).all()  # mse: exactly 1 (normalised); cosine: 1


def test_activation_matching_normalised_mse_and_layer_weights():
    a = torch.ones(1, 2, 2, 2)
    feats, feats_e = {"x": a, "y": a}, {"x": torch.zeros_like(a), "y": a.clone()}
    # layer x contributes d=1, layer y d=0; weights 3:1 -> 0.75
    term = L.ActivationMatching(layer_weights={"x": 3.0, "y": 1.0})
    assert term(evidence(torch.ones(1, 1, 2, 2), features=feats, features_e=feats_e)).item() == pytest.approx(0.75)


def test_robustness_and_necessity_use_perturbed_logits():
    mask = torch.ones(2, 1, 4, 4)
    ev = evidence(mask)
    rob = L.Robustness(num_backgrounds=3)
    extra = rob.perturb(ev)
    assert extra.shape == (6, 3, 4, 4)
    assert torch.allclose(extra[:2], ev.images)  # an all-ones mask keeps the whole image whatever the background
    confident = torch.tensor([[10.0, 0.0, 0.0]]).repeat(6, 1)
    assert rob(ev, confident).max() < 1e-3
    nec = L.Necessity(margin=0.1)
    removed = nec.perturb(ev)
    assert torch.equal(removed, ev.fill)  # all pixels removed -> all fill
    assert nec(ev, torch.tensor([[0.0, 10.0, 0.0]]).repeat(2, 1)).max() == 0  # label broken: no loss


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: L.Area(weight=-1), "weight must be >= 0"),
        (lambda: L.ActivationMatching(distance="l7"), "unknown distance"),
        (lambda: L.ActivationMatching(layer_weights={"a": -1.0}), "layer weights"),
        (lambda: L.Robustness(backgrounds=["plaid"]), "unknown or empty kinds"),
        (lambda: L.Robustness(backgrounds=[]), "unknown or empty kinds"),
        (lambda: L.Necessity(margin=2), "margin"),
        (lambda: make_fill(torch.rand(1, 3, 4, 4), "purple", (0.5, 0.5, 0.5)), "unknown fill"),
    ],
)
def test_invalid_configuration_fails_with_clear_message(build, message):
    with pytest.raises(ValueError, match=message):
        build()


@pytest.mark.parametrize("kind", BackgroundSampler.KINDS)
def test_backgrounds_have_image_shape_and_range(kind, rng_images):
    out = BackgroundSampler([kind])(rng_images)
    assert out.shape == rng_images.shape
    assert out.min() >= 0 and out.max() <= 1


def test_warmup_ramps_the_weight_linearly():
    term = L.Area(weight=8.0, warmup=0.5)
    assert term.weight_at(0.0) == 0.0
    assert term.weight_at(0.25) == pytest.approx(4.0)
    assert term.weight_at(0.9) == 8.0
    assert term.weight_at(None) == 8.0
    with pytest.raises(ValueError, match="warmup"):
        L.Area(warmup=2.0)


def test_mask_distillation_asks_for_the_targets_order_at_any_logit_scale():
    import math
    from dataclasses import replace

    z = torch.ones(2, 1, 4, 4)
    z[:, :, 2:] = -1.0  # the top half ranked first: standardised, +1 and -1 (mean 0, std 1)
    target = torch.zeros(2, 1, 4, 4)
    target[0, :, :2] = 1.0  # image 0: the target is the top half, as ranked
    target[1, :, 2:] = 1.0  # image 1: the bottom half, the opposite order
    ev = replace(evidence(torch.sigmoid(z)), mask_target=target, mask_logits=z)
    loss = L.MaskDistillation(sharpness=3.0)(ev)
    # by hand: the cut c is 0 (half the pixels above it); every pixel's BCE is log(1 + e^(-3)) when
    # it is on the target's side, log(1 + e^3) when not
    assert loss[0].item() == pytest.approx(math.log1p(math.exp(-3)), rel=1e-5)
    assert loss[1].item() == pytest.approx(math.log1p(math.exp(3)), rel=1e-5)
    scaled = L.MaskDistillation(sharpness=3.0)(replace(ev, mask_logits=10 * z + 4))
    assert torch.allclose(scaled, loss)  # the order is what counts, not the logits' scale or offset
    with pytest.raises(ValueError, match="mask_targets"):
        L.MaskDistillation()(evidence(torch.sigmoid(z)))  # no target: the data module option that gives one
    with pytest.raises(ValueError, match="sharpness"):
        L.MaskDistillation(sharpness=0)
