"""Every metric of ``actmatch.evaluation.metrics`` against an answer worked out independently.

Each expected value is derived here, on paper or from another library (numpy, scipy, PIL,
Quantus), never by calling the code under test or its helpers (``pixel_ranks``, ``cut``,
``keep_count``, ``_auc``, ``_bisect``, ``make_fill``). The classifiers are tiny and hand-built so
their outputs are known exactly, and their mean colour is NOT zero, so a mean fill, a black fill
and a fill of zeros give different answers.

Two rules of the code are part of the specification and are used below as such:

* the top-k cut keeps k = round(float32(f) · N) pixels, ties to even (``torch.round``);
* perturbation curves change ⌈i · N / S⌉ pixels at step i of S.
"""

from __future__ import annotations

import math
import warnings
from fractions import Fraction

import numpy as np
import pytest
import torch
from torch import nn

from actmatch.evaluation import metrics as M
from actmatch.evaluation.batching import Job, PassCounter, classify
from actmatch.evaluation.families import Exam, ExamDraws, Family
from actmatch.evaluation.maskers import PixelFill

#: the hand-built models' mean colour: not grey, not black, not zero
MEAN = (0.3, 0.4, 0.5)
#: per-channel weights of :class:`WeightedColour`
WEIGHTS = (0.6, 0.1, 0.3)
#: the score v(c) = Σ_c w_c c_c of the mean colour: 0.6·0.3 + 0.1·0.4 + 0.3·0.5
V_MEAN = 0.37


def v(colour) -> float:
    """The per-pixel score of :class:`WeightedColour` for an RGB colour."""
    return sum(w * c for w, c in zip(WEIGHTS, colour))


class WeightedColour(nn.Module):
    """Two classes, p(class 1) = mean over pixels of v(pixel) = Σ_c w_c · mean_c(x), exactly:
    the logits are (log(1 − p), log p), whose softmax is (1 − p, p)."""

    data_config = {"mean": MEAN}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = torch.tensor(WEIGHTS, dtype=x.dtype).view(1, 3, 1, 1)
        p = (x * w).sum(1).mean((1, 2)).clamp(1e-6, 1 - 1e-6)
        return torch.stack([torch.log1p(-p), torch.log(p)], 1)


class RedCount(nn.Module):
    """Class 1 iff at least ``need`` pixels are saturated red (r > 0.65, g < 0.35, b < 0.35).

    The mean colour (0.3, 0.4, 0.5) and black are not red, so with either fill the label depends
    only on how many red pixels the cut keeps."""

    data_config = {"mean": MEAN}

    def __init__(self, need: int) -> None:
        super().__init__()
        self.need = need

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        red = ((x[:, 0] > 0.65) & (x[:, 1] < 0.35) & (x[:, 2] < 0.35)).flatten(1).sum(1).float()
        return torch.stack([torch.zeros_like(red), red - (self.need - 0.5)], 1)


class DarkerThanHalf(nn.Module):
    """Class 1 iff the mean brightness (over channels and pixels) is below 0.5."""

    data_config = {"mean": MEAN}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        brightness = x.mean((1, 2, 3))
        return torch.stack([torch.zeros_like(brightness), 50 * (0.5 - brightness)], 1)


def explicit_map(order: list[int], h: int, w: int) -> torch.Tensor:
    """(1, 1, H, W) map whose pixel ``order[r]`` (raster index) has rank r: distinct values, no ties."""
    values = torch.zeros(h * w)
    for rank, index in enumerate(order):
        values[index] = float(h * w - rank)
    return values.view(1, 1, h, w)


def image_of(colours: list[tuple[float, float, float]], h: int, w: int) -> torch.Tensor:
    """(1, 3, H, W) image whose raster pixel i has colour ``colours[i]``."""
    return torch.tensor(colours, dtype=torch.float32).T.reshape(1, 3, h, w)


def rounded_count(fraction: float, pixels: int) -> int:
    """The cut's size: round(float32(f) · N), ties to even (Python's round is half-to-even)."""
    return round(float(np.float32(fraction) * np.float32(pixels)))


# --------------------------------------------------------------------------------------- the image
# A 4×4 image read in an explicit order: ranks 0–3 white (v = 1), ranks 4–7 grey 0.7 (v = 0.7),
# ranks 8–15 the mean colour itself (v = 0.37). The order is a fixed permutation of the pixels.
H4 = W4 = 4
ORDER = [5, 10, 0, 15, 3, 12, 6, 9, 1, 2, 4, 7, 8, 11, 13, 14]
COLOUR_BY_RANK = [(1.0, 1.0, 1.0)] * 4 + [(0.7, 0.7, 0.7)] * 4 + [MEAN] * 8
V_BY_RANK = [1.0] * 4 + [0.7] * 4 + [V_MEAN] * 8


@pytest.fixture()
def ranked():
    colours = [None] * 16
    for rank, index in enumerate(ORDER):
        colours[index] = COLOUR_BY_RANK[rank]
    return image_of(colours, H4, W4), explicit_map(ORDER, H4, W4)


def test_the_hand_model_is_what_it_says(ranked):
    image, _ = ranked
    p = WeightedColour()(image).softmax(-1)[0, 1].item()
    assert p == pytest.approx((4 * 1.0 + 4 * 0.7 + 8 * 0.37) / 16, abs=1e-6)  # 9.76 / 16 = 0.61
    assert v(MEAN) == pytest.approx(V_MEAN)


# ----------------------------------------------------------------------------- area, kept, delta
def test_mask_area():
    masks = torch.zeros(2, 1, 4, 5)
    masks[0, 0, :2, :3] = 1  # 6 of 20
    assert M.mask_area(masks).tolist() == pytest.approx([0.3, 0.0])


