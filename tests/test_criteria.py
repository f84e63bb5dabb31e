"""Acceptance criteria, on a classifier whose answer is worked out by hand.

``RedMeter`` scores class 0 by z_0 = 2 r̄ − 1.2 against z_1 = 0, r̄ the mean red of the image.
The image is pure red (r̄ = 1: z_0 = 0.8, class 0). A mask keeping a fraction a of it, the rest
filled with the mean colour (0.5, 0.4, 0.3), has r̄ = a + 0.5 (1 − a): z_0 = a − 0.2, kept iff
a > 0.2. With the black fill r̄ = a: z_0 = 2a − 1.2, kept iff a > 0.6.
"""

from __future__ import annotations

import math

import pytest
import torch

from actmatch.explainers.criteria import AllOf, Confident, CountedClassifier, RobustOn, Sufficient
from actmatch.explainers.fitting import AreaContinuation, default_fitting
from actmatch.explainers.stages import Prune, Scan, Verify

H = W = 16


class RedMeter(torch.nn.Module):
    data_config = {"mean": (0.5, 0.4, 0.3)}  # a non-zero mean: the mean, black and blur fills differ

    def forward(self, x):
        red = x[:, 0].flatten(1).mean(1)
        return torch.stack([2 * red - 1.2, torch.zeros_like(red)], 1)


@pytest.fixture()
def red():
    image = torch.zeros(1, 3, H, W)
    image[:, 0] = 1
    return image, RedMeter()(image), torch.tensor([0])


def rows(*fractions: float) -> torch.Tensor:
    """(n, 1, H, W) masks keeping the top ``fraction`` of the rows each."""
    masks = torch.zeros(len(fractions), 1, H, W)
    for i, a in enumerate(fractions):
        masks[i, :, : round(a * H)] = 1
    return masks


class FixedBackgrounds(RobustOn):
    """RobustOn on given backgrounds instead of drawn ones (its ``backgrounds`` override point)."""

    def __init__(self, backgrounds: torch.Tensor, **kwargs) -> None:
        super().__init__(n=backgrounds.shape[0], **kwargs)
        self._fixed = backgrounds

    def backgrounds(self, image):
        return self._fixed


def solid_reds(*reds: float) -> torch.Tensor:
    out = torch.zeros(len(reds), 3, H, W)
    out[:, 0] = torch.tensor(reds).view(-1, 1, 1)
    return out


def test_sufficient_accepts_above_a_fifth_with_the_mean_fill_and_above_three_fifths_black(red):
    image, logits_x, target = red
    masks = rows(0.25, 0.125, 0.5, 0.75)  # z_0 = a − 0.2 with the mean fill: 0.05, −0.075, 0.3, 0.55
    assert Sufficient().accepts(RedMeter(), image, masks, logits_x, target).tolist() == [True, False, True, True]
    # black: z_0 = 2a − 1.2 = −0.7, −0.95, −0.2, 0.3
    black = Sufficient("black").accepts(RedMeter(), image, masks, logits_x, target)
    assert black.tolist() == [False, False, False, True]
    # blur of a flat red image is the image: every mask is kept
    assert Sufficient("blur").accepts(RedMeter(), image, masks, logits_x, target).all()


def test_confident_needs_the_ratio_of_the_original_probability(red):
    image, logits_x, target = red
    half = rows(0.5)  # z_0 = 0.3: p_e = σ(0.3) = 0.574 against p_x = σ(0.8) = 0.690 (ratio 0.83)
    p_e, p_x = 1 / (1 + math.exp(-0.3)), 1 / (1 + math.exp(-0.8))
    assert 0.8 < p_e / p_x < 0.9
    assert Confident(0.8).accepts(RedMeter(), image, half, logits_x, target).item()
    assert not Confident(0.9).accepts(RedMeter(), image, half, logits_x, target).item()
    assert not Confident(0.0).accepts(RedMeter(), image, rows(0.125), logits_x, target).item()  # the label is lost


def test_step_answers_come_from_the_steps_own_logits():
    class Evidence:
        logits = torch.tensor([[0.8, 0.0], [0.8, 0.0]])
        logits_e = torch.tensor([[0.3, 0.0], [-0.1, 0.0]])  # image 0 kept (ratio 0.83), image 1 lost

    class Out:
        evidence = Evidence()

    target = torch.tensor([0, 0])
    assert Sufficient().accepts_step(Out(), target).tolist() == [True, False]
    assert Confident(0.8).accepts_step(Out(), target).tolist() == [True, False]
    assert Confident(0.9).accepts_step(Out(), target).tolist() == [False, False]
    assert RobustOn().accepts_step(Out(), target).tolist() == [True, True]  # drawn after the fit: not a step's
    assert AllOf([Confident(0.8), RobustOn()]).accepts_step(Out(), target).tolist() == [True, False]


