"""Images to explain with ``actmatch predict``: a folder, a glob or a list of paths.

Reading and sizing reuse :mod:`actmatch.datamodules.images`: the short side is resized to the
backbone's input size (aspect kept) and the image is explained whole. Images of different
shapes cannot share a batch, so ``batch_size > 1`` needs ``square=True`` (every image resized
to size × size; the writer maps each mask back to its file's size).

Under DDP each rank reads its own share of the images (:class:`ShardSampler`: every image
once, no padding, a rank may get none), so each image is explained exactly once.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from actmatch.datamodules.imagenet import backbone_input_size
from actmatch.datamodules.images import ImageItem, ImageReadError, expand_image_items, load_image

__all__ = ["ImagePaths", "PredictDataModule", "ShardSampler"]


class ImagePaths(Dataset):
    """Image files read into ``{"image" (3, h, w) in [0, 1], "path", "folder", "index",
    "original_size" (H, W), "error"}``.

    A file that cannot be read does not stop the run: its item holds a black size × size
    image and the reason in ``error`` (empty for readable files), and the writer records it.

    Args:
        items: the images and their output folders.
        size: short side (or side, with ``square``) of the model's input.
        square: resize to size × size.
        indices: each item's position in the full list (default: 0, 1, ...).
    """

    def __init__(
        self, items: Sequence[ImageItem | Path], size: int, square: bool = False, indices: list[int] | None = None
    ) -> None:
        self.items = [item if isinstance(item, ImageItem) else ImageItem(Path(item), Path(item).stem) for item in items]
        self.size, self.square = size, square
        self.indices = list(range(len(self.items))) if indices is None else list(indices)

    @property
    def paths(self) -> list[Path]:
        return [item.path for item in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        item = self.items[index]
        try:
            image, original = load_image(item.path, self.size, fixed=self.square)
            error = ""
        except ImageReadError as err:
            image, original, error = torch.zeros(3, self.size, self.size), (self.size, self.size), str(err)
        return {
            "image": image,
            "path": str(item.path),
            "folder": item.folder,
            "index": self.indices[index],
            "original_size": torch.tensor(original),
            "error": error,
        }


class ShardSampler(DistributedSampler):
    """Indices ``rank, rank + world, ...``: every item on exactly one rank, no padding, no
    shuffle (a rank may get fewer items, or none). A :class:`DistributedSampler`, so Lightning
    keeps it as it is."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        size = len(dataset)  # type: ignore[arg-type]  # torch's Dataset declares no __len__; DistributedSampler needs one
        self.num_samples = len(range(rank, size, num_replicas))
        self.total_size = size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.total_size, self.num_replicas))

    def __len__(self) -> int:
        return self.num_samples


class PredictDataModule(L.LightningDataModule):
    """Folder, glob or list of image paths for ``predict`` (and ``test``/``validate`` on them).

    Folders are read recursively; each image's output folder is its path under the folder
    given, without suffix (:func:`~actmatch.datamodules.images.expand_image_items`).

    Args:
        paths: one path, folder or glob, or a list of them (expanded in order).
        root: a folder of images (read recursively); the same as putting it first in ``paths``.
        backbone: timm model whose input size sets the image size.
        image_size: override the short side (default: the backbone's input size).
        square: resize every image to image_size × image_size (needed for batches > 1).
        batch_size: images per batch.
        num_workers: DataLoader workers.
    """

    def __init__(
        self,
        paths: str | list[str] | None = None,
        root: str | None = None,
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
        items = [] if paths is None else [paths] if isinstance(paths, (str, Path)) else list(paths)
        items = ([root] if root else []) + items
        if not items:
            raise ValueError("no images given; pass data.init_args.root=FOLDER or data.init_args.paths=FOLDER|GLOB|[FILES]")
        self.sources, self.square = items, square
        self.size = image_size or backbone_input_size(backbone)
        self.batch_size, self.num_workers = batch_size, num_workers
        self.items: list[ImageItem] = []
        self.dataset: ImagePaths | None = None
        self.allow_zero_length_dataloader_with_multiple_devices = True  # a resumed run may leave a rank nothing

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is not None:
            return
        self.items = expand_image_items(self.sources)
        if not self.items:
            raise ImageReadError(f"no image files found in {self.sources}")
        missing = [str(item.path) for item in self.items if not item.path.is_file()]
        if missing:
            raise ImageReadError(f"{missing[0]}: no such file" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        self.dataset = ImagePaths(self.items, self.size, self.square)

    def drop(self, folders: Collection[str]) -> None:
        """Leave out the images whose output folder is in ``folders`` (e.g. already explained)."""
        self.setup()
        keep = [(i, item) for i, item in enumerate(self.items) if item.folder not in folders]
        self.dataset = ImagePaths([item for _, item in keep], self.size, self.square, [i for i, _ in keep])

    def _loader(self, shard: bool = False) -> DataLoader:
        """The images in order; with ``shard`` under DDP, this rank's share (:class:`ShardSampler`)."""
        self.setup()
        assert self.dataset is not None  # made by setup()
        trainer = getattr(self, "trainer", None)
        sampler = None
        if shard and trainer is not None and trainer.world_size > 1:
            sampler = ShardSampler(self.dataset, trainer.world_size, trainer.global_rank)
        return DataLoader(self.dataset, batch_size=self.batch_size, num_workers=self.num_workers, sampler=sampler)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(shard=True)  # test/validate keep Lightning's padded sampler: even batches for sync_dist

    def test_dataloader(self) -> DataLoader:
        return self._loader()

    def val_dataloader(self) -> DataLoader:
        return self._loader()