@pytest.fixture()
def nine_white():
    """9 white and 7 black pixels: p(x) = 9/16, label 1. The mask keeps 7 of the white ones."""
    image = torch.zeros(1, 3, 4, 4)
    image.view(1, 3, 16)[..., :9] = 1
    mask = torch.zeros(1, 1, 4, 4)
    mask.view(1, 1, 16)[..., :7] = 1
    return image, mask


def test_label_kept_and_confidence_delta_with_the_mean_fill(nine_white):
    image, mask = nine_white
    clf = WeightedColour()
    # mean fill: 7 white + 9 pixels of v = 0.37 -> p = (7 + 9 · 0.37) / 16 = 10.33 / 16 = 0.645625
    assert M.label_kept(PixelFill(clf), image, mask).tolist() == [True]
    assert M.confidence_delta(PixelFill(clf), image, mask).item() == pytest.approx(0.645625 - 0.5625, abs=1e-6)
    # black fill: p = 7/16 = 0.4375 -> the label is lost; a fill of zeros would give the same
    assert M.label_kept(PixelFill(clf, "black"), image, mask).tolist() == [False]
    assert M.confidence_delta(PixelFill(clf, "black"), image, mask).item() == pytest.approx(0.4375 - 0.5625, abs=1e-6)

    # the fill is the mean colour in RGB order: reversed it would give (7 + 9 · 0.43) / 16 = 0.679375
    class Reversed(WeightedColour):
        data_config = {"mean": MEAN[::-1]}

    assert M.confidence_delta(PixelFill(Reversed()), image, mask).item() == pytest.approx(0.679375 - 0.5625, abs=1e-6)
    # an explicit target: class 0 loses 0.083125 where class 1 gains it
    assert M.confidence_delta(PixelFill(clf), image, mask, torch.tensor([0])).item() == pytest.approx(-0.083125, abs=1e-6)
    assert M.label_kept(PixelFill(clf), image, mask, torch.tensor([0])).tolist() == [False]


# ----------------------------------------------------------------------------- deletion / insertion
def deletion_points(counts: list[int]) -> list[float]:
    """p after deleting the top-n pixels: (Σ_{rank ≥ n} v + n · 0.37) / 16."""
    return [(sum(V_BY_RANK[n:]) + n * V_MEAN) / 16 for n in counts]


def trapezoid(points: list[float]) -> float:
    """Area under points equally spaced on [0, 1]."""
    s = len(points) - 1
    return sum((a + b) / 2 for a, b in zip(points, points[1:])) / s


def test_deletion_curve_and_auc_by_hand(ranked):
    image, saliency = ranked
    clf = WeightedColour()
    curve = M.perturbation_curve(clf, image, saliency, mode="deletion", steps=4)
    # 4 pixels a step: p = 9.76/16, 7.24/16, 5.92/16, 5.92/16, 5.92/16
    expected = [0.61, 0.4525, 0.37, 0.37, 0.37]
    assert curve[0].tolist() == pytest.approx(expected, abs=1e-6)
    assert deletion_points([0, 4, 8, 12, 16]) == pytest.approx(expected)
    # trapezoid: (0.61/2 + 0.4525 + 0.37 + 0.37 + 0.37/2) / 4 = 1.6825 / 4
    assert M.deletion_auc(clf, image, saliency, steps=4).item() == pytest.approx(0.420625, abs=1e-6)
    # the same pixels in the reverse order: the mean-coloured ones first, nothing changes until rank 8
    reverse = explicit_map(ORDER[::-1], H4, W4)
    assert M.deletion_auc(clf, image, reverse, steps=4).item() == pytest.approx(2.2375 / 4, abs=1e-6)  # 0.559375
    # every pixel deleted: the mean fill ends the curve at v(mean) = 0.37 (a black fill: at 0)
    assert curve[0, -1].item() == pytest.approx(V_MEAN, abs=1e-6)


def test_deletion_to_the_heavy_blur_is_scipys_gaussian_filter(ranked):
    """fill="blur": the deleted pixels take the heavy blur of x (σ = max(1, short side / 20), a 3σ kernel,
    mirrored edges: scipy's gaussian_filter(mode="mirror", truncate=3)); step i deletes the top 4·i pixels."""
    from scipy.ndimage import gaussian_filter

    image, saliency = ranked
    clf = WeightedColour()
    blurred = torch.from_numpy(gaussian_filter(image[0].double().numpy(), sigma=(0, 1, 1), mode="mirror", truncate=3.0))
    order = torch.argsort(saliency.flatten(), descending=True)
    expected = []
    for n in (0, 4, 8, 12, 16):
        changed = torch.zeros(16, dtype=torch.bool)
        changed[order[:n]] = True
        e = torch.where(changed.view(1, 4, 4), blurred.float(), image[0])
        expected.append(clf(e[None]).softmax(-1)[0, 1].item())
    curve = M.perturbation_curve(clf, image, saliency, mode="deletion", steps=4, fill="blur")
    assert curve[0].tolist() == pytest.approx(expected, abs=1e-5)
    assert expected[-1] != pytest.approx(V_MEAN, abs=1e-3)  # not the mean fill's end
    assert M.deletion_auc(clf, image, saliency, steps=4, fill="blur").item() == pytest.approx(trapezoid(expected), abs=1e-5)
    with pytest.raises(ValueError, match="unknown deletion fill"):
        M.deletion_auc(clf, image, saliency, steps=4, fill="black")


