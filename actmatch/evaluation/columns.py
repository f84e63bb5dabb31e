"""The benchmark's columns and their text tables, without torch (``actmatch report`` reads them).

Each column of results.csv has a header, the statistic that summarises it over images (mean, or
median for areas and ratios), a direction (higher or lower is better) and a group
(:data:`COLUMN_GROUPS`): ``fill`` (judged with the fit's own mean fill), ``exam`` (judged with what
no fit sees) or ``construction`` (true for ``am`` by construction). :func:`headline`,
:func:`format_table` and :func:`format_paired` write the benchmark's summary and paired tables;
:mod:`~actmatch.evaluation.benchmark` computes them.
"""

from __future__ import annotations

import math

__all__ = [
    "ALPHA",
    "COLUMN_GROUPS",
    "COLUMN_STATISTICS",
    "SUMMARY_METRICS",
    "SUMMARY_FIELDS",
    "HEADERS",
    "TABLE_BLOCKS",
    "PAIRED_METRICS",
    "PAIRED_FIELDS",
    "headline",
    "format_table",
    "format_paired",
    "format_difference",
    "column_mark",
]

#: which judge each column uses (see the module docstring)
COLUMN_GROUPS = {
    "kept_equal_area": "construction",
    "sufficient_area_with_cut": "construction",
    "ratio_equal_area": "fill",
    "kept_equal_area_convad": "fill",
    "kept_at_5": "fill",
    "kept_at_10": "fill",
    "kept_at_20": "fill",
    "ratio_at_10": "fill",
    "smallest_sufficient_area": "fill",
    "ratio_region": "fill",
    "deletion_auc": "fill",
    "dg_score_fill": "fill",
    "robustness": "exam",
    "robust_sufficient_area": "exam",
    "insertion_auc": "exam",
    "insertion_auc_rise": "exam",
    "deletion_auc_blur": "exam",
    "dg_score": "exam",
    "kept_dilated": "exam",
    "ratio_dilated": "exam",
    "kept_shift": "exam",
    "kept_readback": "exam",
    "kept_resampled": "exam",
    "sanity_spearman": "exam",
    "sanity_iou": "exam",
}

#: significance level of the ``significant`` column (after Holm's correction)
ALPHA = 0.05

#: summary columns: (key, results.csv column, statistic over images, header, higher is better)
SUMMARY_METRICS = (
    ("kept_equal_area", "kept_equal_area", "mean", "kept@area", True),
    ("median_ratio_equal_area", "ratio_equal_area", "median", "pe/px@area", True),
    ("kept_equal_area_convad", "kept_equal_area_convad", "mean", "kept@area(AD)", True),
    ("kept_at_5", "kept_at_5", "mean", "kept@5%", True),
    ("kept_at_10", "kept_at_10", "mean", "kept@10%", True),
    ("kept_at_20", "kept_at_20", "mean", "kept@20%", True),
    ("median_ratio_at_10", "ratio_at_10", "median", "pe/px@10%", True),
    ("median_smallest_sufficient_area", "smallest_sufficient_area", "median", "med.suff.area", False),
    ("median_sufficient_area_with_cut", "sufficient_area_with_cut", "median", "med.suff+cut", False),
    ("median_ratio_region", "ratio_region", "median", "pe/px@region", True),
    ("deletion_auc", "deletion_auc", "mean", "del.AUC", False),
    ("dg_score_fill", "dg_score_fill", "mean", "DG(fill)", False),
    ("median_robust_sufficient_area", "robust_sufficient_area", "median", "med.robust.area", False),
    ("robustness", "robustness", "mean", "robust", True),
    ("robust_photos", "robust_photos", "mean", "r.photos", True),
    ("robust_blur", "robust_blur", "mean", "r.blur", True),
    ("robust_road", "robust_road", "mean", "r.road", True),
    ("robust_solid", "robust_solid", "mean", "r.solid", True),
    ("robust_noise", "robust_noise", "mean", "r.noise", True),
    ("insertion_auc", "insertion_auc", "mean", "ins.AUC", True),
    ("insertion_auc_rise", "insertion_auc_rise", "mean", "ins.AUC(RISE)", True),
    ("deletion_auc_blur", "deletion_auc_blur", "mean", "del.AUC(blur)", False),
    ("dg_score", "dg_score", "mean", "DG score", False),
    ("kept_dilated", "kept_dilated", "mean", "kept.dilated", True),
    ("median_ratio_dilated", "ratio_dilated", "median", "pe/px.dilated", True),
    ("kept_shift", "kept_shift", "mean", "kept.shift", True),
    ("kept_readback", "kept_readback", "mean", "kept.readback", True),
    ("kept_resampled", "kept_resampled", "mean", "kept.resampled", True),
    ("median_sanity_spearman", "sanity_spearman", "median", "sanity.rho", False),
    ("median_sanity_iou", "sanity_iou", "median", "sanity.IoU", False),
    ("median_seconds", "seconds", "median", "med.s/img", False),
)
SUMMARY_FIELDS = [
    "method", "images", *(f"{key}{end}" for key, *_ in SUMMARY_METRICS for end in ("", "_ci_low", "_ci_high")), "errors",
]  # fmt: skip
HEADERS = {key: header for key, _, _, header, _ in SUMMARY_METRICS}
#: the printed summary, in blocks that fit 120 columns: fill columns, then the exam's
TABLE_BLOCKS = (
    ("kept_equal_area", "median_ratio_equal_area", "kept_equal_area_convad", "kept_at_5", "kept_at_10"),
    ("kept_at_20", "median_ratio_at_10", "median_smallest_sufficient_area", "median_sufficient_area_with_cut"),
    ("median_ratio_region", "deletion_auc", "dg_score_fill", "median_seconds"),
    ("median_robust_sufficient_area", "robustness", "robust_photos", "robust_blur", "robust_road"),
    ("robust_solid", "robust_noise", "insertion_auc", "insertion_auc_rise", "dg_score"),
    ("kept_dilated", "median_ratio_dilated", "kept_shift", "kept_readback", "kept_resampled"),
    ("deletion_auc_blur", "median_sanity_spearman", "median_sanity_iou"),
)
#: metrics of the paired comparison: (results.csv column, header, higher is better, group)
PAIRED_METRICS = tuple(
    (column, header.removeprefix("med."), better, COLUMN_GROUPS.get(column, "exam"))
    for _, column, _, header, better in SUMMARY_METRICS
    if column != "seconds"
)
#: results.csv column -> the statistic of its summary ("mean", or "median" for areas and ratios)
COLUMN_STATISTICS = {column: stat for _, column, stat, _, _ in SUMMARY_METRICS}
PAIRED_FIELDS = ["metric", "group", "reference", "baseline", "n", "wins", "ties", "losses", "difference", "difference_ci_low",
                 "difference_ci_high", "p_value", "p_holm", "test", "significant"]  # fmt: skip


