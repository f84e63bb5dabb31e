"""Reading images to explain: any PIL-readable file, converted to RGB, sized for the backbone.

Policy for sizes: the image is resized so that its short side equals the backbone's input size
(e.g. 224), keeping the aspect ratio (both up and down), and classified whole, without a crop,
so the mask covers every pixel of the file. Models with a fixed input size (ViT, DeiT) get
exactly (size, size). Files whose short side is under :data:`MIN_SIDE` pixels are refused:
upsampling so little evidence says nothing about the image.

Every image file the package reads goes through :func:`open_image`: the picture as viewers show
it (a phone photo's EXIF orientation applied, so masks are drawn on the upright picture), and a
refusal, naming the file, of files over Pillow's decompression-bomb limit (raise it for files
you trust with the environment variable ``ACTMATCH_MAX_IMAGE_PIXELS``).
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "ImageReadError",
    "MIN_SIDE",
    "IMAGE_SUFFIXES",
    "PIXEL_LIMIT_ENV",
    "pixel_limit",
    "open_image",
    "read_rgb",
    "to_tensor",
    "resize_for_model",
    "read_for_model",
    "load_image",
    "ImageItem",
    "expand_image_items",
    "file_items",
    "expand_image_paths",
]

MIN_SIDE = 16
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
PIXEL_LIMIT_ENV = "ACTMATCH_MAX_IMAGE_PIXELS"


class ImageReadError(ValueError):
    """An image file is missing, unreadable, truncated, not an image or too small."""


def pixel_limit() -> int | None:
    """The most pixels an image file may have: Pillow's decompression-bomb limit.

    That is ``PIL.Image.MAX_IMAGE_PIXELS`` (about 89 million pixels by default; None: no limit),
    unless the environment variable ``ACTMATCH_MAX_IMAGE_PIXELS`` holds a whole number: then
    that number, which also becomes Pillow's limit (so that Pillow's own checks agree).

    Raises:
        ImageReadError: the variable is set but not a positive whole number.
    """
    value = os.environ.get(PIXEL_LIMIT_ENV, "").strip()
    if not value:
        return Image.MAX_IMAGE_PIXELS
    try:
        limit = int(value.replace("_", ""))
    except ValueError:
        limit = 0
    if limit <= 0:
        raise ImageReadError(
            f"{PIXEL_LIMIT_ENV}={value!r} is not a positive whole number of pixels; "
            f"set it to the pixel count (width x height) of the largest image to read, or unset it"
        )
    Image.MAX_IMAGE_PIXELS = limit
    return limit


def _too_large(path: Path, limit: int, pixels: int | None, size: str = "") -> ImageReadError:
    found = f"its {size}{pixels:,} pixels" if pixels else "its pixel count"
    return ImageReadError(
        f"{path}: refused, {found} is over the limit of {limit:,} pixels (Pillow's guard against "
        f"decompression bombs); if you trust the file, set {PIXEL_LIMIT_ENV}={pixels or 'PIXELS'} (or more)"
    )


def open_image(path: str | Path) -> Image.Image:
    """Open ``path`` fully, upright: the picture as image viewers show it.

    The file's EXIF orientation (a phone photo stores its pixels sideways plus this tag) is
    applied with ``PIL.ImageOps.exif_transpose``, so the pixels, the size and everything drawn
    on them are those of the upright picture. The mode is the file's (see :func:`read_rgb`).

    Raises:
        ImageReadError: naming the file, when it is missing, not a file, not an image PIL can
            read, truncated, or over :func:`pixel_limit` (the message says how to raise it).
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"{path}: no such file")
    if not path.is_file():
        raise ImageReadError(f"{path}: not a file")
    limit = pixel_limit()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below, by name
            with Image.open(path) as img:
                width, height = img.size
                if limit is not None and width * height > limit:
                    raise _too_large(path, limit, width * height, f"{width}x{height} = ")
                img.load()  # decode now: a truncated file fails here, not later
                return ImageOps.exif_transpose(img)
    except ImageReadError:
        raise
    except Image.DecompressionBombError as err:  # over twice Pillow's limit: refused by Image.open
        found = re.search(r"\((\d+) pixels\)", str(err))
        assert limit is not None  # Pillow refuses a file only under a limit (pixel_limit() is Pillow's)
        raise _too_large(path, limit, int(found[1]) if found else None) from err
    except UnidentifiedImageError as err:
        raise ImageReadError(f"{path}: not an image PIL can read") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageReadError(f"{path}: unreadable or truncated image ({err})") from err


