"""Deletion AUC with another fill: does the mean colour favour a method that was built on it?

    .venv/bin/python experiments/evaluation/deletion_fills.py OUT --images DIR [--fills mean blur]

``OUT`` is an ``actmatch benchmark`` run on ``DIR`` (its ``raw/`` maps). The benchmark's deletion replaces the
removed pixels by the mean colour, which is integrated gradients' baseline (the path IG integrates along ends
there) and `am`'s fit fill; ``blur`` replaces them by the heavy blur of the image instead (σ = 1/20 of the
short side: the insertion column's start), a fill no method here uses. Per fill: each method's mean deletion
AUC (lower is better) and `am` against each other method, paired over the images as the benchmark pairs them
(wins–ties–losses, Wilcoxon, Holm over the methods). With ``mean`` the AUCs are the run's ``deletion_auc``
(checked against its results.csv).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from actmatch.commands.benchmark import load_images, read_results
from actmatch.evaluation import metrics as M
from actmatch.evaluation.statistics import holm, paired_comparison
from actmatch.explainers.classifier import load_classifier

AUCs = dict[str, dict[str, list[float]]]  # {fill: {method: one deletion AUC per image}}


def deletion_aucs(out: Path, images: str, fills: list[str], seed: int, steps: int) -> tuple[list[str], AUCs]:
    """The images' file names and their AUCs, for every method with a map of every image."""
    classifier = load_classifier("efficientnet_lite0").eval()
    items = load_images([images], classifier, None)
    methods = sorted(p.stem for p in (out / "raw" / Path(items[0].path).name).glob("*.pt"))
    aucs: AUCs = {f: {m: [] for m in methods} for f in fills}
    names = [Path(item.path).name for item in items]
    for item, name in zip(items, names):
        maps = [torch.load(out / "raw" / name / f"{m}.pt", weights_only=True)["map"].float() for m in methods]
        stacked = torch.cat([m.reshape(1, 1, *m.shape[-2:]) for m in maps])
        x = item.image[None].expand(len(methods), -1, -1, -1)
        for fill in fills:
            values = M.deletion_auc(classifier, x, stacked, steps=steps, seed=seed, fill=fill)
            for method, value in zip(methods, values.tolist()):
                aucs[fill][method].append(value)
        print(name, {f: round(aucs[f]["am"][-1], 3) for f in fills} if "am" in methods else "", flush=True)
    return names, aucs


def run_values(out: Path, column: str = "deletion_auc") -> dict[tuple[str, str], float]:
    """The run's own ``column`` by (image file name, method), from its results.csv (rows without it left out)."""
    rows = read_results(out / "results.csv")
    return {(Path(r["image"]).name, r["method"]): float(r[column]) for r in rows if r.get(column) not in (None, "")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="an `actmatch benchmark` output folder")
    parser.add_argument("--images", required=True, help="the run's --images")
    parser.add_argument("--fills", nargs="+", default=["mean", "blur"], choices=M.DELETION_FILLS)
    parser.add_argument("--seed", type=int, default=0, help="the run's --seed (ties in the ranking)")
    parser.add_argument("--steps", type=int, default=50, help="the run's curve steps")
    args = parser.parse_args()
    if not (args.out / "raw").is_dir():
        parser.error(f"{args.out} is not a benchmark output folder with saved maps (raw/)")
    names, aucs = deletion_aucs(args.out, args.images, args.fills, args.seed, args.steps)
    if "mean" in aucs and (args.out / "results.csv").is_file():
        run = run_values(args.out)
        gaps = [abs(v[i] - run[name, m]) for m, v in aucs["mean"].items() for i, name in enumerate(names) if (name, m) in run]
        largest = max(gaps, default=float("nan"))
        print(f"\nmean fill against the run's deletion_auc ({len(gaps)} pairs): largest difference {largest:.2g}")
    for fill, by_method in aucs.items():
        n = len(next(iter(by_method.values())))
        print(f"\ndeletion AUC, fill {fill}, {n} images (lower is better)")
        for method, values in by_method.items():
            print(f"  {method:<10} mean {np.mean(values):.3f}  median {np.median(values):.3f}")
        if "am" not in by_method:
            continue
        others = [m for m in by_method if m != "am"]
        tests = [paired_comparison(by_method["am"], by_method[m], higher_is_better=False) for m in others]
        adjusted = holm([t["p_value"] for t in tests])
        print("  am against:  wins–ties–losses  p  Holm p")
        for method, t, p_holm in zip(others, tests, adjusted):
            print(f"  {method:<10} {t['wins']}–{t['ties']}–{t['losses']}  {t['p_value']:.2g}  {p_holm:.2g}")


if __name__ == "__main__":
    main()
