"""What a report shows, read from the files an ``explain`` or a ``benchmark`` run wrote.

Both readers return plain dicts for the templates: numbers are parsed once here, each shown
value comes with its display text, and every path is relative to the output folder (POSIX,
URL-quoted) so the page opens from the folder itself, offline.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path
from urllib.parse import quote

from actmatch.evaluation.columns import SUMMARY_METRICS, column_mark, format_difference, headline

__all__ = [
    "benchmark_context",
    "explain_context",
    "format_value",
    "is_benchmark",
    "is_explain",
    "read_csv",
    "to_number",
]

#: explain columns that hold identifiers, not measures (never summarised or sorted)
ID_COLUMNS = {"label", "label_explanation", "seed", "num_classes", "input_size"}  # ids and settings, not results
#: benchmark results columns that describe the image, not a method
IMAGE_COLUMNS = {"label", "confidence"}
#: columns holding a fraction of the image's pixels (shown in %)
PERCENT_COLUMNS = {
    "mask_area",
    "median_mask_area",
    "label_kept_rate",
    "area",
    "smallest_sufficient_area",
    "median_smallest_sufficient_area",
    "sufficient_area_with_cut",
    "median_sufficient_area_with_cut",
    "border_kept",
    "robust_sufficient_area",
    "median_robust_sufficient_area",
    "region_area",
}
#: per-image columns holding a 0/1 outcome (shown as yes/no)
FLAG_COLUMNS = {
    "label_kept",
    "kept_equal_area",
    "kept_equal_area_convad",
    "kept_at_5",
    "kept_at_10",
    "kept_at_20",
    "kept_dilated",
    "kept_readback",
    "kept_resampled",
}
#: benchmark metrics that get a sort button in each method's header, when present
SORT_METRICS = (
    "robust_sufficient_area",
    "dg_score",
    "robustness",
    "insertion_auc",
    "deletion_auc",
    "kept_equal_area",
    "smallest_sufficient_area",
    "seconds",
)
TITLES = {
    "confidence_original": "p(x)",
    "confidence_explanation": "p(e)",
    "confidence": "p(x)",
    "label_kept": "kept",
    "mask_area": "area",
    "robustness": "robust",
    "confidence_ratio": "p(e)/p(x)",
    "border_kept": "border",
    "label_kept_rate": "label kept rate",
    "kept_equal_area": "kept@area",
    "kept_equal_area_convad": "kept@area(AD)",
    "confidence_delta_equal_area": "Δp@area",
    "smallest_sufficient_area": "suff.area",
    "median_smallest_sufficient_area": "med.suff.area",
    "sufficient_area_with_cut": "suff+cut",
    "median_sufficient_area_with_cut": "med.suff+cut",
    "insertion_auc": "ins.AUC",
    "deletion_auc": "del.AUC",
    "median_seconds": "med.s/img",
}
SHORT = {
    "kept_equal_area": "kept",
    "robustness": "rob",
    "insertion_auc": "ins",
    "deletion_auc": "del",
    "smallest_sufficient_area": "suff",
    "seconds": "s",
    "robust_sufficient_area": "r.suff",
    "dg_score": "DG",
}


def _benchmark_titles() -> dict[str, str]:
    """The benchmark's own headers, marked by group: † true for am by construction, * the fit's mean fill."""
    titles = {}
    for key, column, _, header, _ in SUMMARY_METRICS:
        mark = column_mark(column)
        titles[key] = header + mark
        titles.setdefault(column, header.removeprefix("med.") + mark)
    return titles


_BENCHMARK_TITLES = _benchmark_titles()
TITLES = {**_BENCHMARK_TITLES, **{k: v for k, v in TITLES.items() if k not in _BENCHMARK_TITLES}}


def title(key: str) -> str:
    """The column header of ``key``."""
    return TITLES.get(key, key.replace("_", " "))


def read_csv(path: Path) -> tuple[list[str], list[dict]]:
    """The header and the rows of a CSV file (empty when the file has no header)."""
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def to_number(text) -> float | None:
    """A CSV cell as a float (``True``/``False`` as 1/0); None when empty, NaN or not a number."""
    if isinstance(text, bool):
        return float(text)
    if isinstance(text, (int, float)):
        return None if math.isnan(text) else float(text)
    text = (text or "").strip()
    if text in ("True", "False"):
        return float(text == "True")
    try:
        value = float(text)
    except ValueError:
        return None
    return None if math.isnan(value) or math.isinf(value) else value


def format_value(key: str, value: float | None, flag: bool = False) -> str:
    """Display text of a number: yes/NO for 0/1 outcomes (``flag``), % for areas, 3 digits otherwise."""
    if value is None:
        return "–"
    if flag and key in FLAG_COLUMNS:
        return "yes" if value >= 0.5 else "NO"
    if key in PERCENT_COLUMNS:
        return f"{100 * value:.1f}%"
    if value == int(value) and abs(value) < 1e6:
        return str(int(value))
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"


def numeric_columns(fields: list[str], rows: list[dict], skip: set[str]) -> list[str]:
    """The columns (in file order) whose every non-empty cell is a number, at least one of them."""
    out = []
    for key in fields:
        cells = [(r.get(key) or "").strip() for r in rows]
        cells = [c for c in cells if c and c.lower() != "nan"]
        if key not in skip and cells and all(to_number(c) is not None for c in cells):
            out.append(key)
    return out


def relative(out_dir: Path, path: Path) -> str | None:
    """``path`` relative to ``out_dir`` as a quoted URL, or None when the file is missing."""
    if not path.is_file():
        return None
    return quote(path.relative_to(out_dir).as_posix())


def histogram(values: list[float], bins: int = 10) -> list[dict]:
    """Bars of a histogram of ``values`` over [0, max]: ``low``, ``high``, ``count``, ``height`` (0..1)."""
    if not values:
        return []
    top = max(values) or 1.0
    counts = [0] * bins
    for value in values:
        counts[min(int(value / top * bins), bins - 1)] += 1
    return [
        {"low": top * i / bins, "high": top * (i + 1) / bins, "count": c, "height": c / max(counts)} for i, c in enumerate(counts)
    ]


# ---------------------------------------------------------------------------------------- explain


def is_explain(out_dir: Path) -> bool:
    """Whether ``out_dir`` holds an ``actmatch explain`` result (summary.csv with image and mask_area)."""
    summary = out_dir / "summary.csv"
    if not summary.is_file():
        return False
    fields, _ = read_csv(summary)
    return {"image", "mask_area"} <= set(fields)


def _image_folder(out_dir: Path, row: dict) -> Path:
    folder = (row.get("folder") or "").strip() or Path(row["image"]).stem
    return out_dir / folder


def _explain_row(out_dir: Path, index: int, row: dict, metrics: list[str]) -> dict:
    """One gallery row: the image's files, its numbers (value and text) and whether it lost its label."""
    error = row.get("status", "ok") not in ("", "ok")
    folder = None if error else _image_folder(out_dir, row)
    files = {name: relative(out_dir, folder / f"{name}.png") if folder else None for name in ("figure", "mask", "explanation")}
    values = {key: to_number(row.get(key)) for key in metrics}
    return {
        "index": index,
        "name": Path(row["image"]).name,
        "image": row["image"],
        "label": row.get("label_name", ""),
        "label_explanation": row.get("label_explanation_name", ""),
        "files": files,
        "summary_json": relative(out_dir, folder / "summary.json") if folder else None,
        "numbers": values,
        "sort": {"index": index, **values},
        "cells": [{"key": k, "value": values[k], "text": format_value(k, values[k], flag=True)} for k in metrics],
        "lost": not error and values.get("label_kept") == 0,
        "error": (row.get("error") or "error") if error else "",
    }