def test_deletion_changes_ceil_of_i_n_over_s_pixels(ranked):
    """5 steps over 16 pixels: ⌈16·i/5⌉ = 0, 4, 7, 10, 13, 16 pixels deleted."""
    image, saliency = ranked
    curve = M.perturbation_curve(WeightedColour(), image, saliency, mode="deletion", steps=5)
    counts = [math.ceil(Fraction(16 * i, 5)) for i in range(6)]
    assert counts == [0, 4, 7, 10, 13, 16]
    assert curve[0].tolist() == pytest.approx(deletion_points(counts), abs=1e-6)
    assert M.deletion_auc(WeightedColour(), image, saliency, steps=5).item() == pytest.approx(
        trapezoid(deletion_points(counts)), abs=1e-6
    )


def test_the_deletion_auc_is_rise_reference_code_when_steps_divide_the_pixels():
    """RISE's ``CausalMetric`` (Petsiuk et al. 2018, reference code) on 6×8 pixels, 4 pixels a step,
    transcribed in numpy: ``n_steps = ceil(HW / step)``, the top ``step · i`` pixels replaced at step i,
    ``auc = (Σ c − c_0/2 − c_S/2) / S``; the fill is the mean colour, the class the top-1 of x."""
    gen = torch.Generator().manual_seed(3)
    image = torch.rand(1, 3, 6, 8, generator=gen)
    saliency = torch.rand(1, 1, 6, 8, generator=gen)  # distinct values: no tie-break involved
    clf = WeightedColour()
    step, hw = 4, 48
    x = image[0].numpy().reshape(3, hw).copy()
    finish = np.array(MEAN, dtype=np.float32)[:, None].repeat(hw, 1)
    order = np.argsort(-saliency.numpy().reshape(hw), kind="stable")
    n_steps = (hw + step - 1) // step
    c = int(clf(image).argmax())
    scores = []
    for i in range(n_steps + 1):
        scores.append(float(clf(torch.from_numpy(x.reshape(1, 3, 6, 8))).softmax(-1)[0, c]))
        coords = order[step * i : step * (i + 1)]
        x[:, coords] = finish[:, coords]
    scores = np.array(scores)
    reference = (scores.sum() - scores[0] / 2 - scores[-1] / 2) / (len(scores) - 1)
    ours = M.perturbation_curve(clf, image, saliency, mode="deletion", steps=n_steps)
    np.testing.assert_allclose(ours[0].numpy(), scores, atol=1e-6)
    assert M.deletion_auc(clf, image, saliency, steps=n_steps).item() == pytest.approx(reference, abs=1e-6)


def scipy_heavy_blur(image: torch.Tensor) -> np.ndarray:
    """The heavy insertion start for images under 40 px: σ = 1, radius 3, torch ``reflect`` padding
    (d c b | a b c d), which is scipy's ``mirror`` mode."""
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(image[0].double().numpy(), sigma=(0, 1, 1), mode="mirror", truncate=3.0)


def scipy_rise_blur(image: torch.Tensor) -> np.ndarray:
    """RISE's reference start: ``gkern(11, 5)`` (gaussian_filter of an 11×11 delta, σ = 5) convolved
    with zero padding (its ``conv2d(padding=5)``), here with scipy.signal."""
    from scipy.ndimage import gaussian_filter
    from scipy.signal import convolve2d

    delta = np.zeros((11, 11))
    delta[5, 5] = 1
    kernel = gaussian_filter(delta, 5)
    return np.stack([convolve2d(ch, kernel, mode="same", boundary="fill", fillvalue=0) for ch in image[0].double().numpy()])


def test_rise_blur_is_the_reference_kernel_with_zero_padding():
    image = torch.rand(1, 3, 9, 13, generator=torch.Generator().manual_seed(0))
    ours = M.rise_blur(image)[0].double().numpy()
    np.testing.assert_allclose(ours, scipy_rise_blur(image), atol=1e-6)
    # the kernel sums to 1 and zero padding darkens the border: on a white 11×11 image the centre stays
    # white and the corner keeps less than half its brightness
    white = M.rise_blur(torch.ones(1, 3, 11, 11))
    assert white[0, 0, 0, 0] < 0.5 and white[0, 0, 5, 5].item() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("start", ["heavy", "rise"])
def test_insertion_curve_and_auc_against_scipy_blurs(ranked, start):
    image, saliency = ranked
    blurred = scipy_heavy_blur(image) if start == "heavy" else scipy_rise_blur(image)
    np.testing.assert_allclose(M.insertion_start(image, start)[0].double().numpy(), blurred, atol=1e-6)
    # p is linear: at step n, the top-n pixels are x and the others the blur
    v_x = np.tensordot(WEIGHTS, image[0].double().numpy(), 1).reshape(16)
    v_blur = np.tensordot(WEIGHTS, blurred, 1).reshape(16)
    counts = [0, 4, 8, 12, 16]
    points = [(v_x[ORDER[:n]].sum() + v_blur[ORDER[n:]].sum()) / 16 for n in counts]
    curve = M.perturbation_curve(WeightedColour(), image, saliency, torch.tensor([1]), "insertion", steps=4, start=start)
    assert curve[0].tolist() == pytest.approx(points, abs=1e-6)
    auc = M.insertion_auc(WeightedColour(), image, saliency, torch.tensor([1]), steps=4, start=start)
    assert auc.item() == pytest.approx(trapezoid(points), abs=1e-6)
    assert points[-1] == pytest.approx(0.61)


def test_curve_arguments_are_checked(ranked):
    image, saliency = ranked
    with pytest.raises(ValueError, match="insertion"):
        M.perturbation_curve(WeightedColour(), image, saliency, mode="sideways")
    with pytest.raises(ValueError, match="steps"):
        M.perturbation_curve(WeightedColour(), image, saliency, steps=0)
    with pytest.raises(ValueError, match="insertion start"):
        M.insertion_start(image, "light")


