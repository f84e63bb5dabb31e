"""``actmatch benchmark``: actmatch against the baseline explainers, same model, same images.

Every method returns a relevance map per image (actmatch: its binary mask). Each map is scored
with the same metrics (:func:`actmatch.explainers.metrics.score_maps`, all methods of an image
in one batched pass):

* ``kept_equal_area``: the map's top pixels, cut to the area of actmatch's mask for that image
  (``--area`` when ``am`` is not run), keep the label with the mean-colour fill;
  ``kept_equal_area_convad``: the same cut evaluated by ConvAD deactivation instead of fill;
* ``kept_at_5`` / ``kept_at_10`` / ``kept_at_20``: the map's top 5 / 10 / 20 % keep the label
  (an area that no method chooses, unlike the equal-area cut, which is ``am``'s own mask);
* ``smallest_sufficient_area``: smallest top-k fraction of the map that keeps the label;
* ``sufficient_area_with_cut``: the same, with the equal-area cut as one more candidate area
  (the smaller of the two when that cut keeps the label). The scan assumes that larger cuts
  keep the label once a smaller one does; a two-part map such as ``am``'s (mask, then the
  U-Net's ranking outside it) breaks that, so its scan can miss its own mask. Every method gets
  the same extra area per image, chosen by ``am``;
* ``insertion_auc`` / ``deletion_auc``: RISE protocol, ``--curve-steps`` steps;
* ``robustness``: the equal-area cut planted on ``--backgrounds`` random backgrounds (solid
  colours, noise, the other benchmark images): fraction that keeps the label;
* ``seconds``: wall time of the method on the image.

Outputs in ``--out``: ``results.csv`` (one row per image × method), ``summary.csv`` (one row
per method: means or medians with 95 % bootstrap intervals over images, ``<metric>_ci_low`` /
``<metric>_ci_high``), ``paired.csv`` (``am`` against each baseline, per metric, paired by
image: wins / ties / losses and a Wilcoxon or sign-test p-value), ``summary.png`` (bar chart of
the summary with the intervals), ``comparison.png`` (a gallery of the first ``--gallery``
images × methods); both tables are printed, with the classifier passes the metrics needed
against the time they took. ``--wandb`` logs the summary, the paired table and a gallery of
every map as W&B Tables (offline unless ``WANDB_MODE`` says otherwise).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
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
from actmatch.report import write_report
from actmatch.report.maps import write_method_maps
from actmatch.explainers.statistics import bootstrap_ci, paired_comparison

__all__ = [
    "main",
    "METHODS",
    "ActMatchMethod",
    "AmortizedActMatchMethod",
    "RESULT_FIELDS",
    "SUMMARY_FIELDS",
    "SUMMARY_METRICS",
    "PAIRED_FIELDS",
    "PAIRED_METRICS",
    "MetricTime",
    "run_benchmark",
    "summarize",
    "compare_pairs",
    "format_table",
    "format_paired",
    "log_to_wandb",
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
    "kept_equal_area_convad", "kept_at_5", "kept_at_10", "kept_at_20", "robustness", "smallest_sufficient_area",
    "sufficient_area_with_cut", "insertion_auc", "deletion_auc", "seconds", "error",
]  # fmt: skip
#: summary columns: (key, results.csv column, statistic over images, header, higher is better)
SUMMARY_METRICS = (
    ("kept_equal_area", "kept_equal_area", "mean", "kept@area", True),
    ("kept_equal_area_convad", "kept_equal_area_convad", "mean", "kept@area(AD)", True),
    ("kept_at_5", "kept_at_5", "mean", "kept@5%", True),
    ("kept_at_10", "kept_at_10", "mean", "kept@10%", True),
    ("kept_at_20", "kept_at_20", "mean", "kept@20%", True),
    ("median_smallest_sufficient_area", "smallest_sufficient_area", "median", "med.suff.area", False),
    ("median_sufficient_area_with_cut", "sufficient_area_with_cut", "median", "med.suff+cut", False),
    ("insertion_auc", "insertion_auc", "mean", "ins.AUC", True),
    ("deletion_auc", "deletion_auc", "mean", "del.AUC", False),
    ("robustness", "robustness", "mean", "robust", True),
    ("median_seconds", "seconds", "median", "med.s/img", False),
)
SUMMARY_FIELDS = [
    "method", "images", *(f"{key}{end}" for key, *_ in SUMMARY_METRICS for end in ("", "_ci_low", "_ci_high")), "errors",
]  # fmt: skip
HEADERS = {key: header for key, _, _, header, _ in SUMMARY_METRICS}
#: the printed summary, in blocks that fit 120 columns
TABLE_BLOCKS = (
    ("kept_equal_area", "kept_equal_area_convad", "kept_at_5", "kept_at_10", "kept_at_20"),
    ("median_smallest_sufficient_area", "median_sufficient_area_with_cut", "insertion_auc", "deletion_auc"),
    ("robustness", "median_seconds"),
)
#: metrics of the paired comparison: (results.csv column, header, higher is better)
PAIRED_METRICS = tuple((column, header.removeprefix("med."), better) for _, column, _, header, better in SUMMARY_METRICS[:-1])
PAIRED_FIELDS = ["metric", "reference", "baseline", "n", "wins", "ties", "losses", "p_value", "test", "significant"]
#: significance level of the ``significant`` column
ALPHA = 0.05


def parse_args(command: str, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"actmatch {command}", description=__doc__.split("\n\n")[0].strip("`"))
    parser.add_argument("--images", nargs="+", default=None, help="image files, folders or glob patterns (required "
                        "unless --from-results)")
    parser.add_argument("--methods", default=DEFAULT_METHODS, help=f"comma-separated, from {list(METHODS)} (default: %(default)s)")
    parser.add_argument("--out", default=None, help="output folder (default: outputs/benchmark; with --from-results: "
                        "print only)")
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
    parser.add_argument("--chunk", type=int, default=None,
                        help="perturbed images per classifier forward in the metrics (default: 8 on CPU, where larger "
                             "chunks were slower per image, 64 on GPU)")
    parser.add_argument("--wandb", action="store_true",
                        help="also log the tables to W&B (offline unless WANDB_MODE is set; the run goes to OUT/wandb)")
    parser.add_argument("--wandb-project", default="actmatch", help="W&B project (default: %(default)s)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the images that OUT/results.csv already has for every method (an interrupted run "
                             "of the same images and settings) and run only the others")
    parser.add_argument("--from-results", default=None, metavar="CSV",
                        help="summarize an earlier run's results.csv instead of running (its first --limit images): "
                             "print the tables and, with --out, write summary.csv and paired.csv there")
    args = parser.parse_args(argv)
    if not args.images and not args.from_results:
        parser.error("--images is required (or --from-results CSV to summarize an earlier run)")
    if args.out is None and not args.from_results:
        args.out = "outputs/benchmark"
    if args.chunk is None:
        args.chunk = 64 if str(args.device).startswith("cuda") else 8
    for key in ("steps", "limit", "rise_masks", "window", "stride", "ig_steps", "curve_steps", "backgrounds", "chunk"):
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
        "rise": {"masks": args.rise_masks, "seed": args.seed, "batch": args.chunk},  # RISE masks per forward: the same chunk
    }


def run_settings(args: argparse.Namespace, methods: dict, classifier: FrozenClassifier) -> dict:
    """What decides a run's rows, written to OUT/settings.json: a resumed run must match it.
    ``am``'s config file is replaced by its recipe (:func:`~actmatch.commands.explain.recipe_digest`),
    so an edited config or a changed default counts as a change."""
    from actmatch.commands.explain import recipe_digest

    per_method = {}
    for name, method in methods.items():
        settings = dict(method_settings(args).get(name, {}))
        settings.pop("config", None)
        settings.pop("batch", None)  # RISE's chunk: how masks are batched, not which
        if isinstance(method, ActMatchMethod):
            settings["recipe"] = recipe_digest(method.explainer, method.steps, method.seed, method.mode == "amortized")
        per_method[name] = settings
    return {"backbone": classifier.name, "weights": args.weights, "seed": args.seed, "area": args.area,
            "curve_steps": args.curve_steps, "backgrounds": args.backgrounds, "methods": per_method}


def settings_changes(path: Path, current: dict) -> list[str]:
    """The keys of ``current`` that differ from the run settings saved at ``path`` (none if it is
    missing: an older run); ``methods.NAME.KEY`` for a method's setting."""
    if not path.is_file():
        return []
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path} is unreadable ({err}); pass a new --out") from err
    changed = [key for key in current if key != "methods" and saved.get(key) != current[key]]
    saved_methods = saved.get("methods", {})
    for name, settings in current["methods"].items():
        if name in saved_methods:
            changed += [f"methods.{name}.{k}" for k in settings if saved_methods[name].get(k) != settings[k]]
    return changed


