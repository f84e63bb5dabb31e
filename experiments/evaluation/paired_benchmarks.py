"""Two `actmatch benchmark` runs of the same images, one method's rows paired per image: A against B.

    python experiments/evaluation/paired_benchmarks.py OUT_A OUT_B [--method am] [--method-b centre]

``--method-b`` pairs another method of run B with A's (e.g. a baseline run on its own against ``am``).

Reads ``results.csv`` of the two benchmark folders (``--out``) and prints, for the exam's columns,
the means of A and B, the mean of A − B per image with its 95 % bootstrap interval, how many images A beats,
ties and loses to B, the benchmark's paired test
(:func:`~actmatch.evaluation.statistics.paired_comparison`: Wilcoxon signed-rank, the exact sign
test for binary columns) and Holm's correction over the columns. It also counts the masks keeping
more than 5 % of the border band, from each run's ``raw/IMAGE/METHOD.pt`` maps (the method's hard
mask: map ≥ 1, as the benchmark stores actmatch's masks).
"""

from __future__ import annotations

import argparse
import csv
import statistics
from pathlib import Path

import torch

from actmatch.commands.study import border_kept
from actmatch.evaluation.columns import format_difference
from actmatch.evaluation.statistics import holm, paired_comparison, paired_difference

#: results.csv column -> whether higher is better
COLUMNS = {
    "robust_sufficient_area": False,
    "robustness": True,
    "robust_photos": True,
    "dg_score": False,
    "insertion_auc": True,
    "deletion_auc": False,
    "region_area": False,
    "ratio_region": True,
    "kept_dilated": True,
    "kept_shift": True,
    "kept_readback": True,
    "seconds": False,
}


def rows(folder: str, method: str) -> dict[str, dict]:
    """image -> the method's row of ``folder/results.csv``."""
    path = Path(folder) / "results.csv"
    if not path.is_file():
        raise SystemExit(f"{path}: not found (give a folder written by `actmatch benchmark --out`)")
    with path.open() as f:
        found = {r["image"]: r for r in csv.DictReader(f) if r["method"] == method and not r.get("error")}
    if not found:
        raise SystemExit(f"{path}: no rows of the method {method!r}")
    return found


def band_masks(folder: str, method: str, images: list[str]) -> int | None:
    """How many of the method's masks keep more than 5 % of the border band (None without raw maps)."""
    count = 0
    for image in images:
        path = Path(folder) / "raw" / Path(image).name / f"{method}.pt"
        if not path.is_file():
            return None
        mask = (torch.load(path, map_location="cpu", weights_only=False)["map"] >= 1).float()
        count += border_kept(mask) > 0.05
    return count


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", help="benchmark folder A")
    parser.add_argument("b", help="benchmark folder B")
    parser.add_argument("--method", default="am")
    parser.add_argument("--method-b", default=None, help="run B's method (default: --method)")
    args = parser.parse_args(argv)
    method_b = args.method_b or args.method
    a, b = rows(args.a, args.method), rows(args.b, method_b)
    images = sorted(set(a) & set(b))
    pair = args.method if method_b == args.method else f"{args.method} (A) against {method_b} (B)"
    print(f"{pair}: {len(images)} paired images; A = {args.a}, B = {args.b}")
    results = []
    for column, higher in COLUMNS.items():
        x = [float(a[i][column]) for i in images]
        y = [float(b[i][column]) for i in images]
        test = {**paired_comparison(x, y, higher), **paired_difference(x, y)}
        results.append((column, higher, statistics.fmean(x), statistics.fmean(y), test))
    adjusted = holm([r[-1]["p_value"] for r in results])
    print(f"{'column':<24} {'better':>6} {'mean A':>8} {'mean B':>8} {'A − B [95 %]':>26} {'A wins-ties-losses':>19} {'p':>8} "
          f"{'p(Holm)':>8}")  # fmt: skip
    for (column, higher, mean_a, mean_b, test), p_holm in zip(results, adjusted):
        record = f"{test['wins']}-{test['ties']}-{test['losses']}"
        better = "higher" if higher else "lower"
        gap = format_difference(test)
        p_value = test["p_value"]
        print(f"{column:<24} {better:>6} {mean_a:>8.3f} {mean_b:>8.3f} {gap:>26} {record:>19} {p_value:>8.2g} {p_holm:>8.2g}")
    bands = [band_masks(folder, method, images) for folder, method in ((args.a, args.method), (args.b, method_b))]
    print(f"masks keeping > 5 % of the border band: A {bands[0]}, B {bands[1]} (of {len(images)})")


if __name__ == "__main__":
    main()
