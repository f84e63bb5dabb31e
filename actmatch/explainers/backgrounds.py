"""Random backgrounds for the robustness term and metric, and fill values for removed pixels.

All images are in [0, 1] pixel space, shape (B, 3, H, W).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["BackgroundSampler", "gaussian_blur", "make_fill", "FILLS"]

FILLS = ("mean", "black", "blur")


def gaussian_blur(images: torch.Tensor, sigma: float | None = None) -> torch.Tensor:
    """Separable Gaussian blur; sigma defaults to 1/20 of the short side (a heavy blur)."""
    height, width = images.shape[-2:]
    sigma = sigma or max(1.0, min(height, width) / 20)
    radius = int(3 * sigma)
    grid = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-(grid**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    kh = kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)
    kw = kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
    x = F.pad(images, (0, 0, radius, radius), mode="reflect" if radius < height else "replicate")
    x = F.conv2d(x, kh, groups=channels)
    x = F.pad(x, (radius, radius, 0, 0), mode="reflect" if radius < width else "replicate")
    return F.conv2d(x, kw, groups=channels)


def make_fill(images: torch.Tensor, fill: str, mean: tuple[float, float, float]) -> torch.Tensor:
    """Value of the removed pixels.

    ``mean``: the dataset mean colour (zero in normalised space); ``black``: zeros;
    ``blur``: a heavily blurred copy of the image.
    """
    if fill == "mean":
        return torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1).expand_as(images)
    if fill == "black":
        return torch.zeros_like(images)
    if fill == "blur":
        return gaussian_blur(images)
    raise ValueError(f"unknown fill {fill!r}; choose one of {FILLS}")


class BackgroundSampler:
    """Draws one random background per image.

    Kinds: ``uniform`` (i.i.d. U[0,1] pixels), ``gaussian`` (N(0.5, 0.25²) clipped),
    ``blur`` (a blurred copy of the image), ``solid`` (a random solid colour), ``shuffle``
    (another image of the batch; falls back to ``uniform`` for a batch of one).
    Each image draws its kind uniformly from ``kinds``.

    Args:
        kinds: the kinds to draw from; None means all of them.
    """

    KINDS = ("uniform", "gaussian", "blur", "solid", "shuffle")

    def __init__(self, kinds: list[str] | tuple[str, ...] | None = None) -> None:
        kinds = list(kinds) if kinds is not None else list(self.KINDS)
        unknown = [k for k in kinds if k not in self.KINDS]
        if not kinds or unknown:
            raise ValueError(f"BackgroundSampler: unknown or empty kinds {unknown or kinds}; choose from {self.KINDS}")
        self.kinds = kinds

    def sample_kind(self, images: torch.Tensor, kind: str) -> torch.Tensor:
        """Backgrounds of one kind for the whole batch, shape like ``images``."""
        b = images.shape[0]
        if kind == "uniform" or (kind == "shuffle" and b < 2):
            return torch.rand_like(images)
        if kind == "gaussian":
            return (0.5 + 0.25 * torch.randn_like(images)).clamp(0, 1)
        if kind == "blur":
            return gaussian_blur(images)
        if kind == "solid":
            return torch.rand(b, images.shape[1], 1, 1, dtype=images.dtype, device=images.device).expand_as(images)
        shift = int(torch.randint(1, b, ()).item())
        return images.roll(shift, dims=0)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        images = images.detach()
        if len(self.kinds) == 1:
            return self.sample_kind(images, self.kinds[0])
        choice = torch.randint(len(self.kinds), (images.shape[0],))
        out = torch.empty_like(images)
        for i, kind in enumerate(self.kinds):
            rows = (choice == i).nonzero().flatten()
            if len(rows):
                out[rows] = self.sample_kind(images, kind)[rows].to(out.dtype)  # blur is bf16 under autocast
        return out
