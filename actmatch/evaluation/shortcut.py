"""The planted-shortcut check: a classifier whose only signal is a small coloured patch, and where
an explanation's mask lies relative to that patch.

The synthetic ``shortcut`` set (:class:`~actmatch.datamodules.synthetic.SyntheticDataModule`)
draws a random object on clutter and plants a patch whose colour is the class; a classifier trained
on it decides by the patch alone, so a faithful mask lies on the patch. Used by
``tests/test_shortcut.py`` and ``experiments/explain/study/shortcut_screen.py``.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
from PIL import Image

from actmatch.classifier_training import ClassifierTrainer
from actmatch.datamodules.synthetic import SyntheticDataModule, SyntheticEvidence, write_images

__all__ = ["SHORTCUT_LABELS", "train_shortcut_classifier", "write_held_out", "patch_overlap"]

#: the class names, one per line, in class order (``PATCH_COLOURS``)
SHORTCUT_LABELS = "red patch\ngreen patch\nblue patch\nyellow patch\n"


def train_shortcut_classifier(weights: Path, root: Path) -> float:
    """Train ``test_resnet`` on the shortcut set (4 classes, 64 px, clutter, 1024 images, 2 epochs,
    seed 0), save its state dict to ``weights`` and return its test accuracy (the patch decides:
    above 0.9). ``root``: Lightning's working folder."""
    L.seed_everything(0)
    data = SyntheticDataModule(num_classes=4, image_size=64, variant="shortcut", background="clutter",
                               train_size=1024, val_size=128, test_size=128, batch_size=32)  # fmt: skip
    module = ClassifierTrainer("test_resnet", num_classes=4, lr=3e-3, export_path=str(weights))
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=root)  # fmt: skip
    trainer.fit(module, data)
    return float(trainer.test(module, data, verbose=False)[0]["test/accuracy"])


def write_held_out(folder: Path, count: int = 20) -> list[Path]:
    """Write ``count`` held-out shortcut images (seed 99, never trained on) to ``folder``, their
    patches' masks to ``folder/masks/`` (not to explain) and the class names to
    ``folder/labels.txt``; returns the image paths."""
    held_out = SyntheticEvidence(count, num_classes=4, image_size=64, variant="shortcut", background="clutter", seed=99)
    paths = write_images(held_out, folder)
    (Path(folder) / "labels.txt").write_text(SHORTCUT_LABELS)
    return paths


def patch_overlap(mask_png: Path, patch_png: Path) -> tuple[float, float]:
    """(share of the mask's pixels on the patch, share of the patch's pixels the mask keeps), from
    the two files (pixels above 127 count)."""
    mask = np.asarray(Image.open(mask_png)) > 127
    patch = np.asarray(Image.open(patch_png)) > 127
    both = (mask & patch).sum()
    return float(both / max(mask.sum(), 1)), float(both / patch.sum())
