"""Arguments of ``actmatch throughput``."""

from __future__ import annotations

import argparse

__all__ = ["parse_args"]


def parse_args(command: str, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"actmatch {command}", description="Images per minute of `actmatch explain` for several batch sizes."
    )
    parser.add_argument("images", nargs="+", help="image files, folders or glob patterns")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16], help="default: %(default)s")
    parser.add_argument("--limit", type=int, default=16, help="images explained per batch size (default: %(default)s)")
    parser.add_argument("--out", default="outputs/throughput", help="output folder (default: %(default)s)")
    parser.add_argument("--config", default=None, help="explainer YAML (default: the built-in defaults)")
    parser.add_argument("--steps", type=int, default=None, help="per-image steps (default: the config's)")
    parser.add_argument("--backbone", default=None, help="timm model name (default: efficientnet_lite0, offline)")
    parser.add_argument("--weights", default=None, help="local classifier checkpoint")
    parser.add_argument("--input-size", type=int, default=None, help="classifier input side (default: its data config)")
    parser.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    parser.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        default="fp32",
        help="bf16: the fits run under torch.autocast(bfloat16) (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if any(b < 1 for b in args.batch_sizes) or args.limit < 1:
        parser.error(f"batch sizes and --limit must be >= 1, got {args.batch_sizes} and {args.limit}")
    return args
