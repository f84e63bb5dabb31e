"""ImageNet-style folders: the standard split layout and a flat folder of ``<wnid>_*.JPEG`` files.

Two layouts are recognised under ``root``:

* split: ``root/train/<wnid>/*.JPEG`` and ``root/val/<wnid>/*.JPEG`` (either split may be
  missing; a missing ``val`` reuses ``train`` and vice versa);
* flat: ``root/<wnid>_<anything>.JPEG`` (like ``../shared/data/imagenet-sample``); the same
  files serve every stage unless ``val_fraction`` holds some out. The explainer never uses the
  labels for training (it explains the classifier's own top-1), so this is legitimate for
  amortized training on a small sample.

Labels are ImageNet-1k indices (``timm.data.ImageNetInfo``), so they line up with the logits
of an ImageNet classifier. Transforms come from the backbone's timm data config
(``timm.data.create_transform``: resize, centre crop at ``crop_pct``, interpolation), without
normalisation: :class:`~actmatch.explainers.classifier.FrozenClassifier` takes [0, 1] images.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path

import lightning as L
import numpy as np
import timm
import torch
from timm.data import ImageNetInfo, create_transform, resolve_data_config
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T
from torchvision import tv_tensors
from torchvision.transforms import v2

from actmatch.datamodules.images import IMAGE_SUFFIXES, ImageReadError, read_rgb
from actmatch.explainers.classifier import OFFLINE_DEFAULTS

__all__ = [
    "ImageNetFolderError",
    "ImageFolderSubset",
    "ImageNetDataModule",
    "backbone_data_config",
    "backbone_input_size",
    "backbone_transform",
    "paired_transform",
    "held_out",
    "scan_imagenet",
]

WNID = re.compile(r"^n\d{8}$")
FLAT_NAME = re.compile(r"^(n\d{8})_.+")


class ImageNetFolderError(ValueError):
    """The folder is missing, empty or not laid out like ImageNet; the message names the path."""


def backbone_data_config(backbone: str) -> dict:
    """timm's data config (input_size, interpolation, crop_pct, mean, std) for ``backbone``."""
    arch = OFFLINE_DEFAULTS.get(backbone, (backbone, None))[0]
    pretrained_cfg = timm.get_pretrained_cfg(arch)
    if pretrained_cfg is None:
        raise ValueError(f"timm has no data config for backbone {backbone!r}; check the model name")
    return resolve_data_config({}, pretrained_cfg=pretrained_cfg.to_dict())


def backbone_input_size(backbone: str) -> int:
    """Side of ``backbone``'s default input (e.g. 224)."""
    return int(backbone_data_config(backbone)["input_size"][-1])


def backbone_transform(backbone: str, train: bool = False, augment: bool = False, image_size: int | None = None) -> Callable:
    """timm's transform for ``backbone`` (resize, crop, interpolation) producing [0, 1] floats.

    Args:
        backbone: timm model name (or one of the offline defaults, e.g. ``efficientnet_lite0``).
        train: training split; with ``augment`` it gets timm's training augmentation.
        augment: use random-resized-crop / flip / colour jitter on the training split.
        image_size: override the model's input size (square side).
    """
    config = backbone_data_config(backbone)
    if image_size is not None:
        config["input_size"] = (3, image_size, image_size)
    transform = create_transform(**config, is_training=train and augment, normalize=False)
    return T.Compose([transform, T.ConvertImageDtype(torch.float32)])  # uint8 -> [0, 1]