@dataclass
class MetricTime:
    """What the metrics cost: the images they classified (with the floor, see
    :class:`~actmatch.explainers.metrics.PassCounter`) and the wall time they took."""

    passes: M.PassCounter = field(default_factory=M.PassCounter)
    took: float = 0.0

    def add(self, other: MetricTime) -> None:
        self.passes.merge(other.passes)
        self.took += other.took

    def line(self, per: int = 1) -> str:
        """``metrics: N images classified = floor F s, took T s`` (per image when ``per`` > 1)."""
        each = f" per image (over {per})" if per > 1 else ""
        return (f"metrics{each}: {self.passes.images / per:.0f} images classified = floor {self.passes.floor / per:.1f} s, "
                f"took {self.took / per:.1f} s")  # fmt: skip


def _score_kwargs(args: argparse.Namespace, pool: torch.Tensor | None) -> dict:
    return {"steps": args.curve_steps, "backgrounds": args.backgrounds, "pool": pool, "tau": args.tau, "seed": args.seed,
            "chunk": args.chunk}  # fmt: skip


def _score(
    classifier: FrozenClassifier,
    image: torch.Tensor,
    maps: dict[str, torch.Tensor],
    logits: torch.Tensor,
    area: float,
    pool: torch.Tensor | None,
    args: argparse.Namespace,
    counter: M.PassCounter,
) -> dict[str, dict | Exception]:
    """Every metric of every map (1, 1, H, W) of one image (1, 3, H, W): name -> values.

    All maps are scored together (:func:`~actmatch.explainers.metrics.score_maps`); if that
    fails, each map is scored alone so that the failure is named by its method.
    """
    if not maps:
        return {}
    kw = {"logits": logits, "counter": counter, **_score_kwargs(args, pool)}
    target = logits.argmax(-1)
    try:
        stacked = M.score_maps(classifier, image, torch.cat(list(maps.values())), target, area, **kw)
        return {name: {key: v[j].item() for key, v in stacked.items()} for j, name in enumerate(maps)}
    except Exception:  # noqa: BLE001 - find the map that fails
        out: dict[str, dict | Exception] = {}
        for name, saliency in maps.items():
            try:
                out[name] = {key: v[0].item() for key, v in M.score_maps(classifier, image, saliency, target, area, **kw).items()}
            except Exception as err:  # noqa: BLE001
                out[name] = err
        return out


