"""The benchmark protocol: every method on every image, scored by the exam, summarised with
intervals and compared pairwise with Holm-corrected tests.

:func:`run_benchmark` explains each image with every method (timed alone), scores all maps of the
image in one batched pass (:func:`~actmatch.evaluation.exam.score_maps`) and, for the first
``sanity_images`` images, explains it again with a model whose top blocks are re-initialised
(:func:`~actmatch.evaluation.methods.randomized_top`) to measure how much each map depends on the
model. :func:`summarize` gives one row per method (mean or median, 95 % bootstrap interval over
images); :func:`compare_pairs` compares ``am`` with each baseline per column, paired by image, with
Holm's correction over every comparison it counts; :func:`~actmatch.evaluation.columns.headline` is
the sentence the benchmark leads with, computed from the exam's columns only. The columns, their
groups and the text tables live in :mod:`~actmatch.evaluation.columns` (torch-free).

Columns true for ``am`` by construction (:data:`~actmatch.evaluation.columns.COLUMN_GROUPS`
``construction``) are shown, marked, and never counted; columns judged with the fit's own mean
fill (``fill``) are shown and tested but left out of the headline.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

import torch

from actmatch.evaluation import metrics as M
from actmatch.evaluation.batching import PassCounter
from actmatch.evaluation.columns import ALPHA, COLUMN_STATISTICS, PAIRED_METRICS, SUMMARY_METRICS
from actmatch.evaluation.exam import score_keys, score_maps
from actmatch.evaluation.families import Exam
from actmatch.evaluation.statistics import bootstrap_ci, holm, paired_comparison, paired_difference

__all__ = [
    "BenchImage",
    "MapStore",
    "MetricTime",
    "result_fields",
    "run_benchmark",
    "score_image",
    "summarize",
    "compare_pairs",
    "sufficient_with_cut",
    "add_derived",
]


def result_fields(exam: Exam | None = None) -> list[str]:
    """results.csv columns: the image and method, every score, the sanity check, time and error."""
    families = [name for name in dict.fromkeys(exam.names)] if exam is not None else ["photos", "blur", "road", "solid", "noise"]
    scores = score_keys(families)
    return ["image", "method", "label", "label_name", "confidence", *scores, "sufficient_area_with_cut", "sanity_spearman",
            "sanity_iou", "seconds", "error"]  # fmt: skip


@dataclass
class BenchImage:
    """One benchmark image: its path, the model input (3, H, W), the photo's size and the photo
    resized to the model's size with another filter (bilinear)."""

    path: str
    image: torch.Tensor
    file_size: tuple[int, int] | None = None
    resampled: torch.Tensor | None = None


class MapStore:
    """Every method's raw map of every image (``FOLDER/<image name>/<method>.pt``, with its seconds and,
    where the sanity check ran, the randomised model's map), so that a later run can reuse the maps
    of methods whose settings did not change instead of computing them again."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def _path(self, image: str, method: str) -> Path:
        return self.folder / Path(image).name / f"{method}.pt"

    def save(
        self, image: str, method: str, saliency: torch.Tensor, seconds: float, randomized: torch.Tensor | None = None
    ) -> None:
        path = self._path(image, method)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"map": saliency.detach().cpu(), "seconds": seconds,
                    "randomized": None if randomized is None else randomized.detach().cpu()}, path)  # fmt: skip

    def load(self, image: str, method: str) -> dict | None:
        """{"map", "seconds", "randomized"} or None when this image's map of ``method`` was not saved."""
        path = self._path(image, method)
        return torch.load(path, weights_only=True) if path.is_file() else None


