"""``actmatch study``: one row per explainer config on a fixed image list.

For each ``--config`` the per-image fit runs on every image exactly as ``actmatch explain``
does (same files under ``OUT/<config stem>/``), then each mask is scored with measures the fit
never saw: robustness on ``--robustness`` solid and noise backgrounds drawn from
``--eval-seed`` (:func:`actmatch.explainers.metrics.robustness`), p_f(e)(y) / p_f(x)(y), and
the fraction of the image's border band kept (a frame along the border shows up there). Time
is reported in seconds and as a multiple of one forward+backward pass of the classifier at the
same input size, measured in the same run. Rows are printed, appended to ``OUT/study.csv``
and, with ``--markdown FILE``, appended to a Markdown table. ``--resume`` keeps the images a
stopped run already fitted and scored with the same recipe and evaluation settings.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path

import torch

from actmatch.datamodules.images import expand_image_paths
from actmatch.explainers.classifier import ClassifierLoadError, FrozenClassifier
from actmatch.explainers.metrics import border_band, robustness

__all__ = ["main", "study_row", "plot_study", "forward_backward_seconds", "border_kept", "STUDY_FIELDS"]

STUDY_FIELDS = [
    "config", "images", "kept", "area_median", "area_p25", "area_p75", "robust_median", "robust_mean",
    "conf_ratio_median", "seconds_median", "x_fwd_bwd_median", "border_median", "fwd_bwd_ms",
]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="actmatch study",
        description="Run the per-image fit of each explainer config on a fixed image list; one row per config.",
    )
    parser.add_argument("images", nargs="+", help="image files, folders or glob patterns")
    parser.add_argument("--config", action="append", default=None,
                        help="explainer config YAML (repeat for several rows; default: the built-in defaults)")
    parser.add_argument("--out", default="outputs/study", help="output folder (default: %(default)s)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images (sorted)")
    parser.add_argument("--robustness", type=int, default=16, help="evaluation backgrounds per image (default: 16)")
    parser.add_argument("--eval-seed", type=int, default=1000, help="seed of the evaluation backgrounds (default: 1000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fit (default: 0)")
    parser.add_argument("--steps", type=int, default=None, help="override the configs' steps")
    parser.add_argument("--backbone", default=None, help="timm model name (default: efficientnet_lite0, offline)")
    parser.add_argument("--weights", default=None, help="local classifier checkpoint")
    parser.add_argument("--markdown", default=None, help="append the rows to this Markdown file's table")
    parser.add_argument("--plot", default=None, help="draw area vs robustness of every row in OUT/study.csv to this PNG")
    parser.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the images OUT/<config> already has from a run with the same config, seed, steps, "
                             "--robustness and --eval-seed; fit only the rest")
    args = parser.parse_args(argv)
    if args.robustness < 1:
        parser.error(f"--robustness must be >= 1, got {args.robustness}")
    if args.eval_seed == args.seed:
        parser.error("--eval-seed must differ from --seed: the evaluation backgrounds must be ones the fit never saw")
    return args


def forward_backward_seconds(classifier: FrozenClassifier, size: tuple[int, int], repeats: int = 10) -> float:
    """Median seconds of one forward+backward pass of ``classifier`` on one (3, *size) image."""
    device = next(classifier.parameters()).device
    x = torch.rand(1, 3, *size, device=device, requires_grad=True)
    times = []
    for i in range(repeats + 2):
        start = time.perf_counter()
        classifier(x).logsumexp(-1).sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 2:  # warm-up
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def border_kept(mask: torch.Tensor, band: float = 0.03) -> float:
    """Fraction of the pixels within ``band`` × short side of the border that ``mask`` (H, W) keeps."""
    return float(mask[border_band(mask, band)].float().mean())


def _quantile(values: list[float], q: float) -> float:
    return float(torch.tensor(values, dtype=torch.float64).quantile(q))


def study_row(name: str, rows: list[dict], fwd_bwd: float) -> dict:
    """Aggregate per-image rows (with ``robustness``, ``confidence_ratio``, ``border_kept``)."""
    ok = [r for r in rows if r.get("status") == "ok"]
    if not ok:
        raise ValueError(f"config {name}: no image was explained")
    area = [r["mask_area"] for r in ok]
    return {
        "config": name,
        "images": len(ok),
        "kept": round(sum(bool(r["label_kept"]) for r in ok) / len(ok), 3),
        "area_median": round(statistics.median(area), 4),
        "area_p25": round(_quantile(area, 0.25), 4),
        "area_p75": round(_quantile(area, 0.75), 4),
        "robust_median": round(statistics.median(r["robustness"] for r in ok), 3),
        "robust_mean": round(statistics.fmean(r["robustness"] for r in ok), 3),
        "conf_ratio_median": round(statistics.median(r["confidence_ratio"] for r in ok), 3),
        "seconds_median": round(statistics.median(r["seconds"] for r in ok), 2),
        "x_fwd_bwd_median": round(statistics.median(r["seconds"] for r in ok) / fwd_bwd, 1),
        "border_median": round(statistics.median(r["border_kept"] for r in ok), 3),
        "fwd_bwd_ms": round(1000 * fwd_bwd, 1),
    }


def _print_rows(rows: list[dict], stream=None) -> None:
    stream = stream or sys.stdout
    header = (f"{'config':<28} {'n':>4} {'kept':>5} {'area':>6} {'p25':>6} {'p75':>6} {'robust':>6} "
              f"{'pe/px':>6} {'sec':>6} {'×fb':>6} {'border':>6}")
    print(header, file=stream)
    print("-" * len(header), file=stream)
    for r in rows:
        print(f"{r['config'][:28]:<28} {r['images']:>4} {r['kept']:>5.2f} {r['area_median']:>6.3f} {r['area_p25']:>6.3f} "
              f"{r['area_p75']:>6.3f} {r['robust_median']:>6.3f} {r['conf_ratio_median']:>6.3f} "
              f"{r['seconds_median']:>6.1f} {r['x_fwd_bwd_median']:>6.0f} {r['border_median']:>6.3f}", file=stream)


def plot_study(csv_path: Path, png_path: Path) -> None:
    """Median area (x) against median robustness (y) of every row of a ``study.csv``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with csv_path.open() as handle:
        rows = list(csv.DictReader(handle))
    fig, ax = plt.subplots(figsize=(10, 4.8))
    colors = plt.get_cmap("tab20").colors + plt.get_cmap("tab20b").colors  # one colour per row (40 before they repeat)
    for i, r in enumerate(rows):
        x, y = float(r["area_median"]), float(r["robust_median"])
        ax.scatter(x, y, s=20 + 8 * float(r["x_fwd_bwd_median"]) ** 0.5, alpha=0.7, color=colors[i % len(colors)],
                   edgecolors="black", linewidths=0.5,
                   marker="s" if int(r["images"]) >= 100 else "o", label=f"{r['config']} (n={r['images']})")
    # beside the axes, so it never hides the points (the smallest masks sit in the lower left)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), markerscale=0.5, labelspacing=0.4,
              title="squares: 100 or more images", title_fontsize=7)
    ax.axvline(0.05, color="grey", ls=":", lw=1)
    ax.axhline(0.8, color="grey", ls=":", lw=1)
    ax.set_xlabel("median mask area (lower is better)")
    ax.set_ylabel("median robustness, 16 unseen backgrounds")
    ax.set_title("per-image fit configs: minimality vs robustness (marker size ~ time)", fontsize=9)
    ax.set_xlim(0, max(0.3, max(float(r["area_median"]) for r in rows) * 1.1))
    ax.set_ylim(-0.05, 1.05)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)