def sufficient_with_cut(row: dict) -> float:
    """min(smallest sufficient area, the equal-area cut ``area``) when that cut keeps the label,
    else the smallest sufficient area (values as numbers or as results.csv strings)."""
    scanned = float(row["smallest_sufficient_area"])
    return min(scanned, float(row["area"])) if int(float(row["kept_equal_area"])) else scanned


def add_derived(rows: list[dict]) -> list[dict]:
    """Fill ``sufficient_area_with_cut`` where it is missing (rows of runs that predate it), in place."""
    needed = ("smallest_sufficient_area", "area", "kept_equal_area")
    for row in rows:
        if row.get("sufficient_area_with_cut") in (None, "") and all(row.get(k) not in (None, "") for k in needed):
            row["sufficient_area_with_cut"] = sufficient_with_cut(row)
    return rows


def _as_row_values(scores: dict) -> dict:
    """Metric values for results.csv: label-kept columns as 0/1 integers."""
    return {k: int(round(v)) if k.startswith("kept") else v for k, v in scores.items()}


def _pool(images: list[tuple[str, torch.Tensor]], i: int, size: tuple[int, int]) -> torch.Tensor | None:
    """Up to 8 other benchmark images, resized to ``size``: robustness backgrounds of image i."""
    others = [img for j, (_, img) in enumerate(images) if j != i][:8]
    if not others:
        return None
    return torch.stack([torch.nn.functional.interpolate(o[None], size=size, mode="bilinear")[0] for o in others])


