"""Post-fit stages, on the hand-worked classifier of test_criteria (class 0 iff 2 r̄ − 1.2 > 0, r̄ the
mean red; a pure red image with the mean fill (0.5, 0.4, 0.3) keeps class 0 iff more than a fifth
of it is kept), and the fit's count of the images they classify."""

from __future__ import annotations

import math

import pytest
import torch

from actmatch.explainers.classifier import load_classifier
from actmatch.explainers.criteria import AllOf, CountedClassifier, RobustOn, Sufficient
from actmatch.explainers.fitting import AreaContinuation, _Candidates
from actmatch.explainers.independent import IndependentNets
from actmatch.explainers.masks import border_band, top_fraction_mask
from actmatch.explainers.module import ActMatchExplainer
from actmatch.explainers.stages import (
    BandTrim,
    BorderFree,
    FitState,
    Grow,
    Prune,
    Scan,
    Verify,
    areas_below,
    bisected_accepted_cut,
    smallest_accepted_cut,
)
from actmatch.explainers.unet import MaskUNet
from test_criteria import FixedBackgrounds, H, RedMeter, W, rows, solid_reds


@pytest.fixture()
def red():
    image = torch.zeros(1, 3, H, W)
    image[:, 0] = 1
    return image, RedMeter()(image), torch.tensor([0])


def state(red, masks, soft, criterion=None, **kwargs) -> tuple[FitState, dict]:
    image, logits_x, target = red
    passes = {}
    fit = FitState(
        CountedClassifier(RedMeter(), passes, "stage"), image, logits_x, target, masks, soft, criterion or Sufficient(), **kwargs
    )
    return fit, passes


def raster_ranking() -> torch.Tensor:
    """(1, 1, H, W) probabilities decreasing in raster order: a top-k cut keeps the first k pixels."""
    return torch.linspace(1, 0, H * W).view(1, 1, H, W)


def test_scan_returns_the_smallest_grid_cut_above_a_fifth(red):
    soft = raster_ranking()
    masks = torch.ones(1, 1, H, W)
    fit, passes = state(red, masks, soft)
    Scan(areas=24).run(fit)
    grid = areas_below(1.0, 0.005, 24, "cpu")
    kept_areas = [k / (H * W) for k in (grid * H * W).round().long().tolist() if k / (H * W) > 0.2]
    assert masks.mean().item() == pytest.approx(min(kept_areas))  # the smallest cut with a > 0.2
    assert torch.equal(masks, top_fraction_mask(soft, masks.mean().item()))  # a top set of the ranking
    assert passes == {"stage": 24}  # one pass of 24 cuts


def test_scan_of_a_fit_that_never_kept_the_label_goes_up_first(red):
    soft = raster_ranking()
    masks = rows(0.0625)  # a = 1/16: lost
    fit, passes = state(red, masks, soft, kept_found=torch.tensor([False]))
    Scan(areas=8).run(fit)
    assert 0.2 < masks.mean().item() < 1  # kept now, and a cut below the whole image
    assert passes["stage"] == 8 + 8  # up to the whole image, then down from the cut


def test_grow_replaces_a_refused_mask_by_the_smallest_accepted_cut_above_it(red):
    """On a black background the red image keeps class 0 only above 0.6 of it kept (2a − 1.2 > 0). A
    top-0.3 mask passes the fill and fails the background: Grow cuts the ranking at 8 areas in
    (0.3, 1] and returns the smallest above 0.6; a top-0.7 mask passes both and stays."""
    soft = raster_ranking()
    black = AllOf([Sufficient(), FixedBackgrounds(solid_reds(0.0), rate=1.0)])
    cost = black.bind(RedMeter(), *red).cost  # images per mask: the fill and the background
    masks = top_fraction_mask(soft, 0.3)
    fit, passes = state(red, masks, soft, black)
    Grow(areas=8).run(fit)
    grid = torch.logspace(torch.tensor(0.3).log10().item(), 0.0, 9)[1:]
    sizes = [k / (H * W) for k in (grid * H * W).round().long().tolist()]
    assert masks.mean().item() == pytest.approx(min(a for a in sizes if a > 0.6))
    assert torch.equal(masks, top_fraction_mask(soft, masks.mean().item()))  # a cut of the same ranking
    assert passes["stage"] <= cost + 8 * cost  # the mask's test, then one pass of 8 cuts
    accepted = top_fraction_mask(soft, 0.7)
    fit, passes = state(red, accepted.clone(), soft, black)
    Grow(areas=8).run(fit)
    assert torch.equal(fit.masks, accepted) and passes["stage"] == cost  # one test, no cuts


