"""``report.html``: one self-contained page over an ``explain`` or a ``benchmark`` output folder.

The page holds the summary table, the aggregate plots and a gallery with one row per image,
sortable by clicking a column header and filterable to the images whose label was lost. It
links the PNGs already in the folder by relative paths and inlines its CSS and JavaScript,
so it opens from the folder with no server and no network::

    from actmatch.report import write_report
    write_report(Path("outputs/demo"))      # -> outputs/demo/report.html

The benchmark's gallery shows every method's map when ``maps/`` exists
(:func:`write_method_maps`), else ``comparison.png``. ``write_method_maps`` is imported on
first use, so rebuilding a report does not import torch.
"""

from __future__ import annotations

import os
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape

from actmatch.report.tables import benchmark_context, explain_context, is_benchmark, is_explain

__all__ = ["ReportError", "detect_kind", "render_report", "write_report", "write_method_maps"]

REPORT_NAME = "report.html"
EXPECTED = (
    "an `actmatch explain` result (summary.csv with image and mask_area columns, one folder per image) "
    "or an `actmatch benchmark` result (results.csv with image and method columns, summary.csv)"
)


class ReportError(ValueError):
    """The folder holds nothing a report can be built from."""


def __getattr__(name: str):
    if name == "write_method_maps":
        from actmatch.report.maps import write_method_maps

        return write_method_maps
    raise AttributeError(f"module 'actmatch.report' has no attribute {name!r}")


def detect_kind(out_dir: Path) -> str:
    """``"benchmark"`` or ``"explain"``: what ``out_dir`` holds.

    Raises:
        ReportError: ``out_dir`` is missing or holds neither result (the message names both).
    """
    out_dir = Path(out_dir)
    if not out_dir.exists():
        raise ReportError(f"{out_dir} does not exist; expected a folder with {EXPECTED}")
    if not out_dir.is_dir():
        raise ReportError(f"{out_dir} is not a folder; expected a folder with {EXPECTED}")
    if is_benchmark(out_dir):
        return "benchmark"
    if is_explain(out_dir):
        return "explain"
    raise ReportError(f"{out_dir} holds neither result; expected {EXPECTED}")


def _environment() -> Environment:
    return Environment(
        loader=PackageLoader("actmatch.report", "templates"),
        autoescape=select_autoescape(["html", "j2"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_report(out_dir: Path) -> str:
    """The HTML of ``out_dir``'s report (see :func:`detect_kind` for what it accepts)."""
    out_dir = Path(out_dir)
    kind = detect_kind(out_dir)
    context = benchmark_context(out_dir) if kind == "benchmark" else explain_context(out_dir)
    return _environment().get_template(f"{kind}.html.j2").render(**context)


def write_report(out_dir: Path) -> Path:
    """Write ``out_dir/report.html`` atomically (a temporary file, then a rename) and return its path.

    Raises:
        ReportError: ``out_dir`` is missing or holds neither an explain nor a benchmark result.
    """
    out_dir = Path(out_dir)
    html = render_report(out_dir)
    path = out_dir / REPORT_NAME
    tmp = out_dir / f".{REPORT_NAME}.tmp-{os.getpid()}"
    try:
        tmp.write_text(html, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
