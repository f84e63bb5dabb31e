"""Backward elimination of kept masks (prune_cells), the Prune stage and the staged criterion test it reads."""

from __future__ import annotations

import pytest
import torch

from actmatch.explainers.backgrounds import make_fill
from actmatch.explainers.classifier import load_classifier
from actmatch.explainers.criteria import AllOf, RobustOn, Sufficient
from actmatch.explainers.fitting import AreaContinuation
from actmatch.explainers.module import ActMatchExplainer
from actmatch.explainers.pruning import prune_cells
from actmatch.explainers.stages import FitState, Prune, Scan
from actmatch.explainers.unet import MaskUNet

H, W = 20, 28  # not multiples of the cell sizes: the padded border cells must work too


def _setup(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    image, fill = torch.ones(1, 3, H, W), torch.zeros(1, 3, H, W)  # explanation == mask
    mask = torch.zeros(1, 1, H, W)
    mask[..., 2:18, 3:25] = 1
    soft = torch.rand(1, 1, H, W, generator=generator)
    return image, fill, mask, soft, generator


def on_masks(kept, image, fill):
    """The mask test prune_cells takes, from a test of explanations m ⊙ image + (1 − m) ⊙ fill."""
    return lambda masks: kept(masks * image + (1 - masks) * fill)


class FixedBackgrounds(RobustOn):
    """RobustOn on given backgrounds (n, 3, H, W) instead of drawn ones."""

    def __init__(self, backgrounds: torch.Tensor, **kwargs) -> None:
        super().__init__(n=backgrounds.shape[0], **kwargs)
        self._fixed = backgrounds

    def backgrounds(self, image: torch.Tensor) -> torch.Tensor:
        return self._fixed


def _reference(kept, image, fill, mask, soft, cell):
    """One removal at a time, in the documented order: the definition prune_cells must match."""
    current = mask.clone()
    cells = []
    for top in range(0, H, cell):
        for left in range(0, W, cell):
            block = (slice(None), slice(None), slice(top, top + cell), slice(left, left + cell))
            inside = current[block] > 0
            if inside.any():
                cells.append((float(soft[block][inside].mean()), len(cells), block))
    for _, _, block in sorted(cells, key=lambda item: (item[0], item[1])):
        trial = current.clone()
        trial[block] = 0
        if trial.sum() > 0 and kept(trial * image + (1 - trial) * fill)[0]:
            current = trial
    return current


@pytest.mark.parametrize("cell", [3, 4, 7])
@pytest.mark.parametrize("batch", [1, 3, 8])
def test_batched_pruning_equals_one_removal_at_a_time(cell, batch):
    image, fill, mask, soft, generator = _setup(cell)
    weights = torch.randn(H, W, generator=generator) + 0.3  # positive and negative evidence: order matters
    threshold = 0.5 * float((mask[0, 0] * weights).sum())

    def kept(explanations):
        return (explanations[:, 0] * weights).sum((-2, -1)) > threshold

    assert kept(mask * image + (1 - mask) * fill)[0]
    pruned, classified = prune_cells(on_masks(kept, image, fill), mask, soft, cell, batch)
    expected = _reference(kept, image, fill, mask, soft, cell)
    assert torch.equal(pruned, expected)
    assert kept(pruned * image + (1 - pruned) * fill)[0]
    assert (pruned <= mask).all() and pruned.shape == mask.shape
    assert ((pruned == 0) | (pruned == 1)).all()
    assert classified >= 1


def test_pruning_keeps_exactly_the_needed_evidence():
    """The label needs two small regions: pruning on 2-px cells keeps those cells and nothing else."""
    image, fill, mask, soft, _ = _setup()

    def kept(explanations):
        return (explanations[:, 0, 4:6, 6:8] > 0).all((-2, -1)) & (explanations[:, 0, 12:14, 20:22] > 0).all((-2, -1))

    pruned, _ = prune_cells(on_masks(kept, image, fill), mask, soft, cell=2)
    needed = torch.zeros_like(mask)
    needed[..., 4:6, 6:8] = needed[..., 12:14, 20:22] = 1
    assert torch.equal(pruned, needed)


def test_pruning_never_empties_the_mask():
    image, fill, mask, soft, _ = _setup()
    pruned, _ = prune_cells(lambda m: torch.ones(m.shape[0], dtype=torch.bool), mask, soft, cell=4)
    assert pruned.sum() > 0
    assert (pruned <= mask).all()


def test_pruning_tries_the_least_probable_cells_first():
    """Either of two cells keeps the label alone: the one the U-Net ranks higher survives."""
    image, fill, mask, _, _ = _setup()
    soft = torch.full((1, 1, H, W), 0.1)
    soft[..., 12:16, 16:20] = 0.9  # the U-Net is confident here

    def kept(explanations):
        return (explanations[:, 0, 4:8, 4:8] > 0).all((-2, -1)) | (explanations[:, 0, 12:16, 16:20] > 0).all((-2, -1))

    pruned, _ = prune_cells(on_masks(kept, image, fill), mask, soft, cell=4)
    assert pruned[..., 12:16, 16:20].all() and pruned.sum() == 16


def test_border_first_removes_a_frame_the_centre_can_replace():
    """The label survives on the top border row of cells or on a centre block; the U-Net ranks the
    border higher. Pruned by probability, the border stays; border first, the centre does."""
    image, fill, mask, _, _ = _setup()
    mask = torch.ones(1, 1, H, W)
    soft = torch.full((1, 1, H, W), 0.2)
    soft[..., :4, :] = 0.9

    def kept(explanations):
        return (explanations[:, 0, :4, :].mean((-2, -1)) > 0.99) | (explanations[:, 0, 8:12, 12:16] > 0).all((-2, -1))

    by_soft, _ = prune_cells(on_masks(kept, image, fill), mask, soft, cell=4)
    border_first, _ = prune_cells(on_masks(kept, image, fill), mask, soft, cell=4, border_first=True)
    assert by_soft[..., :4, :].all() and by_soft.sum() == 4 * W
    assert border_first[..., 8:12, 12:16].all() and border_first.sum() == 16


def test_bad_pruning_settings_are_named():
    with pytest.raises(ValueError, match="cell sizes >= 1"):
        Prune(cells=[8, 0])
    with pytest.raises(ValueError, match="Prune checks removals with the fill only"):
        AreaContinuation(stages=[Prune([8])], select="smallest_robust")
    with pytest.raises(ValueError, match="1 <= n <= 1024"):
        RobustOn(n=-1)
    # robust pruning is allowed
    AreaContinuation(stages=[Prune([8])], select="smallest_robust", criterion=AllOf([Sufficient(), RobustOn(n=4)]))
    image, fill, mask, soft, _ = _setup()
    with pytest.raises(ValueError, match="cell >= 1"):
        prune_cells(lambda m: torch.ones(m.shape[0], dtype=torch.bool), mask, soft, cell=0)


def test_pruned_fit_masks_are_kept_subsets_of_the_unpruned_masks(rng_images):
    torch.manual_seed(0)  # this classifier keeps its label on small cuts of these images
    tiny_classifier = load_classifier("resnet10t", pretrained=False, num_classes=5)

    def fit(prune):
        strategy = AreaContinuation(select="smallest_kept", stages=[Scan(8)] + ([Prune(prune)] if prune else []))
        explainer = ActMatchExplainer(
            classifier=tiny_classifier, unet=MaskUNet(width=4, depth=2, working_size=32), steps=4, restarts=1, fitting=strategy
        )
        return explainer.fit_images(rng_images, seed=2)

    plain, pruned = fit([]), fit([8, 4])
    assert plain.label_kept.all()
    assert pruned.label_kept.all()
    assert (pruned.masks <= plain.masks).all()
    assert (pruned.area < plain.area).any()  # a random classifier does not need every cell
    assert ((pruned.masks == 0) | (pruned.masks == 1)).all() and pruned.masks.shape == plain.masks.shape


def test_a_fit_that_never_kept_the_label_is_scanned_up_to_a_kept_cut(rng_images, monkeypatch):
    """The fit's mask loses the label: the scan cuts the ranking above it, up to the whole image."""
    tiny_classifier = load_classifier("resnet10t", pretrained=False, num_classes=5)
    explainer = ActMatchExplainer(
        classifier=tiny_classifier, unet=MaskUNet(width=4, depth=2, working_size=32), steps=2, restarts=1
    )
    # class 0 needs texture (pixel std > 0.2), the flat fill is class 1
    monkeypatch.setattr(
        tiny_classifier, "forward", lambda x: torch.stack([x.flatten(1).std(1) - 0.2, torch.zeros(x.shape[0])], 1)
    )
    logits = tiny_classifier(rng_images)
    target = logits.argmax(-1)
    assert target.tolist() == [0, 0]
    soft = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(3))
    masks = torch.zeros(2, 1, 64, 64)
    masks[..., :2, :2] = 1  # a tiny mask: the explanation is almost the fill
    lost = ~explainer.evaluate(rng_images, masks).label_kept
    assert lost.all()
    Scan(8).run(FitState(tiny_classifier, rng_images, logits, target, masks, soft, Sufficient(), kept_found=~lost))
    result = explainer.evaluate(rng_images, masks)
    assert result.label_kept.all()
    assert ((masks == 0) | (masks == 1)).all() and (result.area < 1).all()  # a cut, not the whole image


