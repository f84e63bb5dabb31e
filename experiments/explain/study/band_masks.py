"""Are a recipe's border-band masks frames? The band kept against the interior kept, per band mask.

    .venv/bin/python experiments/explain/study/band_masks.py STUDY_DIR/CONFIG [--over 0.05]

Reads each image folder's ``mask.png`` (the mask at the photo's size, as ``actmatch explain`` writes it)
and, for the masks that keep more than ``--over`` of the border band (3 % of the short side, the
study's *band* column), prints the fraction of the band kept, the fraction of the interior kept and
their ratio. A frame keeps the band more densely than the interior (ratio > 1); a large mask whose
object reaches the edge keeps it less densely or as densely (ratio <= 1).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from actmatch.commands.study import border_kept
from actmatch.explainers.masks import border_band


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe_dir", help="an `actmatch study` recipe folder (OUT/CONFIG)")
    parser.add_argument("--over", type=float, default=0.05, help="band fraction above which a mask is listed")
    args = parser.parse_args()
    rows = []
    for summary in sorted(Path(args.recipe_dir).glob("*/summary.json")):
        mask = torch.from_numpy(np.asarray(Image.open(summary.parent / "mask.png").convert("L")) > 127)
        band_kept = border_kept(mask)  # the study's band column
        interior_kept = mask[~border_band(mask[None, None], 0.03)[0, 0]].float().mean().item()
        if band_kept > args.over:
            label = json.loads(summary.read_text())["label_name"].split(",")[0]
            rows.append((summary.parent.name, mask.float().mean().item(), band_kept, interior_kept, label))
    print(f"{'image':<32} {'area':>6} {'band':>6} {'inside':>6} {'ratio':>6}  label")
    for name, area, band_kept, inside, label in rows:
        ratio = band_kept / inside if inside else float("inf")
        print(f"{name[:32]:<32} {area:6.3f} {band_kept:6.3f} {inside:6.3f} {ratio:6.2f}  {label}")
    if rows:
        frames = sum(band_kept > inside for _, _, band_kept, inside, _ in rows)
        median_area = statistics.median(area for _, area, *_ in rows)
        print(f"{len(rows)} band masks (median area {median_area:.3f}); {frames} keep the band more densely than the interior")


if __name__ == "__main__":
    main()