def _explain_summary(out_dir: Path, rows: list[dict], aggregate_row: dict | None, metrics: list[str]) -> list[dict]:
    """The summary table: aggregate.json (or the ``__aggregate__`` row), then medians of the other measures."""
    path = out_dir / "aggregate.json"
    if path.is_file():
        agg = json.loads(path.read_text())
    elif aggregate_row:
        agg = {
            "label_kept_rate": aggregate_row.get("label_kept"),
            "median_mask_area": aggregate_row.get("mask_area"),
            "median_seconds": aggregate_row.get("seconds"),
            "status": aggregate_row.get("status"),
        }
    else:
        agg = {}
    items = []
    for key, raw in agg.items():
        value = to_number(raw)
        text = format_value(key, value) if value is not None else str(raw if raw is not None else "–")
        items.append({"key": key, "title": key.replace("_", " "), "text": text})
    covered = {"label_kept", "mask_area", "seconds"}
    for key in metrics:
        values = [r["numbers"][key] for r in rows if r["numbers"].get(key) is not None]
        if key not in covered and values:
            items.append(
                {"key": f"median_{key}", "title": f"median {title(key)}", "text": format_value(key, statistics.median(values))}
            )
    return items


def explain_context(out_dir: Path) -> dict:
    """Everything the explain template shows, from ``out_dir``'s summary.csv, aggregate.json and image folders."""
    fields, raw = read_csv(out_dir / "summary.csv")
    aggregate_row = next((r for r in raw if r.get("image") == "__aggregate__"), None)
    raw = [r for r in raw if r.get("image") != "__aggregate__"]
    ok = [r for r in raw if r.get("status", "ok") in ("", "ok")]
    metrics = numeric_columns(fields, ok, ID_COLUMNS)
    rows = [_explain_row(out_dir, i, r, metrics) for i, r in enumerate(raw)]
    areas = [r["numbers"]["mask_area"] for r in rows if r["numbers"].get("mask_area") is not None]
    return {
        "kind": "explain",
        "title": f"actmatch explain: {out_dir.name}",
        "summary": _explain_summary(out_dir, rows, aggregate_row, metrics),
        "columns": [{"key": k, "title": title(k)} for k in metrics],
        "rows": rows,
        "errors": sum(1 for r in rows if r["error"]),
        "area_histogram": histogram(areas) if len(areas) > 1 else [],
        "plots": [p for p in ("histogram.png", "summary.png") if (out_dir / p).is_file()],
        "lost_methods": [],
    }