# ----------------------------------------------------------------------------- Quantus: pixel flipping
class TinyCNN(nn.Module):
    """A seeded random CNN with a grey mean colour (so Quantus' scalar baseline can be that colour)."""

    data_config = {"mean": (0.5, 0.5, 0.5)}

    def __init__(self, channels: int = 3, classes: int = 3) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.conv = nn.Conv2d(channels, 6, 3, padding=1)
            self.fc = nn.Linear(6, classes)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 5 * self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def test_deletion_curve_equals_quantus_pixel_flipping():
    """Quantus ``PixelFlipping`` (Bach et al. 2015): the features in order of attribution replaced by a
    baseline, the softmax probability of y after each step. A (N, 1, H, W) map is broadcast over the 3
    channels, so one pixel is 3 tied features (contiguous after sorting): 4 pixels a step = 12 features.
    Quantus' curve has no unperturbed point; ours starts at x."""
    quantus = pytest.importorskip("quantus")
    model = TinyCNN()
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, 12, 12, generator=gen)
    a = torch.randn(3, 1, 12, 12, generator=gen)
    with torch.no_grad():
        y = model(x).argmax(-1)
    metric = quantus.PixelFlipping(features_in_step=3 * 4, perturb_baseline=0.5, abs=False, normalise=False,
                                   disable_warnings=True, display_progressbar=False)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = np.array(
            metric(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a.numpy(), device="cpu", softmax=True)
        )
    ours = M.perturbation_curve(model, x, a, y, "deletion", steps=144 // 4).numpy()
    assert theirs.shape == (3, 36)
    np.testing.assert_allclose(ours[:, 1:], theirs, atol=1e-6)  # measured: 0.0


# ----------------------------------------------------------------------------- smallest sufficient area
@pytest.mark.parametrize(
    ("need", "expected", "path"),
    [
        # 320 pixels, all red. Grid: 0.5 -> 160 red (< need), 0.6 -> 192 (kept): bracket (0.5, 0.6].
        # need 162: 0.55 -> 176 kept, 0.525 -> 168 kept, 0.5125 -> 164 kept, 0.50625 -> 162 kept
        (162, 0.50625, [(0.55, True), (0.525, True), (0.5125, True), (0.50625, True)]),
        # need 163: ... 0.50625 -> 162 lost: the answer stays 0.5125
        (163, 0.5125, [(0.55, True), (0.525, True), (0.5125, True), (0.50625, False)]),
        # need 1: the first grid point 0.01 (3 pixels) keeps it: bracket (0, 0.01]
        # 0.005 -> 1.6 -> 2 kept, 0.0025 -> 0.8 -> 1 kept, 0.00125 -> 0.4 -> 0 lost, 0.001875 -> 0.6 -> 1 kept
        (1, 0.001875, [(0.005, True), (0.0025, True), (0.00125, False), (0.001875, True)]),
        # need 300: 0.9 -> 288 lost, 1.0 kept: 0.95 -> 304 kept, 0.925 -> 296 lost, 0.9375 -> 300 kept, 0.93125 -> 298 lost
        (300, 0.9375, [(0.95, True), (0.925, False), (0.9375, True), (0.93125, False)]),
    ],
)
def test_smallest_sufficient_area_after_the_grid_and_four_bisections(need, expected, path):
    image = torch.zeros(1, 3, 16, 20)
    image[:, 0] = 1  # every pixel saturated red
    saliency = torch.rand(1, 1, 16, 20, generator=torch.Generator().manual_seed(0))
    # the path written above, checked step by step with exact fractions
    grid = sorted(set(M.SUFFICIENCY_GRID) | {1.0})
    first = next(g for g in grid if rounded_count(g, 320) >= need)
    lo = Fraction(grid[grid.index(first) - 1]) if grid.index(first) else Fraction(0)
    hi = Fraction(first)
    for mid_written, kept_written in path:
        mid = (lo + hi) / 2
        kept = rounded_count(float(mid), 320) >= need
        assert (float(mid), kept) == (pytest.approx(mid_written), kept_written)
        lo, hi = (lo, mid) if kept else (mid, hi)
    assert float(hi) == pytest.approx(expected)
    area = M.smallest_sufficient_area(PixelFill(RedCount(need)), image, saliency)
    assert area.item() == pytest.approx(expected, abs=1e-7)


def test_smallest_sufficient_area_on_the_ranked_image(ranked):
    """The top-4 (all white) keeps the label: Σ_{rank<k}(v − 0.37) > 8 − 16 · 0.37 = 2.08 first at k = 4.
    Grid on 16 pixels: 0.2 -> 3 lost, 0.25 -> 4 kept; 0.225 -> 3.6 -> 4 kept, 0.2125 -> 3.4 -> 3 lost,
    0.21875 -> 3.5 -> 4 (ties to even) kept, 0.215625 -> 3.45 -> 3 lost: 0.21875, a fraction whose cut
    has 4 pixels (0.25 of the image): the reported area is the fraction, quantised by round(f · N)."""
    image, saliency = ranked
    gains = np.cumsum(np.array(V_BY_RANK) - V_MEAN)
    assert int(np.argmax(gains > 8 - 16 * V_MEAN)) + 1 == 4
    assert [rounded_count(f, 16) for f in (0.2, 0.25, 0.225, 0.2125, 0.21875, 0.215625)] == [3, 4, 4, 3, 4, 3]
    area = M.smallest_sufficient_area(PixelFill(WeightedColour()), image, saliency)
    assert area.item() == pytest.approx(0.21875, abs=1e-7)
    counter = PassCounter()
    metric = M.SmallestSufficientArea(PixelFill(WeightedColour()))
    metric.update(image, saliency)
    assert metric.compute().item() == pytest.approx(0.21875, abs=1e-7)
    M.smallest_sufficient_area(PixelFill(WeightedColour()), image, saliency, counter=counter)
    assert counter.images == 17 + 4  # the grid (1.0 included) and four bisections


# ----------------------------------------------------------------------------- robustness (exam draws)
def grey_draws(image: torch.Tensor, brightness: list[float], names: list[str] | None = None) -> ExamDraws:
    """Backgrounds of hand-chosen mean brightness b: the colour (b + 0.05, b, b − 0.05)."""
    draws = [torch.tensor([b + 0.05, b, b - 0.05]).view(1, 3, 1, 1).expand_as(image).clone() for b in brightness]
    return ExamDraws(image, draws, names or ["solid"] * len(draws))


class FixedExam(Exam):
    """An exam whose draws are given by hand (the same for every key)."""

    def __init__(self, brightness: list[float], names: list[str]) -> None:
        super().__init__([(Family(), len(brightness))])
        self.brightness, self.fixed_names = brightness, names

    def draws(self, image, key):
        return grey_draws(image, self.brightness, self.fixed_names)


EIGHT = [0.1, 0.3, 0.6, 0.7, 0.9, 0.95, 0.2, 0.8]


def test_robustness_depends_on_the_backgrounds():
    """A black image with a mask keeping 1/4 of it: the planted input has brightness 0.75 · b, which is
    below 0.5 iff b < 2/3: 4 of the 8 backgrounds (0.1, 0.3, 0.6, 0.2). A metric that ignored the
    backgrounds (mean fill: 0.75 · 0.4 = 0.3, kept everywhere; black: 0) would give 1."""
    image = torch.zeros(1, 3, 8, 8)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :2, :] = 1
    names = ["solid", "noise"] * 4
    expected = sum(0.75 * b < 0.5 for b in EIGHT) / 8
    assert expected == 0.5
    share = M.robustness(DarkerThanHalf(), image, mask, FixedExam(EIGHT, names), ["photo.png"])
    assert share.tolist() == [0.5]
    by_family = M.robustness_by_family(DarkerThanHalf(), image, mask, grey_draws(image, EIGHT, names), 1, chunk=3)
    # solid: 0.1, 0.6, 0.9, 0.2 -> 3 kept; noise: 0.3, 0.7, 0.95, 0.8 -> 1 kept
    assert by_family["all"].tolist() == [0.5]
    assert by_family["solid"].tolist() == [0.75] and by_family["noise"].tolist() == [0.25]
    # masks in a batch are judged one by one: the whole image is always kept, nothing kept follows b < 0.5
    masks = torch.stack([torch.ones(1, 8, 8), torch.zeros(1, 8, 8)])
    both = M.robustness_by_family(DarkerThanHalf(), image, masks, grey_draws(image, EIGHT), 1)["all"]
    assert both.tolist() == [1.0, sum(b < 0.5 for b in EIGHT) / 8] == [1.0, 3 / 8]
    metric = M.Robustness(DarkerThanHalf(), FixedExam(EIGHT, names))
    metric.update(image.expand(2, -1, -1, -1), torch.cat([mask, torch.ones(1, 1, 8, 8)]), ["a.png", "b.png"])
    assert metric.compute().item() == pytest.approx(0.75)
    with pytest.raises(ValueError, match="one key per image"):
        M.robustness(DarkerThanHalf(), image, mask, FixedExam(EIGHT, names), [])