def paired_transform(backbone: str, train: bool = False, augment: bool = False, image_size: int | None = None) -> Callable:
    """:func:`backbone_transform` for an image and its mask together: ``f(image, mask)`` -> ((3, S, S)
    float in [0, 1], (1, S, S) float in {0, 1}), the same crop and flip on both (torchvision's v2
    transforms; the mask resampled nearest, colour jitter on the image only).

    Evaluation: resize the short side to S / crop_pct and centre-crop S (timm's eval transform).
    Training with ``augment``: timm's default augmentation, random-resized crop (scale 0.08–1,
    aspect 3/4–4/3), horizontal flip, colour jitter 0.4.
    """
    config = backbone_data_config(backbone)
    size = image_size or int(config["input_size"][-1])
    interpolation = v2.InterpolationMode(config.get("interpolation", "bicubic"))
    if train and augment:
        ops = [
            v2.RandomResizedCrop(size, scale=(0.08, 1.0), interpolation=interpolation, antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ColorJitter(0.4, 0.4, 0.4),
        ]
    else:
        ops = [v2.Resize(math.floor(size / config["crop_pct"]), interpolation=interpolation, antialias=True), v2.CenterCrop(size)]
    # the image stays a PIL image through the resampling (PIL's, as timm's), the mask a uint8 tensor
    transform = v2.Compose([*ops, v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])

    def apply(image, mask) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = transform(image, tv_tensors.Mask(mask))
        return image.as_subclass(torch.Tensor), (mask.as_subclass(torch.Tensor) > 0).float()

    return apply


def mask_target_path(masks_dir: Path, image: Path) -> Path:
    """Where ``actmatch explain IMAGES --out masks_dir`` wrote ``image``'s mask: ``masks_dir/<stem>/mask.png``."""
    return masks_dir / image.stem / "mask.png"


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def scan_imagenet(root: str | Path) -> dict[str, dict[str, list[Path]]]:
    """Find the images under ``root``: ``{split: {wnid: [paths]}}`` for ``train``/``val`` or ``all``.

    Raises:
        ImageNetFolderError: the folder is missing, empty, or in neither layout.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ImageNetFolderError(f"ImageNet folder {root} does not exist (pass data.init_args.root=PATH)")
    splits = {}
    for split in ("train", "val"):
        split_dir = root / split
        if not split_dir.is_dir():
            continue
        classes = {}
        for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            if not WNID.match(class_dir.name):
                raise ImageNetFolderError(
                    f"{class_dir}: class folders must be ImageNet wnids like n01440764; rename it or remove it"
                )
            files = sorted(p for p in class_dir.iterdir() if _is_image(p))
            if files:
                classes[class_dir.name] = files
        if not classes:
            raise ImageNetFolderError(f"{split_dir}: no images in <wnid>/ sub-folders; expected {split_dir}/n01440764/*.JPEG")
        splits[split] = classes
    if splits:
        return splits
    flat: dict[str, list[Path]] = {}
    images = sorted(p for p in root.iterdir() if _is_image(p))
    for path in images:
        match = FLAT_NAME.match(path.name)
        if match:
            flat.setdefault(match.group(1), []).append(path)
    if not flat:
        found = f"{len(images)} images, none named <wnid>_*.JPEG" if images else "no images"
        raise ImageNetFolderError(
            f"{root}: not an ImageNet folder ({found}); expected train/<wnid>/*.JPEG and val/<wnid>/*.JPEG "
            "or a flat folder of <wnid>_<name>.JPEG files"
        )
    return {"all": flat}


def held_out(chosen: dict[str, list[Path]], fraction: float) -> tuple[dict[str, list[Path]], dict[str, list[Path]]]:
    """Split ``{wnid: files}`` into (train, val) with about ``fraction`` of the files in val.

    The last round(n·fraction) files of each class go to val. When that holds out nothing
    (classes of one or a few files, like ``../shared/data/imagenet-train``), whole classes are
    held out instead: every k-th class in sorted order, k = round(1 / fraction), so validation
    also measures how the explainer does on classes it never trained on.
    """
    if fraction <= 0:
        return dict(chosen), {}
    train, val = {}, {}
    for wnid, paths in chosen.items():
        n_val = round(len(paths) * fraction)
        train[wnid], val[wnid] = paths[: len(paths) - n_val], paths[len(paths) - n_val :]
    if any(val.values()):
        return {w: p for w, p in train.items() if p}, {w: p for w, p in val.items() if p}
    step = max(2, round(1 / fraction))
    wnids = sorted(chosen)
    val_wnids = set(wnids[step - 1 :: step])
    if not val_wnids:
        raise ImageNetFolderError(
            f"val_fraction={fraction} holds out no class of {len(wnids)}; raise val_fraction to at least {1 / len(wnids):.2g}"
        )
    return {w: chosen[w] for w in wnids if w not in val_wnids}, {w: chosen[w] for w in wnids if w in val_wnids}


class ImageFolderSubset(Dataset):
    """A list of (path, ImageNet index, wnid) read on the fly into ``{"image", "label", "wnid"}``;
    with ``masks_dir`` also ``"mask_target"``, each image's mask from that folder
    (:func:`mask_target_path`) under the same crop (``transform`` is then a :func:`paired_transform`)."""

    def __init__(self, items: list[tuple[Path, int, str]], transform: Callable, masks_dir: Path | None = None) -> None:
        self.items, self.transform, self.masks_dir = items, transform, masks_dir

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        path, label, wnid = self.items[index]
        try:
            image = read_rgb(path)
        except ImageReadError as err:
            raise ImageReadError(f"ImageNet sample {index}: {err}") from err
        sample = {"label": torch.tensor(label), "wnid": wnid, "path": str(path)}
        if self.masks_dir is None:
            return {"image": self.transform(image), **sample}
        mask_path = mask_target_path(self.masks_dir, path)
        mask = torch.from_numpy(np.asarray(read_rgb(mask_path).convert("L")).copy())[None]  # (1, H, W) uint8
        if tuple(mask.shape[-2:]) != (image.height, image.width):
            raise ImageNetFolderError(
                f"{mask_path} is {mask.shape[-1]}x{mask.shape[-2]} px, its image {path} {image.width}x{image.height}: "
                "mask targets must be the full-size mask.png that `actmatch explain` writes for that image"
            )
        image_t, mask_t = self.transform(image, mask)
        return {"image": image_t, "mask_target": mask_t, **sample}


class ImageNetDataModule(L.LightningDataModule):
    """ImageNet subsets for training, validating and testing explainers.

    Args:
        root: ImageNet folder (split or flat layout, see the module docstring).
        classes: a list of wnids, or a count (the first N wnids in sorted order); None keeps all.
        max_per_class: cap on images per class and split (the first ones in sorted order).
        backbone: timm model whose data config sizes and crops the images.
        image_size: override the backbone's input size.
        augment: timm training augmentation on the training split (off by default: the
            explainer learns masks for the images as the classifier sees them).
        val_fraction: flat layout only: fraction of the files held out for val/test (of each
            class's files, or whole classes when classes have too few files; see :func:`held_out`).
        mask_targets: a folder ``actmatch explain ROOT --out DIR`` wrote: every sample then also
            carries its image's ``mask.png`` as ``"mask_target"`` (1, S, S), cropped with the image,
            for a :class:`~actmatch.explainers.losses.MaskDistillation` term.
        batch_size: batch size of every loader.
        num_workers: DataLoader workers.
    """

    def __init__(
        self,
        root: str,
        classes: list[str] | int | None = None,
        max_per_class: int | None = None,
        backbone: str = "efficientnet_lite0",
        image_size: int | None = None,
        augment: bool = False,
        val_fraction: float = 0.0,
        mask_targets: str | None = None,
        batch_size: int = 16,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if max_per_class is not None and max_per_class < 1:
            raise ValueError(f"max_per_class must be >= 1, got {max_per_class}")
        if not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if isinstance(classes, int) and classes < 1:
            raise ValueError(f"classes must be a positive count or a list of wnids, got {classes}")
        self.root, self.classes, self.max_per_class = Path(root).expanduser(), classes, max_per_class
        self.backbone, self.image_size, self.augment, self.val_fraction = backbone, image_size, augment, val_fraction
        self.batch_size, self.num_workers = batch_size, num_workers
        self.mask_targets = None if mask_targets is None else Path(mask_targets).expanduser()
        self.info = ImageNetInfo()
        self.splits: dict[str, list[tuple[Path, int, str]]] = {}

    # ------------------------------------------------------------------ file lists
    def _select(self, found: dict[str, list[Path]], where: Path) -> dict[str, list[Path]]:
        if self.classes is None:
            wnids = sorted(found)
        elif isinstance(self.classes, int):
            wnids = sorted(found)[: self.classes]
        else:
            missing = [w for w in self.classes if w not in found]
            if missing:
                raise ImageNetFolderError(f"{where}: no images for the requested classes {missing[:10]}")
            wnids = list(self.classes)
        known = set(self.info.label_names())
        for wnid in wnids:
            if wnid not in known:
                raise ImageNetFolderError(f"{where}: {wnid} is not an ImageNet-1k class (timm.data.ImageNetInfo)")
        return {w: found[w][: self.max_per_class] for w in wnids}

    def _items(self, chosen: dict[str, list[Path]]) -> list[tuple[Path, int, str]]:
        index = {name: i for i, name in enumerate(self.info.label_names())}
        return [(path, index[wnid], wnid) for wnid, paths in chosen.items() for path in paths]

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        found = scan_imagenet(self.root)
        train_items: list[tuple[Path, int, str]] | None
        val_items: list[tuple[Path, int, str]] | None
        if "all" in found:
            chosen = self._select(found["all"], self.root)
            train, val = held_out(chosen, self.val_fraction)
            train_items = self._items(train)
            val_items = self._items(val) if self.val_fraction > 0 else train_items
        else:
            train_items = self._items(self._select(found["train"], self.root / "train")) if "train" in found else None
            val_items = self._items(self._select(found["val"], self.root / "val")) if "val" in found else None
            train_items = train_items or val_items
            val_items = val_items or train_items
        if not train_items or not val_items:
            raise ImageNetFolderError(f"{self.root}: the selection (classes={self.classes}) left no images")
        if self.mask_targets is not None:
            self._check_mask_targets(train_items + val_items)
        self.splits = {"train": train_items, "val": val_items}

    def _check_mask_targets(self, items: list[tuple[Path, int, str]]) -> None:
        """ImageNetFolderError naming the missing masks and the command that writes them."""
        assert self.mask_targets is not None
        missing = [path for path, _, _ in items if not mask_target_path(self.mask_targets, path).is_file()]
        if missing:
            raise ImageNetFolderError(
                f"mask_targets {self.mask_targets}: no <stem>/mask.png for {len(missing)} of {len(items)} images "
                f"(first: {mask_target_path(self.mask_targets, missing[0])}); write them with "
                f"`actmatch explain {self.root} --out {self.mask_targets}`"
            )

    def _loader(self, split: str, train: bool = False) -> DataLoader:
        self.setup()
        make = backbone_transform if self.mask_targets is None else paired_transform
        transform = make(self.backbone, train=train, augment=self.augment, image_size=self.image_size)
        return DataLoader(
            ImageFolderSubset(self.splits[split], transform, self.mask_targets),
            batch_size=self.batch_size,
            shuffle=train,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("val")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("val")
