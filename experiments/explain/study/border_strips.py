"""Why a default mask keeps a strip along the border: the label with the mask, without its border band, and on the fill alone.

    .venv/bin/python experiments/explain/study/border_strips.py STUDY_DIR/CONFIG/IMAGE_FOLDER ...

Reads each folder's ``summary.json`` and ``mask_input.png`` (the mask as classified) and prints, for the
mean fill: the label's probability and rank on the original, on the explanation, on the explanation
with the border band (``actmatch.explainers.masks.border_band``, as the study's border column) removed, and on the
fill alone.
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from actmatch.commands.explain import build_explainer
from actmatch.datamodules.images import load_image
from actmatch.explainers.backgrounds import make_fill
from actmatch.explainers.masks import border_band

torch.set_num_threads(2)
ex = build_explainer(None, None, None, None)


def label_stats(images: torch.Tensor, label: int) -> list[str]:
    with torch.no_grad():
        probs = ex.classifier(images).softmax(-1)
    ranks = (probs > probs[:, label : label + 1]).sum(-1) + 1
    return [f"p {p:.3f} rank {r}" for p, r in zip(probs[:, label].tolist(), ranks.tolist())]


for folder in map(Path, sys.argv[1:]):
    summary = json.loads((folder / "summary.json").read_text())
    x = load_image(Path(summary["image"]), ex.classifier.input_size)[0][None]
    mask = torch.from_numpy(np.array(Image.open(folder / "mask_input.png").convert("L")) > 127).float()[None, None]
    assert mask.shape[-2:] == x.shape[-2:], (
        f"{folder}: mask_input.png is {tuple(mask.shape[-2:])}, the input {tuple(x.shape[-2:])}"
    )
    inner = (~border_band(mask)).float()
    fill = make_fill(x, ex.fill, ex.classifier.data_config["mean"])
    masks = torch.cat([torch.ones_like(mask), mask, mask * inner, torch.zeros_like(mask)])
    stats = label_stats(masks * x + (1 - masks) * fill, summary["label"])
    print(
        f"{folder.name:28s} area {mask.mean():.3f} (band {(mask * (1 - inner)).sum() / mask.sum():.2f} of it) | "
        f"original {stats[0]} | mask {stats[1]} | mask without band {stats[2]} | fill only {stats[3]}"
    )
