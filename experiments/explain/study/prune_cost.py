"""What pruning costs and buys on top of the default fit without it, per image.

    .venv/bin/python experiments/explain/study/prune_cost.py IMAGE_DIR N

Fits each of the first N images with ``experiments/explain/study/lookahead5.yaml``'s recipe
(`minimal` v9: no pruning), then prunes its mask with [16, 8] and with [32, 16, 8]
px cells and prints the seconds, classifier passes and area of each.
"""

import sys
import time

import torch

from actmatch.commands.explain import build_explainer
from actmatch.datamodules.images import expand_image_paths, load_image
from actmatch.explainers.backgrounds import make_fill
from actmatch.explainers.pruning import prune_cells

torch.set_num_threads(2)
ex = build_explainer("experiments/explain/study/lookahead5.yaml", None, None, None)
paths = expand_image_paths([sys.argv[1]])[: int(sys.argv[2])]
for path in paths:
    image, _ = load_image(path, ex.classifier.input_size)
    x = image[None]
    t = time.perf_counter()
    r = ex.fit_images(x, seed=0)
    tf = time.perf_counter() - t
    logits = ex.classifier(x)
    y = logits.argmax(-1)
    fill = make_fill(x, ex.fill, ex.classifier.data_config["mean"])

    def kept(m, x=x, fill=fill, y=y):
        return ex.classifier(m * x + (1 - m) * fill).argmax(-1) == y

    line = f"{path.name[:22]:22s} fit {tf:5.1f}s area {r.area.item():.3f} |"
    for stages in ([16, 8], [32, 16, 8]):
        m = r.masks.clone()
        t = time.perf_counter()
        n = 0
        for c in stages:
            m, k = prune_cells(kept, m, r.soft_masks, c)
            n += k
        line += f" {stages}: {time.perf_counter() - t:4.1f}s {n:3d} passes area {m.mean().item():.3f} |"
    print(line, flush=True)