SIXTEEN = [0.1, 0.2, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.78, 0.85, 0.9, 0.95]


@pytest.mark.parametrize(
    ("rate", "expected"),
    [
        # at 0.8 three of 16 draws may fail: the cut must keep the 4th brightest, b = 0.78:
        # (1 − k/320) · 0.78 < 0.5 iff k ≥ 115. Grid: 0.3 (96) fails, 0.4 (128) passes;
        # 0.35 (112) fails, 0.375 (120) passes, 0.3625 (116) passes, 0.35625 (114) fails -> 0.3625
        (0.8, 0.3625),
        # at 1.0 none may fail: b = 0.95, k ≥ 152. Grid: 0.4 (128) fails, 0.5 (160) passes;
        # 0.45 (144) fails, 0.475 (152) passes, 0.4625 (148) fails, 0.46875 (150) fails -> 0.475
        (1.0, 0.475),
    ],
)
def test_robust_sufficient_area_by_hand(rate, expected):
    image = torch.zeros(1, 3, 16, 20)
    maps = torch.rand(2, 1, 16, 20, generator=torch.Generator().manual_seed(0))  # any order: every pixel is black
    draws = grey_draws(image, SIXTEEN)
    brightest = sorted(SIXTEEN, reverse=True)[M.allowed_failures(16, rate)]
    need = next(k for k in range(321) if (1 - k / 320) * brightest < 0.5)
    assert need == {0.8: 115, 1.0: 152}[rate]
    counter = PassCounter()
    area = M.robust_sufficient_area(DarkerThanHalf(), image, maps, draws, 1, rate=rate, counter=counter)
    assert area.tolist() == pytest.approx([expected, expected], abs=1e-7)
    # the staged check drops a cut once it has lost more than it may: far fewer than 2 · 21 · 16 inputs
    assert counter.images < 2 * (17 + 4) * 16


def test_allowed_failures_by_hand():
    assert M.allowed_failures(16, 0.8) == 3  # 13/16 = 0.8125 >= 0.8 > 12/16
    assert M.allowed_failures(10, 0.8) == 2  # 8/10 = 0.8 exactly
    assert M.allowed_failures(16, 1.0) == 0
    assert M.allowed_failures(5, 0.5) == 2  # 3/5 >= 0.5 > 2/5
    assert M.allowed_failures(1, 0.01) == 0
    for bad in [(0, 0.8), (16, 0.0), (16, 1.5)]:
        with pytest.raises(ValueError):
            M.allowed_failures(*bad)


