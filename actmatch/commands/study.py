"""``actmatch study``: one row per explainer config on a fixed image list.

For each ``--config`` the per-image fit runs on every image exactly as ``actmatch explain``
does (same files under ``OUT/<config stem>/``), then each mask is graded by the exam
(:func:`actmatch.evaluation.exam.judge_masks`): robustness on the exam's 16 draws (other photos
from ``--exam-photos``, heavy blurs, ROAD imputation, solid colours and noise from
``--exam-seed``, a seed stream the fit never uses), per family; p_f(e)(y) / p_f(x)(y) with the
mean fill; the label after a 3×3 dilation of the mask, after one-pixel shifts, with the mask read
back from ``mask.png``, and on the photo resized with another filter; and the fraction of the
image's border band kept (a frame along the border shows up there). A recipe that fits on a
held-out exam family is refused. Time is reported in seconds and as a multiple of one
forward+backward pass of the classifier at the same input size, measured in the same run. Rows
are printed, appended to ``OUT/study.csv`` and, with ``--markdown FILE``, appended to a Markdown
table. ``--resume`` keeps the images a stopped run already fitted and scored with the same recipe
and evaluation settings.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path

import torch

from actmatch.commands.parsers.study import parse_args
from actmatch.datamodules.images import expand_image_paths, to_tensor
from actmatch.evaluation.exam import judge_masks
from actmatch.evaluation.families import Exam, held_out_leaks
from actmatch.explainers.classifier import ClassifierLoadError, FrozenClassifier
from actmatch.explainers.masks import border_band

__all__ = ["main", "run", "study_row", "study_rows", "plot_study", "forward_backward_seconds", "border_kept", "STUDY_FIELDS"]

STUDY_FIELDS = [
    "config",
    "recipe",
    "recipe_version",
    "images",
    "kept",
    "area_median",
    "area_p25",
    "area_p75",
    "robust_median",
    "robust_mean",
    "robust_photos_mean",
    "conf_ratio_median",
    "dilated_kept",
    "dilated_ratio_median",
    "shift_kept",
    "readback_kept",
    "resampled_kept",
    "seconds_median",
    "x_fwd_bwd_median",
    "border_median",
    "border_over_5",
    "fwd_bwd_ms",
    "exam",
    "step_images_median",
    "forward_images_median",
]


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


def _rate(rows: list[dict], key: str) -> float:
    values = [float(r[key]) for r in rows if r.get(key) is not None and r[key] == r[key]]
    return round(statistics.fmean(values), 3) if values else float("nan")


def study_row(
    name: str, rows: list[dict], fwd_bwd: float, exam: str = "", recipe: str = "custom", recipe_version: int = 0
) -> dict:
    """Aggregate per-image rows (with the exam's ``robustness``, ``confidence_ratio``, ``kept_dilated``, ...,
    and ``border_kept``) of the config ``name``, whose explainer is ``recipe`` version ``recipe_version``."""
    ok = [r for r in rows if r.get("status") == "ok"]
    if not ok:
        raise ValueError(f"config {name}: no image was explained")
    area = [r["mask_area"] for r in ok]
    return {
        "config": name,
        "recipe": recipe,
        "recipe_version": recipe_version,
        "images": len(ok),
        "kept": round(sum(bool(r["label_kept"]) for r in ok) / len(ok), 3),
        "area_median": round(statistics.median(area), 4),
        "area_p25": round(_quantile(area, 0.25), 4),
        "area_p75": round(_quantile(area, 0.75), 4),
        "robust_median": round(statistics.median(r["robustness"] for r in ok), 3),
        "robust_mean": round(statistics.fmean(r["robustness"] for r in ok), 3),
        "robust_photos_mean": _rate(ok, "robust_photos"),
        "conf_ratio_median": round(statistics.median(r["confidence_ratio"] for r in ok), 3),
        "dilated_kept": _rate(ok, "kept_dilated"),
        "dilated_ratio_median": round(statistics.median(r["ratio_dilated"] for r in ok), 3),
        "shift_kept": _rate(ok, "kept_shift"),
        "readback_kept": _rate(ok, "kept_readback"),
        "resampled_kept": _rate(ok, "kept_resampled"),
        "seconds_median": round(statistics.median(r["seconds"] for r in ok), 2),
        "x_fwd_bwd_median": round(statistics.median(r["seconds"] for r in ok) / fwd_bwd, 1),
        "border_median": round(statistics.median(r["border_kept"] for r in ok), 3),
        "border_over_5": sum(r["border_kept"] > 0.05 for r in ok),
        "fwd_bwd_ms": round(1000 * fwd_bwd, 1),
        "exam": exam,
        # images the fit classified: in its steps (forward and backward) and in its forward-only stages
        "step_images_median": statistics.median(r.get("step_images", 0) for r in ok),
        "forward_images_median": statistics.median(r.get("forward_images", 0) for r in ok),
    }


#: the printed columns: (header, key, format)
PRINTED = (
    ("n", "images", "{:>4}"), ("kept", "kept", "{:>5.2f}"), ("area", "area_median", "{:>6.3f}"),
    ("p25", "area_p25", "{:>6.3f}"), ("p75", "area_p75", "{:>6.3f}"), ("robust", "robust_median", "{:>6.3f}"),
    ("photos", "robust_photos_mean", "{:>6.3f}"), ("pe/px", "conf_ratio_median", "{:>6.3f}"),
    ("dil", "dilated_kept", "{:>5.2f}"), ("dil.r", "dilated_ratio_median", "{:>6.3f}"),
    ("shift", "shift_kept", "{:>5.2f}"), ("file", "readback_kept", "{:>5.2f}"), ("sec", "seconds_median", "{:>6.1f}"),
    ("×fb", "x_fwd_bwd_median", "{:>5.0f}"), ("b>5%", "border_over_5", "{:>4}"),
    ("steps", "step_images_median", "{:>6.0f}"), ("fwd", "forward_images_median", "{:>6.0f}"),
)  # fmt: skip


def _print_rows(rows: list[dict], stream=None) -> None:
    stream = stream or sys.stdout
    widths = [len(fmt.format(0)) for _, _, fmt in PRINTED]
    header = f"{'config':<28} " + " ".join(f"{h:>{w}}" for (h, _, _), w in zip(PRINTED, widths))
    print(header, file=stream)
    print("-" * len(header), file=stream)
    for r in rows:
        print(f"{r['config'][:28]:<28} " + " ".join(fmt.format(r[key]) for _, key, fmt in PRINTED), file=stream)


def plot_study(csv_path: Path | None, png_path: Path, frontier: list[dict] | None = None) -> None:
    """The trade-off of every row of a ``study.csv``: median area (x) against median exam
    robustness (left) and against median p(e)/p(x) (right); marker size ~ time. ``frontier``:
    rows (method, area, robust_median, conf_ratio_median) of the baselines' top-k regions, drawn as
    one curve per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    if csv_path is not None:
        with csv_path.open() as handle:
            rows = list(csv.DictReader(handle))
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    # one colour per row (40 before they repeat); get_cmap is typed as returning a Colormap, these are ListedColormaps
    colors = plt.get_cmap("tab20").colors + plt.get_cmap("tab20b").colors  # type: ignore[attr-defined]
    curves: dict[str, list[dict]] = {}
    for r in frontier or []:
        curves.setdefault(r["method"], []).append(r)
    top = 1.05
    for ax, key, label in ((axes[0], "robust_median", "median robustness, 16 exam draws"),
                           (axes[1], "conf_ratio_median", "median p(e)/p(x), mean fill")):  # fmt: skip
        for method, points in curves.items():
            points = sorted(points, key=lambda p: float(p["area"]))
            ax.plot(
                [float(p["area"]) for p in points],
                [float(p[key]) for p in points],
                "--",
                lw=1,
                alpha=0.8,
                label=f"{method}: top-k regions",
            )
        for i, r in enumerate(rows):
            x, y = float(r["area_median"]), float(r[key])
            top = max(top, y * 1.05)
            ax.scatter(x, y, s=20 + 8 * float(r["x_fwd_bwd_median"]) ** 0.5, alpha=0.7, color=colors[i % len(colors)],
                       edgecolors="black", linewidths=0.5, marker="s" if int(r["images"]) >= 100 else "o",
                       label=f"{r['config']} (n={r['images']})")  # fmt: skip
        ax.axvline(0.10, color="grey", ls=":", lw=1)
        ax.axhline(0.8, color="grey", ls=":", lw=1)
        ax.set_xlabel("median mask area (lower is better)")
        ax.set_ylabel(label)
        areas = [float(r["area_median"]) for r in rows] + [float(p["area"]) for p in frontier or []]
        ax.set_xlim(0, max(0.3, max(areas, default=0.3) * 1.1))
        ax.set_ylim(-0.05, 1.05 if key == "robust_median" else top)
    # beside the axes, so it never hides the points; a column per 24 entries, all inside the saved figure
    axes[1].legend(
        ncol=1 + (len(rows) + len(curves) - 1) // 24,
        fontsize=7,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        markerscale=0.5,
        labelspacing=0.4,
        title="squares: 100 or more images",
        title_fontsize=7,
    )
    fig.suptitle("per-image fit recipes on the exam: area vs robustness and vs confidence (marker size ~ time)", fontsize=9)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _append_csv(path: Path, rows: list[dict]) -> None:
    """Append ``rows``; a file begun with other columns (before ``recipe_version``) keeps its own."""
    new = not path.exists()
    fields = STUDY_FIELDS
    if not new:
        with path.open(newline="") as handle:
            header = next(csv.reader(handle), None)
        fields = header or STUDY_FIELDS
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerows(rows)


