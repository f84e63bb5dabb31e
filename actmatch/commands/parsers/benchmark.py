"""Arguments of ``actmatch benchmark``."""

from __future__ import annotations

import argparse

from actmatch.commands.parsers.explain import add_model_arguments, add_scan_argument, check_scan_argument
from actmatch.evaluation.seeds import EXAM_SEED

__all__ = ["parse_args", "method_names", "methods_problem", "METHOD_NAMES", "DEFAULT_METHODS", "DESCRIPTION"]

#: the names of :data:`actmatch.evaluation.methods.METHODS`, in its order
METHOD_NAMES = ("am", "am-amortized", "saliency", "gradcam", "occlusion", "ig", "rise", "convad", "ep", "centre")
#: ``--methods`` when not given
DEFAULT_METHODS = "am,saliency,gradcam,occlusion,ig,rise,convad"
DESCRIPTION = "actmatch benchmark: actmatch against the baseline explainers, same model, same images."


def parse_args(command: str, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"actmatch {command}", description=DESCRIPTION)
    parser.add_argument(
        "--images", nargs="+", default=None, help="image files, folders or glob patterns (required unless --from-results)"
    )
    parser.add_argument(
        "--methods", default=DEFAULT_METHODS, help=f"comma-separated, from {list(METHOD_NAMES)} (default: %(default)s)"
    )
    parser.add_argument("--out", default=None, help="output folder (default: outputs/benchmark; with --from-results: print only)")
    add_model_arguments(parser)
    parser.add_argument(
        "--input-size",
        type=int,
        default=None,
        help="short side images are resized to for the classifier (default: its timm data config)",
    )
    parser.add_argument("--steps", type=int, default=None, help="per-image steps of `am` (default: the explainer's)")
    parser.add_argument("--checkpoint", default=None, help="amortized Lightning checkpoint for `am-amortized`")
    add_scan_argument(parser)  # am-amortized's masks, as `actmatch explain --amortized --scan N`
    parser.add_argument(
        "--config", default=None, help="explainer YAML for `am` / `am-amortized` (as `actmatch explain --config`)"
    )
    parser.add_argument("--limit", type=int, default=None, help="only the first N images (sorted within folders)")
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the fits (am's U-Net and backgrounds) and of RISE's masks (default: %(default)s)",
    )
    parser.add_argument(
        "--exam-seed",
        type=int,
        default=EXAM_SEED,
        help="seed of the exam's draws; must differ from --seed (default: %(default)s)",
    )
    parser.add_argument(
        "--exam-photos",
        default=None,
        metavar="DIR",
        help="folder of background photos for the exam (e.g. ../shared/data/imagenet-train); it must not "
        "hold any of the --images. Without it the exam uses blur and ROAD draws in their place",
    )
    parser.add_argument(
        "--robust-rate",
        type=float,
        default=0.8,
        help="share of the exam's 16 draws a cut must keep the label on to count as robust-sufficient (default: %(default)s)",
    )
    parser.add_argument(
        "--sanity-images",
        type=int,
        default=20,
        help="explain the first N images again with a model whose top blocks are re-initialised (the "
        "sanity check; it doubles the methods' time on those images; 0: off; default: %(default)s)",
    )
    parser.add_argument("--area", type=float, default=0.2, help="cut area when `am` is not run (default: %(default)s)")
    parser.add_argument("--rise-masks", type=int, default=1000, help="RISE masks per image (default: %(default)s)")
    parser.add_argument("--window", type=int, default=32, help="occlusion / convad window, px (default: %(default)s)")
    parser.add_argument("--stride", type=int, default=None, help="occlusion / convad stride, px (default: window/2)")
    parser.add_argument("--tau", type=float, default=0.5, help="ConvAD threshold (default: %(default)s)")
    parser.add_argument("--ig-steps", type=int, default=32, help="integrated-gradients steps (default: %(default)s)")
    parser.add_argument("--curve-steps", type=int, default=50, help="insertion/deletion steps (default: %(default)s)")
    parser.add_argument("--gallery", type=int, default=4, help="images in comparison.png (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    parser.add_argument(
        "--chunk",
        type=int,
        default=None,
        help="perturbed images per classifier forward in the metrics (default: 8 on CPU, where larger "
        "chunks were slower per image, 64 on GPU)",
    )
    parser.add_argument(
        "--wandb",
        action="store_true",
        help="also log the tables to W&B (offline unless WANDB_MODE is set; the run goes to OUT/wandb)",
    )
    parser.add_argument("--wandb-project", default="actmatch", help="W&B project (default: %(default)s)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the images that OUT/results.csv already has for every method (an interrupted run "
        "of the same images and settings) and run only the others",
    )
    parser.add_argument(
        "--reuse-maps",
        default=None,
        metavar="DIR",
        help="an earlier run's output folder: take the maps (and seconds, and sanity-check maps) of every "
        "method whose settings did not change from DIR/raw/ instead of computing them again (e.g. "
        "the baselines, when only am's recipe changed)",
    )
    parser.add_argument(
        "--from-results",
        default=None,
        metavar="CSV",
        help="summarize an earlier run's results.csv instead of running (its first --limit images): "
        "print the tables and, with --out, write summary.csv and paired.csv there",
    )
    args = parser.parse_args(argv)
    names = method_names(args.methods)
    if problem := methods_problem(names, args.checkpoint, checkpoint_needed=not args.from_results):
        parser.error(problem)
    check_scan_argument(parser, args, "am-amortized" in names, fix="add am-amortized to --methods")
    if not args.images and not args.from_results:
        parser.error("--images is required (or --from-results CSV to summarize an earlier run)")
    if args.out is None and not args.from_results:
        args.out = "outputs/benchmark"
    if args.chunk is None:
        args.chunk = 64 if str(args.device).startswith("cuda") else 8
    for key in ("steps", "limit", "rise_masks", "window", "stride", "ig_steps", "curve_steps", "chunk", "input_size"):
        value = getattr(args, key)
        if value is not None and value < 1:
            parser.error(f"--{key.replace('_', '-')} must be >= 1, got {value}")
    if not 0 < args.area <= 1 or not 0 <= args.tau < 1 or not 0 < args.robust_rate <= 1:
        parser.error(
            f"--area and --robust-rate must be in (0, 1] and --tau in [0, 1), got {args.area}, {args.robust_rate}, {args.tau}"
        )
    if args.sanity_images < 0:
        parser.error(f"--sanity-images must be >= 0, got {args.sanity_images}")
    if args.exam_seed == args.seed and not args.from_results:
        parser.error(
            f"--exam-seed must differ from --seed (both {args.seed}): the exam's draws must come from a seed stream no fit uses"
        )
    return args


def method_names(text: str) -> list[str]:
    """The names of a comma-separated ``--methods``, in order, without blanks or duplicates."""
    return list(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))


def methods_problem(names: list[str], checkpoint: str | None, checkpoint_needed: bool = True) -> str | None:
    """Why ``--methods`` ``names`` cannot run, naming the fix, or None: an unknown name, or ``am-amortized``
    without ``--checkpoint`` (unless ``checkpoint_needed`` is False: a run summarised from its results)."""
    unknown = [n for n in names if n not in METHOD_NAMES]
    if not names or unknown:
        return f"--methods: unknown method(s) {unknown or names}; choose from {', '.join(METHOD_NAMES)}"
    if "am-amortized" in names and checkpoint is None and checkpoint_needed:
        return "method 'am-amortized' needs --checkpoint CKPT (an `actmatch fit` checkpoint)"
    return None
