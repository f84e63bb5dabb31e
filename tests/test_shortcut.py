"""The planted shortcut, end to end: train a classifier whose only signal is a coloured patch,
save its state dict, explain held-out images with `actmatch explain --weights`, and check that
the per-image masks find the patch: every explanation keeps the label and either lies on the patch (at
least 80 % of the mask's pixels) or holds at least 80 % of it, and on at least 15 of the 20 images it lies on it.

Measured with the default recipe (``faithful`` v1, one thread): 17 of 20 masks lie on the patch (0.6-1.2 %
of the image); the 3 others are yellow-patch images whose 0.9-confident explanation holds 88-100 % of the
patch and some of the scene (11-55 % of the mask on the patch)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import lightning as L
import numpy as np
import pytest
from PIL import Image

from actmatch.classifier_training import ClassifierTrainer
from actmatch.commands import explain as explain_cmd
from actmatch.datamodules.synthetic import SyntheticDataModule, SyntheticEvidence, write_images

ROOT = Path(__file__).resolve().parents[1]


def patch_overlap(mask_png: Path, patch_png: Path) -> tuple[float, float]:
    """(share of the mask's pixels on the patch, share of the patch's pixels the mask keeps)."""
    mask = np.asarray(Image.open(mask_png)) > 127
    patch = np.asarray(Image.open(patch_png)) > 127
    both = (mask & patch).sum()
    return float(both / max(mask.sum(), 1)), float(both / patch.sum())


@pytest.mark.behaviour
def test_the_per_image_mask_finds_the_planted_shortcut(tmp_path):
    L.seed_everything(0)
    data = SyntheticDataModule(
        num_classes=4,
        image_size=64,
        variant="shortcut",
        background="clutter",
        train_size=1024,
        val_size=128,
        test_size=128,
        batch_size=32,
    )
    weights = tmp_path / "model.pth"
    trainer_module = ClassifierTrainer("test_resnet", num_classes=4, lr=3e-3, export_path=str(weights))
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(trainer_module, data)
    accuracy = trainer.test(trainer_module, data, verbose=False)[0]["test/accuracy"]
    assert accuracy > 0.9  # the patch decides (the object's shape is drawn at random)

    held_out = SyntheticEvidence(20, num_classes=4, image_size=64, variant="shortcut", background="clutter", seed=99)
    images = tmp_path / "held_out"
    held_out_paths = write_images(held_out, images)  # and the patches' masks in images/masks/, not to explain
    labels = tmp_path / "labels.txt"
    labels.write_text("red patch\ngreen patch\nblue patch\nyellow patch\n")  # PATCH_COLOURS, in class order
    out = tmp_path / "explained"
    code = explain_cmd.main(
        "explain",
        [
            *map(str, held_out_paths),
            "--out",
            str(out),
            "--backbone",
            "test_resnet",
            "--weights",
            str(weights),
            "--input-size",
            "64",
            "--labels",
            str(labels),
        ],
    )
    assert code == 0
    found, covered = [], []
    for path in sorted(images.glob("*.png")):
        summary = json.loads((out / path.stem / "summary.json").read_text())
        on_patch, coverage = patch_overlap(out / path.stem / "mask.png", images / "masks" / path.name)
        assert summary["label_name"].endswith(" patch")
        # the explanation is the patch: it lies on it (most images) and holds the patch's evidence (every image)
        found.append(summary["label_kept"] and on_patch >= 0.8)
        covered.append(summary["label_kept"] and (coverage >= 0.8 or on_patch >= 0.8))
        print(
            f"{path.name}: kept {summary['label_kept']}, area {summary['mask_area']:.3f}, on the patch {on_patch:.2f}, "
            f"patch covered {coverage:.2f}"
        )
    assert sum(found) >= 15, f"the mask lay on the patch and kept the label on {sum(found)}/20 images"
    assert all(covered), f"the mask neither held the patch nor lay on it on {covered.count(False)} image(s)"
    figure = ROOT / "outputs" / "shortcut-figure.png"
    figure.parent.mkdir(exist_ok=True)
    shutil.copy(out / sorted(images.glob("*.png"))[0].stem / "figure.png", figure)
