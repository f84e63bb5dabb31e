"""Arguments of ``actmatch circuit``."""

from __future__ import annotations

import argparse
from pathlib import Path

from actmatch.commands.parsers.explain import add_model_arguments

__all__ = ["parse_args", "RANKING_NAMES", "SCORING_NAMES", "ABLATION_NAMES", "SEARCH_FRACTIONS"]

#: the names of :data:`actmatch.explainers.circuits.RANKINGS`, :data:`~actmatch.explainers.circuits.SCORINGS`
#: and :data:`~actmatch.explainers.circuits.ABLATIONS`
RANKING_NAMES = ("attribution", "energy")
SCORING_NAMES = ("auto", "gradient", "weight")
ABLATION_NAMES = ("mean", "zero")
#: :data:`actmatch.explainers.circuits.DEFAULT_FRACTIONS`, the grid of ``--search``
SEARCH_FRACTIONS = (0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0)


def parse_args(command: str, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"actmatch {command}",
        description="Read out, draw and test (by ablation) the channel circuit behind each image's decision.",
    )
    parser.add_argument("images", nargs="+", help="image files, folders or glob patterns")
    parser.add_argument("--out", default="outputs/circuit", help="output folder (default: %(default)s)")
    add_model_arguments(parser)
    parser.add_argument(
        "--taps",
        nargs="+",
        default=None,
        help="circuit layers: names, or 'blocks' (hidden channels inside every block, the default where "
        "the model has them) or 'stages' (the backbone's stage outputs)",
    )
    parser.add_argument(
        "--rank",
        choices=list(RANKING_NAMES),
        default="attribution",
        help="channels chosen by attribution (what the label needs; default) or energy (the paper's nodes)",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--k", type=int, default=None, help="channels per tapped layer (absolute)")
    size.add_argument("--fraction", type=float, default=None, help="fraction of channels per tapped layer (default 0.1)")
    parser.add_argument(
        "--scoring",
        choices=list(SCORING_NAMES),
        default="gradient",
        help="edge scoring: weight (one conv/linear between taps), gradient (any), auto (default: %(default)s)",
    )
    parser.add_argument(
        "--ablation",
        choices=list(ABLATION_NAMES),
        default="zero",
        help="what replaces channels outside the circuit: zero, or their mean over the given images",
    )
    parser.add_argument("--steps", type=int, default=None, help="per-image optimisation steps of the mask")
    parser.add_argument(
        "--masks-from", default=None, help="folder of an earlier `actmatch explain` run: reuse DIR/<stem>/mask.png"
    )
    parser.add_argument(
        "--search",
        action="store_true",
        help=f"find the smallest per-layer fraction that keeps the label (grid {list(SEARCH_FRACTIONS)})",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the mask fit (default: 0)")
    parser.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    if args.k is not None and args.k < 1:
        parser.error(f"--k must be >= 1, got {args.k}")
    if args.fraction is not None and not 0 < args.fraction <= 1:
        parser.error(f"--fraction must be in (0, 1], got {args.fraction}")
    if args.search and (args.k is not None or args.fraction is not None):
        parser.error("--search finds the fraction itself; drop --k/--fraction")
    if args.masks_from is not None and not Path(args.masks_from).is_dir():
        parser.error(f"--masks-from {args.masks_from}: no such folder (give the --out folder of `actmatch explain`)")
    return args