@dataclass
class MetricTime:
    """What the metrics cost: the images they classified (with the floor, see
    :class:`~actmatch.evaluation.batching.PassCounter`) and the wall time they took."""

    passes: PassCounter = field(default_factory=PassCounter)
    took: float = 0.0

    def add(self, other: MetricTime) -> None:
        self.passes.merge(other.passes)
        self.took += other.took

    def line(self, per: int = 1) -> str:
        """``metrics: N images classified = floor F s, took T s`` (per image when ``per`` > 1)."""
        each = f" per image (over {per})" if per > 1 else ""
        return (f"metrics{each}: {self.passes.images / per:.0f} images classified = floor {self.passes.floor / per:.1f} s, "
                f"took {self.took / per:.1f} s")  # fmt: skip


def score_image(
    classifier,
    item: BenchImage,
    maps: dict[str, torch.Tensor],
    logits: torch.Tensor,
    area: float,
    exam: Exam,
    settings: dict,
    counter: PassCounter,
) -> dict[str, dict | Exception]:
    """Every exam column of every map (1, 1, H, W) of one image: name -> values.

    All maps are scored together (:func:`~actmatch.evaluation.exam.score_maps`); if that fails,
    each map is scored alone so that the failure is named by its method.
    """
    if not maps:
        return {}
    x = item.image[None].to(logits.device)
    draws = exam.draws(x, Path(item.path).name)
    resampled = item.resampled[None] if item.resampled is not None else None
    kw = {"logits": logits, "counter": counter, "file_size": item.file_size, "resampled": resampled, **settings}
    target = logits.argmax(-1)
    try:
        delivered = torch.tensor([name == "am" for name in maps])  # am's equal-area cut is its mask
        stacked = score_maps(classifier, x, torch.cat(list(maps.values())), draws, target, area, delivered=delivered, **kw)
        return {name: {key: v[j].item() for key, v in stacked.items()} for j, name in enumerate(maps)}
    except Exception:  # noqa: BLE001 - find the map that fails
        out: dict[str, dict | Exception] = {}
        for name, saliency in maps.items():
            try:
                out[name] = {
                    key: v[0].item()
                    for key, v in score_maps(
                        classifier, x, saliency, draws, target, area, delivered=torch.tensor([name == "am"]), **kw
                    ).items()
                }
            except Exception as err:  # noqa: BLE001
                out[name] = err
        return out


def sufficient_with_cut(row: dict) -> float:
    """min(smallest sufficient area, the equal-area cut ``area``) when that cut keeps the label,
    else the smallest sufficient area (values as numbers or as results.csv strings)."""
    scanned = float(row["smallest_sufficient_area"])
    return min(scanned, float(row["area"])) if int(float(row["kept_equal_area"])) else scanned


def add_derived(rows: list[dict]) -> list[dict]:
    """Fill ``sufficient_area_with_cut`` where it is missing, in place."""
    needed = ("smallest_sufficient_area", "area", "kept_equal_area")
    for row in rows:
        if row.get("sufficient_area_with_cut") in (None, "") and all(row.get(k) not in (None, "") for k in needed):
            row["sufficient_area_with_cut"] = sufficient_with_cut(row)
    return rows


def _as_row_values(scores: dict) -> dict:
    """Metric values for results.csv: binary label-kept columns as 0/1 integers."""
    binary = ("kept_equal_area", "kept_equal_area_convad", "kept_at_", "kept_dilated", "kept_readback", "kept_resampled")
    out = {}
    for key, value in scores.items():
        out[key] = int(round(value)) if key.startswith(binary) and not math.isnan(value) else value
    return out