def run_benchmark(
    classifier: FrozenClassifier,
    images: list[tuple[str, torch.Tensor]],
    methods: dict[str, AttributionMethod],
    args: argparse.Namespace,
    log=print,
    partial: Path | None = None,
    timing: MetricTime | None = None,
    done: dict[str, list[dict]] | None = None,
) -> tuple[list[dict], dict[str, list[torch.Tensor]]]:
    """Run every method on every image; rows for results.csv and the maps for the gallery.

    Per image: every method explains it (timed alone), then all maps are scored in one batched
    pass. With ``partial``, the rows so far are rewritten there after each image (long runs keep
    their results if interrupted); ``timing`` accumulates what the metrics cost. Images in
    ``done`` (path -> its rows from an earlier run, see :func:`completed_images`) are not run
    again: their rows are kept and their maps are None.
    """
    rows, maps = [], {name: [] for name in methods}
    for i, (path, image) in enumerate(images):
        if done and path in done:
            rows.extend(done[path])
            for name in methods:
                maps[name].append(None)
            log(f"[{i + 1}/{len(images)}] {Path(path).name}: from the earlier run")
            continue
        x = image[None].to(args.device)  # (1, 3, H, W)
        with torch.no_grad():
            logits = classifier(x)  # (1, K), reused by every metric
        probs = logits.softmax(-1)
        target = probs.argmax(-1)
        pool = _pool(images, i, tuple(x.shape[-2:]))
        pool = pool.to(args.device) if pool is not None else None
        area = args.area
        base = {"image": path, "label": int(target), "label_name": classifier.class_name(int(target)), "confidence": probs.max().item()}
        image_rows, image_maps = {}, {}
        for name, method in methods.items():
            row = image_rows[name] = {**base, "method": name, "error": ""}
            try:
                start = time.perf_counter()
                saliency = method.attribute(x, target)  # (1, 1, H, W)
                row["seconds"] = time.perf_counter() - start
                if name == "am":
                    area = M.mask_area(saliency >= 1).item() or args.area  # the binary mask inside m + s
                image_maps[name] = saliency
            except Exception as err:  # noqa: BLE001 - one failure must not lose the other rows
                row["error"] = f"{type(err).__name__}: {err}"
        cost = MetricTime()
        start = time.perf_counter()
        scores = _score(classifier, x, image_maps, logits, area, pool, args, cost.passes)
        cost.took = time.perf_counter() - start
        for name, row in image_rows.items():
            result = scores.get(name)
            if isinstance(result, Exception):
                row["error"] = f"{type(result).__name__}: {result}"
            elif result is not None:
                row.update(_as_row_values(result))
                add_derived([row])
            if row["error"]:
                log(f"  {name} failed on {path}: {row['error']}")
            maps[name].append(image_maps[name].cpu() if name in image_maps and not row["error"] else None)
            rows.append(row)
        if timing is not None:
            timing.add(cost)
        log(f"[{i + 1}/{len(images)}] {Path(path).name}: {base['label_name']} ({base['confidence']:.2f}); {cost.line()}")
        if partial is not None:
            write_csv(partial, rows, RESULT_FIELDS)
    return rows, maps


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else math.nan


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def summarize(rows: list[dict], n_boot: int = 2000, seed: int = 0) -> list[dict]:
    """One row per method: means (label kept, AUCs, robustness) and medians (area, seconds),
    each with a 95 % percentile-bootstrap interval over images (``<key>_ci_low``, ``<key>_ci_high``)."""
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        ok = [r for r in rows if r["method"] == method and not r["error"]]
        row = {"method": method, "images": len(ok)}
        for key, column, stat, _, _ in SUMMARY_METRICS:
            values = [float(r[column]) for r in ok if r.get(column) not in (None, "")]
            row[key] = _mean(values) if stat == "mean" else _median(values)
            row[f"{key}_ci_low"], row[f"{key}_ci_high"] = bootstrap_ci(values, stat, n_boot=n_boot, seed=seed)
        row["errors"] = sum(1 for r in rows if r["method"] == method and r["error"])
        out.append(row)
    return out


