"""ROAD's linear imputation (actmatch.evaluation.imputation) against Quantus, by hand, and its edge cases."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage
import torch

import actmatch.evaluation.imputation as imputation
from actmatch.evaluation.imputation import linear_imputation, noisy_linear_imputation
from lightning_helpers import torch_threads

TOLERANCE = 1e-4  # max abs difference to Quantus' sparse direct solve, images in [0, 1]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: the solver runs many small ops, and two threads on a busy 2-core machine
    wait on each other at every op (about 10x slower); one thread is as fast when the machine is idle."""
    with torch_threads(1):
        yield


def mask_bank(h: int, w: int) -> dict[str, np.ndarray]:
    """Masks (H, W) bool, True = kept, covering the shapes the solver finds easy and hard."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:h, :w]
    disk = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (min(h, w) / 10) ** 2
    band = max(2, min(h, w) // 32)
    smooth = scipy.ndimage.gaussian_filter(rng.standard_normal((h, w)), sigma=max(h, w) / 16)
    return {
        "scattered": rng.random((h, w)) > 0.5,  # half the pixels, at random
        "kept_disk": disk,  # most pixels removed, one known island in the centre
        "kept_frame": (yy < band) | (yy >= h - band) | (xx < band) | (xx >= w - band),
        "removed_pixel": ~((yy == h // 3) & (xx == w // 4)),
        "removed_at_border": ~((yy < h // 2) & (xx >= w - w // 3)),  # a block touching two image edges
        "removed_top_30pc": smooth < np.quantile(smooth, 0.7),  # blobs, like a top-k cut of a saliency map
    }


def quantus_reference(image: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Quantus' noiseless ROAD imputation of ``image`` (C, H, W) float64 where ``keep`` (H, W) is False."""
    perturb = pytest.importorskip("quantus.functions.perturb_func")  # only these comparisons need Quantus
    indices = np.flatnonzero(~keep)  # sorted flat indices over H * W of the removed pixels
    return perturb.noisy_linear_imputation(image.copy(), indices, noise=0.0)


def coffee_224() -> np.ndarray:
    """scikit-image's espresso photo, 3x224x224 float64 in [0, 1]."""
    import skimage.data
    import skimage.transform

    photo = skimage.transform.resize(skimage.data.coffee(), (224, 224), anti_aliasing=True)
    return photo.transpose(2, 0, 1).astype(np.float64)


@pytest.fixture(scope="module")
def comparisons() -> dict[tuple[str, str, str], float]:
    """Max abs difference to Quantus per (image, mask, dtype); ours solves each image's masks in one batch."""
    images = {"random64": np.random.default_rng(1).random((3, 64, 64)), "coffee224": coffee_224()}
    out = {}
    for image_name, image in images.items():
        bank = mask_bank(*image.shape[1:])
        masks = torch.tensor(np.stack(list(bank.values())))[:, None]  # (M, 1, H, W) bool
        references = [quantus_reference(image, keep) for keep in bank.values()]
        for dtype in (torch.float64, torch.float32):
            x = torch.tensor(image, dtype=dtype)[None].expand(len(bank), -1, -1, -1)  # (M, 3, H, W)
            ours = linear_imputation(x, masks)
            assert ours.dtype == dtype and ours.shape == x.shape
            for i, name in enumerate(bank):
                out[image_name, name, str(dtype)] = float(np.abs(ours[i].double().numpy() - references[i]).max())
    return out


@pytest.mark.parametrize("dtype", ["torch.float64", "torch.float32"])
@pytest.mark.parametrize("mask", list(mask_bank(8, 8)))
@pytest.mark.parametrize("image", ["random64", "coffee224"])
def test_matches_quantus(comparisons, image, mask, dtype):
    assert comparisons[image, mask, dtype] <= TOLERANCE


def test_centre_pixel_by_hand():
    """3x3, centre removed: the weighted mean of its 8 neighbours, 1/6 direct and 1/12 diagonal."""
    grid = [[0.1, 0.9, 0.3], [0.5, 0.0, 0.2], [0.7, 0.4, 0.8]]
    direct = 0.9 + 0.5 + 0.2 + 0.4  # up, left, right, down = 2.0
    diagonal = 0.1 + 0.3 + 0.7 + 0.8  # = 1.9
    expected = direct / 6 + diagonal / 12  # weights sum to 4/6 + 4/12 = 1; = 0.4916...
    image = torch.tensor(grid, dtype=torch.float64).expand(1, 2, 3, 3).clone()
    image[0, 1] *= 2  # a second channel, solved on its own
    mask = torch.ones(1, 1, 3, 3)
    mask[0, 0, 1, 1] = 0
    out = linear_imputation(image, mask)
    assert out[0, 0, 1, 1].item() == pytest.approx(expected, abs=1e-12)
    assert out[0, 1, 1, 1].item() == pytest.approx(2 * expected, abs=1e-12)
    unchanged = mask.bool().expand_as(image)
    assert torch.equal(out[unchanged], image[unchanged])


