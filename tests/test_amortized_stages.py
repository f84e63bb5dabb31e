"""Stages after one amortized pass (``ActMatchExplainer(amortized_stages=[Scan(...)])``, ``explain
--amortized --scan N``): the scanned mask is checked against a scan worked out by hand (top-k
cuts by ``torch.topk``, the fill and the criterion's inequality written out), and the recipes a
pass cannot serve are refused with the fix."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F

from actmatch.explainers.criteria import AllOf, Confident, CountedClassifier, RobustOn, Sufficient
from actmatch.explainers.feature_masknet import FeatureMaskNet
from actmatch.explainers.fitting import AreaContinuation, TopFraction
from actmatch.explainers.module import ActMatchExplainer
from actmatch.explainers.stages import BorderFree, FitState, Scan, Stage, Verify

AREAS, MIN_AREA = 6, 0.02


def _photos(size: int = 224) -> torch.Tensor:
    """The espresso photo and the cat, (2, 3, size, size) in [0, 1]."""
    arrays = [skimage.data.coffee(), skimage.data.chelsea()]
    images = [torch.from_numpy(a).permute(2, 0, 1).float()[None] / 255 for a in arrays]
    return torch.cat([F.interpolate(x, size=(size, size), mode="bilinear", antialias=True) for x in images]).clamp(0, 1)


def _explainer(lite0, ratio: float, stages) -> ActMatchExplainer:
    """A class-map network (untrained decoder) keeping the top quarter, in amortized mode, with the
    criterion Confident(ratio) and ``stages`` after the pass."""
    torch.manual_seed(0)
    net = TopFraction(FeatureMaskNet(backbone="efficientnet_lite0", stages=[2, 3, 4], width=32, class_map=True), area=0.25)
    fitting = AreaContinuation(criterion=Confident(ratio) if ratio else Sufficient())
    return ActMatchExplainer(classifier=lite0, unet=net, mode="amortized", fitting=fitting, amortized_stages=stages).eval()


@torch.no_grad()
def _scan_by_hand(classifier, image, ranking, start_area: float, ratio: float) -> tuple[float, str, int]:
    """The smallest accepted cut of ``ranking`` (1, 1, H, W) as Scan(AREAS, MIN_AREA) defines it,
    written out: (its area, the branch taken, the masks classified)."""
    n = ranking.numel()
    fill = torch.tensor(classifier.data_config["mean"]).view(1, 3, 1, 1)
    p_x = classifier(image).softmax(-1)[0]
    y = int(p_x.argmax())

    def accepted(area: float) -> bool:
        keep = torch.zeros(n)
        keep[ranking.flatten().topk(round(area * n)).indices] = 1
        mask = keep.view_as(ranking)
        p_e = classifier(mask * image + (1 - mask) * fill).softmax(-1)[0]
        return int(p_e.argmax()) == y and float(p_e[y]) >= ratio * float(p_x[y])

    area, classified, branch = start_area, 0, "below"
    if not accepted(area):  # the pass's mask is refused: first cut above it, up to the whole image
        branch = "above"
        grid = np.geomspace(area, 1.0, AREAS + 1)[1:]
        classified += AREAS
        area = next((round(a * n) / n for a in grid if accepted(float(a))), area)
    grid = np.geomspace(MIN_AREA, area, AREAS + 1)[:-1]
    classified += AREAS
    area = next((round(a * n) / n for a in grid if accepted(float(a))), area)
    return area, branch, classified


def test_a_scanned_pass_keeps_the_smallest_cut_the_criterion_accepts(lite0):
    images, branches = _photos(), set()
    for ratio in (0.0, 0.95):
        explainer = _explainer(lite0, ratio, [Scan(areas=AREAS, min_area=MIN_AREA)])
        first, ranking = explainer.ranked_masks(images)
        result = explainer.explain(images)
        classified, changed = 0, int((result.masks != first.cpu()).flatten(1).any(1).sum())
        for i in range(len(images)):
            area, branch, n = _scan_by_hand(lite0, images[i : i + 1], ranking[i : i + 1], 0.25, ratio)
            branches.add(branch)
            classified += n
            assert float(result.area[i]) == pytest.approx(area, abs=2 / ranking[0].numel())
        # the pass's explanations once, the scan's cuts, and the changed masks' explanations again
        assert result.passes == {"accepted": 2, "scan": classified, **({"refined": changed} if changed else {})}
        # what the explanation reports is the scanned mask's own reading
        p_e = lite0(result.explanations).softmax(-1).gather(1, result.label[:, None]).squeeze(1)
        assert torch.allclose(result.confidence_explanation, p_e, atol=1e-5)
    assert branches == {"above", "below"}  # both of Scan's branches were checked


def test_without_stages_the_pass_keeps_its_fixed_area(lite0):
    result = _explainer(lite0, 0.9, None).explain(_photos())
    assert torch.allclose(result.area, torch.full((2,), 0.25), atol=1e-3)
    assert result.passes == {}


def test_a_stage_that_reads_step_masks_is_refused_after_a_pass(lite0):
    with pytest.raises(ValueError, match="step masks.*Scan, Prune or BorderFree"):
        _explainer(lite0, 0.9, [Verify()])
    with pytest.raises(ValueError, match="list of Stage"):
        _explainer(lite0, 0.9, ["scan"])
    with pytest.raises(ValueError, match="needs a Scan stage"):  # the stages' own checks see the pass's list
        _explainer(lite0, 0.9, [BorderFree()])


def test_a_criterion_with_another_fill_is_refused_with_the_fix(lite0):
    net = TopFraction(FeatureMaskNet(backbone="efficientnet_lite0", stages=[2, 3, 4], width=32, class_map=True), area=0.25)
    fitting = AreaContinuation(criterion=Confident(0.9, fill="black"))
    with pytest.raises(ValueError, match="set the criterion's fill to 'mean'"):
        ActMatchExplainer(classifier=lite0, unet=net, mode="amortized", fitting=fitting, amortized_stages=[Scan(), BorderFree()])


def test_a_band_free_cut_after_the_scan_leaves_the_border_or_the_mask(lite0):
    """BorderFree after a pass: each mask is either the scan's or a cut without the border band, at
    most 1.5 × its area, that keeps the label confidently (checked by hand)."""
    from actmatch.explainers.masks import border_band

    images = _photos()
    scanned = _explainer(lite0, 0.9, [Scan(areas=AREAS, min_area=MIN_AREA)]).explain(images)
    band_free = _explainer(lite0, 0.9, [Scan(areas=AREAS, min_area=MIN_AREA), BorderFree(factor=1.5)]).explain(images)
    band = border_band(scanned.masks[:1])
    fill = torch.tensor(lite0.data_config["mean"]).view(1, 3, 1, 1)
    changed = 0
    for i in range(len(images)):
        before, after = scanned.masks[i : i + 1], band_free.masks[i : i + 1]
        if torch.equal(before, after):
            continue
        changed += 1
        assert not after[band].any() and before[band].any()
        assert float(after.mean()) <= 1.5 * float(before.mean()) + 1e-6
        with torch.no_grad():
            p_x = lite0(images[i : i + 1]).softmax(-1)[0]
            p_e = lite0(after * images[i : i + 1] + (1 - after) * fill).softmax(-1)[0]
        y = int(p_x.argmax())
        assert int(p_e.argmax()) == y and float(p_e[y]) >= 0.9 * float(p_x[y])
    assert changed == 1  # the espresso's scanned mask reaches into the band; the cat's does not
    assert band_free.passes["scan"] == scanned.passes["scan"]


class _Verdicts(Stage):
    """Records the criterion's verdicts on the pass's masks, as the stages after it read them."""

    name = "verdicts"

    def run(self, fit: FitState) -> None:
        self.seen = fit.kept_found.clone() if fit.kept_found is not None else None


def test_the_fill_part_of_a_robust_criterion_is_read_from_the_passs_own_logits(lite0):
    """AllOf([Confident, RobustOn]) after a pass: the fill part is answered from the logits of the
    pass's explanations, not classified again; the verdicts are the criterion's own (asked mask by
    mask with the same backgrounds), one image fewer per pass image."""
    criterion, verdicts = AllOf([Confident(0.9), RobustOn(n=4)]), _Verdicts()
    explainer = _explainer(lite0, 0.9, None)
    explainer.fitting.criterion, explainer.amortized_stages = criterion, explainer.checked_amortized_stages([verdicts])
    images = _photos()
    masks, soft = explainer.ranked_masks(images)
    masks[0] = 1  # the whole photo: the fill keeps the label, so the backgrounds are asked too
    torch.manual_seed(1)
    _, logits, _, passes = explainer.refined(images, masks, soft)
    torch.manual_seed(1)  # the same backgrounds, drawn image by image
    by_hand: dict[str, int] = {}
    counted, target = CountedClassifier(lite0, by_hand, "accepted"), logits.argmax(-1)
    one = [slice(i, i + 1) for i in range(len(images))]
    expected = torch.cat([criterion.accepts(counted, images[i], masks[i], logits[i], target[i]) for i in one])
    assert torch.equal(verdicts.seen, expected) and bool(expected[0])
    assert by_hand["accepted"] >= len(images) + 4  # by hand: a fill image per mask, 4 backgrounds where it keeps
    # the pass: its explanations once (the fill images) and the same backgrounds, where asking the
    # criterion after it would classify len(images) + by_hand["accepted"]
    assert passes["accepted"] == by_hand["accepted"]
