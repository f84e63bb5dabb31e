"""Two `actmatch study` runs of the same images, paired per image: wins, ties and losses of A over B.

    python experiments/evaluation/paired_studies.py OUT_A/RECIPE_A OUT_B/RECIPE_B

Reads each image's ``summary.json`` in the two recipe folders and prints, for the label kept, exam
robustness, robustness on other photos, p(e)/p(x) and the mask's area, the means of A and B, the mean of
A − B per image with its 95 % bootstrap interval, how many
images A beats, ties and loses to B (for the area: A's mask is smaller), and the benchmark's paired test
(:func:`~actmatch.evaluation.statistics.paired_comparison`: the exact sign test for the label kept,
Wilcoxon signed-rank with zero differences dropped for the rest). Where both folders hold an image's
``mask_input.png`` (the mask as classified), it also prints how far the two masks of an image overlap: the
median and quartiles of IoU = |A ∩ B| / |A ∪ B| over the images, how many are the same pixel for pixel and how
many fall below 0.8 and 0.5.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from actmatch.evaluation.columns import format_difference
from actmatch.evaluation.statistics import paired_comparison, paired_difference
from actmatch.results import MODEL_MASK

#: summary.json key -> whether higher is better
MEASURES = {"label_kept": True, "robustness": True, "robust_photos": True, "confidence_ratio": True, "mask_area": False}


def load(folder: str) -> dict[str, dict]:
    """image folder name -> that image's summary.json."""
    rows = {p.parent.name: json.loads(p.read_text()) for p in Path(folder).glob("*/summary.json")}
    if not rows:
        raise SystemExit(f"{folder}: no */summary.json (give a recipe folder of an `actmatch study` --out)")
    return rows


def mask_iou(a: Path, b: Path) -> float:
    """IoU of two 0/255 mask files of the same size (1.0 for two empty masks)."""
    x, y = np.asarray(Image.open(a)) > 127, np.asarray(Image.open(b)) > 127
    if x.shape != y.shape:
        raise SystemExit(f"{a} and {b} differ in size ({x.shape} against {y.shape}): not the same image's masks")
    union = np.logical_or(x, y).sum()
    return float(np.logical_and(x, y).sum() / union) if union else 1.0


def overlap_line(folder_a: str, folder_b: str, keys: list[str]) -> str | None:
    """The masks' overlap over the images whose two folders both hold ``mask_input.png`` (``MODEL_MASK``), or None."""
    pairs = [(Path(folder_a, k, MODEL_MASK), Path(folder_b, k, MODEL_MASK)) for k in keys]
    ious = [mask_iou(a, b) for a, b in pairs if a.is_file() and b.is_file()]
    if not ious:
        return None
    q1, median, q3 = statistics.quantiles(ious, n=4, method="inclusive") if len(ious) > 1 else (ious[0],) * 3
    same, below_08, below_05 = sum(v == 1.0 for v in ious), sum(v < 0.8 for v in ious), sum(v < 0.5 for v in ious)
    return (
        f"{MODEL_MASK} IoU over {len(ious)} images: median {median:.3f} (p25 {q1:.3f}, p75 {q3:.3f}); "
        f"the same pixel for pixel {same}, below 0.8 {below_08}, below 0.5 {below_05}"
    )


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    a, b = load(argv[0]), load(argv[1])
    keys = sorted(set(a) & set(b))
    print(f"{len(keys)} paired images")
    for measure, higher_is_better in MEASURES.items():
        x = [float(a[k][measure]) for k in keys]
        y = [float(b[k][measure]) for k in keys]
        test = paired_comparison(x, y, higher_is_better=higher_is_better)
        wins, ties, losses, p = test["wins"], test["ties"], test["losses"], test["p_value"]
        means = f"A {sum(x) / len(x):.3f}  B {sum(y) / len(y):.3f}"
        gap = paired_difference(x, y)
        gap_text = f"A − B {format_difference(gap)}"
        print(f"{measure:18s} {means}  {gap_text}  A better {wins}  ties {ties}  A worse {losses}  p {p:.3g}")
    if line := overlap_line(argv[0], argv[1], keys):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