def _append_csv(path: Path, rows: list[dict]) -> None:
    new = not path.exists()
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=STUDY_FIELDS)
        if new:
            writer.writeheader()
        writer.writerows(rows)


def _append_markdown(path: Path, rows: list[dict], images: str) -> None:
    lines = [f"| {r['config']} | {r['images']} | {r['kept']:.2f} | {r['area_median']:.3f} ({r['area_p25']:.3f}–{r['area_p75']:.3f}) "
             f"| {r['robust_median']:.3f} | {r['conf_ratio_median']:.2f} | {r['seconds_median']:.1f} | {r['x_fwd_bwd_median']:.0f} "
             f"| {r['border_median']:.3f} | {images} |" for r in rows]
    with path.open("a") as handle:
        handle.write("\n".join(lines) + "\n")


def _scored_elsewise(explainer, items, folder: Path, args, evaluation: str) -> list[str]:
    """Names of the images in ``folder`` fitted with this recipe but scored with other settings."""
    from actmatch.commands.explain import as_items, finished_rows, recipe_digest

    done = finished_rows(as_items(items), folder, explainer.classifier, recipe=recipe_digest(explainer, args.steps, args.seed))
    return [row["folder"] for row in done.values() if row.get("status") == "ok" and row.get("evaluation") != evaluation]