def test_corner_pixel_by_hand():
    """Top-left corner removed: its 5 out-of-image neighbours drop out and the other 3 weights renormalise."""
    image = torch.tensor([[[[0.0, 0.6, 0.1], [0.3, 0.9, 0.2], [0.5, 0.4, 0.7]]]], dtype=torch.float64)
    mask = torch.ones(1, 1, 3, 3)
    mask[0, 0, 0, 0] = 0
    expected = (0.6 / 6 + 0.3 / 6 + 0.9 / 12) / (1 / 6 + 1 / 6 + 1 / 12)  # right, down, diagonal = 0.42
    assert linear_imputation(image, mask)[0, 0, 0, 0].item() == pytest.approx(expected, abs=1e-12)


def test_coupled_pixels_by_hand():
    """A 1x4 row [a, ?, ?, b]: each unknown is the mean of its left and right neighbour, so the two
    unknowns interpolate linearly, (2a + b) / 3 and (a + 2b) / 3."""
    a, b = 0.2, 0.8
    image = torch.tensor([[[[a, 0.0, 0.0, b]]]], dtype=torch.float64)
    mask = torch.tensor([[[[1, 0, 0, 1]]]])
    out = linear_imputation(image, mask, tol=1e-12)
    assert out[0, 0, 0].tolist() == pytest.approx([a, (2 * a + b) / 3, (a + 2 * b) / 3, b], abs=1e-10)


def test_one_kept_pixel_spreads_everywhere():
    """With a single known pixel the exact solution is that pixel's value everywhere (per channel)."""
    image = torch.rand(1, 3, 48, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(1, 1, 48, 40)
    mask[0, 0, 7, 30] = 1
    out = linear_imputation(image, mask)
    assert torch.allclose(out, image[:, :, 7:8, 30:31].expand_as(out), atol=1e-5)


def test_noise_on_removed_pixels_only():
    image = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    masks = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(1)) > 0.5
    clean = linear_imputation(image, masks)
    noisy = noisy_linear_imputation(image, masks, noise=0.05, generator=torch.Generator().manual_seed(2))
    removed = ~masks.expand_as(image)
    deviation = (noisy - clean)[removed]  # about 12 000 draws
    assert deviation.std().item() == pytest.approx(0.05, rel=0.1)
    assert abs(deviation.mean().item()) < 0.005
    assert torch.equal(noisy[~removed], image[~removed])  # kept pixels bit for bit
    again = noisy_linear_imputation(image, masks, noise=0.05, generator=torch.Generator().manual_seed(2))
    other = noisy_linear_imputation(image, masks, noise=0.05, generator=torch.Generator().manual_seed(3))
    assert torch.equal(noisy, again) and not torch.equal(noisy, other)
    assert torch.equal(noisy_linear_imputation(image, masks, noise=0.0), clean)
    with pytest.raises(ValueError, match="noise"):
        noisy_linear_imputation(image, masks, noise=-0.1)


def test_all_kept_returns_the_image():
    image = torch.rand(2, 3, 16, 16)
    out = linear_imputation(image, torch.ones(2, 1, 16, 16, dtype=torch.bool))
    assert torch.equal(out, image) and out.data_ptr() != image.data_ptr()


def test_a_mask_keeping_no_pixel_is_refused():
    masks = torch.ones(3, 1, 8, 8)
    masks[1] = 0
    with pytest.raises(ValueError, match=r"masks \[1\].*keep no pixel.*keep at least one pixel"):
        linear_imputation(torch.rand(3, 3, 8, 8), masks)


@pytest.mark.parametrize(
    "masks",
    [
        torch.ones(2, 3, 8, 8),  # one channel per colour
        torch.ones(2, 8, 8),  # no channel axis
        torch.ones(3, 1, 8, 8),  # another batch size
        torch.ones(2, 1, 8, 9),  # another width
        "not a tensor",
    ],
    ids=["channels", "3d", "batch", "width", "type"],
)
def test_wrong_mask_shapes_are_refused(masks):
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\) = \(2, 1, 8, 8\)"):
        linear_imputation(torch.rand(2, 3, 8, 8), masks)


