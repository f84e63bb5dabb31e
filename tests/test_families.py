"""The exam's perturbation families (``actmatch.evaluation.families``) against independent answers:
hand cases, scipy's Gaussian filter, and Quantus' ROAD (noisy linear imputation, Rong et al. 2022)."""

from __future__ import annotations

import warnings
import zlib

import numpy as np
import pytest
import torch

from actmatch.evaluation.families import (
    Blur,
    Exam,
    ExamDraws,
    Noise,
    Photos,
    RoadImputation,
    SolidColour,
    cover_resize,
    default_exam,
    held_out_leaks,
)


# ----------------------------------------------------------------------------- the seed stream
def test_schedule_is_round_robin_over_the_families():
    exam = Exam([(SolidColour(), 2), (Noise("uniform"), 1), (Blur(0.1), 3)], seed=7)
    assert exam.size == 6
    assert exam.names == ["solid", "noise", "blur", "solid", "blur", "blur"]
    assert exam.describe() == "6 draws: solid ×2, noise ×1, blur ×3 (seed 7)"
    with pytest.raises(ValueError, match="at least one family"):
        Exam([])
    with pytest.raises(ValueError, match="at least one family"):
        Exam([(SolidColour(), 0)])


def test_solid_colours_come_from_the_documented_generator_not_the_global_rng():
    """Generator seed = seed · 1 000 003 + CRC-32 of the key; each solid draw is one U[0, 1]³ colour."""
    image = torch.rand(1, 3, 5, 6)
    exam = Exam([(SolidColour(), 3)], seed=1000)
    gen = torch.Generator().manual_seed(1000 * 1_000_003 + zlib.crc32(b"dog.jpg"))
    colours = [torch.rand(3, generator=gen) for _ in range(3)]
    torch.manual_seed(0)
    first = exam.draws(image, "dog.jpg")
    torch.manual_seed(123)  # the global RNG does not matter
    again = exam.draws(image, "dog.jpg")
    for j, colour in enumerate(colours):
        assert torch.equal(first.draws[j], colour.view(1, 3, 1, 1).expand(1, 3, 5, 6))
        assert torch.equal(again.draws[j], first.draws[j])
    other = exam.draws(image, "cat.jpg")
    assert not torch.equal(other.draws[0], first.draws[0])
    assert not torch.equal(Exam([(SolidColour(), 3)], seed=1001).draws(image, "dog.jpg").draws[0], first.draws[0])
    with pytest.raises(ValueError, match="one image"):
        exam.draws(torch.rand(2, 3, 5, 6), "x")


def test_noise_draws():
    image = torch.rand(1, 3, 40, 40)
    gen = torch.Generator().manual_seed(0)
    uniform = Noise("uniform").draw(image, gen)
    gaussian = Noise("gaussian").draw(image, gen)
    assert uniform.shape == gaussian.shape == image.shape
    assert 0 <= uniform.min() and uniform.max() <= 1 and abs(uniform.mean().item() - 0.5) < 0.03
    assert 0 <= gaussian.min() and gaussian.max() <= 1
    assert abs(gaussian.std().item() - 0.24) < 0.01  # N(0.5, 0.25²) clipped at 2 σ: std 0.959 σ
    with pytest.raises(ValueError, match="kind"):
        Noise("pink")


@pytest.mark.parametrize("sigma", [0.1, 0.2])
def test_blur_draw_equals_scipy_gaussian_filter(sigma):
    """σ = sigma · short side (20 px: 2 and 4), radius ⌊3σ⌋, reflect padding without the edge pixel
    (scipy's ``mirror``), normalised kernel."""
    from scipy.ndimage import gaussian_filter

    image = torch.rand(1, 3, 20, 27, generator=torch.Generator().manual_seed(0))
    s = sigma * 20
    reference = gaussian_filter(image[0].double().numpy(), sigma=(0, s, s), mode="mirror", truncate=int(3 * s) / s)
    ours = Blur(sigma).draw(image, torch.Generator())
    np.testing.assert_allclose(ours[0].double().numpy(), reference, atol=1e-6)
    with pytest.raises(ValueError, match="sigma"):
        Blur(1.5)