def compare_pairs(rows: list[dict], reference: str = "am") -> list[dict]:
    """``reference`` against every other method, per metric, paired by image
    (:func:`~actmatch.explainers.statistics.paired_comparison`); [] when it was not run."""
    by_method: dict[str, dict[str, dict]] = {}
    for r in rows:
        if not r["error"]:
            by_method.setdefault(r["method"], {})[r["image"]] = r
    if reference not in by_method:
        return []
    out = []
    for column, header, better in PAIRED_METRICS:
        for baseline, theirs in by_method.items():
            if baseline == reference:
                continue
            ours = by_method[reference]
            shared = [img for img in ours if img in theirs]
            a = [float(ours[img][column]) for img in shared]
            b = [float(theirs[img][column]) for img in shared]
            result = paired_comparison(a, b, higher_is_better=better)
            out.append({"metric": column, "reference": reference, "baseline": baseline, **result,
                        "significant": result["test"] != "none" and result["p_value"] < ALPHA})  # fmt: skip
    return out


def _cell(value: float, low: float, high: float, digits: int) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _text_table(heads: list[str], cells: list[list[str]]) -> str:
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(heads)]
    line = lambda items: "  ".join(s.ljust(w) if i == 0 else s.rjust(w) for i, (s, w) in enumerate(zip(items, widths)))  # noqa: E731
    return "\n".join([line(heads), line(["-" * w for w in widths])] + [line(c) for c in cells])


def format_table(summary: list[dict]) -> str:
    """The summary as fixed-width text tables (two blocks of columns), ``value [ci_low, ci_high]``."""
    blocks = []
    for keys in TABLE_BLOCKS:
        heads = ["method", "n", *(HEADERS[k] for k in keys)]
        cells = [[r["method"], str(r["images"])] + [_cell(r[k], r[f"{k}_ci_low"], r[f"{k}_ci_high"], 2) for k in keys] for r in summary]
        blocks.append(_text_table(heads, cells))
    return "\n\n".join(blocks)


def format_paired(paired: list[dict]) -> str:
    """The paired comparison as a fixed-width text table, one line per metric and baseline."""
    headers = {column: header for column, header, _ in PAIRED_METRICS}
    heads = ["metric", f"{paired[0]['reference']} vs" if paired else "vs", "n", "wins", "ties", "losses", "p", "test", f"p<{ALPHA:g}"]
    cells, previous = [], None
    for r in paired:
        name = headers.get(r["metric"], r["metric"]) if r["metric"] != previous else ""
        previous = r["metric"]
        cells.append([name, r["baseline"], str(r["n"]), str(r["wins"]), str(r["ties"]), str(r["losses"]), f"{r['p_value']:.2g}",
                      r["test"], "yes" if r["significant"] else "no"])  # fmt: skip
    return _text_table(heads, cells)


