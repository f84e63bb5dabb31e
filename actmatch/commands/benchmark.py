"""``actmatch benchmark``: actmatch against the baseline explainers, same model, same images.

Every method returns a relevance map per image (actmatch: its binary mask). Each map is scored
with the same metrics (:mod:`actmatch.explainers.metrics`):

* ``kept_equal_area``: the map's top pixels, cut to the area of actmatch's mask for that image
  (``--area`` when ``am`` is not run), keep the label with the mean-colour fill;
  ``kept_equal_area_convad``: the same cut evaluated by ConvAD deactivation instead of fill;
* ``smallest_sufficient_area``: smallest top-k fraction of the map that keeps the label;
* ``insertion_auc`` / ``deletion_auc``: RISE protocol, ``--curve-steps`` steps;
* ``robustness``: the equal-area cut planted on ``--backgrounds`` random backgrounds (solid
  colours, noise, the other benchmark images): fraction that keeps the label;
* ``seconds``: wall time of the method on the image.

Outputs in ``--out``: ``results.csv`` (one row per image × method), ``summary.csv`` (one row
per method), ``summary.png`` (bar chart of the summary), ``comparison.png`` (a gallery of the
first ``--gallery`` images × methods); the summary table is printed.
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
import time
from pathlib import Path

import torch

from actmatch.datamodules.images import ImageReadError, expand_image_paths, load_image
from actmatch.explainers.baselines import (
    RISE,
    AttributionMethod,
    ExtremalPerturbation,
    GradCAM,
    IntegratedGradients,
    Occlusion,
    Saliency,
    torchray_available,
)
from actmatch.explainers.classifier import ClassifierLoadError, FrozenClassifier, load_classifier
from actmatch.explainers.convad import ConvADOcclusion
from actmatch.explainers import metrics as M

__all__ = [
    "main",
    "METHODS",
    "ActMatchMethod",
    "AmortizedActMatchMethod",
    "RESULT_FIELDS",
    "SUMMARY_FIELDS",
    "run_benchmark",
    "summarize",
]


class ActMatchMethod(AttributionMethod):
    """Per-image activation matching (:meth:`ActMatchExplainer.fit_images`).

    The map is m + s: the binary mask m plus the U-Net's probability s at the kept step, so a
    cut at the mask's area is exactly the mask, and smaller or larger cuts (smallest sufficient
    area, insertion, deletion) follow the U-Net's own ranking instead of random tie-breaks.

    Args:
        classifier: the frozen classifier (shared with the explainer, loaded once).
        steps: per-image optimisation steps (None: the explainer's default).
        seed: U-Net initialisation seed.
        checkpoint: unused here (see :class:`AmortizedActMatchMethod`).
        config: explainer YAML (as ``actmatch explain --config``: loss terms, U-Net, lr, ...);
            None uses the explainer's defaults. The benchmark's classifier is used either way.
    """

    mode = "per_image"

    def __init__(
        self,
        classifier: FrozenClassifier,
        steps: int | None = None,
        seed: int = 0,
        checkpoint: str | None = None,
        config: str | None = None,
    ) -> None:
        from actmatch.commands.explain import build_explainer

        super().__init__(classifier)
        self.explainer = build_explainer(config, steps=steps, classifier=classifier, mode=self.mode)
        self.steps, self.seed = steps, seed

    @property
    def name(self) -> str:
        return "am"

    def compute(self, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.explainer.to(images.device)
        result = self.explainer.fit_images(images, steps=self.steps, seed=self.seed)
        return (result.masks + result.soft_masks).to(images.device)


class AmortizedActMatchMethod(ActMatchMethod):
    """Amortized activation matching: the U-Net of an ``actmatch fit`` checkpoint, one forward pass."""

    mode = "amortized"

    def __init__(self, classifier: FrozenClassifier, checkpoint: str | None = None, **settings) -> None:
        from actmatch.commands.explain import load_unet_state

        if checkpoint is None:
            raise ValueError("am-amortized needs --checkpoint CKPT (an `actmatch fit` checkpoint)")
        if not Path(checkpoint).is_file():
            raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
        super().__init__(classifier, **settings)
        try:
            self.explainer.unet.load_state_dict(load_unet_state(checkpoint))
        except RuntimeError as err:
            raise ValueError(f"{checkpoint}: its U-Net does not match the default MaskUNet ({err})") from err

    @property
    def name(self) -> str:
        return "am-amortized"

    def compute(self, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.explainer.to(images.device)
        return self.explainer.explain(images).masks.to(images.device)


#: method name -> class; every class takes (classifier, **settings)
METHODS: dict[str, type[AttributionMethod]] = {
    "am": ActMatchMethod,
    "am-amortized": AmortizedActMatchMethod,
    "saliency": Saliency,
    "gradcam": GradCAM,
    "occlusion": Occlusion,
    "ig": IntegratedGradients,
    "rise": RISE,
    "convad": ConvADOcclusion,
    "ep": ExtremalPerturbation,
}
DEFAULT_METHODS = "am,saliency,gradcam,occlusion,ig,rise,convad"

RESULT_FIELDS = [
    "image", "method", "label", "label_name", "confidence", "area", "kept_equal_area", "confidence_delta_equal_area",
    "kept_equal_area_convad", "robustness", "smallest_sufficient_area", "insertion_auc", "deletion_auc", "seconds", "error",
]  # fmt: skip
SUMMARY_FIELDS = [
    "method", "images", "kept_equal_area", "kept_equal_area_convad", "median_smallest_sufficient_area", "insertion_auc",
    "deletion_auc", "robustness", "median_seconds", "errors",
]  # fmt: skip
HEADERS = {
    "kept_equal_area": "kept@area",
    "kept_equal_area_convad": "kept@area(AD)",
    "median_smallest_sufficient_area": "med.suff.area",
    "insertion_auc": "ins.AUC",
    "deletion_auc": "del.AUC",
    "robustness": "robust",
    "median_seconds": "med.s/img",
}


def parse_args(command: str, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"actmatch {command}", description=__doc__.split("\n\n")[0].strip("`"))
    parser.add_argument("--images", nargs="+", required=True, help="image files, folders or glob patterns")
    parser.add_argument("--methods", default=DEFAULT_METHODS, help=f"comma-separated, from {list(METHODS)} (default: %(default)s)")
    parser.add_argument("--out", default="outputs/benchmark", help="output folder (default: %(default)s)")
    parser.add_argument("--backbone", default=None, help="timm model name (default: efficientnet_lite0, offline)")
    parser.add_argument("--weights", default=None,
                        help="local classifier checkpoint: a state dict (.pth/.safetensors), a Lightning checkpoint, "
                             "or a folder written by timm's save_for_hf (then --backbone is not needed)")
    parser.add_argument("--steps", type=int, default=None, help="per-image steps of `am` (default: the explainer's)")
    parser.add_argument("--checkpoint", default=None, help="amortized Lightning checkpoint for `am-amortized`")
    parser.add_argument("--config", default=None, help="explainer YAML for `am` / `am-amortized` (as `actmatch explain --config`)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images (sorted within folders)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice (default: %(default)s)")
    parser.add_argument("--area", type=float, default=0.2, help="cut area when `am` is not run (default: %(default)s)")
    parser.add_argument("--rise-masks", type=int, default=1000, help="RISE masks per image (default: %(default)s)")
    parser.add_argument("--window", type=int, default=32, help="occlusion / convad window, px (default: %(default)s)")
    parser.add_argument("--stride", type=int, default=None, help="occlusion / convad stride, px (default: window/2)")
    parser.add_argument("--tau", type=float, default=0.5, help="ConvAD threshold (default: %(default)s)")
    parser.add_argument("--ig-steps", type=int, default=32, help="integrated-gradients steps (default: %(default)s)")
    parser.add_argument("--curve-steps", type=int, default=50, help="insertion/deletion steps (default: %(default)s)")
    parser.add_argument("--backgrounds", type=int, default=16, help="robustness backgrounds (default: %(default)s)")
    parser.add_argument("--gallery", type=int, default=4, help="images in comparison.png (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    args = parser.parse_args(argv)
    for key in ("steps", "limit", "rise_masks", "window", "stride", "ig_steps", "curve_steps", "backgrounds"):
        value = getattr(args, key)
        if value is not None and value < 1:
            parser.error(f"--{key.replace('_', '-')} must be >= 1, got {value}")
    if not 0 < args.area <= 1 or not 0 <= args.tau < 1:
        parser.error(f"--area must be in (0, 1] and --tau in [0, 1), got {args.area}, {args.tau}")
    return args


def parse_methods(text: str, checkpoint: str | None) -> list[str]:
    """Validated method names (``am`` first, then in order), without duplicates; errors name the bad ones."""
    names = list(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in METHODS]
    if not names or unknown:
        raise ValueError(f"unknown method(s) {unknown or names}; choose from {', '.join(METHODS)}")
    if "am-amortized" in names and checkpoint is None:
        raise ValueError("method 'am-amortized' needs --checkpoint CKPT (an `actmatch fit` checkpoint)")
    if "ep" in names and not torchray_available():
        raise ValueError("method 'ep' (extremal perturbation) needs TorchRay, which is not installed (CC BY-NC 4.0); drop 'ep'")
    return sorted(names, key=lambda n: n != "am")  # am first: its mask area sets the equal-area cut


def method_settings(args: argparse.Namespace) -> dict[str, dict]:
    """Constructor settings of each method, from the command line."""
    window = {"window": args.window, "stride": args.stride}
    am = {"steps": args.steps, "seed": args.seed, "checkpoint": args.checkpoint, "config": args.config}
    return {
        "am": am,
        "am-amortized": am,
        "occlusion": window,
        "convad": {**window, "tau": args.tau},
        "ig": {"steps": args.ig_steps},
        "rise": {"masks": args.rise_masks, "seed": args.seed},
    }


def _score(
    classifier: FrozenClassifier,
    image: torch.Tensor,
    saliency: torch.Tensor,
    target: torch.Tensor,
    area: float,
    pool: torch.Tensor | None,
    args: argparse.Namespace,
) -> dict:
    """Every metric of one map (1, 1, H, W) for one image (1, 3, H, W)."""
    fill, ad = M.PixelFill(classifier), M.DeactivationMasker(classifier, args.tau)
    cut = M.top_fraction_mask(saliency, area, args.seed)
    curve = {"steps": args.curve_steps, "seed": args.seed}
    return {
        "area": M.mask_area(cut).item(),
        "kept_equal_area": int(M.label_kept(fill, image, cut, target).item()),
        "confidence_delta_equal_area": M.confidence_delta(fill, image, cut, target).item(),
        "kept_equal_area_convad": int(M.label_kept(ad, image, cut, target).item()),
        "robustness": M.robustness(classifier, image, cut, target, args.backgrounds, pool=pool, seed=args.seed).item(),
        "smallest_sufficient_area": M.smallest_sufficient_area(fill, image, saliency, target, seed=args.seed).item(),
        "insertion_auc": M.insertion_auc(classifier, image, saliency, target, **curve).item(),
        "deletion_auc": M.deletion_auc(classifier, image, saliency, target, **curve).item(),
    }


def run_benchmark(
    classifier: FrozenClassifier,
    images: list[tuple[str, torch.Tensor]],
    methods: dict[str, AttributionMethod],
    args: argparse.Namespace,
    log=print,
    partial: Path | None = None,
) -> tuple[list[dict], dict[str, list[torch.Tensor]]]:
    """Run every method on every image; rows for results.csv and the maps for the gallery.

    With ``partial``, the rows so far are rewritten there after each image (long runs keep
    their results if interrupted).
    """
    rows, maps = [], {name: [] for name in methods}
    for i, (path, image) in enumerate(images):
        x = image[None].to(args.device)  # (1, 3, H, W)
        with torch.no_grad():
            probs = classifier(x).softmax(-1)
        target = probs.argmax(-1)
        others = [img for j, (_, img) in enumerate(images) if j != i][:8]
        pool = torch.stack([torch.nn.functional.interpolate(o[None], size=x.shape[-2:], mode="bilinear")[0] for o in others]) if others else None
        area = args.area
        base = {"image": path, "label": int(target), "label_name": classifier.class_name(int(target)), "confidence": probs.max().item()}
        for name, method in methods.items():
            row = {**base, "method": name, "error": ""}
            try:
                start = time.perf_counter()
                saliency = method.attribute(x, target)  # (1, 1, H, W)
                row["seconds"] = time.perf_counter() - start
                if name == "am":
                    area = M.mask_area(saliency >= 1).item() or args.area  # the binary mask inside m + s
                row.update(_score(classifier, x, saliency, target, area, pool, args))
                maps[name].append(saliency.cpu())
            except Exception as err:  # noqa: BLE001 - one failure must not lose the other rows
                row["error"] = f"{type(err).__name__}: {err}"
                maps[name].append(None)
                log(f"  {name} failed on {path}: {row['error']}")
            rows.append(row)
        log(f"[{i + 1}/{len(images)}] {Path(path).name}: {base['label_name']} ({base['confidence']:.2f})")
        if partial is not None:
            write_csv(partial, rows, RESULT_FIELDS)
    return rows, maps


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else math.nan


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def summarize(rows: list[dict]) -> list[dict]:
    """One row per method: means (label kept, AUCs, robustness) and medians (area, seconds)."""
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        ok = [r for r in rows if r["method"] == method and not r["error"]]
        col = lambda key: [float(r[key]) for r in ok]  # noqa: E731
        out.append({
            "method": method,
            "images": len(ok),
            "kept_equal_area": _mean(col("kept_equal_area")),
            "kept_equal_area_convad": _mean(col("kept_equal_area_convad")),
            "median_smallest_sufficient_area": _median(col("smallest_sufficient_area")),
            "insertion_auc": _mean(col("insertion_auc")),
            "deletion_auc": _mean(col("deletion_auc")),
            "robustness": _mean(col("robustness")),
            "median_seconds": _median(col("seconds")),
            "errors": sum(1 for r in rows if r["method"] == method and r["error"]),
        })  # fmt: skip
    return out


def format_table(summary: list[dict]) -> str:
    """The summary as a fixed-width text table."""
    keys = ["method", "images", *HEADERS]
    heads = ["method", "n", *HEADERS.values()]
    cells = [[r["method"], str(r["images"])] + [f"{r[k]:.3f}" if k != "median_seconds" else f"{r[k]:.2f}" for k in HEADERS] for r in summary]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(heads)]
    line = lambda items: "  ".join(s.ljust(w) if i == 0 else s.rjust(w) for i, (s, w) in enumerate(zip(items, widths)))  # noqa: E731
    assert len(keys) == len(heads)
    return "\n".join([line(heads), line(["-" * w for w in widths])] + [line(c) for c in cells])


def write_csv(path: Path, rows: list[dict], fields: list[str]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def plot_summary(summary: list[dict], path: Path) -> None:
    """Bar chart: one panel per summary column, one bar per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(HEADERS)
    fig, axes = plt.subplots(1, len(keys), figsize=(2.6 * len(keys), 3.2))
    names = [r["method"] for r in summary]
    colors = [plt.cm.tab10(i % 10) for i in range(len(names))]
    for ax, key in zip(axes, keys):
        ax.bar(range(len(names)), [r[key] for r in summary], color=colors)
        ax.set_xticks(range(len(names)), names, rotation=60, fontsize=7)
        ax.set_title(HEADERS[key] + (" ↓" if key in ("median_smallest_sufficient_area", "deletion_auc", "median_seconds") else " ↑"), fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_gallery(images: list[tuple[str, torch.Tensor]], maps: dict[str, list], rows: list[dict], path: Path, count: int) -> None:
    """Grid: one row per image (the first ``count``), the photo then each method's map over it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = max(1, min(count, len(images)))
    names = list(maps)
    fig, axes = plt.subplots(count, len(names) + 1, figsize=(1.9 * (len(names) + 1), 1.9 * count), squeeze=False)
    kept = {(r["image"], r["method"]): r.get("kept_equal_area") for r in rows}
    for i in range(count):
        path_i, image = images[i]
        photo = image.permute(1, 2, 0).numpy()
        axes[i, 0].imshow(photo)
        axes[i, 0].set_title(Path(path_i).stem[:18], fontsize=6)
        for j, name in enumerate(names, start=1):
            ax = axes[i, j]
            ax.imshow(photo)
            sal = maps[name][i]
            if sal is not None:
                s = sal[0, 0]
                s = (s - s.min()) / (s.max() - s.min()).clamp_min(1e-12)
                ax.imshow(s.numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
            mark = {1: " ✓", 0: " ✗"}.get(kept.get((path_i, name)), "")
            ax.set_title(name + mark, fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def load_images(items: list[str], classifier: FrozenClassifier, limit: int | None) -> list[tuple[str, torch.Tensor]]:
    """The images, sized for the classifier; errors name the file."""
    paths = expand_image_paths(items)
    if limit is not None:
        paths = paths[:limit]
    if not paths:
        raise ImageReadError(f"no image found in {items}")
    return [(str(p), load_image(p, classifier.input_size, classifier.fixed_input_size)[0]) for p in paths]


def main(command: str, argv: list[str]) -> int:
    args = parse_args(command, argv)
    try:
        names = parse_methods(args.methods, args.checkpoint)
        classifier = load_classifier(args.backbone, args.weights).to(args.device)
        images = load_images(args.images, classifier, args.limit)
        settings = method_settings(args)
        methods = {name: METHODS[name](classifier, **settings.get(name, {})) for name in names}
    except (ValueError, ImageReadError, ClassifierLoadError, FileNotFoundError, ImportError) as err:
        print(f"actmatch {command}: error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    log(f"benchmark: {len(images)} image(s) x {len(methods)} method(s) on {classifier.name}")
    rows, maps = run_benchmark(classifier, images, methods, args, log, partial=out / "results.csv")
    summary = summarize(rows)
    write_csv(out / "results.csv", rows, RESULT_FIELDS)
    write_csv(out / "summary.csv", summary, SUMMARY_FIELDS)
    plot_summary(summary, out / "summary.png")
    plot_gallery(images, maps, rows, out / "comparison.png", args.gallery)
    area_note = "actmatch's mask area per image" if "am" in methods else f"area {args.area}"
    print(f"label kept at equal area ({area_note}); {args.curve_steps}-step insertion/deletion AUC; "
          f"robustness over {args.backgrounds} backgrounds")  # fmt: skip
    print(format_table(summary))
    areas = [float(r["area"]) for r in rows if not r["error"] and r["method"] == next(iter(methods))]
    print(f"median equal-area cut: {_median(areas):.3f} of the image")
    print(f"wrote {out}/results.csv, summary.csv, summary.png, comparison.png in {time.perf_counter() - start:.0f} s")
    return 1 if any(r["error"] for r in rows) else 0
