"""Random backgrounds for the robustness term and metric, and fill values for removed pixels.

All images are in [0, 1] pixel space, shape (B, 3, H, W).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "BackgroundSampler",
    "cycled_backgrounds",
    "dead_leaves",
    "pink_noise",
    "gaussian_blur",
    "make_fill",
    "FILLS",
    "FAMILY_OF_KIND",
    "FAMILY_OF_FILL",
    "FIT_KINDS",
]

FILLS = ("mean", "black", "blur")
#: the evaluation family (actmatch.evaluation.families) each background kind belongs to
FAMILY_OF_KIND = {
    "uniform": "noise",
    "gaussian": "noise",
    "solid": "solid",
    "blur": "blur",
    "shuffle": "photos",
    "dead_leaves": "dead_leaves",
    "pink": "pink_noise",
}
#: the background kinds a fit draws by default: none of them is a held-out family of the evaluation
#: (blur and other photos are; see actmatch.evaluation.families)
FIT_KINDS = ("solid", "uniform", "gaussian", "dead_leaves", "pink")
#: the evaluation family each fill belongs to
FAMILY_OF_FILL = {"mean": "fill", "black": "fill", "blur": "blur"}


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


def dead_leaves(like: torch.Tensor, discs: int = 400, r_min: float = 0.02, r_max: float = 0.3) -> torch.Tensor:
    """Dead-leaves images shaped like ``like`` (B, 3, H, W), from the global RNG: ``discs`` discs of
    random colours dropped one over the other, radii r with density ∝ r⁻³ on [r_min, r_max] × the
    short side (the occlusion model whose statistics resemble natural images', Lee et al. 2001;
    used to pretrain CNNs without photos by Baradad et al. 2021). Drawn at a quarter of the
    resolution and upsampled (nearest); a first disc covers the whole image."""
    b, c, height, width = like.shape
    h, w = max(1, height // 4), max(1, width // 4)
    side = min(h, w)
    u = torch.rand(b, discs, device=like.device)
    # inverse CDF of p(r) ∝ r^-3 on [r_min, r_max]: r = (r_min^-2 − u (r_min^-2 − r_max^-2))^(-1/2)
    radius = (r_min**-2 - u * (r_min**-2 - r_max**-2)) ** -0.5 * side  # (B, N)
    radius[:, 0] = 2 * (h + w)
    cy, cx = torch.rand(b, discs, device=like.device) * h, torch.rand(b, discs, device=like.device) * w
    colours = torch.rand(b, discs, c, device=like.device, dtype=like.dtype)
    yy = torch.arange(h, device=like.device).view(1, 1, h, 1)
    xx = torch.arange(w, device=like.device).view(1, 1, 1, w)
    inside = (yy - cy[..., None, None]) ** 2 + (xx - cx[..., None, None]) ** 2 <= radius[..., None, None] ** 2  # (B, N, h, w)
    top = (inside * torch.arange(1, discs + 1, device=like.device).view(1, -1, 1, 1)).argmax(1)  # (B, h, w): the last disc
    small = colours.gather(1, top.flatten(1)[..., None].expand(-1, -1, c)).view(b, h, w, c).permute(0, 3, 1, 2)
    return F.interpolate(small, size=(height, width), mode="nearest").contiguous()


def pink_noise(like: torch.Tensor) -> torch.Tensor:
    """1/f ("pink") noise shaped like ``like`` (B, 3, H, W), from the global RNG: white noise whose
    spectrum is scaled by 1/|f| (the power spectrum of natural images falls as 1/f²), each channel
    rescaled to [0, 1]."""
    b, c, h, w = like.shape
    white = torch.randn(b, c, h, w, device=like.device)
    fy = torch.fft.fftfreq(h, device=like.device).view(-1, 1)
    fx = torch.fft.rfftfreq(w, device=like.device).view(1, -1)
    scale = 1.0 / (fy**2 + fx**2).sqrt().clamp_min(1.0 / max(h, w))
    noise = torch.fft.irfft2(torch.fft.rfft2(white) * scale, s=(h, w))
    low, high = noise.amin((-2, -1), keepdim=True), noise.amax((-2, -1), keepdim=True)
    return ((noise - low) / (high - low).clamp_min(1e-8)).to(like.dtype)


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
    (another image of the batch; falls back to ``uniform`` for a batch of one),
    ``dead_leaves`` (:func:`dead_leaves`: random discs, natural-image-like occlusions and edges)
    and ``pink`` (:func:`pink_noise`: 1/f noise, natural images' spectrum).
    Each image draws its kind uniformly from ``kinds``.

    Args:
        kinds: the kinds to draw from; None means all of them.
    """

    KINDS = ("uniform", "gaussian", "blur", "solid", "shuffle", "dead_leaves", "pink")

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
        if kind == "dead_leaves":
            return dead_leaves(images)
        if kind == "pink":
            return pink_noise(images)
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


def cycled_backgrounds(image: torch.Tensor, n: int, kinds: tuple[str, ...]) -> torch.Tensor:
    """(n, 3, H, W) backgrounds of the fit's own for one image (1, 3, H, W), from the global RNG:
    background j is of kind ``kinds[j % len(kinds)]`` (:class:`BackgroundSampler`), so every kind
    is covered however few backgrounds there are."""
    samplers = {k: BackgroundSampler([k]) for k in kinds}
    reps = image.expand(n, -1, -1, -1)
    bg = torch.empty_like(reps)
    for j in range(n):
        bg[j] = samplers[kinds[j % len(kinds)]](reps[j : j + 1])[0]
    return bg