def _append_markdown(path: Path, rows: list[dict], images: str) -> None:
    lines = [
        f"| {r['config']} | {r['images']} | {r['kept']:.2f} | {r['area_median']:.3f} ({r['area_p25']:.3f}–{r['area_p75']:.3f}) "
        f"| {r['robust_median']:.3f} | {r['robust_photos_mean']:.2f} | {r['conf_ratio_median']:.2f} | {r['dilated_kept']:.2f} "
        f"| {r['dilated_ratio_median']:.2f} | {r['shift_kept']:.2f} | {r['readback_kept']:.2f} | {r['seconds_median']:.1f} "
        f"| {r['x_fwd_bwd_median']:.0f} | {r['border_over_5']} | {images} |"
        for r in rows
    ]
    with path.open("a") as handle:
        handle.write("\n".join(lines) + "\n")


def _scored_elsewise(explainer, items, folder: Path, args, evaluation: str) -> list[str]:
    """Names of the images in ``folder`` fitted with this recipe but scored with other settings."""
    from actmatch.results import as_items, finished_rows, recipe_digest

    done = finished_rows(as_items(items), folder, explainer.classifier, digest=recipe_digest(explainer, args.steps, args.seed))
    return [row["folder"] for row in done.values() if row.get("status") == "ok" and row.get("evaluation") != evaluation]


