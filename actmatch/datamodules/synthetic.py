"""Synthetic images with ground-truth evidence: the framework's test bench without ImageNet.

Each image has a textured or cluttered background and a few distractors (rings, bars, dots:
shapes that never decide a class), all in desaturated colours, and one **class object**
whose shape (disk, square, triangle, cross, ...) and saturated class colour decide the label.
Everything that identifies the class is in that one object, and the sample comes with its
pixel mask as ``evidence_mask``. (Colour makes the set learnable by a small CPU-trained
classifier in a couple of minutes; shape alone takes far longer.)

The **shortcut** variant draws the object in a desaturated colour with a shape that agrees
with the label only with probability ``object_agreement`` (chance by default), and adds a
small patch in the class colour: the patch predicts the class perfectly. A classifier
trained on it learns the patch; a faithful explainer puts its mask on the patch
(``evidence_mask`` is then the patch and ``object_mask`` the object).

Every sample is a pure function of ``(seed, index)``: datasets are deterministic and splits
with different seeds are disjoint draws.
"""

from __future__ import annotations

import math
from functools import lru_cache, partial

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

__all__ = ["SHAPES", "PATCH_COLOURS", "SyntheticEvidence", "SyntheticDataModule", "render_shape", "write_images"]

SHAPES = ("disk", "square", "triangle", "cross", "diamond", "ring_square")
DISTRACTORS = ("ring", "bar", "dot")
# one saturated colour per class (the class object, or the shortcut patch)
PATCH_COLOURS = (
    (1.0, 0.0, 0.0),
    (0.0, 0.9, 0.0),
    (0.0, 0.3, 1.0),
    (1.0, 0.9, 0.0),
    (1.0, 0.0, 1.0),
    (0.0, 1.0, 1.0),
)
VARIANTS = ("object", "shortcut")
BACKGROUNDS = ("texture", "clutter")


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel row and column coordinates, each (size, size)."""
    rows, cols = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij")
    return rows, cols


def render_shape(kind: str, size: int, cy: float, cx: float, radius: float, angle: float = 0.0) -> torch.Tensor:
    """Boolean mask (size, size) of one shape centred at (cy, cx) with the given radius.

    Kinds: the class shapes in :data:`SHAPES` and the distractors in :data:`DISTRACTORS`.
    """
    ys, xs = _grid(size)
    dy, dx = ys - cy, xs - cx
    c, s = math.cos(angle), math.sin(angle)
    u, v = c * dx + s * dy, -s * dx + c * dy  # rotated coordinates
    r = radius
    if kind == "disk":
        return dx**2 + dy**2 <= r**2
    if kind == "square":
        return (u.abs() <= 0.8 * r) & (v.abs() <= 0.8 * r)
    if kind == "triangle":  # upright, rotation kept small so it stays a triangle
        return (v <= 0.6 * r) & (v >= -r + 1.6 * u.abs())
    if kind == "cross":
        arm = 0.3 * r
        return ((u.abs() <= arm) & (v.abs() <= r)) | ((v.abs() <= arm) & (u.abs() <= r))
    if kind == "diamond":
        return u.abs() + v.abs() <= r
    if kind == "ring_square":
        outer = (u.abs() <= 0.9 * r) & (v.abs() <= 0.9 * r)
        inner = (u.abs() <= 0.45 * r) & (v.abs() <= 0.45 * r)
        return outer & ~inner
    if kind == "ring":
        d2 = dx**2 + dy**2
        return (d2 <= r**2) & (d2 >= (0.7 * r) ** 2)
    if kind == "bar":
        return (u.abs() <= r) & (v.abs() <= 0.15 * r + 0.5)
    if kind == "dot":
        return dx**2 + dy**2 <= (0.4 * r) ** 2
    raise ValueError(f"unknown shape {kind!r}; choose one of {SHAPES + DISTRACTORS}")


class SyntheticEvidence(Dataset):
    """Procedurally generated images whose class is decided by one object (or a shortcut patch).

    Each item is a dict: ``image`` (3, S, S) in [0, 1], ``label`` (int64), ``evidence_mask``
    (1, S, S) in {0, 1} (the pixels that decide the class) and ``object_mask`` (the class
    object; equal to ``evidence_mask`` in the ``object`` variant).

    Args:
        size: number of images.
        num_classes: classes, one per shape of :data:`SHAPES` (2 to 6).
        image_size: side S of the square images.
        variant: ``object`` (the shape decides) or ``shortcut`` (a patch colour decides).
        background: ``texture`` (random gratings and noise) or ``clutter`` (many faint shapes).
        distractors: (min, max) number of distractor shapes.
        object_agreement: shortcut variant only: probability that the object's shape also
            matches the label (otherwise it is drawn uniformly).
        patch_size: side of the shortcut patch in pixels (default S/8).
        seed: base seed; item i uses ``seed * 1_000_003 + i``.
    """

    def __init__(
        self,
        size: int = 1000,
        num_classes: int = 4,
        image_size: int = 64,
        variant: str = "object",
        background: str = "texture",
        distractors: tuple[int, int] = (2, 4),
        object_agreement: float = 0.0,
        patch_size: int | None = None,
        seed: int = 0,
    ) -> None:
        if not 2 <= num_classes <= len(SHAPES):
            raise ValueError(f"num_classes must be in [2, {len(SHAPES)}] (one per shape {SHAPES}), got {num_classes}")
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; choose one of {VARIANTS}")
        if background not in BACKGROUNDS:
            raise ValueError(f"unknown background {background!r}; choose one of {BACKGROUNDS}")
        if image_size < 32:
            raise ValueError(f"image_size must be >= 32 so shapes stay recognisable, got {image_size}")
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        lo, hi = distractors
        if not 0 <= lo <= hi:
            raise ValueError(f"distractors must be (min, max) with 0 <= min <= max, got {distractors}")
        if not 0 <= object_agreement <= 1:
            raise ValueError(f"object_agreement must be in [0, 1], got {object_agreement}")
        self.size, self.num_classes, self.image_size = size, num_classes, image_size
        self.variant, self.background, self.distractors = variant, background, (lo, hi)
        self.object_agreement = object_agreement
        self.patch_size = patch_size or max(4, image_size // 8)
        self.seed = seed

    def __len__(self) -> int:
        return self.size

    @property
    def class_names(self) -> list[str]:
        return list(SHAPES[: self.num_classes])

    # ------------------------------------------------------------------ drawing
    def _background(self, g: torch.Generator) -> torch.Tensor:
        s = self.image_size
        ys, xs = (t / (s - 1) for t in _grid(s))
        base = self._dull(g)  # (3, 1, 1)
        img = base.expand(3, s, s).clone()
        if self.background == "texture":
            for _ in range(3):  # random coloured gratings
                freq = 2 + 10 * torch.rand(1, generator=g).item()
                theta = math.pi * torch.rand(1, generator=g).item()
                phase = 2 * math.pi * torch.rand(1, generator=g).item()
                wave = torch.sin(2 * math.pi * freq * (xs * math.cos(theta) + ys * math.sin(theta)) + phase)
                img = img + 0.12 * (torch.rand(1, generator=g) - 0.5) * 2 * wave
        else:  # clutter: many faint small shapes
            for _ in range(12):
                kind = DISTRACTORS[int(torch.randint(len(DISTRACTORS), (1,), generator=g))]
                cy, cx = (torch.rand(2, generator=g) * s).tolist()
                m = render_shape(
                    kind,
                    s,
                    cy,
                    cx,
                    s * (0.04 + 0.06 * torch.rand(1, generator=g).item()),
                    math.pi * torch.rand(1, generator=g).item(),
                )
                img = torch.where(m, 0.7 * img + 0.3 * self._dull(g), img)
        img = img + 0.05 * torch.randn(3, s, s, generator=g)
        return img

    def _place(self, g: torch.Generator, radius: float, occupied: torch.Tensor) -> tuple[float, float]:
        s = self.image_size
        for _ in range(20):  # try to avoid overlapping what is already drawn
            cy, cx = (radius + torch.rand(2, generator=g) * (s - 2 * radius)).tolist()
            y0, y1 = int(max(0, cy - radius)), int(min(s, cy + radius + 1))
            x0, x1 = int(max(0, cx - radius)), int(min(s, cx + radius + 1))
            if not occupied[y0:y1, x0:x1].any():
                break
        return cy, cx

    @staticmethod
    def _dull(g: torch.Generator) -> torch.Tensor:
        """A random desaturated colour (3, 1, 1): grey level plus a faint tint."""
        grey = 0.15 + 0.7 * torch.rand(1, generator=g)
        return (grey + 0.16 * (torch.rand(3, generator=g) - 0.5)).clamp(0, 1).view(3, 1, 1)

    @classmethod
    def _colour(cls, g: torch.Generator, avoid: torch.Tensor) -> torch.Tensor:
        """A random desaturated colour whose grey level differs from ``avoid`` (3,)."""
        for _ in range(10):
            colour = cls._dull(g)
            if (colour.mean() - avoid.mean()).abs() > 0.2:
                break
        return colour

    @staticmethod
    def _class_colour(g: torch.Generator, label: int) -> torch.Tensor:
        """The class's saturated colour with a little brightness jitter (3, 1, 1)."""
        return (torch.tensor(PATCH_COLOURS[label]) * (0.8 + 0.2 * torch.rand(1, generator=g))).view(3, 1, 1)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} images")
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        s = self.image_size
        label = int(torch.randint(self.num_classes, (1,), generator=g))
        img = self._background(g)
        bg_colour = img.mean((1, 2))
        occupied = torch.zeros(s, s, dtype=torch.bool)

        shape = label
        if self.variant == "shortcut" and torch.rand(1, generator=g).item() >= self.object_agreement:
            shape = int(torch.randint(self.num_classes, (1,), generator=g))
        radius = s * (0.12 + 0.06 * torch.rand(1, generator=g).item())
        cy, cx = self._place(g, radius, occupied)
        angle = (torch.rand(1, generator=g).item() - 0.5) * 0.5
        obj = render_shape(SHAPES[shape], s, cy, cx, radius, angle)
        colour = self._class_colour(g, label) if self.variant == "object" else self._colour(g, bg_colour)
        img = torch.where(obj, colour, img)
        occupied |= obj

        lo, hi = self.distractors
        for _ in range(int(torch.randint(lo, hi + 1, (1,), generator=g))):
            kind = DISTRACTORS[int(torch.randint(len(DISTRACTORS), (1,), generator=g))]
            r = s * (0.06 + 0.06 * torch.rand(1, generator=g).item())
            dy, dx = self._place(g, r, occupied)
            m = render_shape(kind, s, dy, dx, r, math.pi * torch.rand(1, generator=g).item()) & ~occupied
            img = torch.where(m, self._colour(g, bg_colour), img)
            occupied |= m

        evidence = obj
        if self.variant == "shortcut":
            p = self.patch_size
            for _ in range(50):  # a free spot for the patch
                y, x = torch.randint(0, s - p + 1, (2,), generator=g).tolist()
                if not occupied[y : y + p, x : x + p].any():
                    break
            patch = torch.zeros(s, s, dtype=torch.bool)
            patch[y : y + p, x : x + p] = True
            img = torch.where(patch, torch.tensor(PATCH_COLOURS[label]).view(3, 1, 1), img)
            obj = obj & ~patch
            evidence = patch
        return {
            "image": img.clamp(0, 1),  # (3, S, S)
            "label": torch.tensor(label),
            "evidence_mask": evidence[None].float(),  # (1, S, S)
            "object_mask": obj[None].float(),
        }


