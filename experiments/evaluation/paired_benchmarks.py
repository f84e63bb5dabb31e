"""Two `actmatch benchmark` runs of the same images, one method's rows paired per image: A against B.

    python experiments/evaluation/paired_benchmarks.py OUT_A OUT_B [--method am[,gradcam,...]] [--method-b centre]
        [--columns robust_sufficient_area,dg_score,...]

``--method-b`` pairs another method of run B with A's (e.g. a baseline run on its own against ``am``); with several
``--method`` names each is paired in turn, and Holm's correction is over every printed comparison (methods × columns).

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
    parser.add_argument("--method", default="am", help="run A's method, or several, comma-separated (each paired in turn)")
    parser.add_argument("--method-b", default=None, help="run B's method (default: each --method itself)")
    parser.add_argument("--columns", default=",".join(COLUMNS), help="the results.csv columns to pair (default: all)")
    args = parser.parse_args(argv)
    methods = [m for m in args.method.split(",") if m]
    columns = [c for c in args.columns.split(",") if c]
    if unknown := [c for c in columns if c not in COLUMNS]:
        parser.error(f"--columns: unknown {unknown}; choose from {', '.join(COLUMNS)}")
    blocks = [pair_block(args.a, args.b, method, args.method_b or method, columns) for method in methods]
    adjusted = iter(holm([test["p_value"] for _, results, _ in blocks for *_, test in results]))
    print(f"Holm over {sum(len(results) for _, results, _ in blocks)} comparisons ({len(blocks)} × {len(columns)})")
    for header, results, bands in blocks:
        print(header)
        print(f"{'column':<24} {'better':>6} {'mean A':>8} {'mean B':>8} {'A − B [95 %]':>26} {'A wins-ties-losses':>19} "
              f"{'p':>8} {'p(Holm)':>8}")  # fmt: skip
        for column, higher, mean_a, mean_b, test in results:
            record = f"{test['wins']}-{test['ties']}-{test['losses']}"
            better = "higher" if higher else "lower"
            print(f"{column:<24} {better:>6} {mean_a:>8.3f} {mean_b:>8.3f} {format_difference(test):>26} {record:>19} "
                  f"{test['p_value']:>8.2g} {next(adjusted):>8.2g}")  # fmt: skip
        print(bands)


def pair_block(folder_a: str, folder_b: str, method_a: str, method_b: str, columns: list[str]) -> tuple[str, list, str]:
    """One method of run A against one of run B: (header, [(column, higher is better, mean A, mean B, test)], band line)."""
    a, b = rows(folder_a, method_a), rows(folder_b, method_b)
    images = sorted(set(a) & set(b))
    pair = method_a if method_b == method_a else f"{method_a} (A) against {method_b} (B)"
    results = []
    for column in columns:
        x = [float(a[i][column]) for i in images]
        y = [float(b[i][column]) for i in images]
        test = {**paired_comparison(x, y, COLUMNS[column]), **paired_difference(x, y)}
        results.append((column, COLUMNS[column], statistics.fmean(x), statistics.fmean(y), test))
    bands = [band_masks(folder, method, images) for folder, method in ((folder_a, method_a), (folder_b, method_b))]
    band_line = f"masks keeping > 5 % of the border band: A {bands[0]}, B {bands[1]} (of {len(images)})"
    return f"\n{pair}: {len(images)} paired images; A = {folder_a}, B = {folder_b}", results, band_line


if __name__ == "__main__":
    main()