def main(command: str, argv: list[str]) -> int:
    from actmatch.commands.explain import build_explainer, explain_files

    args = parse_args(argv)
    paths = expand_image_paths(args.images)[: args.limit]
    if not paths:
        print(f"actmatch study: no images found in {args.images}", file=sys.stderr)
        return 2
    configs = args.config or [None]
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    results, classifier = [], None
    for config in configs:
        name = Path(config).stem if config else "defaults"
        try:
            explainer = build_explainer(config, args.backbone, args.weights, args.steps, classifier=classifier)
        except (ClassifierLoadError, FileNotFoundError, ValueError, TypeError) as err:
            print(f"actmatch study: config {config}: {err}", file=sys.stderr)
            return 2
        classifier = explainer.classifier
        explainer.to(args.device)

        evaluation = f"{args.robustness} backgrounds, seed {args.eval_seed}"
        if args.resume and (stale := _scored_elsewise(explainer, paths, out_dir / name, args, evaluation)):
            print(f"actmatch study: --resume: {len(stale)} image(s) in {out_dir / name} (e.g. {stale[0]}) were scored "
                  f"with other evaluation settings than {evaluation}; rerun with those settings or use another --out",
                  file=sys.stderr)
            return 2

        @torch.no_grad()
        def measure(images: torch.Tensor, result) -> dict:
            masks = result.masks.to(images.device)
            rob = robustness(classifier, images, masks, target=result.label.to(images.device),
                             backgrounds=args.robustness, seed=args.eval_seed)
            ratio = result.confidence_explanation / result.confidence_original.clamp_min(1e-12)
            return {"robustness": round(float(rob[0]), 4), "confidence_ratio": round(float(ratio[0]), 4),
                    "border_kept": round(border_kept(result.masks[0, 0]), 4),
                    "model_size": list(images.shape[-2:]), "evaluation": evaluation}

        print(f"study: {name} on {len(paths)} image(s)", file=sys.stderr)
        rows = explain_files(explainer, paths, out_dir / name, args.seed, args.steps, measure=measure, resume=args.resume)
        sizes = [tuple(r["model_size"]) for r in rows if r.get("status") == "ok"]
        if not sizes:
            print(f"actmatch study: config {name}: no image could be explained", file=sys.stderr)
            return 1
        size = statistics.mode(sizes)  # the most common model input size of the images
        with torch.enable_grad():
            fwd_bwd = forward_backward_seconds(classifier, size)
        results.append(study_row(name, rows, fwd_bwd))
        _append_csv(out_dir / "study.csv", results[-1:])
        if args.markdown:
            _append_markdown(Path(args.markdown), results[-1:], f"{len(paths)} × {Path(args.images[0]).name}")
    _print_rows(results)
    if args.plot:
        plot_study(out_dir / "study.csv", Path(args.plot))
    return 0