def _exam(args, paths: list[Path], size: int) -> Exam:
    from actmatch.commands.benchmark import load_exam
    from actmatch.evaluation.benchmark import BenchImage

    return load_exam(args.exam_photos, [BenchImage(str(p), torch.empty(0)) for p in paths], size, args.exam_seed)


def study_rows(
    configs: list[str] | None, checkpoints: list[str] | None, amortized: bool
) -> list[tuple[str, str | None, str | None]]:
    """(row name, config, checkpoint) of each row: one per config; with checkpoints, one per
    checkpoint (``--amortized``: named after the checkpoint's recipe, e.g. ``amortized-lite0``)
    or per config and checkpoint (warm starts: ``<config>+<recipe>``). Repeated names get ``-2``, ``-3``."""
    from actmatch.explainers.fit_checkpoint import FitCheckpoint

    pairs: list[tuple[str, str | None, str | None]] = []
    config_list: list[str | None] = list(configs) if configs else [None]
    if not checkpoints:
        pairs = [(Path(c).stem if c else "defaults", c, None) for c in config_list]
    else:
        for checkpoint in checkpoints:
            recipe = FitCheckpoint.read(checkpoint).recipe if Path(checkpoint).is_file() else Path(checkpoint).stem
            row_configs: list[str | None] = [None] if amortized else config_list
            for config in row_configs:
                name = recipe if amortized else f"{Path(config).stem if config else 'defaults'}+{recipe}"
                pairs.append((name, config, checkpoint))
    rows: list[tuple[str, str | None, str | None]] = []
    seen: dict[str, int] = {}
    for name, row_config, row_checkpoint in pairs:
        seen[name] = seen.get(name, 0) + 1
        rows.append((name if seen[name] == 1 else f"{name}-{seen[name]}", row_config, row_checkpoint))
    return rows


def main(command: str, argv: list[str]) -> int:
    return run(command, parse_args(command, argv))