def test_robust_on_counts_the_backgrounds_that_keep_the_label(red):
    image, logits_x, target = red
    half = rows(0.5)  # on a solid red c: r̄ = 0.5 + 0.5 c, z_0 = c − 0.2: kept on c = 0.5, 0.9, lost on 0, 0.1
    backgrounds = solid_reds(0.0, 0.1, 0.5, 0.9)
    assert FixedBackgrounds(backgrounds, rate=0.5).accepts(RedMeter(), image, half, logits_x, target).item()
    assert not FixedBackgrounds(backgrounds, rate=0.75).accepts(RedMeter(), image, half, logits_x, target).item()
    # the whole image: z_0 = 0.8 on every background; a margin of 1 is more than that
    whole = torch.ones(1, 1, H, W)
    margin = FixedBackgrounds(backgrounds, rate=1.0, margin=0.5)
    assert margin.accepts(RedMeter(), image, whole, logits_x, target).item()
    assert not FixedBackgrounds(backgrounds, margin=1.0).accepts(RedMeter(), image, whole, logits_x, target).item()


def test_robust_on_drawn_noise_rejects_a_sliver_and_accepts_the_whole_image(red):
    """On uniform noise (mean red ≈ 0.5) a mask of 1/16 of the rows gives z_0 ≈ 2 (1/16 + 15/16 · 0.5) − 1.2
    = −0.14 (the noise's mean over 240 pixels is 0.5 ± 0.02): lost on every draw."""
    image, logits_x, target = red
    robust = RobustOn(kinds=["uniform"], n=8, rate=0.125)
    torch.manual_seed(0)
    assert robust.accepts(RedMeter(), image, rows(0.0625, 1.0), logits_x, target).tolist() == [False, True]


def test_all_of_rejects_what_one_part_rejects_and_tests_the_backgrounds_only_where_needed(red):
    image, logits_x, target = red
    counts = {}
    classifier = CountedClassifier(RedMeter(), counts, "all_of")
    # black fill: a = 0.5 lost (z_0 = −0.2), a = 0.75 kept (0.3); solid reds 0.9, 1.0: a = 0.5 and 0.75 kept on both
    criterion = AllOf([FixedBackgrounds(solid_reds(0.9, 1.0), rate=1.0), Sufficient("black")])
    masks = rows(0.75, 0.5, 0.75)
    assert criterion.accepts(classifier, image, masks, logits_x, target).tolist() == [True, False, True]
    assert counts["all_of"] == 3 + 2 * 2  # the fill (cheaper) first on all 3, the 2 backgrounds on the 2 kept
    counts.clear()
    check = criterion.bind(classifier, image, logits_x, target)
    assert check.accepted_prefix(masks).tolist() == [True, False, False]  # all pruning reads
    assert counts["all_of"] == 3 + 2  # the backgrounds only for the mask before the first lost one
    assert FixedBackgrounds(solid_reds(0.9, 1.0)).accepts(classifier, image, masks, logits_x, target).all()


def test_families_name_the_perturbations_a_recipe_uses():
    assert Sufficient().families == {"fill"} and Sufficient("blur").families == {"blur"}
    assert RobustOn(kinds=["solid", "uniform", "gaussian"]).families == {"solid", "noise"}
    assert RobustOn(kinds=["shuffle", "blur"]).families == {"photos", "blur"}
    assert AllOf([Confident(0.8, fill="black"), RobustOn(kinds=["solid"])]).families == {"fill", "solid"}
    # the default grows where a mask fails the fit's own kinds: solid, uniform + gaussian, dead leaves, pink
    assert default_fitting().families == {"fill", "solid", "noise", "dead_leaves", "pink_noise"}
    robust = AreaContinuation(
        select="smallest_robust", criterion=AllOf([Sufficient(), RobustOn(kinds=["uniform"])]), stages=[Verify(), Prune([8])]
    )
    assert robust.families == {"fill", "noise"}


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: Sufficient("purple"), "unknown fill"),
        (lambda: Confident(1.5), "ratio must be in"),
        (lambda: RobustOn(n=0), "1 <= n <= 1024"),
        (lambda: RobustOn(rate=0), "0 < rate <= 1"),
        (lambda: AllOf([]), "non-empty list of criteria"),
        (lambda: AllOf(["sufficient"]), "non-empty list of criteria"),
    ],
)
def test_bad_criteria_are_named(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_a_criterion_fill_other_than_the_explainers_is_named(red):
    from actmatch.explainers.module import ActMatchExplainer
    from actmatch.explainers.unet import MaskUNet

    classifier = RedMeter()
    explainer = ActMatchExplainer.__new__(ActMatchExplainer)
    torch.nn.Module.__init__(explainer)
    explainer.fill, explainer.classifier = "blur", classifier
    strategy = AreaContinuation(stages=[Scan(8)])
    with pytest.raises(ValueError, match="set the criterion's fill to 'blur'"):
        strategy.fit(explainer, red[0], MaskUNet(width=4, depth=2, working_size=16), (red[1], {}), steps=1)
