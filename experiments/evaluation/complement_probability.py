"""How much of the decision is left once `am`'s mask is removed? p_f(x̄)(y), x̄ = (1 − m) ⊙ x + m ⊙ μ, per image.

    .venv/bin/python experiments/evaluation/complement_probability.py OUT [OUT ...] --images DIR

Each ``OUT`` is an ``actmatch benchmark`` run on ``DIR`` with `am` among its methods (its ``raw/`` maps; the mask
is where `am`'s map is ≥ 1). μ is the model's mean colour, the fit's fill and the necessity term's. Prints, per
run, the median and mean probability of the label with the mask removed and on how many images it stays above
``--margin`` (the necessity term's margin: where the term is active).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from actmatch.commands.benchmark import load_images
from actmatch.evaluation.benchmark import MapStore
from actmatch.explainers.backgrounds import make_fill
from actmatch.explainers.classifier import load_classifier


@torch.no_grad()
def complement_probability(classifier, image: torch.Tensor, mask: torch.Tensor, y: int) -> float:
    """p_f((1 − m) ⊙ x + m ⊙ μ)(y) of one image (1, 3, H, W) and mask (1, 1, H, W)."""
    fill = make_fill(image, "mean", classifier.data_config["mean"])
    return float(classifier((1 - mask) * image + mask * fill).softmax(-1)[0, y])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outs", type=Path, nargs="+", help="`actmatch benchmark` output folders with am's maps")
    parser.add_argument("--images", required=True, help="the runs' --images")
    parser.add_argument("--margin", type=float, default=0.1)
    args = parser.parse_args()
    classifier = load_classifier("efficientnet_lite0").eval()
    images = load_images([args.images], classifier, None)
    for out in args.outs:
        found, store = [], MapStore(out / "raw")
        for item in images:
            name, x = Path(item.path).name, item.image[None]
            saved = store.load(name, "am")
            if saved is None:
                raise SystemExit(f"{out} has no `am` map of {name}: give a benchmark run of --images with am among its methods")
            raw = saved["map"].float()
            mask = (raw >= 1).float().reshape(1, 1, *x.shape[-2:])
            with torch.no_grad():
                y = int(classifier(x).argmax(-1))
            found.append(complement_probability(classifier, x, mask, y))
        above = sum(p > args.margin for p in found)
        print(f"{out}: {len(found)} images, p with the mask removed: median {statistics.median(found):.3f}, "
              f"mean {statistics.fmean(found):.3f}, above {args.margin:g} on {above}")  # fmt: skip


if __name__ == "__main__":
    main()