def run(command: str, args: argparse.Namespace) -> int:
    """``actmatch study`` with arguments checked by :func:`~actmatch.commands.parsers.study.parse_args`."""
    from actmatch.commands.explain import build_explainer, explain_files, use_amortized_refinement, use_checkpoint
    from actmatch.datamodules.images import ImageReadError

    paths = expand_image_paths(args.images)[: args.limit]
    if not paths:
        print(f"actmatch study: no images found in {args.images}", file=sys.stderr)
        return 2
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    results, classifier, exam = [], None, None
    for name, config, checkpoint in study_rows(args.config, args.checkpoint, args.amortized):
        init_state = None
        try:
            explainer = build_explainer(config, args.backbone, args.weights, args.steps, classifier=classifier)
            if checkpoint:
                init_state = use_checkpoint(explainer, checkpoint, args.amortized)
            name += use_amortized_refinement(explainer, args.scan, args.border_free, args.grow, args.bisect)
            if exam is None:
                exam = _exam(args, paths, explainer.classifier.input_size)
            leaks = held_out_leaks(explainer.families, exam)
            if leaks:
                raise ValueError(
                    f"its recipe uses the held-out exam famil{'ies' if len(leaks) > 1 else 'y'} {', '.join(leaks)}: "
                    "the exam cannot grade a fit on what it fitted"
                )
        except (ClassifierLoadError, FileNotFoundError, ValueError, TypeError, ImageReadError) as err:
            print(f"actmatch study: {name}: {err}", file=sys.stderr)
            return 2
        classifier = explainer.classifier
        explainer.to(args.device)

        evaluation = exam.describe() + (f", photos from {args.exam_photos}" if args.exam_photos else "")
        if args.resume and (stale := _scored_elsewise(explainer, paths, out_dir / name, args, evaluation)):
            print(
                f"actmatch study: --resume: {len(stale)} image(s) in {out_dir / name} (e.g. {stale[0]}) were scored "
                f"with other evaluation settings than {evaluation}; rerun with those settings or use another --out",
                file=sys.stderr,
            )
            return 2

        @torch.no_grad()
        def measure(images: torch.Tensor, result, original, path: Path) -> dict:
            masks = result.masks.to(images.device)
            photo = to_tensor(original)
            resampled = torch.nn.functional.interpolate(photo[None], size=images.shape[-2:], mode="bilinear",
                                                        align_corners=False, antialias=True).clamp(0, 1)  # fmt: skip
            # measure runs inside explain_files below, in this same iteration: the loop variables are current
            draws = exam.draws(images, Path(path).name)  # noqa: B023
            scores = judge_masks(classifier, images, masks, draws, file_size=(original.size[1], original.size[0]),  # noqa: B023
                                 resampled=resampled.to(images.device))  # fmt: skip
            values = {key: round(float(value[0]), 4) for key, value in scores.items()}
            values["confidence_ratio"] = values.pop("ratio")
            values.pop("kept")
            passes = result.passes  # empty for one amortized pass
            return {
                **values,
                "step_images": passes.get("step_images", 0),
                "forward_images": sum(n for key, n in passes.items() if key not in ("steps", "step_images")),
                "border_kept": round(border_kept(result.masks[0, 0]), 4),
                "model_size": list(images.shape[-2:]),
                "evaluation": evaluation,  # noqa: B023
            }

        print(f"study: {name} on {len(paths)} image(s)", file=sys.stderr)
        rows = explain_files(explainer, paths, out_dir / name, args.seed, args.steps, init_state, args.amortized,
                             measure=measure, resume=args.resume)  # fmt: skip
        sizes = [tuple(r["model_size"]) for r in rows if r.get("status") == "ok"]
        if not sizes:
            print(f"actmatch study: config {name}: no image could be explained", file=sys.stderr)
            return 1
        size = statistics.mode(sizes)  # the most common model input size of the images
        with torch.enable_grad():
            fwd_bwd = forward_backward_seconds(classifier, size)
        results.append(study_row(name, rows, fwd_bwd, evaluation, explainer.recipe, explainer.recipe_version))
        _append_csv(out_dir / "study.csv", results[-1:])
        if args.markdown:
            _append_markdown(Path(args.markdown), results[-1:], f"{len(paths)} × {Path(args.images[0]).name}")
    _print_rows(results)
    if args.plot:
        plot_study(out_dir / "study.csv", Path(args.plot))
    if args.wandb:
        print(f"W&B run {log_rows_to_wandb(results, out_dir, args)}", file=sys.stderr)
    return 0


def log_rows_to_wandb(rows: list[dict], out_dir: Path, args: argparse.Namespace) -> str:
    """Log this run's rows as one ``wandb.Table`` (``study/rows``, the columns of ``study.csv``) in
    a W&B run of project ``actmatch`` (offline unless ``WANDB_MODE`` is set) under ``OUT/wandb``;
    returns the run's folder."""
    import os

    import wandb

    config = {k: v for k, v in vars(args).items() if k != "wandb"}
    mode = os.environ.get("WANDB_MODE", "offline")
    run = wandb.init(project="actmatch", dir=str(out_dir), mode=mode, job_type="study", config=config)  # type: ignore[arg-type]
    table = wandb.Table(columns=STUDY_FIELDS, data=[[r.get(k) for k in STUDY_FIELDS] for r in rows])  # type: ignore[arg-type]
    run.log({"study/rows": table})
    folder = str(Path(run.dir).parent)
    run.finish()
    return folder