def headline(paired: list[dict]) -> str:
    """One sentence from the exam's columns only: where ``am`` is significantly better than every
    baseline, and where a baseline is significantly better than ``am`` (Holm-corrected)."""
    exam = [r for r in paired if r["group"] == "exam"]
    if not exam:
        return "no exam columns to compare (run `am` and at least one baseline)"
    headers = {column: header for column, header, _, _ in PAIRED_METRICS}
    baselines = sorted({r["baseline"] for r in exam})
    better_than_all, worse = [], []
    for column in dict.fromkeys(r["metric"] for r in exam):
        these = [r for r in exam if r["metric"] == column]
        if all(r["significant"] and r["wins"] > r["losses"] for r in these) and len(these) == len(baselines):
            better_than_all.append(headers[column])
        losers = [r["baseline"] for r in these if r["significant"] and r["losses"] > r["wins"]]
        if losers:
            worse.append(f"{headers[column]} ({', '.join(losers)})")
    reference = exam[0]["reference"]
    first = (f"{reference} is significantly better than every baseline ({', '.join(baselines)}) on "
             f"{', '.join(better_than_all)}" if better_than_all else
             f"{reference} is significantly better than every baseline on no exam column")  # fmt: skip
    second = f"; significantly worse than a baseline on {'; '.join(worse)}" if worse else "; significantly worse on none"
    return f"On the exam (columns no fit sees; Holm-corrected, α = {ALPHA:g}): {first}{second}."


def _cell(value: float, low: float, high: float, digits: int) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _text_table(heads: list[str], cells: list[list[str]]) -> str:
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(heads)]
    line = lambda items: "  ".join(s.ljust(w) if i == 0 else s.rjust(w) for i, (s, w) in enumerate(zip(items, widths)))  # noqa: E731
    return "\n".join([line(heads), line(["-" * w for w in widths])] + [line(c) for c in cells])


def column_mark(column: str) -> str:
    """† by construction for am; * judged with the fit's own mean fill."""
    return {"construction": "†", "fill": "*"}.get(COLUMN_GROUPS.get(column, "exam"), "")


def format_table(summary: list[dict]) -> str:
    """The summary as fixed-width text tables (blocks of columns), ``value [ci_low, ci_high]``."""
    columns = {key: column for key, column, *_ in SUMMARY_METRICS}
    blocks = []
    for keys in TABLE_BLOCKS:
        heads = ["method", "n", *(HEADERS[k] + column_mark(columns[k]) for k in keys)]
        cells = [
            [r["method"], str(r["images"])] + [_cell(r[k], r[f"{k}_ci_low"], r[f"{k}_ci_high"], 2) for k in keys] for r in summary
        ]
        blocks.append(_text_table(heads, cells))
    return "\n\n".join(blocks) + "\n\n† true for am by construction (never counted)   * judged with the mean fill am fits with"


def format_difference(row: dict) -> str:
    """``difference [low, high]`` of a paired row (compare_pairs' or paired.csv's), or "" where it has none
    (a paired.csv written before the column existed, or no pairs)."""
    keys = ("difference", "difference_ci_low", "difference_ci_high")
    value, low, high = (float(v) if (v := row.get(k)) not in (None, "") else math.nan for k in keys)
    return "" if math.isnan(value) else _cell(value, low, high, 3)


def format_paired(paired: list[dict]) -> str:
    """The paired comparison as a fixed-width text table, one line per metric and baseline (the test's name is
    paired.csv's ``test`` column)."""
    headers = {column: header for column, header, _, _ in PAIRED_METRICS}
    heads = ["metric", "group", f"{paired[0]['reference']} vs" if paired else "vs", "n", "wins", "ties", "losses",
             "difference [95 %]", "p", "p(Holm)", f"p<{ALPHA:g}"]  # fmt: skip
    cells, previous = [], None
    for r in paired:
        first = r["metric"] != previous
        previous = r["metric"]
        p = "" if math.isnan(float(r["p_value"])) else f"{float(r['p_value']):.2g}"
        ph = "" if math.isnan(float(r["p_holm"])) else f"{float(r['p_holm']):.2g}"
        significant = "n/a" if r["group"] == "construction" else ("yes" if str(r["significant"]) == "True" else "no")
        cells.append([headers.get(r["metric"], r["metric"]) if first else "", r["group"] if first else "", r["baseline"],
                      str(r["n"]), str(r["wins"]), str(r["ties"]), str(r["losses"]), format_difference(r), p, ph,
                      significant])  # fmt: skip
    return _text_table(heads, cells)
