"""Fitting strategies: the constrained and continuation fits, their components and errors."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from actmatch.explainers import losses as terms
from actmatch.explainers.classifier import load_classifier, state_fingerprint
from actmatch.explainers.criteria import AllOf, Confident, RobustOn, Sufficient
from actmatch.explainers.fitting import AreaContinuation, ConstrainedFit, PenaltyFit, TopArea, cut_between
from actmatch.explainers.masks import border_band
from actmatch.explainers.module import ActMatchExplainer
from actmatch.explainers.stages import BorderFree, FitState, Prune, Scan, Verify
from actmatch.explainers.taps import hook_count
from actmatch.explainers.unet import MaskUNet


@pytest.fixture(scope="module")
def tiny_classifier():
    return load_classifier("resnet10t", pretrained=False, num_classes=5)


def test_logit_margin_and_label_margin_by_hand():
    logits = torch.tensor([[3.0, 1.0, 0.5], [0.0, 2.0, 1.0]])
    target = torch.tensor([0, 0])
    assert terms.logit_margin(logits, target).tolist() == [2.0, -2.0]
    evidence = terms.Evidence(None, None, None, None, None, target, logits, logits)
    hinge = terms.LabelMargin(margin=1.0, num_backgrounds=0)(evidence)
    assert hinge.tolist() == [0.0, 3.0]  # max(0, 1 − 2), max(0, 1 + 2)
    # with one background copy per image the hinge is averaged over {fill, background}
    background = torch.tensor([[0.0, 1.0, 0.0], [5.0, 0.0, 0.0]])
    hinge = terms.LabelMargin(margin=1.0, num_backgrounds=1)(evidence, background)
    assert hinge.tolist() == [pytest.approx((0.0 + 2.0) / 2), pytest.approx((3.0 + 0.0) / 2)]


@pytest.mark.parametrize("area", [0.05, 0.3, 0.77])
def test_top_area_keeps_exactly_the_requested_fraction(area):
    unet = MaskUNet(width=4, depth=2, working_size=32)
    images = torch.rand(2, 3, 48, 40)
    logits = TopArea(unet, torch.tensor([area, area / 2]))(images)
    kept = (logits > 0).flatten(1).sum(1)
    n = 48 * 40
    assert kept.tolist() == [round(area * n), round(area / 2 * n)]


@pytest.mark.parametrize(
    "strategy, losses",
    [
        (PenaltyFit(), None),
        (ConstrainedFit(lr=0.01), [terms.Area(), terms.LabelMargin(num_backgrounds=1)]),
        (AreaContinuation(lr=0.01), [terms.CrossEntropy(), terms.Robustness(num_backgrounds=1)]),
    ],
    ids=["penalty", "constrained", "continuation"],
)
def test_every_strategy_gives_binary_input_sized_masks_and_leaves_the_classifier(tiny_classifier, rng_images, strategy, losses):
    explainer = ActMatchExplainer(
        classifier=tiny_classifier, unet=MaskUNet(width=4, depth=2, working_size=32), losses=losses, steps=5, fitting=strategy
    )
    before = state_fingerprint(tiny_classifier)
    result = explainer.fit_images(rng_images, seed=1)
    assert result.masks.shape == (2, 1, 64, 64)
    assert set(result.masks.unique().tolist()) <= {0.0, 1.0}
    assert len(result.history) == 5
    assert state_fingerprint(tiny_classifier) == before
    assert hook_count(tiny_classifier) == 0


def test_verification_returns_the_smallest_candidate_that_survives_more_backgrounds(rng_images):
    """Candidates of area 0.25 (fails the check) and 0.5 (passes): the 0.5 mask is returned."""
    from actmatch.explainers.fitting import _Candidates

    class Stub(torch.nn.Module):  # keeps label 0 only when the top half of the image is intact
        def forward(self, x):
            intact = (x[:, :, :32] == rng_images[:1, :, :32]).flatten(1).all(1).float()
            return torch.stack([intact, 1 - intact], 1)

    small, large = torch.zeros(1, 64, 64), torch.zeros(1, 64, 64)
    small[:, :16] = 1
    large[:, :32] = 1
    candidates = _Candidates(1, k=4)
    candidates.offer(small[None], small[None], torch.tensor([True]))
    candidates.offer(large[None], large[None], torch.tensor([True]))
    masks, soft = small[None].clone(), small[None].clone()
    image = rng_images[:1]
    criterion = AllOf([Sufficient(), RobustOn(n=4)])
    Verify().run(FitState(Stub(), image, Stub()(image), torch.tensor([0]), masks, soft, criterion, candidates=candidates.items))
    assert torch.equal(masks[0], large)


def test_constrained_multiplier_rises_while_violated_and_falls_while_held():
    fit = ConstrainedFit(lambda_init=1.0, dual_up=0.5, dual_down=0.25)
    fit.start(torch.zeros(2, 3, 4, 4))

    class Out:
        terms = {"label_margin": torch.tensor([2.0, 0.0])}  # image 0 violates, image 1 holds

    fit.after_step(None, Out(), torch.tensor([False, True]))
    assert fit._log_lambda.tolist() == pytest.approx([0.5, -0.25])
    assert math.exp(fit._log_lambda[0]) > 1 > math.exp(fit._log_lambda[1])


def test_continuation_shrinks_while_satisfied_and_grows_on_failure():
    fit = AreaContinuation(start_area=0.5, shrink=0.5, grow=1.5, min_area=0.1)
    fit.start(torch.zeros(2, 3, 4, 4))
    fit.after_step(None, None, torch.tensor([True, False]))
    assert fit._area.tolist() == pytest.approx([0.25, 0.75])
    for _ in range(5):
        fit.after_step(None, None, torch.tensor([True, False]))
    assert fit._area.tolist() == pytest.approx([0.1, 1.0])  # clipped to [min_area, 1]


def test_confident_demands_a_confident_explanation():
    class Evidence:
        logits = torch.tensor([[2.0, 0.0]])  # p_x(y=0) = 0.88
        logits_e = torch.tensor([[0.5, 0.0]])  # top-1 kept, p_e(y) = 0.62

    class Out:
        evidence = Evidence()

    target = torch.tensor([0])
    assert Confident(0.5).accepts_step(Out(), target).item()
    assert not Confident(0.8).accepts_step(Out(), target).item()
    assert Sufficient().accepts_step(Out(), target).item()


def test_constraint_term_missing_is_named(tiny_classifier, rng_images):
    explainer = ActMatchExplainer(
        classifier=tiny_classifier,
        unet=MaskUNet(width=4, depth=2, working_size=32),
        losses=[terms.Area()],
        steps=2,
        fitting=ConstrainedFit(),
    )
    with pytest.raises(ValueError, match="constraint term 'label_margin' is not among"):
        explainer.fit_images(rng_images)
    assert hook_count(tiny_classifier) == 0


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: PenaltyFit(select="biggest"), "unknown select"),
        (lambda: PenaltyFit(lr=0), "lr must be > 0"),
        (lambda: Confident(ratio=2), "ratio must be in"),
        (lambda: ConstrainedFit(lambda_init=0), "lambda_init > 0"),
        (lambda: ConstrainedFit(dual_up=-1), "dual steps"),
        (lambda: AreaContinuation(shrink=1.5), "shrink < 1"),
        (lambda: AreaContinuation(min_area=0.9, start_area=0.5), "min_area <= start_area"),
        (lambda: terms.LabelMargin(num_backgrounds=-1), "num_backgrounds >= 0"),
        (
            lambda: PenaltyFit(select="smallest_kept", criterion=AllOf([Sufficient(), RobustOn()]), stages=[Verify()]),
            "needs select='smallest_robust'",
        ),
        (lambda: PenaltyFit(stages=[Verify()]), "the criterion Sufficient.* has none"),
        (lambda: Verify(candidates=0), "1 <= candidates"),
        (lambda: PenaltyFit(stages=[Scan(8)]), "checks cuts with the fill only"),
        (lambda: Scan(areas=-1), "1 <= areas"),
        (lambda: AreaContinuation(lookahead_every=0), "lookahead_every >= 1"),
        (lambda: AreaContinuation(lookahead=4, lookahead_first=0), "lookahead_first is the step"),
        (lambda: AreaContinuation(explore=1.0), "explore must be 0"),
        (lambda: AreaContinuation(noise=-0.1), "noise must be >= 0"),
        (lambda: Scan(areas=8, draws=-1), "0 <= draws"),
        (lambda: Verify(fallback="largest"), "fallback is"),
        (lambda: PenaltyFit(criterion="sufficient"), "criterion must be a Criterion"),
        (lambda: PenaltyFit(stages=["scan"]), "stages is a list of Stage"),
    ],
)
def test_bad_strategy_settings_are_named(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_scan_returns_a_smaller_kept_cut_of_the_same_ranking(tiny_classifier, rng_images):
    """The scan may only shrink the selected mask, along its own ranking, and keeps the label."""

    def fit(scan):
        stages = [Scan(scan)] if scan else []
        explainer = ActMatchExplainer(
            classifier=tiny_classifier,
            unet=MaskUNet(width=4, depth=2, working_size=32),
            steps=6,
            fitting=AreaContinuation(select="smallest_kept", stages=stages),
        )
        return explainer.fit_images(rng_images, seed=2)

    plain, scanned = fit(0), fit(16)
    assert (scanned.area <= plain.area + 1e-6).all()
    assert (scanned.masks <= plain.masks).all()  # a cut of the selected step's ranking: a subset
    assert (scanned.label_kept >= plain.label_kept).all()
    assert ((scanned.masks == 0) | (scanned.masks == 1)).all()


def test_lookahead_jumps_the_target_area_below_the_schedule(rng_images):
    torch.manual_seed(0)  # this classifier keeps its label on small cuts of these images
    tiny_classifier = load_classifier("resnet10t", pretrained=False, num_classes=5)

    def history(lookahead):
        strategy = AreaContinuation(shrink=0.99, lookahead=lookahead, lookahead_every=2)
        explainer = ActMatchExplainer(
            classifier=tiny_classifier, unet=MaskUNet(width=4, depth=2, working_size=32), steps=6, fitting=strategy
        )
        return explainer.fit_images(rng_images, seed=2).history

    schedule, jumped = history(0), history(8)
    assert min(h["target_area"] for h in jumped) < min(h["target_area"] for h in schedule)


@pytest.mark.parametrize("first, expected", [(None, [2, 4, 6]), (1, [1, 3, 5]), (4, [4, 6])])
def test_lookahead_runs_after_its_first_step_then_every_few(tiny_classifier, rng_images, first, expected):
    """6 steps, a lookahead every 2: after steps 2, 4, 6 by default; from step 1 or 4 when told."""
    after = []

    class Recording(AreaContinuation):
        def _look_ahead(self, explainer, ev):
            after.append(self._step)

    strategy = Recording(lookahead=4, lookahead_every=2, lookahead_first=first)
    explainer = ActMatchExplainer(
        classifier=tiny_classifier, unet=MaskUNet(width=4, depth=2, working_size=32), steps=6, restarts=1, fitting=strategy
    )
    explainer.fit_images(rng_images[:1], seed=0)
    assert after == expected


def test_lookahead_cuts_are_candidates_of_the_selection(rng_images):
    """A kept cut the lookahead checked is a mask the fit found: the returned mask is no larger."""
    torch.manual_seed(0)  # this classifier keeps its label on small cuts of these images
    tiny_classifier = load_classifier("resnet10t", pretrained=False, num_classes=5)
    offered = []

    class Recording(AreaContinuation):
        def found_masks(self):
            found = super().found_masks()
            offered.extend(found)
            return found

    strategy = Recording(shrink=0.99, lookahead=8, lookahead_every=2, select="smallest_kept", min_area=0.02)
    explainer = ActMatchExplainer(
        classifier=tiny_classifier, unet=MaskUNet(width=4, depth=2, working_size=32), steps=6, restarts=1, fitting=strategy
    )
    result = explainer.fit_images(rng_images, seed=2)
    assert offered, "the lookahead found no kept cut to offer"
    smallest = torch.stack([torch.where(kept, masks.flatten(1).mean(1), torch.inf) for masks, _, kept in offered]).amin(0)
    assert result.label_kept.all()
    assert (result.area <= smallest + 1e-6).all()
    assert (result.area < 0.99**5 * strategy.start_area).all()  # below where the schedule alone could be
    assert ((result.masks == 0) | (result.masks == 1)).all()


def test_ranking_noise_and_explored_areas_are_drawn_per_step():
    """The strategy's draws depend on the step only (batched fits equal one-image fits)."""
    strategy = AreaContinuation(explore=0.5, noise=1.0, start_area=0.4)
    images = torch.rand(3, 3, 32, 32)
    strategy.start(images)
    first, area = strategy._step_noise(images), strategy._step_area()
    assert first.shape == (1, 1, 32, 32) and first.std() > 0.1
    assert torch.equal(first, strategy._step_noise(images[:1]))
    assert area.tolist() == pytest.approx([0.4] * 3)  # u_0 = 0: the first step is at the target
    strategy._step = 1
    assert not torch.equal(first, strategy._step_noise(images))
    assert 0.2 <= strategy._step_area()[0].item() < 0.4  # a · r^u, u in (0, 1)