def test_photos_cover_and_centre_crop():
    """A 4×8 photo for a 4×4 image: scale max(4/4, 4/8) = 1, so the centre 4 columns, unchanged."""
    photo = torch.rand(3, 4, 8, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(cover_resize(photo, (4, 4)), photo[:, :, 2:6], atol=1e-6)
    # an 8×2 photo for 4×4: scale 2 -> 16×4, rows 6..9 of the scaled photo
    tall = torch.rand(3, 8, 2)
    assert cover_resize(tall, (4, 4)).shape == (3, 4, 4)
    pool = [torch.full((3, 6, 6), 0.25), torch.full((3, 5, 9), 0.75)]
    drawn = {
        round(Photos(pool).draw(torch.zeros(1, 3, 4, 4), torch.Generator().manual_seed(s)).mean().item(), 2) for s in range(20)
    }
    assert drawn == {0.25, 0.75}
    with pytest.raises(ValueError, match="empty"):
        Photos([])


# ----------------------------------------------------------------------------- planting
def test_planted_is_mask_major_and_keeps_the_region():
    image = torch.rand(1, 3, 4, 4)
    red, blue = torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4)
    red[:, 0], blue[:, 2] = 1, 1
    draws = ExamDraws(image, [red, blue], ["solid", "solid"])
    masks = torch.zeros(2, 1, 4, 4)
    masks[0, 0, :2] = 1
    masks[1, 0, :, :1] = 1
    out = draws.planted(masks)
    assert out.shape == (4, 3, 4, 4)
    for i in range(2):
        for j, bg in enumerate((red, blue)):
            assert torch.equal(out[2 * i + j], (masks[i] * image[0] + (1 - masks[i]) * bg[0]))
    assert torch.equal(draws.planted(masks, [1]), out[1::2])


def test_an_empty_mask_is_imputed_with_the_image_mean_colour():
    image = torch.rand(1, 3, 6, 6)
    out = ExamDraws(image, [], []).imputations(torch.zeros(1, 1, 6, 6))
    assert torch.allclose(out, image.mean((-2, -1), keepdim=True).expand(1, 3, 6, 6))


def _quantus_imputation(image: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """Quantus' ``noisy_linear_imputation`` (sparse direct solve) with noise 0, on (3, H, W)."""
    from quantus.functions.perturb_func import noisy_linear_imputation

    removed = np.flatnonzero(mask[0, 0].numpy().reshape(-1) == 0)
    return noisy_linear_imputation(arr=image[0].double().numpy(), indices=removed, noise=0.0)


def test_road_family_with_no_noise_equals_quantus_linear_imputation():
    """The exam's ROAD draw (noise 0) plants m ⊙ x + (1 − m) ⊙ LI(x, m); Quantus solves the same system
    with scipy's sparse LU. Masks: a block, scattered pixels, a border strip."""
    pytest.importorskip("quantus")
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 14, 17, generator=gen)
    masks = torch.ones(3, 1, 14, 17)
    masks[0, 0, 3:10, 4:12] = 0
    masks[1] = (torch.rand(1, 14, 17, generator=gen) > 0.4).float()
    masks[2, 0, :, :5] = 0
    draw = RoadImputation(noise=0.0).draw(image, torch.Generator().manual_seed(1))
    planted = ExamDraws(image, [draw], ["road"]).planted(masks)
    worst = 0.0
    for i in range(3):
        reference = _quantus_imputation(image, masks[i : i + 1])
        worst = max(worst, float(np.abs(planted[i].double().numpy() - reference).max()))
    assert worst < 1e-4  # measured: 1.1e-5 (the conjugate-gradient tolerance is 1e-5, relative)


def test_road_noise_is_the_draws_own_field():
    """Two ROAD draws of one mask share the imputation and differ by noise · (ε₁ − ε₂) on removed pixels."""
    image = torch.rand(1, 3, 10, 10)
    gen = torch.Generator().manual_seed(5)
    family = RoadImputation(noise=0.1)
    draws = ExamDraws(image, [family.draw(image, gen), family.draw(image, gen)], ["road", "road"])
    mask = torch.ones(1, 1, 10, 10)
    mask[..., 2:6, 2:6] = 0
    a, b = draws.planted(mask)
    assert torch.equal(a * mask[0], image[0] * mask[0]) and torch.equal(b * mask[0], image[0] * mask[0])
    gen = torch.Generator().manual_seed(5)
    e1, e2 = torch.randn(1, 3, 10, 10, generator=gen), torch.randn(1, 3, 10, 10, generator=gen)
    torch.testing.assert_close((a - b) * (1 - mask[0]), (0.1 * (e1 - e2) * (1 - mask))[0], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="noise"):
        RoadImputation(noise=-1)