# ----------------------------------------------------------------------------- perturbing the region
def test_dilate_equals_scipy_binary_dilation():
    from scipy.ndimage import binary_dilation

    masks = (torch.rand(3, 1, 9, 11, generator=torch.Generator().manual_seed(0)) > 0.85).float()
    masks[0, 0, 0, 0] = 1  # a corner pixel: the image border adds nothing
    for size in (3, 5):
        reference = np.stack([binary_dilation(m[0].numpy() > 0, structure=np.ones((size, size)))[None] for m in masks])
        assert np.array_equal(M.dilate(masks, size).numpy() > 0, reference)


def test_shifted_moves_each_mask_one_pixel_and_drops_what_falls_off():
    mask = torch.zeros(1, 1, 3, 4)
    mask[0, 0, 0, 3] = 1  # top-right corner
    mask[0, 0, 1, 1] = 1
    out = M.shifted(mask)[:, 0].numpy()

    def pixels(*where):
        grid = np.zeros((3, 4))
        for row, col in where:
            grid[row, col] = 1
        return grid

    right = pixels((1, 2))  # the corner falls off
    left = pixels((0, 2), (1, 0))
    down = pixels((1, 3), (2, 1))
    up = pixels((0, 1))  # the corner falls off
    np.testing.assert_array_equal(out, np.stack([right, left, down, up]))
    two = torch.stack([mask[0], torch.ones(1, 3, 4)])
    assert M.shifted(two).shape == (8, 1, 3, 4)
    assert torch.equal(M.shifted(two)[1::2], M.shifted(torch.ones(1, 1, 3, 4)))  # shift-major: rows 1, 3, 5, 7


@pytest.mark.parametrize("file_size", [(24, 30), (19, 33), (5, 7), (8, 10)])
def test_read_back_equals_pil_bicubic_of_the_nearest_written_file(file_size):
    """The file: torch's nearest rule (source row ⌊i · h / H_file⌋) written here with numpy; read back
    with PIL's bicubic resize (antialiased when shrinking), thresholded at 0.5."""
    from PIL import Image

    h, w = 8, 10
    mask = (torch.rand(1, 1, h, w, generator=torch.Generator().manual_seed(sum(file_size))) > 0.6).float()
    fh, fw = file_size
    written = mask[0, 0].numpy()[np.floor(np.arange(fh) * h / fh).astype(int)][:, np.floor(np.arange(fw) * w / fw).astype(int)]
    back = np.asarray(Image.fromarray(written.astype(np.float32), mode="F").resize((w, h), Image.BICUBIC))
    assert np.array_equal(M.read_back(mask, file_size)[0, 0].numpy() > 0.5, back > 0.5)
    if file_size == (24, 30):  # an integer factor: a mask of 3×3 blocks comes back as it was
        blocks = torch.zeros(1, 1, h, w)
        blocks[..., 2:6, 3:9] = 1
        assert torch.equal(M.read_back(blocks, file_size), blocks)


def test_bounding_boxes_by_hand():
    masks = torch.zeros(3, 1, 6, 7)
    masks[0, 0, 2, 3] = 1  # one pixel
    masks[1, 0, 1, 5] = 1
    masks[1, 0, 4, 0] = 1  # two corners of a box
    assert M.bounding_boxes(masks) == [(2, 3, 3, 4), (1, 0, 5, 6), (0, 0, 6, 7)]  # empty: the whole image


def test_crop_resize_by_hand():
    """A 2×2 box doubled (bilinear, half-pixel centres): source coordinate (i + 0.5)/2 − 0.5 =
    −0.25, 0.25, 0.75, 1.25, clamped at the edges: weights (1, 0), (3/4, 1/4), (1/4, 3/4), (0, 1)."""
    image = torch.zeros(1, 3, 4, 4)
    a, b, c, d = 0.2, 0.6, 0.4, 1.0
    image[0, :, 1:3, 1:3] = torch.tensor([[a, b], [c, d]])
    weights = np.array([[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]])
    expected = weights @ np.array([[a, b], [c, d]]) @ weights.T
    out = M.crop_resize(image, (1, 1, 3, 3))
    assert out.shape == (1, 3, 4, 4)
    np.testing.assert_allclose(out[0, 0].numpy(), expected, atol=1e-6)
    assert torch.equal(M.crop_resize(image, (0, 0, 4, 4)), image)


def test_dg_score_by_hand():
    assert M.dg_score(0.3, 0.6).item() == pytest.approx(math.log(0.3) - math.log(0.6), abs=1e-12)
    assert M.dg_score(0.02, 0.5).item() == pytest.approx(math.log(0.05) - math.log(0.5), abs=1e-12)  # area floored at 5 %
    values = M.dg_score(torch.tensor([1.0, 0.05], dtype=torch.float64), torch.tensor([1.0, 0.25], dtype=torch.float64))
    assert values.tolist() == pytest.approx([0.0, math.log(0.05) - math.log(0.25)], abs=1e-12)
    assert M.dg_score(torch.tensor(0.05), torch.tensor(0.25)).item() == pytest.approx(math.log(0.2), abs=1e-7)  # float32 in