def read_rgb(path: str | Path) -> Image.Image:
    """Open ``path`` fully, upright (see :func:`open_image`), and convert it to 8-bit RGB.

    Grayscale, palette, RGBA/LA (alpha composited on white), CMYK and 16/32-bit integer or
    float images are converted. Errors name the file.
    """
    return _to_rgb(open_image(path))


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


def read_for_model(path: str | Path, size: int, fixed: bool = False) -> tuple[Image.Image, torch.Tensor]:
    """The file as RGB and its (3, h, w) model input in [0, 1] (see :func:`resize_for_model`);
    errors name the file."""
    img = read_rgb(path)
    try:
        return img, resize_for_model(to_tensor(img), size, fixed)
    except ImageReadError as err:
        raise ImageReadError(f"{path}: {err}") from err


def load_image(path: str | Path, size: int, fixed: bool = False) -> tuple[torch.Tensor, tuple[int, int]]:
    """Read ``path`` and size it for the model.

    Returns:
        (image, (height, width)): the (3, h, w) tensor in [0, 1] for the model and the file's
        original size, at which masks are written.
    """
    img, tensor = read_for_model(path, size, fixed)
    width, height = img.size
    return tensor, (height, width)


@dataclass(frozen=True)
class ImageItem:
    """One image to explain and the folder its results go to.

    Attributes:
        path: the file (may not exist: the caller reports it by name).
        folder: output folder relative to the output root, posix, without the file's suffix:
            the path under the input folder it was found in (``n01440764/img_001``), the stem
            for a file named on its own, and ``<that>-<8 hex digits of the resolved path>``
            when two different files would share it.
    """

    path: Path
    folder: str


def _glob_root(pattern: str) -> Path:
    """The leading part of a glob pattern without wildcards (``data/*/x.jpg`` -> ``data``)."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts:
        if any(ch in part for ch in "*?["):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _is_hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _relative_folder(path: Path, root: Path | None) -> str:
    relative = path.relative_to(root) if root is not None else Path(path.name)
    return relative.with_suffix("").as_posix()


def _path_digest(path: Path) -> str:
    return hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]


def _found(item: str | Path) -> list[tuple[Path, Path | None]]:
    """(file, root it was found under or None) for one command-line item."""
    item_path = Path(item)
    if item_path.is_dir():
        files = (p for p in item_path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        return [(p, item_path) for p in sorted(files) if not _is_hidden(p, item_path)]
    if any(ch in str(item) for ch in "*?[") and not item_path.exists():
        root = _glob_root(str(item))
        matches = sorted(Path(p) for p in glob.glob(str(item), recursive=True))
        return [(p, root) for p in matches if p.is_file() or not p.exists()]
    return [(item_path, None)]


def expand_image_items(items: Sequence[str | Path]) -> list[ImageItem]:
    """Files, folders (their image files, recursively, sorted; hidden ones skipped) and glob
    patterns, in the order given, each with its output folder (see :class:`ImageItem`).

    A file reached twice (named and inside a named folder) is kept once. Paths that do not
    exist are kept, so that the caller reports them by name.
    """
    found, seen = [], set()
    for item in items:
        for path, root in _found(item):
            key = path.resolve()
            if key not in seen:
                seen.add(key)
                found.append((path, _relative_folder(path, root)))
    return _unique_folders(found)


def _unique_folders(found: list[tuple[Path, str]]) -> list[ImageItem]:
    """Items; a folder shared by different files becomes ``<folder>-<hash of the path>`` for each."""
    counts: dict[str, int] = {}
    for _, folder in found:
        counts[folder] = counts.get(folder, 0) + 1
    return [ImageItem(path, folder if counts[folder] == 1 else f"{folder}-{_path_digest(path)}") for path, folder in found]


def file_items(paths: Sequence[str | Path]) -> list[ImageItem]:
    """Items for files named on their own: the folder is the stem (see :class:`ImageItem`)."""
    return _unique_folders([(Path(p), Path(p).stem) for p in paths])


def expand_image_paths(items: Sequence[str | Path]) -> list[Path]:
    """The files of :func:`expand_image_items`, in order."""
    return [item.path for item in expand_image_items(items)]