# -------------------------------------------------------------------------------------- benchmark


def is_benchmark(out_dir: Path) -> bool:
    """Whether ``out_dir`` holds an ``actmatch benchmark`` result: results.csv with image and method
    columns (summary.csv, written at the end, may be missing from an interrupted run)."""
    results = out_dir / "results.csv"
    return results.is_file() and {"image", "method"} <= set(read_csv(results)[0])


def _summary_columns(fields: list[str]) -> list[dict]:
    """summary.csv's columns, each ``X_ci_low``/``X_ci_high`` pair folded into column X as its interval."""
    columns = []
    for key in fields:
        base = key.removesuffix("_ci_low").removesuffix("_ci_high")
        if base != key and base in fields:
            continue
        low, high = f"{key}_ci_low", f"{key}_ci_high"
        columns.append(
            {"key": key, "title": title(key), "low": low if low in fields else None, "high": high if high in fields else None}
        )
    return columns


def _summary_cell(row: dict, column: dict) -> str:
    key, raw = column["key"], row.get(column["key"], "")
    value = to_number(raw)
    text = format_value(key, value) if value is not None else (raw or "–")
    if column["low"] or column["high"]:
        low, high = to_number(row.get(column["low"] or "")), to_number(row.get(column["high"] or ""))
        text += f" [{format_value(key, low)}, {format_value(key, high)}]"
    return text


def read_maps(out_dir: Path) -> dict[str, dict[str, str]]:
    """image path -> {"photo" | method: relative URL} from ``maps/*/index.json`` (see :mod:`.maps`)."""
    found = {}
    for index in sorted((out_dir / "maps").glob("*/index.json")):
        try:
            info = json.loads(index.read_text())
        except (OSError, ValueError):
            continue
        files = {name: relative(out_dir, out_dir / path) for name, path in info.get("files", {}).items()}
        found[str(info.get("image"))] = {name: url for name, url in files.items() if url}
    return found


