"""The shortcut check of tests/test_shortcut.py for any explainer config: does the mask point at the patch?

    .venv/bin/python experiments/explain/study/shortcut_screen.py CONFIG [CONFIG ...] [--out outputs/shortcut]

Trains the test's classifier once (``test_resnet`` on the synthetic shortcut set: only a small coloured
patch decides the class; 2 epochs, seed 0; kept in OUT/model.pth for later calls), writes its 20
held-out 64 px images, explains them with ``actmatch explain --config CONFIG`` (``default`` for the
built-in recipe) and prints, per config, how many masks lie on the patch (≥ 80 % of the mask's pixels,
the test's criterion, which asks for 15 of 20), how many hold ≥ 80 % of the patch, and the median area.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from actmatch.commands import explain as explain_cmd
from actmatch.evaluation.shortcut import patch_overlap, train_shortcut_classifier, write_held_out


def trained_classifier(out: Path) -> Path:
    """The test's shortcut classifier (trained here once, then reused)."""
    weights = out / "model.pth"
    if not weights.is_file():
        print(f"test accuracy {train_shortcut_classifier(weights, out):.3f}")
    return weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+", help="explainer config files, or `default`")
    parser.add_argument("--out", default="outputs/shortcut")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    weights = trained_classifier(out)
    images = out / "held_out"
    paths = write_held_out(images)
    common = [
        "--backbone",
        "test_resnet",
        "--weights",
        str(weights),
        "--input-size",
        "64",
        "--labels",
        str(images / "labels.txt"),
    ]
    for config in args.configs:
        name = "default" if config == "default" else Path(config).stem
        folder = out / name
        extra = [] if config == "default" else ["--config", config]
        explain_cmd.main("explain", [*map(str, paths), "--out", str(folder), *common, *extra])
        found = covered = kept = 0
        areas = []
        for path in sorted(images.glob("*.png")):
            summary = json.loads((folder / path.stem / "summary.json").read_text())
            share, coverage = patch_overlap(folder / path.stem / "mask.png", images / "masks" / path.name)
            kept += summary["label_kept"]
            found += summary["label_kept"] and share >= 0.8
            covered += summary["label_kept"] and coverage >= 0.8
            areas.append(summary["mask_area"])
        area = statistics.median(areas)
        print(f"{name}: kept {kept}/20, on the patch {found}/20, patch held {covered}/20, median area {area:.3f}")


if __name__ == "__main__":
    main()
