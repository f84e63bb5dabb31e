"""Two `actmatch study` runs of the same images, paired per image: wins, ties and losses of A over B.

    python experiments/evaluation/paired_studies.py OUT_A/RECIPE_A OUT_B/RECIPE_B

Reads each image's ``summary.json`` in the two recipe folders and prints, for the label kept, exam
robustness, robustness on other photos, p(e)/p(x) and the mask's area, the means of A and B, the mean of
A − B per image with its 95 % bootstrap interval, how many
images A beats, ties and loses to B (for the area: A's mask is smaller), and the benchmark's paired test
(:func:`~actmatch.evaluation.statistics.paired_comparison`: the exact sign test for the label kept,
Wilcoxon signed-rank with zero differences dropped for the rest).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from actmatch.evaluation.columns import format_difference
from actmatch.evaluation.statistics import paired_comparison, paired_difference

#: summary.json key -> whether higher is better
MEASURES = {"label_kept": True, "robustness": True, "robust_photos": True, "confidence_ratio": True, "mask_area": False}


def load(folder: str) -> dict[str, dict]:
    """image folder name -> that image's summary.json."""
    rows = {p.parent.name: json.loads(p.read_text()) for p in Path(folder).glob("*/summary.json")}
    if not rows:
        raise SystemExit(f"{folder}: no */summary.json (give a recipe folder of an `actmatch study` --out)")
    return rows


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
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