def test_pruning_on_own_backgrounds_keeps_the_evidence_the_fill_happens_to_supply(rng_images, monkeypatch):
    """Where the fill equals the image (block B), pruning with the fill drops B: the fill supplies
    it. With a robust criterion the label must also survive random backgrounds, so B stays."""
    tiny_classifier = load_classifier("resnet10t", pretrained=False, num_classes=5)
    image = rng_images[:1].clone()
    mean = torch.tensor(tiny_classifier.data_config["mean"]).view(1, 3, 1, 1)
    image[..., 40:56, 40:56] = mean  # block B: the mean fill reproduces it
    a, b = (..., slice(8, 24), slice(8, 24)), (..., slice(40, 56), slice(40, 56))

    def classify(x):  # class 0 needs blocks A and B exactly as in the image
        same = ((x[a] - image[a]).flatten(1).abs().amax(1) < 1e-6) & ((x[b] - image[b]).flatten(1).abs().amax(1) < 1e-6)
        return torch.stack([same.float() * 2 - 1, torch.zeros(x.shape[0])], 1)

    monkeypatch.setattr(tiny_classifier, "forward", classify)
    logits = tiny_classifier(image)
    target = logits.argmax(-1)
    soft = torch.rand(1, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    pruned = {}
    for backgrounds in (0, 4):
        criterion = AllOf([Sufficient(), RobustOn(n=backgrounds)]) if backgrounds else Sufficient()
        masks = torch.ones(1, 1, 64, 64)
        Prune(cells=[8]).run(FitState(tiny_classifier, image, logits, target, masks, soft.clone(), criterion))
        pruned[backgrounds] = masks
    needed_a, needed_b = torch.zeros(1, 1, 64, 64), torch.zeros(1, 1, 64, 64)
    needed_a[a], needed_b[b] = 1, 1
    assert torch.equal(pruned[0], needed_a)  # the fill carries B
    assert torch.equal(pruned[4], needed_a + needed_b)  # the own backgrounds do not


def test_pruning_backgrounds_are_drawn_from_the_criterions_kinds(rng_images, monkeypatch):
    """The fit's own pruning backgrounds are of the RobustOn's kinds, and only those."""
    from actmatch.explainers.backgrounds import BackgroundSampler

    drawn = []
    sample_kind = BackgroundSampler.sample_kind
    monkeypatch.setattr(
        BackgroundSampler, "sample_kind", lambda self, images, kind: drawn.append(kind) or sample_kind(self, images, kind)
    )
    tiny_classifier = load_classifier("resnet10t", pretrained=False, num_classes=5)
    image = rng_images[:1]
    logits = tiny_classifier(image)

    def prune(robust):
        state = FitState(
            tiny_classifier,
            image,
            logits,
            logits.argmax(-1),
            torch.ones(1, 1, 64, 64),
            torch.rand(1, 1, 64, 64),
            AllOf([Sufficient(), robust]),
        )
        Prune(cells=[32]).run(state)

    prune(RobustOn(kinds=["solid", "solid"], n=4))
    assert drawn and set(drawn) == {"solid"}
    drawn.clear()  # cycled: background j is of kind kinds[j % 2], every kind covered
    prune(RobustOn(kinds=["solid", "uniform"], n=4, order="cycle"))
    assert drawn == ["solid", "uniform", "solid", "uniform"]
    with pytest.raises(ValueError, match="kinds takes background kinds"):
        RobustOn(kinds=["checkerboard"])
    with pytest.raises(ValueError, match="order is 'random' or 'cycle'"):
        RobustOn(order="sorted")


@pytest.mark.parametrize("rate", [1.0, 0.75])
def test_staged_kept_test_reads_like_testing_every_background(rng_images, monkeypatch, rate):
    """AllOf's staged test (fill first, then backgrounds in stages, only up to the first lost
    mask) agrees with testing every mask on every background up to the first lost one, and the
    pruned mask is the same; it classifies fewer images when removals fail."""
    tiny_classifier = load_classifier("resnet10t", pretrained=False, num_classes=2)
    image = rng_images[:1].clamp(0.4, 1.0)  # bright: class 0 (mean > 0.45)
    classified = []

    def classify(x):  # class 0 iff the image is bright on average
        classified.append(x.shape[0])
        return torch.stack([x.flatten(1).mean(1) - 0.45, torch.zeros(x.shape[0])], 1)

    monkeypatch.setattr(tiny_classifier, "forward", classify)
    target, logits_x = torch.tensor([0]), classify(image)
    dark = torch.full_like(image, 0.2)  # two dark backgrounds: removals fail on them first
    own = torch.cat([dark, dark, torch.rand(4, *image.shape[1:])])
    fill = make_fill(image, "mean", tiny_classifier.data_config["mean"])
    backgrounds = torch.cat([fill, own])
    criterion = AllOf([Sufficient(), FixedBackgrounds(own, rate=rate)])

    def every_background(masks):  # the unstaged reference: (n,) kept, then cut at the first lost
        planted = masks[:, None] * image[None] + (1 - masks[:, None]) * backgrounds[None]
        labels = classify(planted.flatten(0, 1)).argmax(-1).view(masks.shape[0], -1)
        kept = (labels[:, 0] == target) & ((labels[:, 1:] == target).float().mean(1) >= rate)
        return torch.arange(len(kept)) < (int(kept.float().argmin()) if not kept.all() else len(kept))

    staged = criterion.bind(tiny_classifier, image, logits_x, target).accepted_prefix
    generator = torch.Generator().manual_seed(3)
    for _ in range(4):  # cumulative removals from a full mask, as prune_cells tests them
        masks = torch.ones(8, 1, 64, 64)
        for j in range(8):
            r, c = torch.randint(0, 56, (2,), generator=generator).tolist()
            masks[j:, :, r : r + 16, c : c + 16] = 0
        assert torch.equal(staged(masks), every_background(masks))
    soft = torch.rand(1, 1, 64, 64, generator=generator)
    classified.clear()
    pruned_staged, _ = prune_cells(staged, torch.ones(1, 1, 64, 64), soft, cell=16)
    staged_images = sum(classified)
    classified.clear()
    pruned_reference, _ = prune_cells(every_background, torch.ones(1, 1, 64, 64), soft, cell=16)
    assert torch.equal(pruned_staged, pruned_reference)
    assert 0.5 < pruned_staged.mean() < 1  # some cells went, some removals failed ...
    assert staged_images < sum(classified)  # ... and the failed ones cost less


def test_check_margin_keeps_the_cells_a_margin_on_own_backgrounds_needs(rng_images, monkeypatch):
    """Class 0 wins by (mean brightness − 0.45): on a dark background of the fit's own, a margin
    of 0.05 needs more of the bright image kept than top-1 does."""
    tiny_classifier = load_classifier("resnet10t", pretrained=False, num_classes=2)
    image = rng_images[:1].clamp(0.4, 1.0)
    monkeypatch.setattr(
        tiny_classifier, "forward", lambda x: torch.stack([x.flatten(1).mean(1) - 0.45, torch.zeros(x.shape[0])], 1)
    )
    soft = torch.rand(1, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    pruned = {}
    for margin in (0.0, 0.05):
        criterion = AllOf([Sufficient(), FixedBackgrounds(torch.full_like(image, 0.2), margin=margin)])
        kept = criterion.bind(tiny_classifier, image, tiny_classifier(image), torch.tensor([0])).accepted_prefix
        pruned[margin] = prune_cells(kept, torch.ones(1, 1, 64, 64), soft, cell=8)[0]
    on_dark = {margin: (m * image + (1 - m) * 0.2).mean().item() for margin, m in pruned.items()}
    assert 0.45 < on_dark[0.0] < 0.5 <= on_dark[0.05]  # top-1 is kept by both, the margin only by one
    assert pruned[0.05].mean() > pruned[0.0].mean()
    with pytest.raises(ValueError, match="margin must be >= 0"):
        RobustOn(margin=-1.0)
