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
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import statistics
import sys
from pathlib import Path

import torch

from actmatch.commands.benchmark import _bench_image, load_photo_pool
from actmatch.commands.study import plot_study
from actmatch.evaluation.benchmark import MapStore
from actmatch.evaluation.exam import judge_masks
from actmatch.evaluation.families import default_exam
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
    parser.add_argument("run", help="an actmatch benchmark output folder (results.csv, settings.json, raw/)")
    parser.add_argument("--methods", default="saliency,gradcam,occlusion,ig,rise,convad")
    parser.add_argument("--areas", default="0.05,0.1,0.2,0.3,0.5")
    parser.add_argument("--exam-photos", default=None, metavar="DIR")
    parser.add_argument("--limit", type=int, default=None, help="only the run's first N images (after --every)")
    parser.add_argument("--every", type=int, default=1, help="every Nth image of the run (5: the study's 20 of 100)")
    parser.add_argument("--out", required=True, help="CSV of the frontier rows")
    parser.add_argument("--study", default=None, help="a study.csv whose rows are drawn as points")
    parser.add_argument("--plot", default=None, help="PNG of the curves (and the study's points)")
    parser.add_argument("--replot", action="store_true", help="read the frontier rows from --out instead of computing them")
    args = parser.parse_args(argv)
    if args.replot:
        with open(args.out, newline="") as handle:
            saved = [{k: (v if k == "method" else float(v)) for k, v in row.items()} for row in csv.DictReader(handle)]
        if args.plot:
            plot_study(Path(args.study) if args.study else None, Path(args.plot), frontier=saved)
        return 0
    keep_freed_memory()  # as the actmatch CLI does: the exam's batches would otherwise re-map their buffers
    run = Path(args.run)
    settings = json.loads((run / "settings.json").read_text())
    classifier = load_classifier(settings["backbone"], settings.get("weights"), input_size=settings.get("input_size"))
    with (run / "results.csv").open() as handle:
        paths = list(dict.fromkeys(row["image"] for row in csv.DictReader(handle)))[:: args.every][: args.limit]
    images = [_bench_image(Path(p), classifier) for p in paths]
    photos = load_photo_pool(args.exam_photos, images, classifier.input_size) if args.exam_photos else None
    seed = re.search(r"seed (\d+)", settings.get("exam", ""))
    exam = default_exam(photos, int(seed.group(1)) if seed else 1000)
    store = MapStore(run / "raw")
    methods, areas = args.methods.split(","), [float(a) for a in args.areas.split(",")]
    per: dict[tuple[str, float], list[dict]] = {}
    for n, item in enumerate(images, start=1):
        x = item.image[None]
        draws = exam.draws(x, Path(item.path).name)
        for method in methods:
            saved = store.load(item.path, method)
            if saved is None:
                continue
            cuts = top_fraction_mask(saved["map"].expand(len(areas), -1, -1, -1), torch.tensor(areas))
            scores = judge_masks(classifier, x, cuts, draws, file_size=item.file_size, resampled=item.resampled[None])
            for j, area in enumerate(areas):
                per.setdefault((method, area), []).append({k: float(v[j]) for k, v in scores.items()})
        print(f"[{n}/{len(images)}] {Path(item.path).name}", file=sys.stderr, flush=True)
    rows = []
    for (method, area), values in per.items():
        mean = lambda key: round(statistics.fmean(v[key] for v in values), 3)  # noqa: E731
        median = lambda key: round(statistics.median(v[key] for v in values), 3)  # noqa: E731
        rows.append({"method": method, "area": area, "images": len(values), "robust_median": median("robustness"),
                     "robust_mean": mean("robustness"), "robust_photos_mean": mean("robust_photos"),
                     "conf_ratio_median": median("ratio"), "kept": mean("kept"), "dilated_kept": mean("kept_dilated"),
                     "shift_kept": mean("kept_shift"), "readback_kept": mean("kept_readback")})  # fmt: skip
    with open(args.out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    for r in rows:
        print(
            f"{r['method']:<10} {r['area']:>5.2f}  robust {r['robust_median']:.3f} (photos {r['robust_photos_mean']:.2f})  "
            f"pe/px {r['conf_ratio_median']:.3f}  kept {r['kept']:.2f}"
        )
    if args.plot:
        plot_study(Path(args.study) if args.study else None, Path(args.plot), frontier=rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
