"""Metrics on hand-made cases with known answers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from actmatch.explainers import metrics as M


class Brightness(nn.Module):
    """Two classes; p(class 1) = mean pixel value. Fill (mean colour) is black."""

    data_config = {"mean": (0.0, 0.0, 0.0)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = x.mean((1, 2, 3)).clamp(1e-6, 1 - 1e-6)
        return torch.stack([torch.log1p(-p), torch.log(p)], 1)


@pytest.fixture()
def half_bright():
    image = torch.zeros(1, 3, 10, 10)
    image[..., :5] = 1  # left half bright: p = 0.5
    left = torch.zeros(1, 1, 10, 10)
    left[..., :5] = 1
    return image, left


def test_deletion_auc_known_answer(half_bright):
    image, left = half_bright
    target = torch.tensor([1])
    # deleting the bright half first: p falls 0.5 -> 0 over the first half, then stays 0
    good = M.deletion_auc(Brightness(), image, left, target, steps=10)
    # deleting the dark half first: p stays 0.5, then falls to 0
    bad = M.deletion_auc(Brightness(), image, 1 - left, target, steps=10)
    assert good.item() == pytest.approx(0.125, abs=1e-5)
    assert bad.item() == pytest.approx(0.375, abs=1e-5)


def test_insertion_auc_known_answer():
    image = torch.ones(1, 3, 10, 10)  # its blurred copy is itself: p = 1 all along
    auc = M.insertion_auc(Brightness(), image, torch.rand(1, 1, 10, 10), torch.tensor([1]), steps=10)
    assert auc.item() == pytest.approx(1.0, abs=1e-5)


def test_insertion_rewards_the_relevant_pixels_first(half_bright):
    image, left = half_bright
    target = torch.tensor([1])
    good = M.insertion_auc(Brightness(), image, left, target, steps=10)
    bad = M.insertion_auc(Brightness(), image, 1 - left, target, steps=10)
    assert good > bad


def test_curve_has_steps_plus_one_points_and_ends_at_the_full_path(half_bright):
    image, left = half_bright
    curve = M.perturbation_curve(Brightness(), image, left, torch.tensor([1]), "deletion", steps=5)
    assert curve.shape == (1, 6)
    assert curve[0, 0].item() == pytest.approx(0.5) and curve[0, -1].item() == pytest.approx(0, abs=1e-5)
    with pytest.raises(ValueError, match="insertion"):
        M.perturbation_curve(Brightness(), image, left, mode="sideways")


def test_robustness_of_a_mask_that_keeps_the_whole_image_is_one():
    from actmatch.explainers.classifier import load_classifier

    clf = load_classifier("test_resnet", pretrained=False)
    images = torch.rand(2, 3, 48, 48)
    pool = torch.rand(3, 3, 40, 40)
    value = M.robustness(clf, images, torch.ones(2, 1, 48, 48), backgrounds=5, pool=pool)
    assert torch.equal(value, torch.ones(2))


def test_robustness_of_an_empty_mask_follows_the_backgrounds(half_bright):
    image, _ = half_bright  # nothing kept: class 1 wins only on backgrounds brighter than 0.5
    value = M.robustness(Brightness(), image, torch.zeros(1, 1, 10, 10), torch.tensor([1]), backgrounds=32)
    assert 0 < value.item() < 1


def test_smallest_sufficient_area_by_search():
    image = torch.ones(1, 3, 10, 10)  # label 1 iff more than half of the pixels are kept
    area = M.smallest_sufficient_area(M.PixelFill(Brightness()), image, torch.rand(1, 1, 10, 10))
    assert 0.5 < area.item() <= 0.6


def test_top_fraction_mask_keeps_the_requested_share_and_the_top_pixels():
    saliency = torch.arange(100.0).view(1, 1, 10, 10)
    mask = M.top_fraction_mask(saliency, 0.3)
    assert mask.sum() == 30 and mask.flatten()[-30:].all()
    binary = (torch.rand(2, 1, 8, 8) > 0.5).float()
    same = M.top_fraction_mask(binary, M.mask_area(binary))
    assert torch.equal(same, binary)


def test_pointing_game_and_mask_precision():
    gt = torch.zeros(2, 1, 8, 8)
    gt[..., :4, :4] = 1
    saliency = torch.zeros(2, 1, 8, 8)
    saliency[0, 0, 1, 1] = 1  # inside
    saliency[1, 0, 7, 7] = 1  # outside
    assert M.pointing_game(saliency, gt).tolist() == [True, False]
    masks = torch.zeros(2, 1, 8, 8)
    masks[0, 0, :4, :2] = 1  # all inside
    masks[1, 0, :4, 2:6] = 1  # half inside
    assert M.mask_precision(masks, gt).tolist() == [1.0, 0.5]


def test_torchmetrics_accumulate_means_and_hold_no_model_weights(half_bright):
    image, left = half_bright
    area = M.MaskArea()
    area.update(left)
    area.update(torch.ones(1, 1, 10, 10))
    assert area.compute().item() == pytest.approx(0.75)
    kept = M.LabelKept()
    logits = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    kept.update(logits, torch.tensor([[0.0, 1.0], [0.0, 1.0]]))
    assert kept.compute().item() == pytest.approx(0.5)
    deletion = M.DeletionAUC(Brightness(), steps=10)
    deletion.update(image, left, torch.tensor([1]))
    assert deletion.compute().item() == pytest.approx(0.125, abs=1e-5)
    assert set(deletion.state_dict()) <= {"total", "count"}
    assert math.isclose(M.ConfidenceDelta()(logits, logits).item(), 0.0, abs_tol=1e-7)