def run_benchmark(
    classifier,
    images: list[BenchImage],
    methods: dict,
    exam: Exam,
    settings: dict,
    *,
    area: float = 0.2,
    device: str = "cpu",
    sanity_images: int = 0,
    sanity_methods: Callable[[], dict] | None = None,
    log=print,
    partial: Callable[[list[dict]], None] | None = None,
    timing: MetricTime | None = None,
    done: dict[str, list[dict]] | None = None,
    store: MapStore | None = None,
    reuse: MapStore | None = None,
    reusable: Collection[str] = frozenset(),
) -> tuple[list[dict], dict[str, list[torch.Tensor | None]]]:
    """Run every method on every image; rows for results.csv and the maps for the gallery.

    Per image: every method explains it (timed alone), then all maps are scored in one batched
    pass. For the first ``sanity_images`` images, ``sanity_methods()`` (the same methods on a model
    with re-initialised top blocks, built once) explain the image again, and ``sanity_spearman`` /
    ``sanity_iou`` compare the two maps (Spearman's ρ, IoU of the top-10 % cuts). ``partial(rows)``
    is called after each image (long runs keep their rows if interrupted); ``timing`` accumulates
    what the metrics cost. Images in ``done`` (path -> its rows from an earlier run) are not run
    again: their rows are kept and their maps are None. Every map (and its seconds, and the
    randomised model's map) is written to ``store``; the methods in ``reusable`` take theirs from
    ``reuse`` (an earlier run's store, same settings) where it has them, instead of running.

    Args:
        settings: keyword arguments of :func:`~actmatch.evaluation.exam.score_maps` (steps, tau,
            grid, refine, rate, seed, chunk).
    """
    rows: list[dict] = []
    maps: dict[str, list[torch.Tensor | None]] = {name: [] for name in methods}
    randomized: dict | None = None
    for i, item in enumerate(images):
        path = item.path
        if done and path in done:
            rows.extend(done[path])
            for name in methods:
                maps[name].append(None)
            log(f"[{i + 1}/{len(images)}] {Path(path).name}: from the earlier run")
            continue
        x = item.image[None].to(device)  # (1, 3, H, W)
        with torch.no_grad():
            logits = classifier(x)  # (1, K), reused by every metric
        probs = logits.softmax(-1)
        target = probs.argmax(-1)
        cut_area = area
        base = {
            "image": path,
            "label": int(target),
            "label_name": classifier.class_name(int(target)),
            "confidence": probs.max().item(),
        }
        image_rows, image_maps, earlier = {}, {}, {}
        for name, method in methods.items():
            row = image_rows[name] = {**base, "method": name, "error": ""}
            try:
                saved = reuse.load(path, name) if reuse is not None and name in reusable else None
                if saved is not None:
                    saliency, row["seconds"], earlier[name] = saved["map"].to(device), saved["seconds"], saved["randomized"]
                else:
                    start = time.perf_counter()
                    saliency = method.attribute(x, target)  # (1, 1, H, W)
                    row["seconds"] = time.perf_counter() - start
                if name == "am":
                    cut_area = M.mask_area(saliency >= 1).item() or area  # the binary mask inside m + s
                image_maps[name] = saliency
            except Exception as err:  # noqa: BLE001 - one failure must not lose the other rows
                row["error"] = f"{type(err).__name__}: {err}"
        cost = MetricTime()
        start = time.perf_counter()
        scores = score_image(classifier, item, image_maps, logits, cut_area, exam, settings, cost.passes)
        cost.took = time.perf_counter() - start
        randomized_maps: dict[str, torch.Tensor] = {}
        if i < sanity_images and sanity_methods is not None:
            needed = [name for name in image_maps if earlier.get(name) is None]
            if needed:
                randomized = randomized if randomized is not None else sanity_methods()
            randomized_maps = _sanity(randomized or {}, x, image_maps, scores, earlier)
        if store is not None:
            for name, saliency in image_maps.items():
                store.save(path, name, saliency, image_rows[name]["seconds"], randomized_maps.get(name))
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
            partial(rows)
    return rows, maps