# ----------------------------------------------------------------------------- comparing two maps
def test_spearman_equals_scipy_and_quantus_with_ties():
    from scipy.stats import spearmanr

    gen = torch.Generator().manual_seed(0)
    a = torch.randint(0, 5, (3, 1, 6, 7), generator=gen).float()  # many ties
    b = a + torch.randint(0, 3, (3, 1, 6, 7), generator=gen).float()
    b[2] = torch.rand(1, 6, 7, generator=gen)
    ours = M.spearman(a, b)
    reference = [spearmanr(x.flatten().numpy(), y.flatten().numpy())[0] for x, y in zip(a, b)]
    np.testing.assert_allclose(ours.numpy(), reference, atol=1e-12)
    quantus = pytest.importorskip("quantus")
    theirs = [quantus.similarity_func.correlation_spearman(x.flatten().numpy(), y.flatten().numpy()) for x, y in zip(a, b)]
    np.testing.assert_allclose(ours.numpy(), theirs, atol=1e-12)
    assert M.spearman(a[:1], -a[:1]).item() == pytest.approx(-1.0)
    assert math.isnan(M.spearman(torch.ones(1, 1, 3, 3), a[:1, :, :3, :3]).item())  # a constant map


def test_top_iou_by_hand():
    """Top 10 % of 100 pixels: {90..99} for a = 0..99; b = a shifted by 5 has its top 10 at 85..94:
    overlap 5, union 15."""
    a = torch.arange(100.0).view(1, 1, 10, 10)
    b = ((torch.arange(100) + 5) % 100).float().view(1, 1, 10, 10)
    assert M.top_iou(a, b).item() == pytest.approx(5 / 15)
    assert M.top_iou(a, a).item() == 1.0
    assert M.top_iou(a, -a, fraction=0.5).item() == 0.0


# ----------------------------------------------------------------------------- localisation
def test_pointing_game_and_mask_precision_by_hand():
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
    assert M.mask_precision(torch.zeros(1, 1, 8, 8), gt[:1]).tolist() == [0.0]


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


