"""The smallest cut of an amortized checkpoint's ranking that keeps the label (mean fill), per photo.

    .venv/bin/python experiments/evaluation/amortized_cuts.py CKPT FOLDER [FOLDER ...]

One pass of the checkpoint's ranking network per photo (the network inside ``TopFraction``), then the
label with the mean fill at 16 top-k cuts (0.05 to 0.9 of the image). Prints, per folder, the median
smallest label-keeping cut, the share kept at a quarter of the image, and the same for the photos
below and above the folder's median confidence p(x): what a per-image area could buy over the fixed
quarter, and whether the classifier's confidence predicts it.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from actmatch.commands.explain import build_explainer, use_checkpoint
from actmatch.datamodules.images import read_for_model
from actmatch.explainers.backgrounds import make_fill

AREAS = torch.tensor([0.05, 0.075, 0.1, 0.125, 0.15, 0.175, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])


def smallest_cut(explainer, ranking, image: torch.Tensor) -> tuple[float, float]:
    """(p(x) of the top-1 label, the smallest of AREAS whose top-k cut keeps it; 1 if none)."""
    with torch.no_grad():
        logits = ranking(image)
        probs = explainer.classifier(image).softmax(-1)
        label = probs.argmax(-1)
        order = logits.flatten().argsort(descending=True)
        masks = torch.zeros(len(AREAS), logits.numel())
        for i, area in enumerate(AREAS):
            masks[i, order[: int(round(area.item() * logits.numel()))]] = 1
        masks = masks.view(len(AREAS), 1, *logits.shape[-2:])
        fill = make_fill(image, "mean", explainer.classifier.data_config["mean"])
        kept = explainer.classifier(masks * image + (1 - masks) * fill).argmax(-1) == label
    return probs.max().item(), AREAS[kept.nonzero()[0, 0]].item() if kept.any() else 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("folders", nargs="+")
    args = parser.parse_args()
    explainer = build_explainer(None)
    use_checkpoint(explainer, args.checkpoint, amortized=True)
    explainer.eval()
    ranking = getattr(explainer.unet, "net", explainer.unet)  # the ranking inside TopFraction
    for folder in args.folders:
        rows = [smallest_cut(explainer, ranking, read_for_model(p, explainer.classifier.input_size)[1][None])
                for p in sorted(Path(folder).glob("*.JPEG"))]  # fmt: skip
        cuts = [c for _, c in rows]
        median_p = statistics.median(p for p, _ in rows)
        low = [c for p, c in rows if p < median_p]
        high = [c for p, c in rows if p >= median_p]
        print(f"{folder}: {len(rows)} photos, median smallest cut {statistics.median(cuts):.3f}, "
              f"kept at 0.25: {sum(c <= 0.25 for c in cuts) / len(cuts):.2f}; "
              f"p(x) below its median: {statistics.median(low):.3f}, above: {statistics.median(high):.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
