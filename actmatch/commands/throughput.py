"""``actmatch throughput``: images per minute of per-image explanations, by batch size.

For each ``--batch-sizes`` value B the same images are explained end to end, exactly as
``actmatch explain --batch-size B`` does (B independent U-Nets fitted together, one batched
classifier pass per step, every image's folder written), into ``OUT/b<B>/``. One row per B:
wall seconds, images per minute, speed-up over the first B, label-kept rate and median area
(batched fits must not change the masks' quality). All rows come from one run, so their ratios
are comparable; the printed table is also written to ``OUT/throughput.csv``, and each ``OUT/b<B>/``
gets the ``summary.csv`` and ``report.html`` of ``actmatch explain``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import statistics
import sys
import time
from pathlib import Path

import torch

from actmatch.commands.parsers.throughput import parse_args
from actmatch.datamodules.images import expand_image_items
from actmatch.explainers.classifier import ClassifierLoadError

__all__ = ["main", "run", "THROUGHPUT_FIELDS"]

THROUGHPUT_FIELDS = [
    "batch_size",
    "images",
    "seconds",
    "images_per_minute",
    "speedup",
    "label_kept",
    "median_area",
    "device",
    "precision",
    "steps",
]


def _autocast(device: str, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


def format_rows(rows: list[dict]) -> str:
    """The rows as a fixed-width table."""
    head = f"{'B':>4} {'images':>6} {'seconds':>8} {'img/min':>8} {'speed-up':>8} {'kept':>5} {'area':>6}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['batch_size']:>4} {r['images']:>6} {r['seconds']:>8.1f} {r['images_per_minute']:>8.2f} "
            f"{r['speedup']:>7.2f}x {r['label_kept']:>5.2f} {r['median_area']:>6.3f}"
        )
    return "\n".join(lines)


def main(command: str, argv: list[str]) -> int:
    return run(command, parse_args(command, argv))


def run(command: str, args: argparse.Namespace) -> int:
    """``actmatch throughput`` with arguments checked by :func:`~actmatch.commands.parsers.throughput.parse_args`."""
    from actmatch.commands.explain import build_explainer, explain_files
    from actmatch.report import write_report
    from actmatch.results import write_summary

    try:
        explainer = build_explainer(args.config, args.backbone, args.weights, args.steps, input_size=args.input_size).to(
            args.device
        )
    except (ClassifierLoadError, FileNotFoundError, ValueError) as err:
        print(f"actmatch {command}: {err}", file=sys.stderr)
        return 2
    items = expand_image_items(args.images)[: args.limit]
    if not items:
        print(f"actmatch {command}: no images found in {args.images}", file=sys.stderr)
        return 2
    out = Path(args.out)
    rows = []
    for b in args.batch_sizes:
        print(f"throughput: {len(items)} image(s), batch size {b} ...", file=sys.stderr, flush=True)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        with _autocast(args.device, args.precision):
            results = explain_files(explainer, items, out / f"b{b}", steps=args.steps, show_progress=False, batch_size=b)
        seconds = time.perf_counter() - start
        write_summary(results, out / f"b{b}")  # summary.csv / aggregate.json, as `actmatch explain` (not timed)
        write_report(out / f"b{b}")
        ok = [r for r in results if r["status"] == "ok"]
        if not ok:
            print(f"actmatch {command}: every image failed at batch size {b}: {results[0]['error']}", file=sys.stderr)
            return 1
        rows.append({
            "batch_size": b, "images": len(ok), "seconds": seconds, "images_per_minute": 60 * len(ok) / seconds,
            "label_kept": sum(r["label_kept"] for r in ok) / len(ok),
            "median_area": statistics.median(r["mask_area"] for r in ok),
            "device": args.device, "precision": args.precision, "steps": explainer.steps if args.steps is None else args.steps,
        })  # fmt: skip
    for r in rows:
        r["speedup"] = r["images_per_minute"] / rows[0]["images_per_minute"]
    print(
        f"{explainer.classifier.name}, {rows[0]['steps']} steps, {args.device} ({torch.get_num_threads()} threads), "
        f"{args.precision}; one run, so the rows compare:"
    )
    print(format_rows(rows))
    with (out / "throughput.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=THROUGHPUT_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {out}/throughput.csv")
    return 0