def test_pointing_game_and_top_k_precision_equal_quantus():
    """Quantus ``PointingGame`` (hit: a maximum of the map on the ground truth; no tolerance) and
    ``TopKIntersection`` (share of the top-k features on the ground truth) on maps with unique values."""
    quantus = pytest.importorskip("quantus")
    gen = torch.Generator().manual_seed(0)
    saliency = torch.rand(6, 1, 12, 12, generator=gen)
    gt = torch.zeros(6, 1, 12, 12)
    for i in range(6):
        gt[i, 0, i : i + 5, 2 * i : 2 * i + 4] = 1
    saliency[0, 0, 3, 1] = 2.0  # a sure hit
    x, y = torch.rand(6, 3, 12, 12, generator=gen).numpy(), np.zeros(6, dtype=int)
    kw = {"model": TinyCNN(), "x_batch": x, "y_batch": y, "a_batch": saliency.numpy(), "s_batch": gt.numpy(), "device": "cpu"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hits = quantus.PointingGame(disable_warnings=True, display_progressbar=False)(**kw)
        tki = quantus.TopKIntersection(k=20, abs=False, normalise=False, disable_warnings=True, display_progressbar=False)(**kw)
    assert M.pointing_game(saliency, gt, tolerance=0).tolist() == [bool(h) for h in hits]
    top20 = np.argsort(-saliency.flatten(1).numpy(), axis=1)[:, :20]
    cuts = np.zeros((6, 144), dtype=np.float32)
    np.put_along_axis(cuts, top20, 1.0, axis=1)
    ours = M.mask_precision(torch.from_numpy(cuts).view(6, 1, 12, 12), gt)
    np.testing.assert_allclose(ours.numpy(), tki, atol=1e-7)


# ----------------------------------------------------------------------------- torchmetrics and batching
def test_torchmetrics_accumulate_means_and_hold_no_model_weights(ranked):
    image, saliency = ranked
    area = M.MaskArea()
    area.update(torch.zeros(1, 1, 4, 4))
    area.update(torch.ones(1, 1, 4, 4))
    assert area.compute().item() == pytest.approx(0.5)
    kept = M.LabelKept()
    logits = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    kept.update(logits, torch.tensor([[0.0, 1.0], [0.0, 1.0]]))
    assert kept.compute().item() == pytest.approx(0.5)
    delta = M.ConfidenceDelta()
    delta.update(torch.tensor([[0.0, math.log(3)]]), torch.tensor([[0.0, 0.0]]))  # p: 0.75 -> 0.5
    assert delta.compute().item() == pytest.approx(-0.25)
    deletion = M.DeletionAUC(WeightedColour(), steps=4)
    deletion.update(image, saliency)
    assert deletion.compute().item() == pytest.approx(0.420625, abs=1e-6)
    assert set(deletion.state_dict()) <= {"total", "count"}
    insertion = M.InsertionAUC(WeightedColour(), steps=4)
    insertion.update(image, saliency, torch.tensor([1]))
    direct = M.insertion_auc(WeightedColour(), image, saliency, torch.tensor([1]), steps=4)
    assert insertion.compute().item() == pytest.approx(direct.item())
    game, precision = M.PointingGame(tolerance=0), M.MaskPrecision()
    gt = torch.zeros(1, 1, 4, 4)
    gt.view(16)[ORDER[:2]] = 1
    game.update(saliency, gt)
    precision.update((saliency >= 13).float(), gt)  # the top 4, two of them on the ground truth
    assert game.compute().item() == 1.0 and precision.compute().item() == pytest.approx(0.5)


def test_classify_packs_jobs_into_full_chunks():
    seen = []

    def forward(x):
        seen.append(len(x))
        return x.flatten(1)[:, :2]

    jobs = [Job(n, lambda lo, hi, n=n: torch.full((hi - lo, 3, 2, 2), float(n)) + torch.arange(lo, hi).view(-1, 1, 1, 1))
            for n in (5, 3, 9)]  # fmt: skip
    counter = PassCounter()
    out = classify(forward, jobs, chunk=4, counter=counter)
    assert seen == [4, 4, 4, 4, 1] and counter.images == 17 and len(counter.full_chunk_seconds_per_image) == 4
    for job, logits in zip(jobs, out):
        torch.testing.assert_close(logits, forward(job.make(0, job.n)))
    with pytest.raises(ValueError, match="chunk"):
        classify(forward, jobs, chunk=0)


# ----------------------------------------------------------------------------- the exam's columns
def test_score_maps_columns_equal_the_hand_values(ranked):
    """The benchmark's per-image protocol gives the hand values above for the same map."""
    from actmatch.evaluation.exam import score_maps

    image, saliency = ranked
    draws = grey_draws(image, EIGHT)
    scores = score_maps(WeightedColour(), image, saliency, draws, area=7 / 16, steps=4)
    assert scores["area"].item() == pytest.approx(7 / 16)
    # top-7 with the mean fill: (4 + 3 · 0.7 + 9 · 0.37) / 16 = 9.43 / 16 against p(x) = 0.61
    assert scores["kept_equal_area"].item() == 1.0
    assert scores["ratio_equal_area"].item() == pytest.approx((9.43 / 16) / 0.61, abs=1e-6)
    assert scores["deletion_auc"].item() == pytest.approx(0.420625, abs=1e-6)
    # to the heavy blur: the curve checked against scipy's gaussian_filter above
    blur = M.deletion_auc(WeightedColour(), image, saliency, steps=4, fill="blur").item()
    assert scores["deletion_auc_blur"].item() == pytest.approx(blur, abs=1e-6) and blur != pytest.approx(0.420625, abs=1e-3)
    assert scores["smallest_sufficient_area"].item() == pytest.approx(0.21875, abs=1e-7)
    assert scores["kept_at_20"].item() == 0.0  # 0.2 · 16 = 3.2 -> 3 white pixels: 1.89 < 2.08
    # the equal-area cut on the 8 backgrounds: 7 pixels of x (v 4 + 2.1) and 9 of (b + .05, b, b − .05),
    # whose v is b + 0.03 − 0.015 = b + 0.015: kept iff 6.1 + 9 (b + 0.015) > 8, i.e. b > 0.196
    expected = sum(6.1 + 9 * (b + 0.015) > 8 for b in EIGHT) / 8
    assert expected == 7 / 8
    assert scores["robustness"].item() == pytest.approx(expected)


def test_a_delivered_mask_is_its_own_region(ranked):
    """A map's region is its smallest sufficient cut (here 0.21875 < 7/16); a method that delivers a
    binary mask (am) is judged on that mask: dilation, shifts and read-back perturb the 7 pixels."""
    from actmatch.evaluation.exam import score_maps

    image, saliency = ranked
    draws = grey_draws(image, EIGHT)
    as_map = score_maps(WeightedColour(), image, saliency, draws, area=7 / 16, steps=4)
    as_mask = score_maps(WeightedColour(), image, saliency, draws, area=7 / 16, steps=4, delivered=torch.tensor([True]))
    assert as_map["region_area"].item() == pytest.approx(4 / 16)  # round(0.21875 · 16) = 4 pixels
    assert as_mask["region_area"].item() == pytest.approx(7 / 16)
    assert as_mask["ratio_region"].item() == pytest.approx((9.43 / 16) / 0.61, abs=1e-6)  # the mask's own p(e)/p(x)
    assert as_mask["smallest_sufficient_area"].item() == as_map["smallest_sufficient_area"].item()
    with pytest.raises(ValueError, match="delivered"):
        score_maps(WeightedColour(), image, saliency, draws, area=7 / 16, delivered=torch.tensor([True, False]))


def test_robust_sufficient_area_walks_the_grid_to_the_first_passing_fraction():
    """The upward walk with early stops gives the first grid fraction that keeps the label on at least
    ``rate`` of the draws, as checking every cut on every draw one by one does (refine=0).

    The classifier says class 0 when the red channel's mean exceeds 0.2; the image's red values are
    a permutation of 0..1, so a map that ranks the bright pixels first needs a small cut and one that
    ranks them last needs most of the image."""
    torch.manual_seed(0)
    classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2))
    with torch.no_grad():
        classifier[2].weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))
        classifier[2].bias.copy_(torch.tensor([0.0, 0.2]))
    red = torch.linspace(0, 1, 144)[torch.randperm(144)].view(12, 12)
    image = torch.stack([red, torch.zeros(12, 12), torch.zeros(12, 12)]).unsqueeze(0)
    backgrounds = [0.1 * torch.rand(1, 3, 12, 12) * (i + 1) / 4 for i in range(8)]
    draws = ExamDraws(image, backgrounds, ["noise"] * 8)
    maps = torch.stack([red, -red, torch.rand(12, 12), torch.rand(12, 12), red + torch.rand(12, 12)]).unsqueeze(1)
    grid = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
    y = int(classifier(image).argmax())
    assert y == 0
    with torch.no_grad():
        expected = []
        for saliency in maps:  # one cut, one draw at a time
            order = saliency.flatten().argsort(descending=True, stable=True)
            for fraction in grid:
                keep = torch.zeros(144)
                keep[order[: round(fraction * 144)]] = 1
                m = keep.view(1, 1, 12, 12)
                kept = sum(int(classifier(m * image + (1 - m) * b).argmax()) == y for b in backgrounds)
                if fraction == 1.0 or kept >= 0.75 * 8:
                    expected.append(fraction)
                    break
    found = M.robust_sufficient_area(classifier, image, maps, draws, y, rate=0.75, grid=grid, refine=0, group=2, chunk=5)
    assert expected[0] < expected[1]  # bright pixels first beat bright pixels last
    assert found.tolist() == pytest.approx(expected)
