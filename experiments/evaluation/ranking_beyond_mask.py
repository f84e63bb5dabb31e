"""Would another ranking around `am`'s mask shrink its robust-sufficient area? A screen on a benchmark run.

    .venv/bin/python experiments/evaluation/ranking_beyond_mask.py OUT --images DIR --exam-photos DIR [--smooth 4 8 16]

``OUT`` is an ``actmatch benchmark --methods am,gradcam`` run on ``DIR`` (its ``raw/`` maps). `am`'s map is
its binary mask plus the mask network's probability, so cuts up to the mask's area follow the network inside
the mask and larger cuts add pixels outside it in the network's order. Two other orders are scored beside
`am` and Grad-CAM with the benchmark's own robust-sufficient area (the same exam, seed and grid):

* ``am_then_gradcam``: the mask in the network's order, then the rest in Grad-CAM's;
* ``mask_by_gradcam``: the mask in Grad-CAM's order, then the rest in Grad-CAM's;
* ``smooth<σ>`` (``--smooth σ ...``): the mask first, each side in the order of the network's probability
  blurred with a Gaussian of σ pixels (a smoother ranking: compact cuts instead of scattered pixels);
* ``rank_mean`` (``--rank-mean``): the mask first, each side in the order of the mean of the two maps'
  percentile ranks (the network's probability and Grad-CAM's map, an ensemble of the two orders).

Prints the medians and, per order, on how many images it is smaller or larger than `am`'s and Grad-CAM's.
A screen for photos other than the evaluation photos (e.g. 30 of ``imagenet-train``).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from actmatch.commands.benchmark import load_exam, load_images
from actmatch.evaluation import metrics as M
from actmatch.evaluation.families import EXAM_SEED
from actmatch.explainers.backgrounds import gaussian_blur
from actmatch.explainers.classifier import load_classifier


def percentile_ranks(values: torch.Tensor) -> torch.Tensor:
    """Each element's rank among all of ``values`` (ties by position), scaled to [0, 1]: 0 the smallest."""
    flat = values.flatten()
    ranks = torch.empty_like(flat)
    ranks[flat.argsort(stable=True)] = torch.arange(flat.numel(), dtype=flat.dtype)
    return (ranks / max(1, flat.numel() - 1)).view_as(values)


def orders(
    am: torch.Tensor, gradcam: torch.Tensor, smooth: tuple[float, ...] = (), rank_mean: bool = False
) -> dict[str, torch.Tensor]:
    """The rankings (1, 1, H, W) of one image; `am`'s mask is where its map is ≥ 1 (map = mask + probability)."""
    mask = am >= 1
    low = gradcam - gradcam.min()
    cam = low / low.max().clamp_min(1e-12)  # in [0, 1], below every pixel of the mask once shifted by 2
    blurred = {s: gaussian_blur(am - mask.float(), s) for s in smooth}  # the network's probability, blurred
    mean_rank = (percentile_ranks(am - mask.float()) + percentile_ranks(gradcam)) / 2  # in [0, 1]
    return {
        "am": am,
        "gradcam": gradcam,
        "am_then_gradcam": torch.where(mask, am + 1, cam),
        "mask_by_gradcam": torch.where(mask, cam + 2, cam),
        **{f"smooth{s:g}": torch.where(mask, 2 + b, b) for s, b in blurred.items()},
        **({"rank_mean": torch.where(mask, 2 + mean_rank, mean_rank)} if rank_mean else {}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="an `actmatch benchmark --methods am,gradcam` output folder")
    parser.add_argument("--images", required=True, help="the run's --images")
    parser.add_argument("--exam-photos", required=True, help="the run's --exam-photos")
    parser.add_argument("--exam-seed", type=int, default=EXAM_SEED)
    parser.add_argument("--seed", type=int, default=0, help="the run's --seed (ties in the ranking)")
    parser.add_argument("--smooth", type=float, nargs="*", default=[], help="also the network's order blurred, σ in pixels")
    parser.add_argument("--rank-mean", action="store_true", help="also the mean of the two maps' percentile ranks")
    args = parser.parse_args()
    classifier = load_classifier("efficientnet_lite0").eval()
    images = load_images([args.images], classifier, None)
    exam = load_exam(args.exam_photos, images, classifier.input_size, args.exam_seed)
    areas: dict[str, list[float]] = {}
    for item in images:
        name = Path(item.path).name
        raw = {m: torch.load(args.out / "raw" / name / f"{m}.pt", weights_only=True)["map"].float() for m in ("am", "gradcam")}
        maps = orders(*(raw[m].reshape(1, 1, *raw[m].shape[-2:]) for m in ("am", "gradcam")), tuple(args.smooth), args.rank_mean)
        x = item.image[None]
        with torch.no_grad():
            y = int(classifier(x).argmax(-1))
            stacked, draws = torch.cat(list(maps.values())), exam.draws(x, name)
            found = M.robust_sufficient_area(classifier, x, stacked, draws, y, seed=args.seed)
        for key, value in zip(maps, found.tolist()):
            areas.setdefault(key, []).append(value)
        print(name, {k: round(v[-1], 3) for k, v in areas.items()}, flush=True)
    median = {k: statistics.median(v) for k, v in areas.items()}
    print(f"\n{len(images)} images; robust-sufficient area, median, and per image against am / gradcam (smaller–larger)")
    for key, values in areas.items():
        against = [
            f"{sum(a < b for a, b in zip(values, areas[ref]))}–{sum(a > b for a, b in zip(values, areas[ref]))}"
            for ref in ("am", "gradcam")
        ]
        print(f"{key:<18} {median[key]:.3f}   {against[0]:>7}   {against[1]:>7}")


if __name__ == "__main__":
    main()