def test_scan_draws_only_shrink_the_mask_and_keep_the_label(rng_images):
    torch.manual_seed(0)  # this classifier keeps its label on small cuts of these images
    tiny_classifier = load_classifier("resnet10t", pretrained=False, num_classes=5)

    def fit(draws):
        strategy = AreaContinuation(select="smallest_kept", stages=[Scan(areas=8, draws=draws, noise=1.0)])
        explainer = ActMatchExplainer(
            classifier=tiny_classifier, unet=MaskUNet(width=4, depth=2, working_size=32), steps=4, restarts=1, fitting=strategy
        )
        return explainer.fit_images(rng_images, seed=2)

    plain, drawn = fit(0), fit(6)
    assert (drawn.area <= plain.area + 1e-6).all()
    assert (drawn.label_kept >= plain.label_kept).all()
    assert ((drawn.masks == 0) | (drawn.masks == 1)).all() and drawn.masks.shape == plain.masks.shape


@pytest.mark.parametrize("fallback", ["smallest", "most_kept"])
def test_verification_fallback_when_no_candidate_survives(rng_images, fallback):
    """No candidate keeps the label on every verification background: ``smallest`` keeps the
    smallest robust mask, ``most_kept`` takes the candidate that kept it on the most."""
    from actmatch.explainers.fitting import _Candidates

    image = rng_images[:1].clamp(0.4, 1.0)

    class Bright(torch.nn.Module):  # class 0 wins by (mean brightness - 0.45)
        def forward(self, x):
            return torch.stack([x.flatten(1).mean(1) - 0.45, torch.zeros(x.shape[0])], 1)

    small, large = torch.zeros(1, 64, 64), torch.zeros(1, 64, 64)
    small[:, :6] = 1  # ~0.1 of the image: on a background of mean 0.5 its margin is < 0.1
    large[:, :48] = 1  # 0.75: a margin of 0.1 on mid-grey and brighter backgrounds
    candidates = _Candidates(1, k=4)
    candidates.offer(small[None], small[None], torch.tensor([True]))
    candidates.offer(large[None], large[None], torch.tensor([True]))
    robust = RobustOn(kinds=["solid", "uniform"], n=8, rate=1.0, margin=0.1, order="cycle")
    torch.manual_seed(0)
    rates = [
        robust.kept_on(Bright()(m * image + (1 - m) * robust.backgrounds(image)), torch.tensor(0)).float().mean()
        for m in (small, large)
    ]
    assert rates[0] < rates[1] < 1  # neither survives every background; the large mask more of them
    torch.manual_seed(0)
    masks, soft = small[None].clone(), small[None].clone()
    fit = FitState(
        Bright(),
        image,
        Bright()(image),
        torch.tensor([0]),
        masks,
        soft,
        AllOf([Sufficient(), robust]),
        candidates=candidates.items,
    )
    Verify(candidates=4, fallback=fallback).run(fit)
    assert torch.equal(masks[0], small if fallback == "smallest" else large)


