"""Arguments of ``actmatch study``."""

from __future__ import annotations

import argparse

from actmatch.commands.parsers.explain import add_scan_argument, check_scan_argument
from actmatch.evaluation.seeds import EXAM_SEED

__all__ = ["parse_args"]


def parse_args(command: str, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"actmatch {command}",
        description="Run the per-image fit of each explainer config on a fixed image list; one row per config.",
    )
    parser.add_argument("images", nargs="+", help="image files, folders or glob patterns")
    parser.add_argument(
        "--config",
        action="append",
        default=None,
        help="explainer config YAML (repeat for several rows; default: the built-in defaults)",
    )
    parser.add_argument(
        "--checkpoint",
        action="append",
        default=None,
        metavar="CKPT",
        help="an `actmatch fit` checkpoint (repeat for several rows): with --amortized its U-Net masks each image "
        "in one forward pass; without, it warm-starts each --config's fit",
    )
    parser.add_argument("--amortized", action="store_true", help="with --checkpoint: one forward pass, no fitting")
    add_scan_argument(parser)
    parser.add_argument("--out", default="outputs/study", help="output folder (default: %(default)s)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images (sorted)")
    parser.add_argument(
        "--exam-photos",
        default=None,
        metavar="DIR",
        help="folder of background photos for the exam (e.g. ../shared/data/imagenet-train), disjoint "
        "from the images; without it the exam uses blur and ROAD draws in their place",
    )
    parser.add_argument("--exam-seed", type=int, default=EXAM_SEED, help="seed of the exam's draws (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fit (default: 0)")
    parser.add_argument("--steps", type=int, default=None, help="override the configs' steps")
    parser.add_argument("--backbone", default=None, help="timm model name (default: efficientnet_lite0, offline)")
    parser.add_argument("--weights", default=None, help="local classifier checkpoint")
    parser.add_argument("--markdown", default=None, help="append the rows to this Markdown file's table")
    parser.add_argument("--plot", default=None, help="draw area vs robustness of every row in OUT/study.csv to this PNG")
    parser.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    parser.add_argument(
        "--wandb",
        action="store_true",
        help="also log the rows as one W&B table `study/rows` (offline unless WANDB_MODE is set; the run goes to OUT/wandb)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the images OUT/<config> already has from a run with the same config, seed, steps and exam; fit only the rest",
    )
    args = parser.parse_args(argv)
    if args.amortized and not args.checkpoint:
        parser.error("--amortized needs --checkpoint CKPT (a U-Net trained with `actmatch fit`)")
    if args.amortized and args.config:
        parser.error("--amortized rows are the checkpoints' own recipes; leave out --config")
    check_scan_argument(parser, args)
    if args.exam_seed == args.seed:
        parser.error("--exam-seed must differ from --seed: the exam's draws must come from a seed stream the fit never uses")
    return args
