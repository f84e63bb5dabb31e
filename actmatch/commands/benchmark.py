"""``actmatch benchmark``: actmatch against the baseline explainers, same model, same images.

A thin command over :mod:`actmatch.evaluation`: every method returns a relevance map per image
(actmatch: its binary mask plus the U-Net's ranking), and every map is graded by the exam
(:func:`actmatch.evaluation.exam.score_maps`, all methods of an image in one batched pass). The
exam's columns fall in three groups (docs/benchmark.md, "Protocol"):

* judged with what no fit sees (the exam): the robust-sufficient area (the smallest top-k cut
  that keeps the label on at least 80 % of 16 exam draws: other photos from ``--exam-photos``,
  heavy blurs of the image, ROAD's noisy linear imputation, solid colours and noise from the
  exam's own seed ``--exam-seed``), robustness of the equal-area cut per family, insertion AUC
  (heavy blur start and RISE's published start), the Dabkowski–Gal saliency score, the region
  dilated by 3×3, shifted by one pixel, read back from a mask file and applied to the photo
  resized with another filter, and the model-randomisation sanity check (``--sanity-images``);
* judged with the mean fill, which ``am`` fits with (marked ``*``): label kept at the equal-area
  cut (``am``'s own mask) and at 5/10/20 %, p(e)/p(x), the smallest sufficient area, deletion AUC;
* true for ``am`` by construction (marked ``†``, never counted): ``kept@area``, ``suff+cut``.

A recipe of ``am`` that fits, selects or prunes on a held-out exam family (photos, blur, ROAD) is
refused, and ``--exam-seed`` must differ from ``--seed`` (the fit's).

Outputs in ``--out``: ``results.csv`` (one row per image × method), ``summary.csv`` (one row
per method with 95 % bootstrap intervals over images, ``<metric>_ci_low`` / ``<metric>_ci_high``),
``paired.csv`` (``am`` against each baseline, per column, paired by image: wins / ties / losses,
a Wilcoxon or sign-test p-value and its Holm-corrected value), ``summary.png``, ``comparison.png``,
``maps/`` and ``report.html``; the tables and the headline (from the exam's columns only) are
printed. ``--wandb`` logs the summary, the paired table and a gallery of every map as W&B
Tables (offline unless ``WANDB_MODE`` says otherwise).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from actmatch.commands.parsers.benchmark import method_names, methods_problem, parse_args
from actmatch.datamodules.images import ImageReadError, expand_image_paths, read_for_model, resize_for_model, to_tensor
from actmatch.evaluation.benchmark import (
    BenchImage,
    MapStore,
    MetricTime,
    add_derived,
    compare_pairs,
    result_fields,
    run_benchmark,
    summarize,
)
from actmatch.evaluation.columns import (
    HEADERS,
    PAIRED_FIELDS,
    PAIRED_METRICS,
    SUMMARY_FIELDS,
    SUMMARY_METRICS,
    TABLE_BLOCKS,
    format_paired,
    format_table,
    headline,
)
from actmatch.evaluation.families import EXAM_SEED, Exam, default_exam, held_out_leaks
from actmatch.evaluation.methods import (
    METHODS,
    ActMatchMethod,
    AmortizedActMatchMethod,
    randomized_top,
    recipe_families,
)
from actmatch.explainers.baselines import torchray_available
from actmatch.explainers.classifier import ClassifierLoadError, FrozenClassifier, load_classifier
from actmatch.report import write_report
from actmatch.report.maps import write_method_maps

__all__ = [
    "main",
    "run",
    "METHODS",
    "ActMatchMethod",
    "AmortizedActMatchMethod",
    "SUMMARY_FIELDS",
    "SUMMARY_METRICS",
    "PAIRED_FIELDS",
    "PAIRED_METRICS",
    "MetricTime",
    "summarize",
    "compare_pairs",
    "format_table",
    "format_paired",
    "headline",
    "log_to_wandb",
    "load_images",
    "load_exam",
    "load_photo_pool",
    "check_exam",
]


def parse_methods(text: str, checkpoint: str | None) -> list[str]:
    """Validated method names (``am`` first, then in order), without duplicates; errors name the bad ones."""
    names = method_names(text)
    if problem := methods_problem(names, checkpoint):
        raise ValueError(problem)
    if "ep" in names and not torchray_available():
        raise ValueError("method 'ep' (extremal perturbation) needs TorchRay, which is not installed (CC BY-NC 4.0); drop 'ep'")
    return sorted(names, key=lambda n: n != "am")  # am first: its mask area sets the equal-area cut


def method_settings(args: argparse.Namespace) -> dict[str, dict]:
    """Constructor settings of each method, from the command line."""
    window = {"window": args.window, "stride": args.stride}
    am = {"steps": args.steps, "seed": args.seed, "checkpoint": args.checkpoint, "config": args.config}
    return {
        "am": am,
        "am-amortized": {**am, "scan": args.scan, "border_free": args.border_free, "grow": args.grow, "bisect": args.bisect},
        "occlusion": window,
        "convad": {**window, "tau": args.tau},
        "ig": {"steps": args.ig_steps},
        "rise": {"masks": args.rise_masks, "seed": args.seed, "batch": args.chunk},  # RISE masks per forward: the same chunk
    }


def run_settings(args: argparse.Namespace, methods: dict, classifier: FrozenClassifier, exam_description: str = "") -> dict:
    """What decides a run's rows, written to OUT/settings.json: a resumed run must match it.
    ``am``'s config file is replaced by its recipe: the name and version it goes by and the digest
    of its settings (:func:`~actmatch.results.recipe_digest`), so an edited config or a changed
    default counts as a change."""
    from actmatch.results import arithmetic, recipe_digest

    per_method = {}
    for name, method in methods.items():
        settings = dict(method_settings(args).get(name, {}))
        settings.pop("config", None)
        settings.pop("batch", None)  # RISE's chunk: how masks are batched, not which
        if isinstance(method, ActMatchMethod):
            explainer = method.explainer
            settings["recipe"], settings["recipe_version"] = explainer.recipe, explainer.recipe_version
            settings["recipe_digest"] = recipe_digest(explainer, method.steps, method.seed, method.mode == "amortized")
        per_method[name] = settings
    return {
        "backbone": classifier.name,
        "weights": args.weights,
        "input_size": classifier.input_size,
        "seed": args.seed,
        "arithmetic": arithmetic(classifier),  # device, CPU threads, torch: a fit can end elsewhere with others
        "area": args.area,
        "curve_steps": args.curve_steps,
        "exam": exam_description,
        "robust_rate": args.robust_rate,
        "sanity_images": args.sanity_images,
        "methods": per_method,
    }


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


def reusable_maps(folder: Path, current: dict) -> tuple[MapStore, set[str]]:
    """The earlier run's map store and the methods whose maps can be taken from it: the same
    backbone, weights, input size, seed and sanity images, and the same settings of the method
    (``am``'s recipe digest included)."""
    path = folder / "settings.json"
    if not path.is_file() or not (folder / "raw").is_dir():
        raise ValueError(f"{folder} is not a benchmark output folder with saved maps (settings.json and raw/)")
    saved = json.loads(path.read_text())
    shared = ("backbone", "weights", "input_size", "seed", "sanity_images")
    if any(saved.get(key) != current.get(key) for key in shared):
        changed = [key for key in shared if saved.get(key) != current.get(key)]
        raise ValueError(f"{folder} was run with other {', '.join(changed)}: none of its maps apply")
    methods = {name for name, settings in current["methods"].items() if saved.get("methods", {}).get(name) == settings}
    return MapStore(folder / "raw"), methods


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
        for ax in axes[block][len(keys) :]:
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_gallery(images: list[BenchImage], maps: dict[str, list], rows: list[dict], path: Path, count: int) -> None:
    """Grid: one row per image (the first ``count``), the photo then each method's map over it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = max(1, min(count, len(images)))
    names = list(maps)
    fig, axes = plt.subplots(count, len(names) + 1, figsize=(1.9 * (len(names) + 1), 1.9 * count), squeeze=False)
    kept = {(r["image"], r["method"]): r.get("kept_equal_area") for r in rows}
    for i in range(count):
        path_i, image = images[i].path, images[i].image
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
            kept_here = kept.get((path_i, name))
            mark = "" if kept_here is None else {1: " ✓", 0: " ✗"}.get(kept_here, "")
            ax.set_title(name + mark, fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _bench_image(path: Path, classifier: FrozenClassifier) -> BenchImage:
    """The file at the model's input (the loader's bicubic resize), its size, and the same photo
    resized with bilinear instead (the exam's resampling check)."""
    img, tensor = read_for_model(path, classifier.input_size, classifier.fixed_input_size)
    width, height = img.size
    photo = to_tensor(img)
    size = tuple(tensor.shape[-2:])
    other = torch.nn.functional.interpolate(photo[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    return BenchImage(str(path), tensor, (height, width), other.clamp(0, 1))


def load_images(items: list[str], classifier: FrozenClassifier, limit: int | None) -> list[BenchImage]:
    """The images, sized for the classifier; errors name the file."""
    paths = expand_image_paths(items)
    if limit is not None:
        paths = paths[:limit]
    if not paths:
        raise ImageReadError(f"no image found in {items}")
    return [_bench_image(p, classifier) for p in paths]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_photo_pool(folder: str, images: list[BenchImage], short_side: int) -> list[torch.Tensor]:
    """The exam's background photos from ``folder``, each at ``short_side`` on its short side.
    Refused when the folder holds one of the explained images (the same file or the same bytes)."""
    paths = expand_image_paths([folder])
    if not paths:
        raise ImageReadError(f"--exam-photos {folder}: no image found")
    explained = {Path(item.path).resolve() for item in images}
    contents = {_digest(Path(item.path)) for item in images}
    shared = [p for p in paths if p.resolve() in explained or _digest(p) in contents]
    if shared:
        raise ValueError(
            f"--exam-photos {folder} holds {len(shared)} of the explained images (e.g. {shared[0]}): the "
            "exam's background photos must be other photos; pass a disjoint folder"
        )
    return [resize_for_model(to_tensor(read_for_model(p, short_side)[0]), short_side) for p in paths]


def load_exam(folder: str | None, images: list[BenchImage], short_side: int, seed: int = EXAM_SEED) -> Exam:
    """The exam of ``images``: :func:`~actmatch.evaluation.families.default_exam` with the photo pool of ``folder``
    (:func:`load_photo_pool`), or without the photo family when ``folder`` is None."""
    photos = load_photo_pool(folder, images, short_side) if folder else None
    return default_exam(photos, seed)


def check_exam(methods: dict, exam: Exam) -> None:
    """Refuse an activation-matching recipe that fits, selects or prunes on a held-out exam family."""
    for name, method in methods.items():
        leaks = held_out_leaks(recipe_families(method), exam)
        if leaks:
            raise ValueError(
                f"method {name!r}: its recipe uses the held-out exam famil{'ies' if len(leaks) > 1 else 'y'} "
                f"{', '.join(leaks)}; the exam cannot grade a fit on what it fitted. Use a recipe without "
                "those backgrounds or fills"
            )


def _overlay(image: torch.Tensor, saliency: torch.Tensor):
    """(H, W, 3) uint8: the photo (3, H, W) with the map (1, 1, H, W), min-max scaled, in jet at 50 %."""
    import matplotlib
    import numpy as np

    s = saliency[0, 0].float()
    scaled = ((s - s.min()) / (s.max() - s.min()).clamp_min(1e-12)).numpy()
    heat = matplotlib.colormaps["jet"](scaled)[..., :3]
    photo = image.permute(1, 2, 0).float().numpy()
    return (255 * (0.5 * photo + 0.5 * heat)).clip(0, 255).astype(np.uint8)


def log_to_wandb(
    out: Path,
    args: argparse.Namespace,
    summary: list[dict],
    paired: list[dict],
    rows: list[dict],
    images: list[BenchImage],
    maps: dict[str, list],
) -> Path:
    """Log the benchmark to W&B as Tables and return the run's folder.

    ``benchmark/summary`` (``SUMMARY_FIELDS``, intervals included), ``benchmark/paired``
    (``PAIRED_FIELDS``) and ``benchmark/gallery`` (one row per image × method: the map over the
    photo as a ``wandb.Image`` and the metrics of results.csv). As the training runs: project
    ``--wandb-project``, offline unless ``WANDB_MODE`` is set, quiet (``WANDB_SILENT``); the run
    goes to ``OUT/wandb/`` (``wandb sync`` it later).
    """
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    config = {k: v for k, v in vars(args).items() if k not in ("wandb", "wandb_project")}
    mode = os.environ.get("WANDB_MODE", "offline")  # wandb's own variable; wandb checks its value
    run = wandb.init(project=args.wandb_project, dir=str(out), mode=mode,  # type: ignore[arg-type]
                     job_type="benchmark", config=config)  # fmt: skip
    try:
        metrics = [f for f in result_fields() if f not in ("image", "method", "label_name", "error")]
        gallery = wandb.Table(columns=["image", "method", "label_name", "map", *metrics, "error"])
        by_key = {(r["image"], r["method"]): r for r in rows}
        for i, item in enumerate(images):
            path, image = item.path, item.image
            for name, method_maps in maps.items():
                row, saliency = by_key.get((path, name), {}), method_maps[i] if i < len(method_maps) else None
                picture = (
                    wandb.Image(_overlay(image, saliency), caption=f"{name}: {Path(path).stem}") if saliency is not None else None
                )
                gallery.add_data(Path(path).name, name, row.get("label_name", ""), picture, *(row.get(k) for k in metrics),
                                 row.get("error", ""))  # fmt: skip
        run.log({
            "benchmark/summary": wandb.Table(columns=SUMMARY_FIELDS, data=[[r.get(k) for k in SUMMARY_FIELDS] for r in summary]),  # type: ignore[arg-type]  # wandb annotates columns as the invariant list[str | int]
            "benchmark/paired": wandb.Table(columns=PAIRED_FIELDS, data=[[r.get(k) for k in PAIRED_FIELDS] for r in paired]),  # type: ignore[arg-type]
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
        counted = sum(not math.isnan(float(r["p_value"])) for r in paired)  # not by construction, with pairs to test
        print(
            f"\nam against each baseline, paired by image (wins: am better); difference: am − baseline, the mean (median for "
            f"areas and ratios) over images [95 % bootstrap interval]; two-sided p, Wilcoxon signed-rank or sign test "
            f"(paired.csv's `test`); p(Holm): Holm-corrected over the {counted} counted comparisons (by-construction rows are "
            f"not tested)"
        )
        print(format_paired(paired))
        print("\n" + headline(paired))


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
    summary, paired = summarize(rows, seed=args.seed), compare_pairs(rows, "am", seed=args.seed)
    images = len({r["image"] for r in rows})
    print_tables(
        summary,
        paired,
        f"{args.from_results}, its first {images} image(s) (the settings are that run's); [95 % bootstrap interval over images]",
    )
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_csv(out / "summary.csv", summary, SUMMARY_FIELDS)
        write_csv(out / "paired.csv", paired, PAIRED_FIELDS)
        print(f"wrote {out}/summary.csv, paired.csv")
    return 0


def main(command: str, argv: list[str]) -> int:
    return run(command, parse_args(command, argv))


def run(command: str, args: argparse.Namespace) -> int:
    """``actmatch benchmark`` with arguments checked by :func:`~actmatch.commands.parsers.benchmark.parse_args`."""
    if args.from_results:
        return summarize_earlier(args)
    try:
        names = parse_methods(args.methods, args.checkpoint)
        classifier = load_classifier(args.backbone, args.weights, input_size=args.input_size).to(args.device)
        images = load_images(args.images, classifier, args.limit)
        exam = load_exam(args.exam_photos, images, classifier.input_size, args.exam_seed)
        settings = method_settings(args)
        methods = {name: METHODS[name](classifier, **settings.get(name, {})) for name in names}
        check_exam(methods, exam)
    except (ValueError, ImageReadError, ClassifierLoadError, FileNotFoundError, ImportError) as err:
        print(f"actmatch {command}: error: {err}", file=sys.stderr)
        return 2
    reference = "am-amortized" if "am-amortized" in methods and "am" not in methods else "am"  # paired against the baselines
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    photos = f", photos from {args.exam_photos} ({exam.photo_count})" if exam.photo_count else ", no photos"
    exam_text = exam.describe() + photos
    log(f"benchmark: {len(images)} image(s) x {len(methods)} method(s) on {classifier.name}; exam: {exam_text}")
    fields = result_fields(exam)
    done = {}
    settings_now = run_settings(args, methods, classifier, exam_text)
    if args.resume and (out / "results.csv").exists():
        try:
            changed = settings_changes(out / "settings.json", settings_now)
            if changed:
                raise ValueError(
                    f"{out} was run with other settings ({', '.join(changed)} differ; see "
                    f"{out / 'settings.json'}): its rows would not be this run's. Pass a new --out, or "
                    f"drop --resume to run every image again"
                )
            done = completed_images(out / "results.csv", list(methods))
        except ValueError as err:
            print(f"actmatch {command}: error: --resume: {err}", file=sys.stderr)
            return 2
        log(f"resume: {sum(item.path in done for item in images)} of {len(images)} image(s) are in {out / 'results.csv'}")
    (out / "settings.json").write_text(json.dumps(settings_now, indent=2) + "\n")
    timing = MetricTime()
    score_settings = {
        "steps": args.curve_steps,
        "tau": args.tau,
        "rate": args.robust_rate,
        "seed": args.seed,
        "chunk": args.chunk,
    }

    def sanity_methods() -> dict:
        randomized = randomized_top(classifier, seed=args.exam_seed)
        return {name: METHODS[name](randomized, **settings.get(name, {})) for name in names}

    reuse: MapStore | None = None
    reusable: set[str] = set()
    if args.reuse_maps:
        try:
            reuse, reusable = reusable_maps(Path(args.reuse_maps), settings_now)
        except ValueError as err:
            print(f"actmatch {command}: error: --reuse-maps: {err}", file=sys.stderr)
            return 2
        log(f"reuse: the maps of {', '.join(sorted(reusable)) or 'no method'} from {args.reuse_maps}")
    rows, maps = run_benchmark(classifier, images, methods, exam, score_settings, area=args.area, device=args.device,
                               sanity_images=args.sanity_images, sanity_methods=sanity_methods, log=log,
                               partial=lambda rows_: write_csv(out / "results.csv", rows_, fields), timing=timing,
                               done=done, store=MapStore(out / "raw"), reuse=reuse, reusable=reusable)  # fmt: skip
    summary = summarize(rows, seed=args.seed)
    paired = compare_pairs(rows, reference, seed=args.seed)
    write_csv(out / "results.csv", rows, fields)
    write_csv(out / "summary.csv", summary, SUMMARY_FIELDS)
    write_csv(out / "paired.csv", paired, PAIRED_FIELDS)
    plot_summary(summary, out / "summary.png")
    plot_gallery(images, maps, rows, out / "comparison.png", args.gallery)
    for i, item in enumerate(images):
        if item.path not in done:  # an earlier run wrote the others' maps (if they are still there)
            write_method_maps(out, item.path, item.image, {name: maps[name][i] for name in maps})
    report = write_report(out)
    area_note = "actmatch's mask area per image" if "am" in methods else f"area {args.area}"
    print_tables(
        summary,
        paired,
        f"label kept at equal area ({area_note}) and at 5/10/20 % of the image; "
        f"{args.curve_steps}-step insertion/deletion AUC; exam: {exam_text}; sanity check on the first "
        f"{min(args.sanity_images, len(images))} image(s); [95 % bootstrap interval over images]",
    )
    areas = [float(r["area"]) for r in rows if not r["error"] and r["method"] == next(iter(methods))]
    print(f"median equal-area cut: {statistics.median(areas) if areas else math.nan:.3f} of the image")
    print(timing.line(per=max(1, sum(item.path not in done for item in images))) + f"; in all {timing.passes.images} images, "
          f"floor {timing.passes.floor:.0f} s, took {timing.took:.0f} s (chunk {args.chunk})")  # fmt: skip
    written = f"results.csv, summary.csv, paired.csv, summary.png, comparison.png, maps/, raw/, {report.name}"
    if args.wandb:
        written += f"; W&B run {log_to_wandb(out, args, summary, paired, rows, images, maps)}"
    print(f"wrote {out}/{written} in {time.perf_counter() - start:.0f} s")
    return 1 if any(r["error"] for r in rows) else 0