def test_grow_with_a_max_factor_cuts_below_it_and_keeps_a_mask_it_cannot_grow(red):
    """The red image needs 0.6 of it kept on black (above). From a top-0.3 mask, ``max_factor=3``
    cuts 8 areas in (a, 3a] (a ≈ 0.3, the mask's area) and returns the smallest above 0.6; ``max_factor=1.5`` reaches only
    0.45, so the mask stays as it is."""
    soft = raster_ranking()
    black = AllOf([Sufficient(), FixedBackgrounds(solid_reds(0.0), rate=1.0)])
    masks = top_fraction_mask(soft, 0.3)
    fit, _ = state(red, masks, soft, black)
    Grow(areas=8, max_factor=3.0).run(fit)
    start = top_fraction_mask(soft, 0.3).mean().item()  # 0.3 of the pixels, rounded to whole pixels
    grid = torch.logspace(math.log10(start), math.log10(3 * start), 9)[1:]
    sizes = [k / (H * W) for k in (grid * H * W).round().long().tolist()]
    assert masks.mean().item() == pytest.approx(min(a for a in sizes if a > 0.6))
    assert masks.mean().item() <= 3 * start
    small = top_fraction_mask(soft, 0.3)
    fit, _ = state(red, small.clone(), soft, black)
    Grow(areas=8, max_factor=1.5).run(fit)
    assert torch.equal(fit.masks, small)


def test_grow_with_its_own_criterion_asks_it_instead_of_the_recipes(red):
    """The recipe's criterion is the fill (a top-0.3 mask passes it); Grow's own asks for the black
    background too, and its families are counted as the recipe's."""
    soft = raster_ranking()
    black = FixedBackgrounds(solid_reds(0.0), rate=1.0)
    masks = top_fraction_mask(soft, 0.3)
    fit, _ = state(red, masks, soft, Sufficient())
    Grow(areas=8, criterion=black).run(fit)
    assert masks.mean().item() > 0.6
    assert Grow(criterion=RobustOn(kinds=["solid"])).families == RobustOn(kinds=["solid"]).families != frozenset()
    assert Grow().families == frozenset()


def test_grow_reads_a_known_verdict_only_for_the_unchanged_mask_and_the_recipes_criterion(red):
    """With the mean fill the red image keeps class 0 iff more than a fifth is kept, so the fill
    refuses a top-0.1 mask. A verdict the caller already has (``FitState.known``, an amortized pass's
    own logits) replaces Grow's test of that mask: ``True`` keeps the mask with no pass at all, ``False``
    goes straight to the 8 cuts (smallest above a fifth). Once the mask has changed, or with Grow's
    own criterion, the verdict is not read and the mask is tested (one image more)."""
    soft = raster_ranking()
    small = top_fraction_mask(soft, 0.1)
    grid = torch.logspace(math.log10(small.mean().item()), 0.0, 9)[1:]
    smallest_kept = min(k / (H * W) for k in (grid * H * W).round().long().tolist() if k / (H * W) > 0.2)

    fit, passes = state(red, small.clone(), soft, known=torch.tensor([True]))
    Grow(areas=8).run(fit)
    assert torch.equal(fit.masks, small) and passes == {}  # trusted: no test, no cuts

    fit, passes = state(red, small.clone(), soft, known=torch.tensor([False]))
    Grow(areas=8).run(fit)
    assert fit.masks.mean().item() == pytest.approx(smallest_kept) and passes["stage"] == 8  # the cuts only

    fit, passes = state(red, small.clone(), soft, known=torch.tensor([True]))
    fit.masks[0] = top_fraction_mask(soft, 0.15)[0]  # a stage before changed it: the verdict is stale
    Grow(areas=8).run(fit)
    assert fit.masks.mean().item() > 0.2 and passes["stage"] == 1 + 8

    fit, passes = state(red, small.clone(), soft, known=torch.tensor([True]))
    Grow(areas=8, criterion=Sufficient()).run(fit)  # its own criterion: the recipe's verdict does not answer it
    assert fit.masks.mean().item() == pytest.approx(smallest_kept) and passes["stage"] == 1 + 8


