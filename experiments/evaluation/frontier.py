"""The baselines' frontier on the exam: each method's top-k regions at fixed areas, graded like a study row.

For every image of an ``actmatch benchmark`` run and every method whose raw map it saved (``OUT/raw/``),
the map's top-k cut at each area is judged by the exam (:func:`actmatch.evaluation.exam.judge_masks`:
robustness on the 16 draws, p(e)/p(x) with the mean fill, dilation, shifts, read-back). One row per
(method, area) with the medians over images goes to ``--out``; ``--plot`` draws those curves with the
study's rows (``--study study.csv``) as points: area against exam robustness and against p(e)/p(x).

    .venv/bin/python experiments/evaluation/frontier.py outputs/benchmark-100 \
        --exam-photos ../shared/data/imagenet-train --every 5 --out docs/explainer-study-frontier.csv \
        --study docs/explainer-study-exam.csv --plot docs/explainer-study-exam.png

``--every 5`` takes the study's 20 images (every 5th of the 100, sorted), so the curves and the study's
points are measured on the same images.

With ``--images`` instead of a run, the maps of ``--methods`` are computed here (EfficientNet-Lite0, the
benchmark's method classes and defaults; ``am-amortized`` with ``--checkpoint``, its map the pass's
ranking, so its cuts are the one pass at other areas). ``--paired REF`` adds, per area, each method
against REF image by image: label kept (exact sign test) and exam robustness (Wilcoxon). ``--plot-kept``
draws the share of labels kept against the area, one curve per method:

    .venv/bin/python experiments/evaluation/frontier.py --images ../shared/data/imagenet-sample \
        --exam-photos ../shared/data/imagenet-train --methods am-amortized,gradcam,am --checkpoint CKPT \
        --areas 0.1,0.2,0.25,0.3,0.4,0.5,0.6,0.7 --paired am-amortized --out docs/amortized-frontier.csv \
        --plot-kept docs/amortized-frontier.png

(``am`` is the per-image default recipe's map, the mask then its network's probability: cut at a fixed
area it is that fit's ranking at that area, not its own per-image area.)
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import statistics
import sys
from pathlib import Path

import torch

from actmatch.commands.benchmark import _bench_image, load_exam, load_images, method_names, parse_methods
from actmatch.commands.study import plot_study
from actmatch.evaluation.benchmark import MapStore
from actmatch.evaluation.exam import judge_masks
from actmatch.evaluation.families import EXAM_SEED
from actmatch.evaluation.methods import METHODS
from actmatch.evaluation.statistics import paired_comparison
from actmatch.explainers.classifier import load_classifier
from actmatch.explainers.masks import top_fraction_mask
from actmatch.memory import keep_freed_memory

FIELDS = [
    "method",
    "area",
    "images",
    "robust_median",
    "robust_mean",
    "robust_photos_mean",
    "conf_ratio_median",
    "kept",
    "dilated_kept",
    "shift_kept",
    "readback_kept",
]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", nargs="?", help="an actmatch benchmark output folder (results.csv, settings.json, raw/)")
    parser.add_argument("--images", nargs="+", default=None, help="instead of a run: compute the maps on these images or folders")
    parser.add_argument("--checkpoint", default=None, help="with --images: the `actmatch fit` checkpoint of am-amortized")
    parser.add_argument("--methods", default="saliency,gradcam,occlusion,ig,rise,convad")
    parser.add_argument("--areas", default="0.05,0.1,0.2,0.3,0.5")
    parser.add_argument("--exam-photos", default=None, metavar="DIR")
    parser.add_argument("--exam-seed", type=int, default=EXAM_SEED, help="with --images: the exam seed")
    parser.add_argument("--limit", type=int, default=None, help="only the run's first N images (after --every)")
    parser.add_argument("--every", type=int, default=1, help="every Nth image of the run (5: the study's 20 of 100)")
    parser.add_argument("--out", required=True, help="CSV of the frontier rows")
    parser.add_argument("--paired", default=None, metavar="METHOD", help="also each method against METHOD at each area")
    parser.add_argument("--study", default=None, help="a study.csv whose rows are drawn as points")
    parser.add_argument("--plot", default=None, help="PNG of the curves (and the study's points)")
    parser.add_argument("--plot-kept", default=None, metavar="PNG", help="PNG of the labels kept against the area")
    parser.add_argument("--replot", action="store_true", help="read the frontier rows from --out instead of computing them")
    args = parser.parse_args(argv)
    methods, areas = method_names(args.methods), [float(a) for a in args.areas.split(",")]
    if args.replot:
        with open(args.out, newline="") as handle:
            saved = [{k: (v if k == "method" else float(v)) for k, v in row.items()} for row in csv.DictReader(handle)]
        draw(args, saved)
        return 0
    if (args.run is None) == (args.images is None):
        parser.error("give either a benchmark run folder or --images (the maps computed here), not both")
    if args.paired is not None and args.paired not in methods:
        parser.error(f"--paired {args.paired}: it must be one of --methods ({', '.join(methods)})")
    if bad := [a for a in areas if not 0 < a <= 1]:
        parser.error(f"--areas must lie in (0, 1], got {bad}")
    for path in (args.out, args.plot, args.plot_kept):  # before the images are judged, not after
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    keep_freed_memory()  # as the actmatch CLI does: the exam's batches would otherwise re-map their buffers
    if args.run is not None:
        classifier, images, exam_seed, maps = from_run(Path(args.run), args.every, args.limit)
    else:
        try:
            parse_methods(args.methods, args.checkpoint)  # the benchmark's checks; the order stays --methods'
        except ValueError as err:
            parser.error(str(err))
        classifier = load_classifier("efficientnet_lite0").eval()
        images = load_images(args.images, classifier, None)[:: args.every][: args.limit]
        exam_seed, maps = args.exam_seed, computed_maps(classifier, methods, args.checkpoint)
    exam = load_exam(args.exam_photos, images, classifier.input_size, exam_seed)
    per: dict[tuple[str, float], dict[str, dict]] = {}
    for n, item in enumerate(images, start=1):
        x = item.image[None]
        draws = exam.draws(x, Path(item.path).name)
        for method in methods:
            relevance = maps(item, method)
            if relevance is None:
                continue
            cuts = top_fraction_mask(relevance.expand(len(areas), -1, -1, -1), torch.tensor(areas))
            scores = judge_masks(classifier, x, cuts, draws, file_size=item.file_size, resampled=item.resampled[None])
            for j, area in enumerate(areas):
                per.setdefault((method, area), {})[item.path] = {k: float(v[j]) for k, v in scores.items()}
        print(f"[{n}/{len(images)}] {Path(item.path).name}", file=sys.stderr, flush=True)
    rows = [frontier_row(method, area, list(values.values())) for (method, area), values in per.items()]
    with open(args.out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    for r in rows:
        print(
            f"{r['method']:<12} {r['area']:>5.2f}  robust {r['robust_median']:.3f} (photos {r['robust_photos_mean']:.2f})  "
            f"pe/px {r['conf_ratio_median']:.3f}  kept {r['kept']:.2f}"
        )
    if args.paired is not None:
        print(paired_table(per, args.paired, methods, areas))
    draw(args, rows)
    return 0


def from_run(run: Path, every: int, limit: int | None) -> tuple:
    """The classifier, images, exam seed and saved maps of an ``actmatch benchmark`` run."""
    settings = json.loads((run / "settings.json").read_text())
    classifier = load_classifier(settings["backbone"], settings.get("weights"), input_size=settings.get("input_size"))
    with (run / "results.csv").open() as handle:
        paths = list(dict.fromkeys(row["image"] for row in csv.DictReader(handle)))[::every][:limit]
    images = [_bench_image(Path(p), classifier) for p in paths]
    seed = re.search(r"seed (\d+)", settings.get("exam", ""))
    store = MapStore(run / "raw")

    def maps(item, method: str) -> torch.Tensor | None:
        saved = store.load(item.path, method)
        return None if saved is None else saved["map"]

    return classifier, images, int(seed.group(1)) if seed else EXAM_SEED, maps


def computed_maps(classifier, methods: list[str], checkpoint: str | None):
    """A function (image, method) -> the method's map (1, 1, H, W), computed with the benchmark's
    method classes at their defaults (``am-amortized``: the checkpoint's one pass, map m + σ(z))."""
    built = {m: METHODS[m](classifier, **({"checkpoint": checkpoint} if m == "am-amortized" else {})) for m in methods}

    def maps(item, method: str) -> torch.Tensor:
        return built[method].attribute(item.image[None]).detach().reshape(1, 1, *item.image.shape[-2:])

    return maps


def frontier_row(method: str, area: float, values: list[dict]) -> dict:
    """One (method, area) row: medians and means over the images' exam scores (NaN for a family the
    exam lacks: other photos without ``--exam-photos``)."""
    mean = lambda key: round(statistics.fmean(v.get(key, math.nan) for v in values), 3)  # noqa: E731
    median = lambda key: round(statistics.median(v.get(key, math.nan) for v in values), 3)  # noqa: E731
    return {"method": method, "area": area, "images": len(values), "robust_median": median("robustness"),
            "robust_mean": mean("robustness"), "robust_photos_mean": mean("robust_photos"),
            "conf_ratio_median": median("ratio"), "kept": mean("kept"), "dilated_kept": mean("kept_dilated"),
            "shift_kept": mean("kept_shift"), "readback_kept": mean("kept_readback")}  # fmt: skip


def paired_table(per: dict, reference: str, methods: list[str], areas: list[float]) -> str:
    """Each method against ``reference`` at each area, on the images both have: wins–ties–losses and p
    (:func:`~actmatch.evaluation.statistics.paired_comparison`) for the label kept and the exam robustness."""
    lines = [f"\nagainst {reference}, image by image (wins–ties–losses, p): label kept (sign test), robustness (Wilcoxon)"]
    for method in (m for m in methods if m != reference):
        for area in areas:
            ours, theirs = per.get((method, area), {}), per.get((reference, area), {})
            shared = [name for name in ours if name in theirs]
            cells = []
            for key in ("kept", "robustness"):
                c = paired_comparison([ours[k][key] for k in shared], [theirs[k][key] for k in shared])
                cells.append(f"{key} {c['wins']}–{c['ties']}–{c['losses']}, p {c['p_value']:.2g}")
            lines.append(f"{method:<12} {area:>5.2f}  n {len(shared):>3}  " + "   ".join(cells))
    return "\n".join(lines)


def draw(args: argparse.Namespace, rows: list[dict]) -> None:
    if args.plot:
        plot_study(Path(args.study) if args.study else None, Path(args.plot), frontier=rows)
    if args.plot_kept:
        plot_kept(rows, Path(args.plot_kept))


#: legend entries of --plot-kept
KEPT_LABELS = {
    "am": "am: the per-image fit's ranking",
    "am-amortized": "am-amortized: the one pass's ranking",
    "centre": "centre: the centred ellipse",
}


def plot_kept(rows: list[dict], png: Path) -> None:
    """The share of labels kept (mean fill) against the area of the cut, one curve per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for method in dict.fromkeys(r["method"] for r in rows):
        own = [r for r in rows if r["method"] == method]
        points = sorted((float(r["area"]), float(r["kept"])) for r in own)
        n = max(int(float(r["images"])) for r in own)
        ax.plot(*zip(*points), "o-", lw=1.2, ms=3, label=f"{KEPT_LABELS.get(method, method)} (n={n})")
    ax.axhline(0.9, color="grey", ls=":", lw=1)
    ax.set_xlabel("area of the top-k cut")
    ax.set_ylabel("label kept, mean fill (share of images)")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