def test_cut_between_is_the_midpoint_of_the_kth_and_next_largest_values():
    """Worked by hand on a row with ties, and against a full sort on random rows with a k per row."""
    row = torch.tensor([[3.0, 1.0, 2.0, 2.0, 0.0]])  # descending: 3, 2, 2, 1, 0
    assert cut_between(row, torch.tensor([1])).item() == 2.5  # between 3 and 2
    assert cut_between(row, torch.tensor([2])).item() == 2.0  # between 2 and 2: a tie, no shift separates them
    assert cut_between(row, torch.tensor([3])).item() == 1.5
    assert cut_between(row, torch.tensor([4])).item() == 0.5
    values = torch.randn(4, 999).round(decimals=1)  # many ties
    k = torch.tensor([1, 250, 600, 998])
    ranked = values.sort(1, descending=True).values
    expected = torch.stack([(ranked[i, j - 1] + ranked[i, j]) / 2 for i, j in enumerate(k.tolist())])[:, None]
    assert torch.equal(cut_between(values, k), expected)


def test_top_area_keeps_the_requested_fraction_on_a_plateau_of_equal_logits():
    """A network whose logits are equal on most pixels (a dead U-Net) still gets exactly a·H·W
    pixels, not an empty mask; an image without ties is shifted exactly as before."""

    logits = torch.zeros(2, 1, 48, 40)
    logits[0, :, :8] = torch.rand(8, 40) + 0.1  # image 0: 8 of 48 rows ranked, the rest one plateau
    logits[1] = torch.randn(1, 48, 40)  # image 1: no ties

    class Plateau(torch.nn.Module):
        def forward(self, images):
            return logits.clone()

    images = torch.rand(2, 3, 48, 40)
    out = TopArea(Plateau(), torch.tensor([0.5, 0.3]))(images)
    kept = (out > 0).flatten(1).sum(1)
    assert kept.tolist() == [round(0.5 * 48 * 40), round(0.3 * 48 * 40)]
    assert (out[0, :, :8] > 0).all()  # the ranked rows stay on top
    reference = Plateau()(images)[1]
    ranked = reference.flatten().sort(descending=True).values
    k = round(0.3 * 48 * 40)
    assert torch.allclose(out[1], reference - (ranked[k - 1] + ranked[k]) / 2)


