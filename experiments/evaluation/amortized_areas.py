"""Copies of an amortized checkpoint that keep other fractions of the image, for a screen of the area.

    .venv/bin/python experiments/evaluation/amortized_areas.py CKPT --areas 0.3 0.4 0.5 --out DIR

Writes ``DIR/areaNN.ckpt`` per area: the same weights, the saved ``TopFraction`` area replaced and the
recipe renamed ``<recipe>-areaNN`` (so ``actmatch study --amortized --checkpoint DIR/area40.ckpt ...``
gives each its own row). The ranking is the checkpoint's; only where it is cut changes. A screen, not a
recipe: train the chosen area (``--model.init_args.unet.init_args.area A``) before shipping it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from actmatch.explainers.fit_checkpoint import UNET_INIT_KEY


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--areas", type=float, nargs="+", required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if bad := [a for a in args.areas if not 0 < a < 1]:
        parser.error(f"--areas must lie in (0, 1), got {bad}")
    state = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    spec = state.get(UNET_INIT_KEY)
    if spec is None or "area" not in spec.get("init_args", {}):
        parser.error(f"{args.checkpoint} has no TopFraction mask network (an amortized checkpoint of actmatch fit)")
    args.out.mkdir(parents=True, exist_ok=True)
    recipe = state["hyper_parameters"].get("recipe") or "amortized"
    for area in args.areas:
        spec["init_args"]["area"] = area
        state["hyper_parameters"]["recipe"] = f"{recipe}-area{round(area * 100)}"
        path = args.out / f"area{round(area * 100)}.ckpt"
        torch.save(state, path)
        print(f"{path}: {recipe} cut at {area}")


if __name__ == "__main__":
    main()