def _sanity(
    randomized: dict, x: torch.Tensor, maps: dict[str, torch.Tensor], scores: dict, earlier: dict[str, torch.Tensor | None]
) -> dict[str, torch.Tensor]:
    """Add ``sanity_spearman`` and ``sanity_iou`` to each scored map: the method's map of the model
    with re-initialised top blocks (explaining that model's own top-1) against the original map
    (``earlier[name]`` when an earlier run computed it). Returns the randomised maps."""
    others = {}
    for name, saliency in maps.items():
        result = scores.get(name)
        if not isinstance(result, dict):
            continue
        other = earlier.get(name)
        if other is None:
            if name not in randomized:
                continue
            method = randomized[name]
            with torch.no_grad():
                target = method.classifier(x).argmax(-1)
            other = method.attribute(x, target)
        other = other.to(saliency.device)
        others[name] = other
        result["sanity_spearman"] = float(M.spearman(saliency, other)[0])
        result["sanity_iou"] = float(M.top_iou(saliency, other, 0.1)[0])
    return others


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else math.nan


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def _numbers(rows: list[dict], column: str) -> list[float]:
    values = []
    for r in rows:
        value = r.get(column)
        if value in (None, ""):
            continue
        value = float(value)
        if not math.isnan(value):
            values.append(value)
    return values


def summarize(rows: list[dict], n_boot: int = 2000, seed: int = 0) -> list[dict]:
    """One row per method: means (label kept, AUCs, robustness, scores) and medians (areas,
    ratios, seconds), each with a 95 % percentile-bootstrap interval over images
    (``<key>_ci_low``, ``<key>_ci_high``)."""
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        ok = [r for r in rows if r["method"] == method and not r["error"]]
        row = {"method": method, "images": len(ok)}
        for key, column, stat, _, _ in SUMMARY_METRICS:
            values = _numbers(ok, column)
            row[key] = _mean(values) if stat == "mean" else _median(values)
            row[f"{key}_ci_low"], row[f"{key}_ci_high"] = bootstrap_ci(values, stat, n_boot=n_boot, seed=seed)
        row["errors"] = sum(1 for r in rows if r["method"] == method and r["error"])
        out.append(row)
    return out


def compare_pairs(rows: list[dict], reference: str = "am", seed: int = 0) -> list[dict]:
    """``reference`` against every other method, per column, paired by image
    (:func:`~actmatch.evaluation.statistics.paired_comparison`), with the size of the gap: the mean (median
    for areas and ratios) of the per-image differences reference − baseline and its bootstrap interval
    (:func:`~actmatch.evaluation.statistics.paired_difference`, resampled with ``seed``); [] when
    ``reference`` was not run.

    Columns of the ``construction`` group are listed with their counts but no test (``p_value``
    NaN, never significant); Holm's correction runs over every other comparison of the table
    (``p_holm``), and ``significant`` is ``p_holm`` < :data:`ALPHA`.
    """
    by_method: dict[str, dict[str, dict]] = {}
    for r in rows:
        if not r["error"]:
            by_method.setdefault(r["method"], {})[r["image"]] = r
    if reference not in by_method:
        return []
    out = []
    ours = by_method[reference]
    for column, _, better, group in PAIRED_METRICS:
        for baseline, theirs in by_method.items():
            if baseline == reference:
                continue
            shared = [img for img in ours if img in theirs]
            a = [float(ours[img][column]) if ours[img].get(column) not in (None, "") else math.nan for img in shared]
            b = [float(theirs[img][column]) if theirs[img].get(column) not in (None, "") else math.nan for img in shared]
            gap = paired_difference(a, b, COLUMN_STATISTICS[column], seed=seed)
            result = {**paired_comparison(a, b, higher_is_better=better), **gap}
            if group == "construction" or result["n"] == 0:
                result = {**result, "p_value": math.nan, "test": "by construction" if group == "construction" else "none"}
            out.append({"metric": column, "group": group, "reference": reference, "baseline": baseline, **result})
    adjusted = holm([r["p_value"] if r["group"] != "construction" else math.nan for r in out])
    for r, p in zip(out, adjusted):
        r["p_holm"] = p
        r["significant"] = not math.isnan(p) and p < ALPHA
    return out
