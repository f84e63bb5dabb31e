"""Small per-method map overlays for the benchmark's gallery in ``report.html``.

``maps/<image stem>/`` gets ``photo.png`` and one ``<method>.png`` per method (the map,
min-max normalised, in the jet colour map at 50 % over the photo), at most ``size`` px on
the long side, and ``index.json`` last (``{"image": ..., "files": {name: path}}``): the report
only uses a folder whose index names the image, so two images with the same stem get
``<stem>-2`` and a half-written folder is never shown.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

__all__ = ["write_method_maps", "overlay"]


def _photo_array(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) or (1, 3, H, W) float in [0, 1] -> (H, W, 3) float array."""
    image = image.detach().float().cpu()
    if image.dim() == 4:
        image = image[0]
    return image.clamp(0, 1).permute(1, 2, 0).numpy()  # (H, W, 3)


def overlay(photo: np.ndarray, saliency: torch.Tensor, alpha: float = 0.5) -> np.ndarray:
    """The map (any shape ending in (H, W)) min-max normalised, in jet, blended over ``photo`` (H, W, 3)."""
    from matplotlib import colormaps

    s = saliency.detach().float().cpu().reshape(saliency.shape[-2:])  # (H, W)
    if s.shape != photo.shape[:2]:
        s = torch.nn.functional.interpolate(s[None, None], size=photo.shape[:2], mode="bilinear")[0, 0]
    s = (s - s.min()) / (s.max() - s.min()).clamp_min(1e-12)
    heat = colormaps["jet"](s.numpy())[..., :3]  # (H, W, 3)
    return (1 - alpha) * photo + alpha * heat


def _save_small(array: np.ndarray, path: Path, size: int) -> None:
    image = Image.fromarray((array * 255).round().clip(0, 255).astype(np.uint8))
    image.thumbnail((size, size), Image.Resampling.BICUBIC)
    image.save(path)


def _folder(out_dir: Path, image_path: str) -> Path:
    """``maps/<stem>`` or the first ``maps/<stem>-N`` that is free or already holds this image."""
    stem, n = Path(image_path).stem, 1
    while True:
        folder = out_dir / "maps" / (stem if n == 1 else f"{stem}-{n}")
        index = folder / "index.json"
        if not index.is_file() or json.loads(index.read_text()).get("image") == str(image_path):
            return folder
        n += 1


def write_method_maps(
    out_dir: Path,
    image_path: str | Path,
    image_tensor: torch.Tensor,
    maps: dict[str, torch.Tensor | None],
    size: int = 160,
) -> dict[str, str]:
    """Save the photo and every method's map over it for the report's gallery.

    Args:
        out_dir: the benchmark's output folder.
        image_path: the image as named in results.csv (the report matches on it).
        image_tensor: the photo as the methods saw it, (3, H, W) or (1, 3, H, W) in [0, 1].
        maps: method -> its map ((1, 1, H, W), (1, H, W) or (H, W)), None where it failed.
        size: long side of the saved PNGs, px.

    Returns:
        ``{"photo": path, method: path, ...}``, paths relative to ``out_dir`` (failed methods left out).
    """
    out_dir = Path(out_dir)
    folder = _folder(out_dir, str(image_path))
    folder.mkdir(parents=True, exist_ok=True)
    photo = _photo_array(image_tensor)
    _save_small(photo, folder / "photo.png", size)
    files = {"photo": (folder / "photo.png").relative_to(out_dir).as_posix()}
    for method, saliency in maps.items():
        if saliency is None:
            continue
        path = folder / f"{method}.png"
        _save_small(overlay(photo, saliency), path, size)
        files[method] = path.relative_to(out_dir).as_posix()
    tmp = folder / ".index.json.tmp"
    tmp.write_text(json.dumps({"image": str(image_path), "files": files}, indent=2) + "\n")
    os.replace(tmp, folder / "index.json")
    return files
