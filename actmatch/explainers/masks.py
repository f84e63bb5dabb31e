"""Binary masks from relevance maps: pixel rankings, top-k cuts and the image's border band.

Pure tensor geometry, shared by the fit (which cuts the U-Net's ranking) and the evaluation
(which cuts every method's map the same way). Maps are (B, 1, H, W), higher = more relevant;
masks are (B, 1, H, W) floats in {0, 1}, 1 = kept.
"""

from __future__ import annotations

import torch

__all__ = ["rank_pixels", "pixel_ranks", "keep_count", "cut", "top_fraction_mask", "border_band"]


def rank_pixels(saliency: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """(B, H·W) pixel indices by decreasing saliency; ties broken in a seeded random order.

    Random tie-breaking keeps binary or flat maps from being read in raster order.
    """
    flat = saliency.detach().flatten(1).float()  # (B, H·W)
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(flat.shape[1], generator=gen).to(flat.device)
    order = torch.argsort(flat[:, perm], dim=1, descending=True, stable=True)
    return perm[order]


def pixel_ranks(saliency: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """(B, H·W) rank of every pixel, 0 = most salient (the inverse of :func:`rank_pixels`)."""
    b, hw = saliency.shape[0], saliency[0].numel()
    ranks = torch.empty(b, hw, dtype=torch.long, device=saliency.device)
    return ranks.scatter_(1, rank_pixels(saliency, seed), torch.arange(hw, device=saliency.device).expand(b, -1))


def keep_count(fraction: float | list[float] | torch.Tensor, pixels: int, rows: int, device) -> torch.Tensor:
    """(rows,) k = round(fraction · pixels), the fraction taken in float32."""
    fraction = torch.as_tensor(fraction, dtype=torch.float32, device=device).expand(rows)
    return (fraction * pixels).round().long().clamp(0, pixels)


def cut(ranks: torch.Tensor, k: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Binary masks (B, 1, H, W): the k[b] top-ranked pixels of row b of ``ranks`` (B, H·W)."""
    return (ranks < k[:, None]).float().view(-1, 1, *size)


def top_fraction_mask(saliency: torch.Tensor, fraction: float | torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Binary masks (B, 1, H, W) keeping the top ``fraction`` of pixels of each map.

    ``fraction`` is a float or a (B,) tensor; k = round(fraction · H · W).
    """
    b, _, h, w = saliency.shape
    return cut(pixel_ranks(saliency, seed), keep_count(fraction, h * w, b, saliency.device), (h, w))


def border_band(mask: torch.Tensor, band: float = 0.03) -> torch.Tensor:
    """Boolean map, shaped as ``mask`` (..., H, W), of the pixels within ``band`` × short side of the
    image border (at least 1 pixel): where a frame along the border shows up."""
    height, width = mask.shape[-2:]
    k = max(1, round(band * min(height, width)))
    outer = torch.ones_like(mask, dtype=torch.bool)
    outer[..., k:-k, k:-k] = False
    return outer