def _benchmark_row(index: int, image: str, rows: list[dict], methods: list[str], metrics: list[str], maps: dict) -> dict:
    """One gallery row: the photo, then per method its map, numbers and error."""
    by_method = {r["method"]: r for r in rows}
    first = rows[0]
    confidence = to_number(first.get("confidence"))
    cells, sort = [], {"index": index, "confidence": confidence}
    for method in methods:
        row = by_method.get(method)
        error = (row.get("error") or "") if row else "not run"
        values = {k: to_number(row.get(k)) for k in metrics} if row and not error else {}
        sort.update({f"{method}_{k}": values.get(k) for k in metrics})
        cells.append({
            "method": method,
            "map": maps.get(method),
            "error": error,
            "lost": values.get("kept_equal_area") == 0,
            "metrics": [{"key": k, "title": title(k), "text": format_value(k, values.get(k), flag=True)}
                       for k in metrics if values.get(k) is not None],
        })  # fmt: skip
    return {
        "index": index,
        "name": Path(image).name,
        "image": image,
        "label": first.get("label_name", ""),
        "confidence_text": format_value("confidence", confidence),
        "photo": maps.get("photo"),
        "cells": cells,
        "sort": sort,
        "lost": [c["method"] for c in cells if c["lost"]],
    }


def benchmark_context(out_dir: Path) -> dict:
    """Everything the benchmark template shows, from results.csv, summary.csv, the plots and maps/."""
    summary_csv = out_dir / "summary.csv"
    fields, summary = read_csv(summary_csv) if summary_csv.is_file() else ([], [])
    columns = _summary_columns(fields)
    result_fields, results = read_csv(out_dir / "results.csv")
    ok = [r for r in results if not (r.get("error") or "").strip()]
    metrics = numeric_columns(result_fields, ok, IMAGE_COLUMNS)
    methods = list(dict.fromkeys([r["method"] for r in summary] + [r["method"] for r in results]))
    by_image: dict[str, list[dict]] = {}
    for row in results:
        by_image.setdefault(row["image"], []).append(row)
    maps = read_maps(out_dir)
    rows = [
        _benchmark_row(i, image, group, methods, metrics, maps.get(image, {}))
        for i, (image, group) in enumerate(by_image.items())
    ]
    return {
        "kind": "benchmark",
        "title": f"actmatch benchmark: {out_dir.name}",
        "summary_columns": columns,
        "summary_missing": not summary_csv.is_file(),
        "summary_rows": [[_summary_cell(r, c) for c in columns] for r in summary],
        "methods": methods,
        "metrics": metrics,
        "sort_metrics": [{"key": k, "short": SHORT[k], "title": title(k)} for k in SORT_METRICS if k in metrics],
        "rows": rows,
        "errors": sum(1 for r in results if (r.get("error") or "").strip()),
        "has_maps": any(r["photo"] or any(c["map"] for c in r["cells"]) for r in rows),
        "plots": [p for p in ("summary.png",) if (out_dir / p).is_file()],
        "comparison": "comparison.png" if (out_dir / "comparison.png").is_file() else None,
        "lost_methods": methods if "kept_equal_area" in metrics else [],
        **_paired_context(out_dir),
    }


def _paired_context(out_dir: Path) -> dict:
    """The headline (from the exam's columns only) and the paired table, from paired.csv."""
    path = out_dir / "paired.csv"
    if not path.is_file():
        return {"headline": None, "paired": []}
    _, rows = read_csv(path)
    parsed = []
    for r in rows:
        try:
            parsed.append(
                {
                    **r,
                    "wins": int(r["wins"]),
                    "losses": int(r["losses"]),
                    "significant": r.get("significant") == "True",
                    "group": r.get("group", "exam"),
                }
            )
        except (KeyError, ValueError):
            return {"headline": None, "paired": []}  # a paired.csv of another version
    table = [
        {
            "metric": title(r["metric"]),
            "group": r["group"],
            "baseline": r["baseline"],
            "n": r["n"],
            "wins": r["wins"],
            "ties": r.get("ties", ""),
            "losses": r["losses"],
            "difference": format_difference(r) or "–",
            "p": format_value("p", to_number(r.get("p_value"))),
            "p_holm": format_value("p", to_number(r.get("p_holm"))),
            "significant": r["significant"],
        }
        for r in parsed
    ]
    return {"headline": headline(parsed) if parsed else None, "paired": table}