class SyntheticDataModule(L.LightningDataModule):
    """Train/val/test/predict splits of :class:`SyntheticEvidence` with disjoint seeds.

    Batches are dicts ``{"image", "label", "evidence_mask", "object_mask"}``; the explainer
    reads ``image``, the evidence metrics read the masks, the classifier trainer reads ``label``.

    Args:
        num_classes: number of classes (shapes).
        image_size: image side in pixels.
        variant: ``object`` or ``shortcut`` (see :class:`SyntheticEvidence`).
        background: ``texture`` or ``clutter``.
        train_size: training images; val_size / test_size: held-out images.
        batch_size: batch size of every loader.
        num_workers: DataLoader workers.
        distractors: (min, max) distractors per image.
        object_agreement: shortcut variant: probability the object also matches the label.
        seed: base seed; the splits use seed, seed + 1 and seed + 2.
    """

    def __init__(
        self,
        num_classes: int = 4,
        image_size: int = 64,
        variant: str = "object",
        background: str = "texture",
        train_size: int = 2000,
        val_size: int = 200,
        test_size: int = 200,
        batch_size: int = 32,
        num_workers: int = 0,
        distractors: tuple[int, int] = (2, 4),
        object_agreement: float = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        make = partial(
            SyntheticEvidence,
            num_classes=num_classes,
            image_size=image_size,
            variant=variant,
            background=background,
            distractors=distractors,
            object_agreement=object_agreement,
        )
        self.train_set = make(train_size, seed=seed)
        self.val_set = make(val_size, seed=seed + 1)
        self.test_set = make(test_size, seed=seed + 2)
        self.batch_size, self.num_workers = batch_size, num_workers

    def _loader(self, dataset: Dataset, shuffle: bool = False) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set)


def write_images(dataset: SyntheticEvidence, folder, count: int | None = None) -> list:
    """Write the first ``count`` items as ``folder/NNNN_label<y>.png`` plus their evidence masks as
    ``folder/masks/NNNN_label<y>.png`` (0/255), for ``actmatch explain``; returns the image paths."""
    from pathlib import Path

    import numpy as np
    from PIL import Image

    folder = Path(folder)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(min(count or len(dataset), len(dataset))):
        item = dataset[i]
        name = f"{i:04d}_label{int(item['label'])}.png"
        image = (item["image"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)  # (S, S, 3)
        Image.fromarray(image).save(folder / name)
        Image.fromarray((item["evidence_mask"][0].numpy() > 0).astype(np.uint8) * 255).save(folder / "masks" / name)
        paths.append(folder / name)
    return paths