def test_bisection_finds_the_cut_a_hand_bisection_finds():
    """Cuts of a raster ranking at 0.1, 0.2, ..., 0.8 (8 areas, so 3 halvings). Where acceptance
    grows with the area (accepted from 0.3 on) bisection tests 0.4, 0.2, 0.3 and returns 0.3, the
    smallest accepted. Where it does not (accepted at 0.3 and from 0.6 on) it tests 0.4 (refused),
    0.6 (accepted), 0.5 (refused) and returns 0.6, not 0.3. Where every cut is refused it tests
    0.4, 0.6, 0.7 and then the largest, 0.8, and returns None."""
    soft = raster_ranking()
    fractions = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    for accepted_areas, tested, found in [
        (lambda a: a >= 0.3, [0.4, 0.2, 0.3], 0.3),
        (lambda a: abs(a - 0.3) < 0.01 or a >= 0.6, [0.4, 0.6, 0.5], 0.6),
        (lambda a: False, [0.4, 0.6, 0.7, 0.8], None),
    ]:
        seen: list[float] = []

        def accepts(masks, rule=accepted_areas, seen=seen):
            area = round(masks.mean().item(), 2)
            seen.append(area)
            return torch.tensor([rule(area)])

        cut = bisected_accepted_cut(accepts, soft, fractions)
        assert seen == tested
        assert (cut is None) if found is None else cut.mean().item() == pytest.approx(found, abs=0.01)
    assert smallest_accepted_cut(lambda m: (m.flatten(1).mean(1) - 0.3).abs() < 0.01, soft, fractions).mean().item() == (
        pytest.approx(0.3, abs=0.01)
    )  # testing every cut finds the smaller one


def test_grow_by_bisection_returns_the_smallest_cut_above_a_fifth_in_fewer_tests(red):
    """With the mean fill the red image keeps class 0 iff more than a fifth is kept: acceptance grows
    with the area, so bisection over 16 cuts above a top-0.1 mask returns the cut testing all 16 does,
    after the mask's test and 4 or 5 cuts, one at a time."""
    soft = raster_ranking()
    masks = top_fraction_mask(soft, 0.1)
    fit, passes = state(red, masks.clone(), soft)
    Grow(areas=16).run(fit)
    bisected, bisect_passes = state(red, masks.clone(), soft)
    Grow(areas=16, bisect=True).run(bisected)
    assert torch.equal(bisected.masks, fit.masks) and bisected.masks.mean().item() > 0.2
    assert passes["stage"] == 1 + 16 and 1 + 4 <= bisect_passes["stage"] <= 1 + 5


def test_grow_names_bisection_only_where_it_is_on():
    """A recipe written before ``bisect`` existed keeps its repr, and so its recipe digest."""
    assert repr(Grow(areas=16, max_factor=3.0)) == "Grow(areas=16, criterion=None, max_factor=3.0)"
    assert repr(Grow(areas=16, bisect=True)) == "Grow(areas=16, criterion=None, max_factor=None, bisect=True)"


def test_grow_rejects_a_bad_grid_and_criterion():
    with pytest.raises(ValueError, match="1 <= areas <= 1024"):
        Grow(areas=0)
    with pytest.raises(ValueError, match="criterion must be a Criterion"):
        Grow(criterion="robust")
    with pytest.raises(ValueError, match="max_factor must be > 1"):
        Grow(max_factor=1.0)


def test_prune_keeps_the_most_probable_cells_the_label_needs(red):
    """Cells of 4 px are 1/16 of the image: the fill keeps the label with 4 of them (0.25 > 0.2), not 3;
    on a black background it takes 10 (2a − 1.2 > 0: a > 0.6)."""
    soft = torch.rand(1, 1, H, W, generator=torch.Generator().manual_seed(0))
    cell_soft = soft.view(4, 4, 4, 4).permute(0, 2, 1, 3).reshape(16, 16).mean(1)  # (16,) per 4 x 4 cell
    black = FixedBackgrounds(solid_reds(0.0), rate=1.0)
    for criterion, cells in ((Sufficient(), 4), (AllOf([Sufficient(), black]), 10)):
        masks = torch.ones(1, 1, H, W)
        fit, passes = state(red, masks, soft, criterion)
        Prune(cells=[4]).run(fit)
        kept_cells = masks.view(4, 4, 4, 4).permute(0, 2, 1, 3).reshape(16, 16).amax(1).bool()
        assert kept_cells.sum() == cells and masks.sum() == cells * 16
        assert set(kept_cells.nonzero().flatten().tolist()) == set(cell_soft.topk(cells).indices.tolist())
        assert 0 < passes["stage"] <= (1 + 16 * 8) * criterion.bind(RedMeter(), *red).cost  # a pass of <= 8 per cell


