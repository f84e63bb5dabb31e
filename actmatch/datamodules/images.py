"""Reading images to explain: any PIL-readable file, converted to RGB, sized for the backbone.

Policy for sizes: the image is resized so that its short side equals the backbone's input size
(e.g. 224), keeping the aspect ratio (both up and down), and classified whole, without a crop,
so the mask covers every pixel of the file. Models with a fixed input size (ViT, DeiT) get
exactly (size, size). Files whose short side is under :data:`MIN_SIDE` pixels are refused:
upsampling so little evidence says nothing about the image.
"""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

__all__ = [
    "ImageReadError",
    "MIN_SIDE",
    "IMAGE_SUFFIXES",
    "read_rgb",
    "to_tensor",
    "resize_for_model",
    "load_image",
    "expand_image_paths",
]

MIN_SIDE = 16
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class ImageReadError(ValueError):
    """An image file is missing, unreadable, truncated, not an image or too small."""


def read_rgb(path: str | Path) -> Image.Image:
    """Open ``path`` fully and convert it to 8-bit RGB.

    Grayscale, palette, RGBA/LA (alpha composited on white), CMYK and 16/32-bit integer or
    float images are converted. Errors name the file.
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"{path}: no such file")
    if not path.is_file():
        raise ImageReadError(f"{path}: not a file")
    try:
        with Image.open(path) as img:
            img.load()  # decode now: a truncated file fails here, not later
            return _to_rgb(img)
    except UnidentifiedImageError as err:
        raise ImageReadError(f"{path}: not an image PIL can read") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageReadError(f"{path}: unreadable or truncated image ({err})") from err


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16"):
            arr = arr / 65535.0
        else:  # 32-bit int or float: stretch the observed range
            lo, hi = float(arr.min()), float(arr.max())
            arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
        img = Image.fromarray((arr * 255).round().astype(np.uint8))  # 2-D uint8 -> mode L
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image to a float tensor (3, H, W) in [0, 1]."""
    arr = np.array(img, dtype=np.float32, copy=True) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def resize_for_model(image: torch.Tensor, size: int, fixed: bool = False) -> torch.Tensor:
    """Resize (3, H, W) so the short side is ``size`` (or to size×size if ``fixed``)."""
    height, width = image.shape[-2:]
    if min(height, width) < MIN_SIDE:
        raise ImageReadError(f"image of {width}x{height} pixels is too small (the short side must be >= {MIN_SIDE})")
    if fixed:
        out_size = (size, size)
    else:
        scale = size / min(height, width)
        out_size = (max(1, round(height * scale)), max(1, round(width * scale)))
    if out_size == (height, width):
        return image
    out = F.interpolate(image[None], size=out_size, mode="bicubic", align_corners=False, antialias=True)[0]
    return out.clamp(0, 1)


def load_image(path: str | Path, size: int, fixed: bool = False) -> tuple[torch.Tensor, tuple[int, int]]:
    """Read ``path`` and size it for the model.

    Returns:
        (image, (height, width)): the (3, h, w) tensor in [0, 1] for the model and the file's
        original size, at which masks are written.
    """
    img = read_rgb(path)
    width, height = img.size
    try:
        tensor = resize_for_model(to_tensor(img), size, fixed)
    except ImageReadError as err:
        raise ImageReadError(f"{path}: {err}") from err
    return tensor, (height, width)


def expand_image_paths(items: list[str | Path]) -> list[Path]:
    """Files, folders (their image files, sorted) and glob patterns, in the order given.

    Paths that do not exist are kept, so that the caller reports them by name.
    """
    paths: list[Path] = []
    for item in items:
        item_path = Path(item)
        if item_path.is_dir():
            paths.extend(sorted(p for p in item_path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
        elif any(ch in str(item) for ch in "*?[") and not item_path.exists():
            paths.extend(sorted(Path(p) for p in glob.glob(str(item), recursive=True)))
        else:
            paths.append(item_path)
    return paths
