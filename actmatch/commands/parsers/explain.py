"""Arguments of ``actmatch explain`` and ``actmatch demo``, and the groups other commands share
(``--backbone``/``--weights``, the classifier's description, the amortized pass's refinements)."""

from __future__ import annotations

import argparse

__all__ = [
    "PRESETS",
    "parse_args",
    "add_model_arguments",
    "add_classifier_arguments",
    "check_classifier_arguments",
    "add_scan_argument",
    "check_scan_argument",
]

#: named recipes: experiments/explain/<name>.yaml (the study's rows, docs/explainer-study.md)
PRESETS = ("faithful", "sis", "smallest", "confident", "robust", "class_map")


def parse_args(command: str, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"actmatch {command}",
        description="Explain images with minimal binary masks learned by activation matching."
        if command == "explain"
        else "Explain a real photo bundled with scikit-image (offline) with the default backbone.",
    )
    if command == "explain":
        parser.add_argument("images", nargs="+", help="image files, folders or glob patterns")
        parser.add_argument("--out", default="outputs/explain", help="output folder (default: %(default)s)")
    else:
        parser.add_argument("--photo", default="coffee", help="scikit-image photo name (default: %(default)s)")
        parser.add_argument("--out", default="outputs/demo", help="output folder (default: %(default)s)")
    add_model_arguments(parser)
    add_classifier_arguments(parser)
    parser.add_argument("--steps", type=int, default=None, help="per-image optimisation steps")
    parser.add_argument("--config", default=None, help="YAML with the explainer's init args (a `model:` section works)")
    parser.add_argument(
        "--preset",
        default=None,
        help=f"a named recipe from experiments/explain/ ({', '.join(PRESETS)}; default: the built-in defaults)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the U-Net and backgrounds (default: 0)")
    parser.add_argument("--checkpoint", default=None, help="amortized Lightning checkpoint: warm-start the U-Net")
    parser.add_argument("--amortized", action="store_true", help="with --checkpoint: one forward pass, no fitting")
    add_scan_argument(parser)
    parser.add_argument("--circuit", action="store_true", help="also read out the channel circuit (circuit.json/png)")
    parser.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=1,
        metavar="B",
        help="images fitted at once, each resized to the model's square input (default: 1, aspect ratio kept)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="explain again the images whose folder in --out is complete (default: skip them)"
    )
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    check_classifier_arguments(parser, args)
    if args.preset and args.config:
        parser.error("--preset and --config both give the recipe; pass one of them")
    if args.preset and args.preset not in PRESETS:
        parser.error(f"unknown preset {args.preset!r}; choose one of {', '.join(PRESETS)}")
    if args.amortized and not args.checkpoint:
        parser.error("--amortized needs --checkpoint CKPT (a U-Net trained with `actmatch fit`)")
    check_scan_argument(parser, args)
    return args


def add_scan_argument(parser: argparse.ArgumentParser) -> None:
    """``--scan N``: refine each amortized mask by the smallest accepted of N cuts of its ranking."""
    parser.add_argument(
        "--scan",
        type=int,
        default=None,
        metavar="N",
        help="with --amortized: cut the pass's ranking at N areas and keep the smallest cut the recipe's "
        "criterion accepts (one batched pass of N masks per image; two where the pass's mask is not accepted)",
    )
    parser.add_argument(
        "--grow",
        type=int,
        default=None,
        metavar="N",
        help="with --amortized, instead of --scan: where the recipe's criterion refuses the pass's mask, the "
        "smallest accepted of N larger cuts of its ranking, up to the whole image (one batched pass of N masks, "
        "only for refused masks; the per-image recipe's Grow stage)",
    )
    parser.add_argument(
        "--bisect",
        action="store_true",
        help="with --grow: find the cut by bisection, one mask at a time (about log2 N + 1 masks instead of N; "
        "the smallest accepted cut where acceptance only grows with the area, a larger one where it does not)",
    )
    parser.add_argument(
        "--border-free",
        type=float,
        default=None,
        metavar="F",
        help="with --scan: then the smallest accepted cut of the ranking that leaves the image's border band "
        "alone, where it needs at most F times the area (the per-image recipe's BorderFree stage, on the scan's areas)",
    )


def check_scan_argument(
    parser: argparse.ArgumentParser, args: argparse.Namespace, amortized: bool | None = None, fix: str = "add --amortized"
) -> None:
    """Refuse ``--scan`` / ``--grow`` without an amortized pass to refine (``amortized``, default
    ``args.amortized``; ``fix`` says how to ask for one), both at once, and out-of-range ``--scan`` /
    ``--grow`` / ``--border-free``."""
    amortized = args.amortized if amortized is None else amortized
    for flag, value in (("--scan", args.scan), ("--grow", args.grow)):
        if value is not None and not amortized:
            parser.error(f"{flag} refines the masks of one amortized pass; {fix} (a per-image recipe has its own stages)")
        if value is not None and not 1 <= value <= 1024:
            parser.error(f"{flag} must be in 1..1024, got {value}")
    if args.scan is not None and args.grow is not None:
        parser.error("--scan already cuts above a refused mask (and below an accepted one); use --scan N or --grow N, not both")
    if args.bisect and args.grow is None:
        parser.error("--bisect searches the cuts of --grow N; add --grow N (e.g. --grow 16 --bisect)")
    if args.border_free is not None and (args.scan is None or args.border_free < 1):
        parser.error(f"--border-free F cuts the scanned ranking again: it needs --scan N and F >= 1, got {args.border_free}")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--backbone`` and ``--weights``: which classifier to load (default: the offline Lite0)."""
    parser.add_argument("--backbone", default=None, help="timm model name (default: efficientnet_lite0, offline)")
    parser.add_argument(
        "--weights",
        default=None,
        help="local classifier checkpoint: a state dict (.pth/.safetensors), a Lightning checkpoint, "
        "or a folder written by timm's save_for_hf (then --backbone is not needed)",
    )


def add_classifier_arguments(parser: argparse.ArgumentParser) -> None:
    """``--labels``, ``--num-classes``, ``--mean``, ``--std``, ``--input-size``: what the
    classifier is, when its checkpoint does not say (defaults: the checkpoint and timm's data config)."""
    parser.add_argument(
        "--labels", default=None, metavar="FILE", help="class names: one per line, a JSON list, or a JSON dict index -> name"
    )
    parser.add_argument(
        "--num-classes",
        type=int,
        default=None,
        metavar="N",
        help="classes of the classifier's head (default: read from the checkpoint)",
    )
    for statistic in ("mean", "std"):
        parser.add_argument(
            f"--{statistic}",
            type=float,
            nargs=3,
            default=None,
            metavar=("R", "G", "B"),
            help=f"per-channel {statistic} the classifier normalises with (default: its timm data config)",
        )
    parser.add_argument(
        "--input-size",
        type=int,
        default=None,
        metavar="N",
        help="short side images are resized to for the classifier (default: its timm data config)",
    )


def check_classifier_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse impossible values of :func:`add_classifier_arguments`'s flags (argparse exit 2)."""
    for flag, value in (("--num-classes", args.num_classes), ("--input-size", args.input_size)):
        if value is not None and value < 1:
            parser.error(f"{flag} must be >= 1, got {value}")
    if args.std is not None and min(args.std) <= 0:
        parser.error(f"--std values must be > 0, got {args.std}")