class BandMeter(torch.nn.Module):
    """Class 0 iff the border band (1 px) of the image is red on average: only the border holds it."""

    data_config = RedMeter.data_config

    def forward(self, x):
        band = border_band(x[:, :1])
        red = x[:, :1][band.expand(x.shape[0], -1, -1, -1)].view(x.shape[0], -1).mean(1)
        return torch.stack([2 * red - 1.2, torch.zeros_like(red)], 1)


def test_border_free_replaces_a_band_mask_where_the_interior_keeps_the_label(red):
    image, logits_x, target = red
    band = border_band(torch.zeros(1, 1, H, W))  # 1 px: 60 of 256 pixels (0.234 > 0.2: kept)
    soft = torch.where(band, 0.9, 0.2) + 1e-3 * raster_ranking()  # the U-Net prefers the band
    stages = [Scan(areas=24), BorderFree(factor=1.5)]
    masks = band.float()
    fit, passes = state(red, masks, soft, stages=stages)
    stages[1].run(fit)
    assert not masks[band].any() and 0.2 < masks.mean() <= 1.5 * band.float().mean()
    assert Sufficient().accepts(RedMeter(), image, masks, logits_x, target).all()
    # where only the band holds the evidence, the mask stays
    masks = band.float()
    fit = FitState(BandMeter(), image, BandMeter()(image), target, masks, soft, Sufficient(), stages)
    stages[1].run(fit)
    assert torch.equal(masks, band.float())


def test_border_free_with_its_own_criterion_asks_it_instead_of_the_recipes(red):
    """The recipe's criterion (the fill) takes an interior cut of 0.2-0.35 (above); asked to hold on a black
    background too (a > 0.6 of the image red), the band-free mask must be larger than 1.5x the band's
    0.234, so the mask stays; at up to 4x it becomes a band-free mask the black background accepts."""
    image, logits_x, target = red
    band = border_band(torch.zeros(1, 1, H, W))
    soft = torch.where(band, 0.9, 0.2) + 1e-3 * raster_ranking()
    black = FixedBackgrounds(solid_reds(0.0), rate=1.0)
    for factor, moved in ((1.5, False), (4.0, True)):
        stages = [Scan(areas=24), BorderFree(factor=factor, criterion=black)]
        masks = band.float()
        fit, _ = state(red, masks, soft, stages=stages)
        stages[1].run(fit)
        assert bool(masks[band].any()) is not moved
        if moved:
            assert masks.mean() > 0.6 and black.bind(RedMeter(), image, logits_x, target).accepts(masks).all()
    assert BorderFree(criterion=RobustOn(kinds=["solid"])).families == RobustOn(kinds=["solid"]).families
    assert BorderFree().families == frozenset()
    with pytest.raises(ValueError, match="criterion must be a Criterion"):
        BorderFree(criterion="robust")


def test_band_trim_drops_the_band_where_the_interior_keeps_the_decision(red):
    """Band: the 1-px border, 60 of 256 pixels. The top 6 rows (96 px) minus the band keep 70 px
    (0.273 > 0.2: kept with the fill); the top 4 rows (64 px) minus the band keep 42 (0.164: lost), so
    that mask stays. One test per mask with band pixels; a mask without band pixels is not tested."""
    image, logits_x, target = red
    band = border_band(torch.zeros(1, 1, H, W))
    for top_rows, trimmed_px in ((6, 70), (4, None)):
        masks = rows(top_rows / H)
        before = masks.clone()
        fit, passes = state(red, masks, masks.clone())
        BandTrim(width=0.03).run(fit)
        assert passes == {"stage": 1}
        if trimmed_px is None:
            assert torch.equal(masks, before)
        else:
            assert masks.sum() == trimmed_px and not masks[band].any() and torch.equal(masks, before * ~band)
    interior = rows(6 / H) * ~band
    fit, passes = state(red, interior, interior.clone())
    BandTrim().run(fit)
    assert passes == {} and torch.equal(fit.masks, rows(6 / H) * ~band)
    # only the band holds the evidence: the mask stays
    masks = band.float()
    fit = FitState(BandMeter(), image, BandMeter()(image), target, masks, masks.clone(), Sufficient())
    BandTrim().run(fit)
    assert torch.equal(masks, band.float())