def write_csv(path: Path, rows: list[dict], fields: list[str]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def plot_summary(summary: list[dict], path: Path) -> None:
    """Bar chart: one panel per summary column (two rows, as the printed blocks), one bar per
    method, with its 95 % interval as an error bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    better = {key: up for key, _, _, _, up in SUMMARY_METRICS}
    cols = max(len(b) for b in TABLE_BLOCKS)
    fig, axes = plt.subplots(len(TABLE_BLOCKS), cols, figsize=(2.6 * cols, 3.2 * len(TABLE_BLOCKS)), squeeze=False)
    names = [r["method"] for r in summary]
    colors = [plt.cm.tab10(i % 10) for i in range(len(names))]
    for block, keys in enumerate(TABLE_BLOCKS):
        for ax, key in zip(axes[block], keys):
            values = [r[key] for r in summary]
            errors = [[max(0.0, v - r[f"{key}_ci_low"]) for v, r in zip(values, summary)],
                      [max(0.0, r[f"{key}_ci_high"] - v) for v, r in zip(values, summary)]]  # fmt: skip
            ax.bar(range(len(names)), values, color=colors, yerr=errors, capsize=2, error_kw={"elinewidth": 0.8})
            ax.set_xticks(range(len(names)), names, rotation=60, fontsize=7)
            ax.set_title(HEADERS[key] + (" ↑" if better[key] else " ↓"), fontsize=9)
            ax.tick_params(axis="y", labelsize=7)
        for ax in axes[block][len(keys):]:
            ax.axis("off")
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


def _overlay(image: torch.Tensor, saliency: torch.Tensor):
    """(H, W, 3) uint8: the photo (3, H, W) with the map (1, 1, H, W), min-max scaled, in jet at 50 %."""
    import matplotlib
    import numpy as np

    s = saliency[0, 0].float()
    s = ((s - s.min()) / (s.max() - s.min()).clamp_min(1e-12)).numpy()
    heat = matplotlib.colormaps["jet"](s)[..., :3]
    photo = image.permute(1, 2, 0).float().numpy()
    return (255 * (0.5 * photo + 0.5 * heat)).clip(0, 255).astype(np.uint8)


def log_to_wandb(
    out: Path,
    args: argparse.Namespace,
    summary: list[dict],
    paired: list[dict],
    rows: list[dict],
    images: list[tuple[str, torch.Tensor]],
    maps: dict[str, list],
) -> Path:
    """Log the benchmark to W&B as Tables and return the run's folder.

    ``benchmark/summary`` (``SUMMARY_FIELDS``, intervals included), ``benchmark/paired``
    (``PAIRED_FIELDS``) and ``benchmark/gallery`` (one row per image × method: the map over the
    photo as a ``wandb.Image`` and the metrics of ``RESULT_FIELDS``). As the training runs: project
    ``--wandb-project``, offline unless ``WANDB_MODE`` is set, quiet (``WANDB_SILENT``); the run
    goes to ``OUT/wandb/`` (``wandb sync`` it later).
    """
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    config = {k: v for k, v in vars(args).items() if k not in ("wandb", "wandb_project")}
    run = wandb.init(project=args.wandb_project, dir=str(out), mode=os.environ.get("WANDB_MODE", "offline"),
                     job_type="benchmark", config=config)  # fmt: skip
    try:
        metrics = [f for f in RESULT_FIELDS if f not in ("image", "method", "label_name", "error")]
        gallery = wandb.Table(columns=["image", "method", "label_name", "map", *metrics, "error"])
        by_key = {(r["image"], r["method"]): r for r in rows}
        for i, (path, image) in enumerate(images):
            for name, method_maps in maps.items():
                row, saliency = by_key.get((path, name), {}), method_maps[i] if i < len(method_maps) else None
                picture = wandb.Image(_overlay(image, saliency), caption=f"{name}: {Path(path).stem}") if saliency is not None else None
                gallery.add_data(Path(path).name, name, row.get("label_name", ""), picture, *(row.get(k) for k in metrics),
                                 row.get("error", ""))  # fmt: skip
        run.log({
            "benchmark/summary": wandb.Table(columns=SUMMARY_FIELDS, data=[[r.get(k) for k in SUMMARY_FIELDS] for r in summary]),
            "benchmark/paired": wandb.Table(columns=PAIRED_FIELDS, data=[[r.get(k) for k in PAIRED_FIELDS] for r in paired]),
            "benchmark/gallery": gallery,
        })  # fmt: skip
        return Path(run.dir).parent
    finally:
        run.finish()


def read_results(path: Path, first: int | None = None) -> list[dict]:
    """The rows of an earlier run's results.csv, only its first ``first`` images (in file order)."""
    if not path.is_file():
        raise FileNotFoundError(f"no results file {path}; pass the results.csv an `actmatch benchmark` run wrote")
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    missing = {"image", "method", "error"} - set(rows[0] if rows else {})
    if not rows or missing:
        raise ValueError(f"{path} is not a benchmark results.csv (no rows, or missing columns {sorted(missing)})")
    keep = set(list(dict.fromkeys(r["image"] for r in rows))[:first])
    return add_derived([r for r in rows if r["image"] in keep])


def completed_images(path: Path, methods: list[str]) -> dict[str, list[dict]]:
    """Images of an earlier run's results.csv with an error-free row for every method in
    ``methods``: path -> those rows (in ``methods`` order, values as written)."""
    by_image: dict[str, dict[str, dict]] = {}
    for row in read_results(path):
        by_image.setdefault(row["image"], {})[row["method"]] = row
    return {
        image: [rows[m] for m in methods]
        for image, rows in by_image.items()
        if all(m in rows and not rows[m]["error"] for m in methods)
    }


def print_tables(summary: list[dict], paired: list[dict], header: str) -> None:
    """The summary (under ``header``) and the paired comparison, as printed by a run."""
    print(header)
    print(format_table(summary))
    if paired:
        print(f"\nam against each baseline, paired by image (wins: am better); two-sided p, Wilcoxon signed-rank or sign "
              f"test, not corrected for the {len(paired)} comparisons")  # fmt: skip
        print(format_paired(paired))


def summarize_earlier(args: argparse.Namespace) -> int:
    """``--from-results``: the tables of an earlier run's rows (e.g. its first 20 images), without running."""
    try:
        rows = read_results(Path(args.from_results), args.limit)
    except (OSError, ValueError) as err:
        print(f"actmatch benchmark: error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else None
    if out is not None and (out / "results.csv").exists():  # a run's folder: its summary must not be replaced
        print(f"actmatch benchmark: error: {out} holds a benchmark run (results.csv); pass another --out for the "
              "summary of --from-results", file=sys.stderr)  # fmt: skip
        return 2
    summary, paired = summarize(rows, seed=args.seed), compare_pairs(rows, "am")
    images = len({r["image"] for r in rows})
    print_tables(summary, paired, f"{args.from_results}, its first {images} image(s) (the settings are that run's); "
                 "[95 % bootstrap interval over images]")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_csv(out / "summary.csv", summary, SUMMARY_FIELDS)
        write_csv(out / "paired.csv", paired, PAIRED_FIELDS)
        print(f"wrote {out}/summary.csv, paired.csv")
    return 0


def main(command: str, argv: list[str]) -> int:
    args = parse_args(command, argv)
    if args.from_results:
        return summarize_earlier(args)
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
    done = {}
    settings_now = run_settings(args, methods, classifier)
    if args.resume and (out / "results.csv").exists():
        try:
            changed = settings_changes(out / "settings.json", settings_now)
            if changed:
                raise ValueError(f"{out} was run with other settings ({', '.join(changed)} differ; see "
                                 f"{out / 'settings.json'}): its rows would not be this run's. Pass a new --out, or "
                                 f"drop --resume to run every image again")
            done = completed_images(out / "results.csv", list(methods))
        except ValueError as err:
            print(f"actmatch {command}: error: --resume: {err}", file=sys.stderr)
            return 2
        log(f"resume: {sum(path in done for path, _ in images)} of {len(images)} image(s) are in {out / 'results.csv'}")
    (out / "settings.json").write_text(json.dumps(settings_now, indent=2) + "\n")
    timing = MetricTime()
    rows, maps = run_benchmark(classifier, images, methods, args, log, partial=out / "results.csv", timing=timing,
                               done=done)  # fmt: skip
    summary = summarize(rows, seed=args.seed)
    paired = compare_pairs(rows, "am")
    write_csv(out / "results.csv", rows, RESULT_FIELDS)
    write_csv(out / "summary.csv", summary, SUMMARY_FIELDS)
    write_csv(out / "paired.csv", paired, PAIRED_FIELDS)
    plot_summary(summary, out / "summary.png")
    plot_gallery(images, maps, rows, out / "comparison.png", args.gallery)
    for i, (path, image) in enumerate(images):
        if path not in done:  # an earlier run wrote the others' maps (if they are still there)
            write_method_maps(out, path, image, {name: maps[name][i] for name in maps})
    report = write_report(out)
    area_note = "actmatch's mask area per image" if "am" in methods else f"area {args.area}"
    print_tables(summary, paired, f"label kept at equal area ({area_note}) and at 5/10/20 % of the image; "
                 f"{args.curve_steps}-step insertion/deletion AUC; robustness over {args.backgrounds} backgrounds; "
                 "[95 % bootstrap interval over images]")
    areas = [float(r["area"]) for r in rows if not r["error"] and r["method"] == next(iter(methods))]
    print(f"median equal-area cut: {_median(areas):.3f} of the image")
    print(timing.line(per=max(1, sum(path not in done for path, _ in images))) + f"; in all {timing.passes.images} images, floor {timing.passes.floor:.0f} s, "
          f"took {timing.took:.0f} s (chunk {args.chunk})")  # fmt: skip
    written = f"results.csv, summary.csv, paired.csv, summary.png, comparison.png, maps/, {report.name}"
    if args.wandb:
        written += f"; W&B run {log_to_wandb(out, args, summary, paired, rows, images, maps)}"
    print(f"wrote {out}/{written} in {time.perf_counter() - start:.0f} s")
    return 1 if any(r["error"] for r in rows) else 0