def test_wrong_values_and_dtypes_are_refused():
    images = torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\).*only 0 \(removed\) and 1 \(kept\)"):
        linear_imputation(images, torch.full((2, 1, 8, 8), 0.5))
    with pytest.raises(ValueError, match=r"bool, integer or floating point"):
        linear_imputation(images, torch.ones(2, 1, 8, 8, dtype=torch.complex64))
    with pytest.raises(ValueError, match=r"floating-point tensor of shape \(N, C, H, W\)"):
        linear_imputation(torch.ones(2, 3, 8, 8, dtype=torch.int64), torch.ones(2, 1, 8, 8))
    with pytest.raises(ValueError, match=r"floating-point tensor of shape \(N, C, H, W\)"):
        linear_imputation(torch.rand(3, 8, 8), torch.ones(1, 8, 8))
    with pytest.raises(ValueError, match="tol"):
        linear_imputation(images, torch.rand(2, 1, 8, 8) > 0.5, tol=0.0)


def test_mask_dtypes_image_dtypes_and_batching_agree():
    images = torch.rand(3, 3, 40, 56, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    keep = torch.rand(3, 1, 40, 56, generator=torch.Generator().manual_seed(1)) > 0.7
    reference = linear_imputation(images, keep)
    for masks in (keep.to(torch.uint8), keep.long(), keep.float(), keep.double()):
        assert torch.equal(linear_imputation(images, masks), reference)
    # alone, an image may get fewer multigrid levels than in the batch: equal up to the solver's tol
    alone = torch.cat([linear_imputation(images[i : i + 1], keep[i : i + 1], tol=1e-10) for i in range(3)])
    assert torch.allclose(alone, linear_imputation(images, keep, tol=1e-10), atol=1e-9)
    single = linear_imputation(images.float(), keep)
    assert single.dtype == torch.float32 and torch.allclose(single.double(), reference, atol=1e-5)
    half = linear_imputation(images.half(), keep)
    assert half.dtype == torch.float16 and torch.allclose(half.double(), reference, atol=2e-3)


@pytest.mark.parametrize(
    "device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"))]
)
def test_device_follows_the_input(device):
    images = torch.rand(2, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    masks = torch.rand(2, 1, 40, 40, generator=torch.Generator().manual_seed(1)) > 0.6
    generator = torch.Generator(device=device).manual_seed(0)
    out = noisy_linear_imputation(images.to(device), masks.to(device), noise=0.01, generator=generator)
    assert out.device.type == device
    clean = linear_imputation(images.to(device), masks.to(device)).cpu()
    assert torch.allclose(clean, linear_imputation(images, masks), atol=1e-5)


def test_unconverged_systems_warn():
    images, masks = torch.rand(1, 3, 64, 64), torch.rand(1, 1, 64, 64) > 0.99
    with pytest.warns(RuntimeWarning, match="did not reach tol"):
        linear_imputation(images, masks, max_iter=1)


def test_convolution_and_separable_neighbour_sums_agree(monkeypatch):
    """The GPU path (conv2d) and the CPU path (separable slices) are the same operator ``W``."""
    u = torch.randn(2, 3, 17, 10, dtype=torch.float64)
    assert torch.allclose(imputation._neighbour_sum(u), imputation._neighbour_sum_conv(u), atol=1e-14)
    images = torch.rand(2, 3, 24, 20, dtype=torch.float64)
    masks = torch.rand(2, 1, 24, 20) > 0.8
    separable = linear_imputation(images, masks)
    monkeypatch.setattr(imputation, "_neighbour_sum", imputation._neighbour_sum_conv)
    assert torch.allclose(linear_imputation(images, masks), separable, atol=1e-6)


def test_restriction_is_the_adjoint_of_prolongation():
    """``<P c, f> = <c, P^T f>``, which keeps the V-cycle preconditioner symmetric (odd sizes too)."""
    for fine, coarse in [((16, 12), (8, 6)), ((15, 7), (8, 4))]:
        c, f = torch.randn(2, 3, *coarse, dtype=torch.float64), torch.randn(2, 3, *fine, dtype=torch.float64)
        left = (imputation._prolong(c, fine) * f).sum()
        right = (c * imputation._restrict(f, coarse)).sum()
        assert left.item() == pytest.approx(right.item(), rel=1e-12)