class BrightSpot(torch.nn.Module):
    """One-channel images, two classes: class 1 when there is enough brightness above 0.6."""

    data_config = {"mean": (0.5,)}

    def forward(self, x):
        bright = torch.relu(x - 0.6).flatten(1).mean(1)
        return torch.stack([torch.full_like(bright, 0.8), 40 * bright], 1)


def test_road_curve_equals_quantus_road():
    """Quantus ``ROAD`` (MoRF, noise 0): for each percentage p the top ⌊HW · p / 100⌋ pixels of the map are
    imputed, and the label kept or not. Here the same curve from ``linear_imputation``.

    Quantus 0.6.0's ROAD only runs on one-channel images: with 3 channels it ranks the 3·H·W broadcast
    features but indexes the H·W pixels with them (IndexError), so the comparison is on grey images."""
    quantus = pytest.importorskip("quantus")
    from actmatch.evaluation.imputation import linear_imputation

    model = BrightSpot().eval()
    gen = torch.Generator().manual_seed(3)
    x = 0.3 + 0.1 * torch.rand(6, 1, 12, 12, generator=gen)
    for i in range(6):  # a bright block of side 3..8: at least 9 · 0.4 / 144 · 40 = 1 > 0.8, class 1
        x[i, 0, 1 : 4 + i, 2 : 5 + i] = 1.0
    a = x + 0.5 * torch.rand(6, 1, 12, 12, generator=gen)  # a map that finds the block, roughly
    with torch.no_grad():
        y = model(x).argmax(-1)
    percentages = [10, 30, 50, 70, 90]
    metric = quantus.ROAD(percentages=percentages, noise=0.0, abs=False, normalise=False, disable_warnings=True,
                          display_progressbar=False)  # fmt: skip
    ours, theirs = [], []
    for i in range(6):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = metric(model=model, x_batch=x[i : i + 1].numpy(), y_batch=y[i : i + 1].numpy(), a_batch=a[i : i + 1].numpy(),
                            device="cpu")  # fmt: skip
        theirs.append([result[p] for p in percentages])
        order = np.argsort(-a[i].flatten().numpy())
        row = []
        for p in percentages:
            mask = torch.ones(144)
            mask[order[: int(144 * p / 100)]] = 0
            imputed = linear_imputation(x[i : i + 1], mask.view(1, 1, 12, 12))
            with torch.no_grad():
                row.append(float(model(imputed).argmax(-1).item() == y[i].item()))
        ours.append(row)
    assert ours == theirs
    assert 0 < np.mean(ours) < 1  # the curves fall at different percentages: the test can tell them apart


# ----------------------------------------------------------------------------- the benchmark's exam
def test_default_exam_and_held_out_leaks():
    with_photos = default_exam([torch.rand(3, 8, 8)])
    assert with_photos.size == 16 and with_photos.describe().startswith(
        "16 draws: photos ×4, blur ×2, road ×2, solid ×4, noise ×4"
    )
    without = default_exam(None)
    assert without.size == 16 and without.describe().startswith("16 draws: blur ×4, road ×4, solid ×4, noise ×4")
    assert sorted(without.names) == sorted(["blur"] * 4 + ["road"] * 4 + ["solid"] * 4 + ["noise"] * 4)
    assert default_exam([torch.rand(3, 8, 8)] * 3).photo_count == 3 and without.photo_count == 0
    used = {"blur": "fill", "solid": "backgrounds", "photos": "backgrounds"}
    assert held_out_leaks(used, with_photos) == ["blur (fill)", "photos (backgrounds)"]
    assert held_out_leaks({"noise": "backgrounds", "solid": "backgrounds"}, with_photos) == []
