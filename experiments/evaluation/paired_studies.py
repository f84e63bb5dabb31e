"""Two `actmatch study` runs of the same images, paired per image: wins, ties and losses of A over B.

    python experiments/evaluation/paired_studies.py OUT_A/RECIPE_A OUT_B/RECIPE_B

Reads each image's ``summary.json`` in the two recipe folders and prints, for the label kept (exact
sign test over the discordant images) and for exam robustness, robustness on other photos and
p(e)/p(x) (Wilcoxon signed-rank, zero differences dropped), the means of A and B and how many
images A beats, ties and loses to B.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from scipy.stats import binomtest, wilcoxon

MEASURES = ("label_kept", "robustness", "robust_photos", "confidence_ratio")


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
    for measure in MEASURES:
        x = [float(a[k][measure]) for k in keys]
        y = [float(b[k][measure]) for k in keys]
        wins = sum(u > v for u, v in zip(x, y))
        losses = sum(u < v for u, v in zip(x, y))
        if not wins + losses:
            p = 1.0
        elif measure == "label_kept":
            p = binomtest(wins, wins + losses).pvalue
        else:
            p = wilcoxon(x, y).pvalue
        ties = len(keys) - wins - losses
        print(f"{measure:18s} A {sum(x) / len(x):.3f}  B {sum(y) / len(y):.3f}  A>B {wins}  ties {ties}  A<B {losses}  p {p:.3g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
