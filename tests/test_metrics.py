"""Metrics on hand-made cases with known answers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from actmatch.explainers import metrics as M
from actmatch.explainers.backgrounds import BackgroundSampler, gaussian_blur, make_fill


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
    assert M.pointing_game(saliency, gt, tolerance=0).tolist() == [True, False]
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


def test_pointing_game_uses_torchray_disk_tolerance():
    """A hit when a ground-truth pixel is at distance² < 15² from the maximum (TorchRay's rule)."""
    gt = torch.zeros(3, 1, 64, 64)
    gt[..., :10, :10] = 1  # nearest ground-truth pixel to (y, x) is (9, 9)
    saliency = torch.zeros(3, 1, 64, 64)
    saliency[0, 0, 9 + 14, 9] = 1  # 14 px straight below: inside the disk
    saliency[1, 0, 9 + 10, 9 + 11] = 1  # 10² + 11² = 221 < 225: inside
    saliency[2, 0, 9 + 11, 9 + 11] = 1  # 11² + 11² = 242 >= 225: inside the square, outside the disk
    assert M.pointing_game(saliency, gt).tolist() == [True, True, False]
    assert M.pointing_game(saliency, gt, tolerance=0).tolist() == [False, False, False]
    with pytest.raises(ValueError, match="tolerance"):
        M.pointing_game(saliency, gt, tolerance=-1)


# --------------------------------------------------------------------------------------------------
# The per-image implementations before issue 13, verbatim: the batched functions must give their numbers.
def _reference_batched(fn, n: int, batch: int):
    return torch.cat([fn(s, min(n, s + batch)) for s in range(0, n, batch)])


@torch.no_grad()
def reference_perturbation_curve(classifier, images, saliency, target=None, mode="deletion", steps=50, batch=32, seed=0):
    target = M._target(classifier, images, target)
    b, _, h, w = images.shape
    ranks = torch.empty(b, h * w, dtype=torch.long, device=images.device)
    ranks.scatter_(1, M.rank_pixels(saliency, seed), torch.arange(h * w, device=images.device).expand(b, -1))
    counts = torch.ceil(torch.linspace(0, 1, steps + 1, device=images.device) * h * w).long()  # (S,)
    if mode == "insertion":
        start, finish = gaussian_blur(images), images
    else:
        start, finish = images, make_fill(images, "mean", classifier.data_config["mean"])
    curves = []
    for i in range(b):
        def probs(lo, hi, i=i):
            changed = (ranks[i][None] < counts[lo:hi, None]).float().view(-1, 1, h, w)  # (n, 1, H, W)
            x = changed * finish[i : i + 1] + (1 - changed) * start[i : i + 1]
            return classifier(x).softmax(-1)[:, target[i]]

        curves.append(_reference_batched(probs, steps + 1, batch))
    return torch.stack(curves)


@torch.no_grad()
def reference_robustness(classifier, images, masks, target=None, backgrounds=16, kinds=("solid", "uniform", "gaussian"), pool=None, batch=32, seed=0):
    target = M._target(classifier, images, target)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        b, _, h, w = images.shape
        sources = list(kinds) + (["pool"] if pool is not None and len(pool) else [])
        samplers = {k: BackgroundSampler([k]) for k in kinds}
        if pool is not None and len(pool):
            pool = torch.nn.functional.interpolate(pool.to(images), size=(h, w), mode="bilinear", align_corners=False)
        out = []
        for i in range(b):
            reps = images[i : i + 1].expand(backgrounds, -1, -1, -1)
            bg = torch.empty_like(reps)
            for j in range(backgrounds):
                kind = sources[j % len(sources)]
                bg[j] = pool[(j // len(sources)) % len(pool)] if kind == "pool" else samplers[kind](reps[j : j + 1])[0]
            planted = masks[i : i + 1] * reps + (1 - masks[i : i + 1]) * bg
            labels = _reference_batched(lambda lo, hi: classifier(planted[lo:hi]).argmax(-1), backgrounds, batch)
            out.append((labels == target[i]).float().mean())
        return torch.stack(out)


@torch.no_grad()
def reference_smallest_sufficient_area(masker, images, saliency, target=None, grid=M.SUFFICIENCY_GRID, refine=4, seed=0):
    target = M._target(masker.classifier, images, target)
    grid_t = torch.tensor(sorted(set(grid) | {1.0}), device=images.device)
    out = []
    for i in range(images.shape[0]):
        x, s, y = images[i : i + 1], saliency[i : i + 1], target[i]
        n = len(grid_t)
        masks = M.top_fraction_mask(s.expand(n, -1, -1, -1), grid_t, seed)
        kept = masker(x.expand(n, -1, -1, -1), masks).argmax(-1) == y
        first = int(kept.float().argmax()) if kept.any() else n - 1
        hi = float(grid_t[first])
        lo = float(grid_t[first - 1]) if first > 0 else 0.0
        for _ in range(refine if kept.any() else 0):
            mid = (lo + hi) / 2
            if bool(masker(x, M.top_fraction_mask(s, mid, seed)).argmax(-1) == y):
                hi = mid
            else:
                lo = mid
        out.append(hi)
    return torch.tensor(out, device=images.device)


def reference_score(classifier, image, saliency, target, area, pool, steps=50, backgrounds=16, tau=0.5, seed=0):
    """The benchmark's per-map ``_score`` before issue 13 (plus kept at the fixed areas)."""
    fill, ad = M.PixelFill(classifier), M.DeactivationMasker(classifier, tau)
    cut = M.top_fraction_mask(saliency, area, seed)
    curve = {"steps": steps, "seed": seed}
    return {
        "area": M.mask_area(cut).item(),
        "kept_equal_area": int(M.label_kept(fill, image, cut, target).item()),
        "confidence_delta_equal_area": M.confidence_delta(fill, image, cut, target).item(),
        "kept_equal_area_convad": int(M.label_kept(ad, image, cut, target).item()),
        **{f"kept_at_{round(100 * f)}": int(M.label_kept(fill, image, M.top_fraction_mask(saliency, f, seed), target).item())
           for f in M.FIXED_AREAS},
        "robustness": reference_robustness(classifier, image, cut, target, backgrounds, pool=pool, seed=seed).item(),
        "smallest_sufficient_area": reference_smallest_sufficient_area(fill, image, saliency, target, seed=seed).item(),
        "insertion_auc": M._auc(reference_perturbation_curve(classifier, image, saliency, target, "insertion", **curve)).item(),
        "deletion_auc": M._auc(reference_perturbation_curve(classifier, image, saliency, target, "deletion", **curve)).item(),
    }  # fmt: skip


class Counting(nn.Module):
    """Wraps a classifier and counts the images it classifies."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier, self.data_config, self.images = classifier, classifier.data_config, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.images += x.shape[0]
        return self.classifier(x)


@pytest.fixture(scope="module")
def tiny():
    """A seeded random timm ``test_resnet`` with a sharpened head (clear top-1), images and maps."""
    from actmatch.explainers.classifier import load_classifier

    torch.manual_seed(0)
    clf = load_classifier("test_resnet", pretrained=False)
    with torch.no_grad():
        clf.model.get_classifier().weight.mul_(40)  # spread the logits: no near-ties in argmax
    images = torch.rand(2, 3, 40, 40)
    images[1, :, 10:30, 10:30] = 1.0  # a bright square: some maps find it
    smooth = torch.nn.functional.avg_pool2d(torch.rand(3, 1, 40, 40), 9, stride=1, padding=4)
    binary = (torch.rand(1, 1, 40, 40) > 0.7).float()  # ties: the seeded tie-break matters
    maps = torch.cat([smooth, binary])  # (4, 1, 40, 40)
    pool = torch.rand(3, 3, 32, 32)
    return clf, images, maps, pool


@pytest.mark.parametrize("mode", ["insertion", "deletion"])
def test_batched_curve_equals_the_per_image_reference(tiny, mode):
    clf, images, maps, _ = tiny
    saliency = maps[:2]
    new = M.perturbation_curve(clf, images, saliency, mode=mode, steps=7, batch=5)
    old = reference_perturbation_curve(clf, images, saliency, mode=mode, steps=7, batch=32)
    torch.testing.assert_close(new, old, rtol=1e-4, atol=1e-5)


def test_batched_robustness_equals_the_per_image_reference(tiny):
    clf, images, maps, pool = tiny
    masks = M.top_fraction_mask(maps[1:3], 0.3)
    new = M.robustness(clf, images, masks, backgrounds=9, pool=pool, batch=4, seed=3)
    old = reference_robustness(clf, images, masks, backgrounds=9, pool=pool, seed=3)
    assert torch.equal(new, old)


@pytest.mark.parametrize("masker", ["fill", "convad"])
def test_batched_sufficiency_equals_the_per_image_reference(tiny, masker):
    clf, images, maps, _ = tiny
    m = M.PixelFill(clf) if masker == "fill" else M.DeactivationMasker(clf)
    saliency = maps[2:]
    assert torch.equal(M.smallest_sufficient_area(m, images, saliency, batch=6), reference_smallest_sufficient_area(m, images, saliency))


def test_score_maps_equals_the_per_map_reference_and_counts_its_passes(tiny):
    clf, images, maps, pool = tiny
    for i in range(2):
        image = images[i : i + 1]
        logits = clf(image)
        target = logits.argmax(-1)
        counting, counter = Counting(clf), M.PassCounter()
        new = M.score_maps(counting, image, maps, target, 0.15, logits=logits, steps=6, backgrounds=8, pool=pool, chunk=16, counter=counter)
        reference = Counting(clf)
        old = [reference_score(reference, image, maps[j : j + 1], target, 0.15, pool, steps=6, backgrounds=8) for j in range(len(maps))]
        for key in M.SCORE_KEYS:
            got = new[key].tolist()
            want = [o[key] for o in old]
            assert got == pytest.approx(want, rel=1e-4, abs=1e-5), key
        # the counter sees every image the classifier sees, ConvAD's included (those go through
        # the unwrapped classifier's hooks, so the wrapper counts them too)
        assert counter.images == counting.images and counter.forwards >= counter.images // 16
        m, scan = len(maps), len(set(M.SUFFICIENCY_GRID) | set(M.FIXED_AREAS)) - 1
        plain = m * (1 + scan + 2 * (6 - 1) + 8) + 2
        assert plain + m <= counter.images <= plain + m + 4 * m  # + ConvAD cuts + bisections
        assert counter.images < reference.images  # shared and known copies are not classified again
        assert counter.floor > 0 and counter.seconds > 0


def test_classify_packs_jobs_into_full_chunks():
    seen = []

    def forward(x):
        seen.append(len(x))
        return x.flatten(1)[:, :2]

    jobs = [M.Job(n, lambda lo, hi, n=n: torch.full((hi - lo, 3, 2, 2), float(n)) + torch.arange(lo, hi).view(-1, 1, 1, 1))
            for n in (5, 3, 9)]  # fmt: skip
    counter = M.PassCounter()
    out = M.classify(forward, jobs, chunk=4, counter=counter)
    assert seen == [4, 4, 4, 4, 1] and counter.images == 17 and len(counter.full_chunk_seconds_per_image) == 4
    for job, logits in zip(jobs, out):
        torch.testing.assert_close(logits, forward(job.make(0, job.n)))
    with pytest.raises(ValueError, match="chunk"):
        M.classify(forward, jobs, chunk=0)


# --------------------------------------------------------------------------------------------------
# statistics over images
def test_bootstrap_interval_holds_the_statistic_and_is_reproducible():
    from actmatch.explainers.statistics import bootstrap_ci

    rng = torch.Generator().manual_seed(0)
    values = torch.rand(40, generator=rng).tolist()
    low, high = bootstrap_ci(values)
    mean = sum(values) / len(values)
    assert min(values) <= low < mean < high <= max(values)
    assert bootstrap_ci(values) == (low, high) and bootstrap_ci(values, seed=1) != (low, high)
    wide = bootstrap_ci(values[:10])
    assert wide[1] - wide[0] > high - low  # fewer images, wider interval
    m_low, m_high = bootstrap_ci(values, stat="median", level=0.5)
    assert m_low <= sorted(values)[20] <= m_high
    assert bootstrap_ci([0.3, float("nan"), 0.3]) == (0.3, 0.3)
    assert all(math.isnan(v) for v in bootstrap_ci([]))
    with pytest.raises(ValueError, match="statistic"):
        bootstrap_ci(values, stat="mode")
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci(values, level=95)


def test_paired_comparison_counts_and_chooses_its_test():
    from scipy import stats

    from actmatch.explainers.statistics import paired_comparison

    same = paired_comparison([1, 0, 1], [1, 0, 1])
    assert same == {"n": 3, "wins": 0, "ties": 3, "losses": 0, "p_value": 1.0, "test": "none"}
    kept = paired_comparison([1] * 12 + [0] * 3 + [1] * 5, [0] * 12 + [1] * 3 + [1] * 5)  # binary: signs only
    assert (kept["wins"], kept["ties"], kept["losses"], kept["test"]) == (12, 5, 3, "sign")
    assert kept["p_value"] == pytest.approx(stats.binomtest(12, 15).pvalue)
    rng = torch.Generator().manual_seed(1)
    b = torch.rand(30, generator=rng)
    a = b + 0.05 + 0.02 * torch.rand(30, generator=rng)
    better = paired_comparison(a.tolist(), b.tolist())
    assert better["test"] == "wilcoxon" and better["wins"] == 30 and better["p_value"] < 1e-5
    worse = paired_comparison(a.tolist(), b.tolist(), higher_is_better=False)  # e.g. deletion AUC
    assert worse["losses"] == 30 and worse["p_value"] == pytest.approx(better["p_value"])
    few = paired_comparison([0.1, 0.5, 0.3], [0.2, 0.1, float("nan")])  # NaN pair dropped, 2 left: sign test
    assert few["n"] == 2 and few["test"] == "sign" and few["p_value"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same images"):
        paired_comparison([1, 2], [1])


def test_paired_comparison_sees_ties_through_float32_noise():
    """Values on a grid tie in |d|; float32 noise must not hide that (a run and its results.csv agree)."""
    from actmatch.explainers.statistics import paired_comparison

    grid = [0.6, 0.0475, 0.1, 0.05, 0.2, 0.03, 0.6, 0.0475, 0.15, 0.01, 0.3, 0.02]
    a = [0.0475, 0.01, 0.03, 0.02, 0.0475, 0.01, 0.05, 0.01, 0.0475, 0.03, 0.1, 0.05]
    noisy = [float(torch.tensor(v, dtype=torch.float32)) for v in grid]
    assert noisy != grid  # 0.6 as float32 is 0.60000002...
    as_stored = paired_comparison(a, [float(f"{v:.6g}") for v in noisy], higher_is_better=False)
    assert paired_comparison(a, noisy, higher_is_better=False) == as_stored
    assert paired_comparison(a, grid, higher_is_better=False) == as_stored
