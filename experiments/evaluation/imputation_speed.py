"""Time ROAD's linear imputation: Quantus (scipy spsolve) vs actmatch.evaluation.imputation (torch).

    .venv/bin/python experiments/evaluation/imputation_speed.py [--removed] [--threads 1] [--dtype float32] [--size 224]

One photo (scikit-image's espresso, resized to size x size), 8 masks that keep the top-k pixels of a
smooth random map (Gaussian-blurred noise) at mask areas (kept fractions) 0.02 ... 0.5, as an
explanation mask keeps its top-k pixels and the exam imputes the rest; ``--removed`` removes the
top-k instead (removed fractions 0.02 ... 0.5). Prints one row per mask:
seconds for Quantus, for ours on that mask alone and their ratio, and the max abs difference; then
ours on all 8 masks in one batched call (seconds per mask). No noise (noise=0), so the two agree up
to the solver tolerance. Each of ours is timed after one warm-up call; Quantus runs once per mask.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import skimage.data
import skimage.filters
import skimage.transform
import torch
from quantus.functions.perturb_func import noisy_linear_imputation as quantus_imputation

from actmatch.evaluation.imputation import linear_imputation

AREAS = np.linspace(0.02, 0.5, 8)


def photo(size: int) -> np.ndarray:
    """The espresso photo as (3, size, size) float64 in [0, 1]."""
    image = skimage.transform.resize(skimage.data.coffee(), (size, size), anti_aliasing=True)
    return image.transpose(2, 0, 1).astype(np.float64)


def masks(size: int, removed: bool = False, seed: int = 0) -> np.ndarray:
    """(len(AREAS), size, size) bool, True = kept: mask i keeps (or, ``removed``, removes) the top
    AREAS[i] of a smooth random map."""
    rng = np.random.default_rng(seed)
    smooth = skimage.filters.gaussian(rng.standard_normal((size, size)), sigma=size / 16)
    order = np.argsort(smooth, axis=None)[::-1]  # highest first
    top = np.zeros((len(AREAS), size * size), dtype=bool)
    for i, area in enumerate(AREAS):
        top[i, order[: round(area * size * size)]] = True
    return (~top if removed else top).reshape(len(AREAS), size, size)


def timed(fn):
    """(result, wall-clock seconds, CPU seconds of this process) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--removed", action="store_true", help="the areas are removed, not kept, fractions")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (spsolve uses one)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype, device = getattr(torch, args.dtype), torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    image, keep = photo(args.size), masks(args.size, args.removed)
    x = torch.tensor(image, dtype=dtype, device=device)[None]  # (1, 3, H, W)
    m = torch.tensor(keep, device=device)[:, None]  # (8, 1, H, W)

    def ours(i: int | None):
        images, ms = (x, m[i : i + 1]) if i is not None else (x.expand(len(keep), -1, -1, -1), m)
        out = linear_imputation(images, ms)
        sync()
        return out

    print(
        f"{args.size}x{args.size} photo, torch {args.dtype} on {args.device}, {args.threads} thread(s); "
        f"area = {'removed' if args.removed else 'kept'} fraction"
    )
    print("seconds per mask, wall clock and CPU time of this process (the CPU time is steadier on a busy machine)")
    print(f"{'area':>8} | {'quantus':>8} {'ours':>7} {'ratio':>6} | {'quantus':>8} {'ours':>7} {'ratio':>6} | {'max |diff|':>10}")
    print(f"{'':>8} | {'wall':>8} {'wall':>7} {'':>6} | {'cpu':>8} {'cpu':>7} {'':>6} |")
    totals, worst = np.zeros(4), 0.0  # quantus wall, ours wall, quantus cpu, ours cpu
    for i, area in enumerate(AREAS):
        indices = np.flatnonzero(~keep[i])  # sorted flat indices of the removed pixels
        reference, q_wall, q_cpu = timed(lambda indices=indices: quantus_imputation(image.copy(), indices, noise=0.0))
        ours(i)  # warm-up
        result, o_wall, o_cpu = timed(lambda i=i: ours(i))
        diff = float(np.abs(result[0].double().cpu().numpy() - reference).max())
        totals, worst = totals + (q_wall, o_wall, q_cpu, o_cpu), max(worst, diff)
        print(
            f"{area:8.3f} | {q_wall:8.3f} {o_wall:7.3f} {q_wall / o_wall:5.1f}x | {q_cpu:8.3f} {o_cpu:7.3f} "
            f"{q_cpu / o_cpu:5.1f}x | {diff:10.1e}"
        )
    n = len(AREAS)
    q_wall, o_wall, q_cpu, o_cpu = totals / n
    print(
        f"{'mean':>8} | {q_wall:8.3f} {o_wall:7.3f} {q_wall / o_wall:5.1f}x | {q_cpu:8.3f} {o_cpu:7.3f} "
        f"{q_cpu / o_cpu:5.1f}x | {worst:10.1e}"
    )
    ours(None)  # warm-up
    _, b_wall, b_cpu = timed(lambda: ours(None))
    print(
        f"{'batched':>8} | {'':>8} {b_wall / n:7.3f} {q_wall * n / b_wall:5.1f}x | {'':>8} {b_cpu / n:7.3f} "
        f"{q_cpu * n / b_cpu:5.1f}x |   (ours: all {n} masks in one call)"
    )


if __name__ == "__main__":
    main()