def test_border_free_replaces_a_border_strip_the_interior_can_replace(rng_images, monkeypatch):
    """Class 0 is kept by the top border rows or by a centre block. The ranking prefers the border:
    border_free returns a mask that keeps no band pixel and still keeps the label; where only the
    border carries the label, the mask stays as it was."""
    tiny_classifier = load_classifier("resnet10t", pretrained=False, num_classes=5)
    image = rng_images[:1]
    stages = [Scan(areas=16), Prune(cells=[8]), BorderFree(factor=3.0)]

    def evidence(x, centre: bool):
        top = (x[:, :, :2, :] - image[:, :, :2, :]).abs().mean((1, 2, 3)) < 1e-6
        middle = (x[:, :, 24:40, 24:40] - image[:, :, 24:40, 24:40]).abs().mean((1, 2, 3)) < 1e-6
        score = (top | (middle & centre)).float()
        return torch.stack([score, 0.5 * torch.ones_like(score)], 1)

    soft = torch.full((1, 1, 64, 64), 0.2)
    soft[..., :8, :] = 0.9
    band = border_band(soft)
    for centre, freed in ((True, True), (False, False)):
        monkeypatch.setattr(tiny_classifier, "forward", lambda x, c=centre: evidence(x, c))
        logits = tiny_classifier(image)
        target = logits.argmax(-1)
        masks = torch.zeros(1, 1, 64, 64)
        masks[..., :2, :] = 1  # the top strip: kept
        stages[-1].run(FitState(tiny_classifier, image, logits, target, masks, soft, Sufficient(), stages))
        assert ((masks == 0) | (masks == 1)).all()
        assert Sufficient().accepts(tiny_classifier, image, masks, logits, target).all()
        assert (not masks[band].any()) == freed
        if freed:
            assert masks.mean() <= 3.0 * (2 / 64)


def test_border_free_needs_the_scan():
    with pytest.raises(ValueError, match="BorderFree cuts the ranking as the scan does"):
        AreaContinuation(select="smallest_kept", stages=[BorderFree(1.5)])
    with pytest.raises(ValueError, match="factor >= 1"):
        BorderFree(factor=0.5)
    with pytest.raises(ValueError, match="checks its band-free mask with the fill only"):
        BorderFree(1.5).check(SimpleNamespace(select="smallest_robust", criterion=Sufficient(), stages=[Scan(8)]))
    # with a robust criterion every cut and removal is checked on the backgrounds too: allowed
    AreaContinuation(
        select="smallest_robust", criterion=AllOf([Sufficient(), RobustOn(n=4)]), stages=[Scan(8), Prune([8]), BorderFree(1.5)]
    )
