"""Can the one pass choose its own area? A screen of per-image area rules on an amortized ranking.

    .venv/bin/python experiments/evaluation/amortized_area_rules.py CKPT FOLDER [--csv OUT.csv]

For every photo of ``FOLDER`` (loaded as ``actmatch explain`` loads it), the checkpoint's ranking is cut
at ``--grid`` areas (0.05, 0.10, ..., 1) and each cut is classified with the mean fill. Per photo: the
smallest cut that keeps the label (the study's ``kept``: the explanation's argmax is the image's) and
what the pass knows before any masked forward — p(x), the top-2 margin, the entropy of the prediction,
the spread of the ranking (std of its logits) and the share of pixels the network itself scores above
0.5. Printed: Spearman's ρ between each of them and the smallest keeping cut, the share of labels kept
at each fixed cut, and the two-level rules "cut at ``hi`` where p(x) < t, else at ``lo``" (``hi`` at
most ``--max-area``) that keep at least ``--target`` of the labels, smallest median area first.

A screen for the training photos, never the evaluation photos: a rule chosen here is graded once on
held-out photos with ``actmatch study``. One masked forward per cut and photo (20 on the default grid).
"""

from __future__ import annotations

import argparse
import csv
import itertools
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from actmatch.commands.explain import build_explainer, use_checkpoint
from actmatch.datamodules.images import expand_image_paths, read_for_model
from actmatch.explainers.stages import cuts_of

FEATURES = ("p_x", "margin", "entropy", "logit_std", "share_above_half")


@torch.no_grad()
def screen(checkpoint: str, folder: Path, grid: np.ndarray) -> list[dict]:
    """One row per photo: its features and, per cut of ``grid``, kept and p(e)/p(x)."""
    explainer = build_explainer(None, None)
    use_checkpoint(explainer, checkpoint, amortized=True)
    explainer.eval()
    classifier, fractions, rows = explainer.classifier, torch.tensor(grid, dtype=torch.float32), []
    for path in expand_image_paths([folder]):
        x = read_for_model(path, classifier.input_size, classifier.fixed_input_size)[1][None]  # as `actmatch explain`
        _, soft = explainer.ranked_masks(x)
        probs = classifier(x).softmax(-1)[0]
        top2, y = probs.topk(2).values, int(probs.argmax())
        cuts = cuts_of(soft, fractions)
        probs_e = classifier(explainer.explanations(x.expand(len(grid), -1, -1, -1), cuts)).softmax(-1)
        logits = torch.logit(soft.flatten().clamp(1e-6, 1 - 1e-6))
        rows.append(
            {
                "image": path.name,
                "p_x": float(top2[0]),
                "margin": float(top2[0] - top2[1]),
                "entropy": float(-(probs * probs.clamp_min(1e-12).log()).sum()),
                "logit_std": float(logits.std()),
                "share_above_half": float((soft > 0.5).float().mean()),
                "kept": (probs_e.argmax(-1) == y).tolist(),
                "ratio": (probs_e[:, y] / top2[0]).tolist(),
            }
        )
        print(f"{path.name}: p(x) {rows[-1]['p_x']:.3f}", flush=True)
    return rows


def smallest_keeping(rows: list[dict], grid: np.ndarray) -> np.ndarray:
    """Per photo, the smallest cut of ``grid`` that keeps the label (the whole image keeps it)."""
    return np.array([grid[int(np.argmax(r["kept"]))] if any(r["kept"]) else 1.0 for r in rows])


def judged(rows: list[dict], grid: np.ndarray, areas: np.ndarray) -> tuple[float, float, float]:
    """Share kept, median area and median p(e)/p(x) when photo i is cut at ``areas[i]``."""
    index = np.abs(grid[None] - areas[:, None]).argmin(1)
    kept = np.array([r["kept"][i] for r, i in zip(rows, index)])
    ratio = np.array([r["ratio"][i] for r, i in zip(rows, index)])
    return float(kept.mean()), float(np.median(grid[index])), float(np.median(ratio))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("folder", type=Path, help="training photos (never the evaluation photos)")
    parser.add_argument("--grid", type=int, default=20, help="cuts at 1/grid, 2/grid, ..., 1")
    parser.add_argument("--target", type=float, default=0.9, help="share of labels a rule must keep")
    parser.add_argument("--max-area", type=float, default=0.7, help="the largest cut a rule may use")
    parser.add_argument("--csv", type=Path, default=None, help="write the per-photo rows here")
    args = parser.parse_args()
    if not args.folder.is_dir():
        parser.error(f"{args.folder} is not a folder of photos")
    grid = np.arange(1, args.grid + 1) / args.grid
    rows = screen(args.checkpoint, args.folder, grid)
    if args.csv:
        with args.csv.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["image", *FEATURES, *(f"kept@{a:g}" for a in grid)])
            writer.writerows([r["image"], *(r[k] for k in FEATURES), *map(int, r["kept"])] for r in rows)
    need = smallest_keeping(rows, grid)
    p_x = np.array([r["p_x"] for r in rows])
    print(f"\n{len(rows)} photos, {args.checkpoint}; smallest cut keeping the label: median {np.median(need):.2f}")
    print(f"{'feature':<18} {'Spearman ρ':>11} {'p':>9}")
    for name in FEATURES:
        rho, p = spearmanr([r[name] for r in rows], need)
        print(f"{name:<18} {rho:>11.3f} {p:>9.1e}")
    print(f"\n{'fixed cut':<10} {'kept':>6} {'p(e)/p(x)':>10}")
    for a in grid:
        kept, _, ratio = judged(rows, grid, np.full(len(rows), a))
        print(f"{a:<10.2f} {kept:>6.3f} {ratio:>10.3f}")
    rules = []
    thresholds = np.quantile(p_x, [0.1, 0.25, 0.5, 0.75])
    for t, lo, hi in itertools.product(thresholds, grid, grid[grid <= args.max_area + 1e-9]):
        if lo < hi:
            kept, area, ratio = judged(rows, grid, np.where(p_x < t, hi, lo))
            if kept >= args.target:
                rules.append((area, -kept, ratio, t, lo, hi))
    print(f"\nrules keeping ≥ {args.target:.0%} with cuts ≤ {args.max_area:g} (p(x) < t: hi, else lo), smallest area first")
    print(f"{'t':>6} {'lo':>5} {'hi':>5} {'kept':>6} {'median area':>12} {'p(e)/p(x)':>10}")
    for area, kept, ratio, t, lo, hi in sorted(rules)[:10]:
        print(f"{t:>6.3f} {lo:>5.2f} {hi:>5.2f} {-kept:>6.3f} {area:>12.2f} {ratio:>10.3f}")
    if not rules:
        print("none")


if __name__ == "__main__":
    main()
