"""LightningDataModules: ImageNet-style folders, images to explain, synthetic evidence.

The names below are imported on first use, so reading images (:mod:`~actmatch.datamodules.images`)
does not import Lightning.
"""

from __future__ import annotations

import importlib

__all__ = [
    "ImageNetDataModule",
    "ImageNetFolderError",
    "ImagePaths",
    "PredictDataModule",
    "SyntheticDataModule",
    "SyntheticEvidence",
    "backbone_transform",
    "scan_imagenet",
]
_HOMES = {
    **dict.fromkeys(("ImageNetDataModule", "ImageNetFolderError", "backbone_transform", "scan_imagenet"), "imagenet"),
    **dict.fromkeys(("ImagePaths", "PredictDataModule"), "predict"),
    **dict.fromkeys(("SyntheticDataModule", "SyntheticEvidence"), "synthetic"),
}


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(f"actmatch.datamodules.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'actmatch.datamodules' has no attribute {name!r}")