def test_band_trim_with_its_own_criterion_asks_it_instead_of_the_recipes(red):
    """On a black background the red image keeps class 0 above 0.6 of it kept. The top 12 rows minus
    the band keep 154 px (0.602): accepted; the top 11 rows minus the band keep 140 (0.547): the fill
    accepts it, the black background refuses it and the mask stays."""
    black = AllOf([Sufficient(), FixedBackgrounds(solid_reds(0.0), rate=1.0)])
    band = border_band(torch.zeros(1, 1, H, W))
    for top_rows, trimmed in ((12, True), (11, False)):
        masks = rows(top_rows / H)
        fit, passes = state(red, masks, masks.clone())
        BandTrim(criterion=black).run(fit)
        assert bool(masks[band].any()) is not trimmed
        assert passes == {"stage": black.bind(RedMeter(), *red).cost}
        masks = rows(top_rows / H)
        fit, _ = state(red, masks, masks.clone())
        BandTrim().run(fit)  # the recipe's criterion, the fill: both trims keep the label
        assert not masks[band].any()
    assert BandTrim(criterion=RobustOn(kinds=["solid"])).families == RobustOn(kinds=["solid"]).families
    with pytest.raises(ValueError, match="criterion must be a Criterion"):
        BandTrim(criterion="robust")
    with pytest.raises(ValueError, match="0 < width < 0.5"):
        BandTrim(width=0.5)


def test_verify_returns_the_smallest_candidate_that_passes_the_criterions_backgrounds(red):
    """On a solid red c, a = 0.25 keeps the label iff c > 0.467, a = 0.5 iff c > 0.2."""
    small, large = rows(0.25), rows(0.5)
    candidates = _Candidates(1, k=4)
    for mask in (large, small):
        candidates.offer(mask, mask, torch.tensor([True]))
    for backgrounds, fallback, expected in (
        ((0.3, 0.9), "smallest", large),
        ((0.1, 0.3, 0.9), "smallest", small),
        ((0.1, 0.3, 0.9), "most_kept", large),
    ):
        masks, soft = small.clone(), small.clone()
        criterion = AllOf([Sufficient(), FixedBackgrounds(solid_reds(*backgrounds), rate=1.0)])
        fit, passes = state(red, masks, soft, criterion, candidates=candidates.items)
        Verify(candidates=4, fallback=fallback).run(fit)
        assert torch.equal(masks, expected) and torch.equal(soft, expected)
        assert passes["stage"] == 2 * len(backgrounds)  # the small candidate fails first: both are checked


def test_stages_refuse_recipes_they_cannot_serve():
    robust = AllOf([Sufficient(), RobustOn(n=4)])
    with pytest.raises(ValueError, match="Verify .* must be the first stage"):
        AreaContinuation(select="smallest_robust", criterion=robust, stages=[Prune([8]), Verify()])
    with pytest.raises(ValueError, match="Scan checks cuts with the fill only"):
        AreaContinuation(select="smallest_robust", stages=[Scan(8)])
    AreaContinuation(select="smallest_robust", criterion=robust, stages=[Verify(), Scan(8), Prune([8])])  # robust: fine


def test_the_fit_counts_every_image_it_classifies(rng_images):
    """passes: the loop's batches and their images, and per lookahead and stage the images classified
    forward-only; together, every image the classifier saw after the reference pass."""
    torch.manual_seed(0)  # this classifier keeps its label on small cuts of these images
    classifier = load_classifier("resnet10t", pretrained=False, num_classes=5)
    strategy = AreaContinuation(
        shrink=0.9, min_area=0.05, lookahead=4, lookahead_every=2, stages=[Scan(8), Prune([16]), BorderFree(1.5)]
    )
    explainer = ActMatchExplainer(
        classifier=classifier, unet=MaskUNet(width=4, depth=2, working_size=32), steps=6, fitting=strategy
    )
    reference = explainer.reference(rng_images)
    unet = IndependentNets([explainer.fresh_unet(0) for _ in range(2)])
    seen = []
    handle = classifier.model.register_forward_pre_hook(lambda m, inp: seen.append(inp[0].shape[0]))
    try:
        result = strategy.fit(explainer, rng_images, unet, reference, steps=6)
    finally:
        handle.remove()
    # each step: the 2 explanations and the default robustness term's 2 backgrounds per image
    assert result.passes["steps"] == 6 and result.passes["step_images"] == 6 * (2 + 2 * 2)
    assert result.passes["lookahead"] > 0 and result.passes["scan"] > 0 and result.passes["prune"] > 0
    assert sum(seen) == result.passes["step_images"] + result.forward_only
