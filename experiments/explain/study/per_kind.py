"""Which kinds of unseen background a study's masks fail on.

    .venv/bin/python experiments/explain/study/per_kind.py outputs/study20/NAME/*/

For each image folder of an ``actmatch study`` run, re-scores ``mask_input.png`` on the study's
16 evaluation backgrounds (``metrics.robustness``'s seed-1000 set: solid, uniform, gaussian in
turn) and prints the mask area, the robustness and the label kept per kind.
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from actmatch.commands.explain import build_explainer
from actmatch.datamodules.images import load_image
from actmatch.explainers.backgrounds import cycled_backgrounds

torch.set_num_threads(2)
KINDS = ("solid", "uniform", "gaussian")
ex = build_explainer(None, None, None, None)  # the classifier only
clf = ex.classifier
for folder in sys.argv[1:]:
    folder = Path(folder)
    s = json.loads((folder / "summary.json").read_text())
    image, _ = load_image(Path(s["image"]), clf.input_size)
    x = image[None]
    m = torch.from_numpy(np.array(Image.open(folder / "mask_input.png").convert("L")) > 127).float()[None, None]
    assert m.shape[-2:] == x.shape[-2:], (m.shape, x.shape)
    with torch.random.fork_rng():
        torch.manual_seed(1000)
        bgs = cycled_backgrounds(x, 16, KINDS)  # as the study scored these masks then: 16 draws cycling the kinds, seed 1000
    with torch.no_grad():
        y = clf(x).argmax(-1)
        ok = (clf(m * x + (1 - m) * bgs).argmax(-1) == y).int().tolist()
    per = {k: f"{sum(ok[j::3])}/{len(ok[j::3])}" for j, k in enumerate(KINDS)}
    print(folder.name, round(m.mean().item(), 3), sum(ok) / 16, per, flush=True)
