"""Images to explain with ``actmatch predict``: a folder, a glob or a list of paths.

Reading and sizing reuse :mod:`actmatch.datamodules.images`: the short side is resized to the
backbone's input size (aspect kept) and the image is explained whole. Images of different
shapes cannot share a batch, so ``batch_size > 1`` needs ``square=True`` (every image resized
to size × size).
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from actmatch.datamodules.images import ImageReadError, expand_image_paths, load_image
from actmatch.datamodules.imagenet import backbone_input_size

__all__ = ["ImagePaths", "PredictDataModule"]


class ImagePaths(Dataset):
    """Image files read into ``{"image" (3, h, w) in [0, 1], "path", "original_size" (H, W)}``."""

    def __init__(self, paths: list[Path], size: int, square: bool = False) -> None:
        self.paths, self.size, self.square = paths, size, square

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        image, original = load_image(self.paths[index], self.size, fixed=self.square)
        return {"image": image, "path": str(self.paths[index]), "original_size": torch.tensor(original)}


class PredictDataModule(L.LightningDataModule):
    """Folder, glob or list of image paths for ``predict`` (and ``test``/``validate`` on them).

    Args:
        paths: one path, folder or glob, or a list of them (expanded in order).
        backbone: timm model whose input size sets the image size.
        image_size: override the short side (default: the backbone's input size).
        square: resize every image to image_size × image_size (needed for batches > 1).
        batch_size: images per batch.
        num_workers: DataLoader workers.
    """

    def __init__(
        self,
        paths: str | list[str],
        backbone: str = "efficientnet_lite0",
        image_size: int | None = None,
        square: bool = False,
        batch_size: int = 1,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if batch_size > 1 and not square:
            raise ValueError("batch_size > 1 needs square=True: images of different shapes cannot share a batch")
        items = [paths] if isinstance(paths, (str, Path)) else list(paths)
        if not items:
            raise ValueError("no image paths given; pass data.init_args.paths=FOLDER|GLOB|[FILES]")
        self.items, self.square = items, square
        self.size = image_size or backbone_input_size(backbone)
        self.batch_size, self.num_workers = batch_size, num_workers
        self.dataset: ImagePaths | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is not None:
            return
        paths = expand_image_paths(self.items)
        if not paths:
            raise ImageReadError(f"no image files found in {self.items}")
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise ImageReadError(f"{missing[0]}: no such file" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        self.dataset = ImagePaths(paths, self.size, self.square)

    def _loader(self) -> DataLoader:
        self.setup()
        return DataLoader(self.dataset, batch_size=self.batch_size, num_workers=self.num_workers)

    def predict_dataloader(self) -> DataLoader:
        return self._loader()

    def test_dataloader(self) -> DataLoader:
        return self._loader()

    def val_dataloader(self) -> DataLoader:
        return self._loader()
