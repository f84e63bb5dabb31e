"""What the staged kept test saves when a robust mask is pruned, per image.

    .venv/bin/python experiments/explain/study/staged_cost.py IMAGE_DIR N

Fits each of the first N images with ``experiments/explain/study/robust_prune32_16_s80_all8.yaml``'s recipe without its
pruning, then prunes the mask on [32, 16] px cells against the fill and 8 backgrounds of its own
twice: with the fit's staged test (``FitStrategy.kept_masks``: the fill first, then 2 backgrounds
at a time, only up to the first lost removal) and with every removal tested on every background.
Prints the images classified and the seconds of each, and whether the pruned masks are equal.
"""
import sys
import time
from functools import partial

import torch
from einops import rearrange

from actmatch.commands.explain import build_explainer
from actmatch.datamodules.images import expand_image_paths, load_image
from actmatch.explainers.backgrounds import make_fill
from actmatch.explainers.pruning import prune_cells

torch.set_num_threads(2)
ex = build_explainer("experiments/explain/study/robust_prune32_16_s80_all8.yaml", None, None, None)
strategy, cells = ex.fitting, list(ex.fitting.prune)
strategy.prune = []  # fit without pruning; the pruning is timed below
classified = []
forward = ex.classifier.forward
ex.classifier.forward = lambda x: classified.append(x.shape[0]) or forward(x)


def every_background(x, backgrounds, y, masks):
    """Kept, every mask on every background, as a prefix (the unstaged reference)."""
    planted = masks[:, None] * x[None] + (1 - masks[:, None]) * backgrounds[None]
    labels = rearrange(ex.classifier(planted.flatten(0, 1)), "(n k) c -> n k c", n=masks.shape[0]).argmax(-1)
    kept = (labels[:, 0] == y) & ((labels[:, 1:] == y).float().mean(1) >= strategy.verify_keep)
    return torch.arange(len(kept)) < (int(kept.float().argmin()) if not kept.all() else len(kept))


totals = {"staged": [0, 0.0], "every": [0, 0.0]}
for path in expand_image_paths([sys.argv[1]])[: int(sys.argv[2])]:
    image, _ = load_image(path, ex.classifier.input_size)
    x = image[None]
    result = ex.fit_images(x, seed=0)
    with torch.no_grad():
        logits = ex.classifier(x)
    y = logits.argmax(-1)
    torch.manual_seed(1)
    backgrounds = torch.cat([make_fill(x, ex.fill, ex.classifier.data_config["mean"]), strategy.own_backgrounds(x, 8)])
    tests = {"staged": partial(strategy.kept_masks, ex, x, backgrounds, logits, y),
             "every": partial(every_background, x, backgrounds, y)}
    line, pruned = f"{path.name[:24]:24s} area {result.area.item():.3f} |", {}
    for name, kept in tests.items():
        with torch.no_grad():
            if not kept(result.masks)[0]:
                line += f" {name}: not kept on its own backgrounds, not pruned |"
                continue
            m, t = result.masks.clone(), time.perf_counter()
            classified.clear()
            for cell in cells:
                m = prune_cells(kept, m, result.soft_masks, cell, strategy.prune_batch)[0]
            seconds, images = time.perf_counter() - t, sum(classified)
        totals[name][0] += images
        totals[name][1] += seconds
        pruned[name] = m
        line += f" {name}: {images:5d} images {seconds:6.1f} s area {m.mean().item():.3f} |"
    if len(pruned) == 2:
        line += f" equal: {torch.equal(pruned['staged'], pruned['every'])}"
    print(line, flush=True)
print(f"total: staged {totals['staged'][0]} images {totals['staged'][1]:.1f} s, every background "
      f"{totals['every'][0]} images {totals['every'][1]:.1f} s")
