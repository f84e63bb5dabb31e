"""LightningDataModules: ImageNet-style folders, images to explain, synthetic evidence."""

from actmatch.datamodules.imagenet import ImageNetDataModule, ImageNetFolderError, backbone_transform, scan_imagenet
from actmatch.datamodules.predict import ImagePaths, PredictDataModule
from actmatch.datamodules.synthetic import SyntheticDataModule, SyntheticEvidence

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
