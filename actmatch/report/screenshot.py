"""Screenshot of a report: ``python -m actmatch.report.screenshot OUT PNG``.

``OUT`` is an ``explain`` or ``benchmark`` output folder (its report.html is rebuilt first) or
a report HTML file. The PNG shows the page from the top, ``--height`` px tall (``--full-page``
for all of it), as headless Chromium renders it (see :mod:`actmatch.report.browser`)::

    python -m actmatch.report.screenshot outputs/demo docs/report-explain.png
    python -m actmatch.report.screenshot outputs/benchmark docs/report-benchmark.png --height 1400
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from actmatch.report import ReportError, write_report
from actmatch.report.browser import BrowserUnavailable, open_page

__all__ = ["main", "screenshot"]


def screenshot(source: Path, png: Path, width: int = 1400, height: int | None = 1400) -> Path:
    """Render ``source`` (an output folder or a report HTML file) in headless Chromium and save ``png``.

    Args:
        source: an explain or benchmark output folder (report.html is rewritten) or an HTML file.
        png: where to write the screenshot.
        width: viewport width, px.
        height: height of the shot from the top of the page, px; None for the full page.

    Returns:
        ``png``.
    """
    source, png = Path(source), Path(png)
    html = write_report(source) if source.is_dir() else source
    png.parent.mkdir(parents=True, exist_ok=True)
    with open_page(html, width=width, height=height or 1000) as page:
        full = page.evaluate("document.documentElement.scrollHeight")
        clip = None if height is None else {"x": 0, "y": 0, "width": width, "height": min(height, full)}
        page.screenshot(path=str(png), full_page=True, clip=clip)
    return png


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m actmatch.report.screenshot", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="an explain/benchmark output folder, or a report HTML file")
    parser.add_argument("png", help="the screenshot to write")
    parser.add_argument("--width", type=int, default=1400, help="viewport width, px (default: %(default)s)")
    parser.add_argument("--height", type=int, default=1400, help="shot height from the top, px (default: %(default)s)")
    parser.add_argument("--full-page", action="store_true", help="the whole page, however tall")
    args = parser.parse_args(argv)
    source = Path(args.source)
    if not source.exists():
        parser.error(f"{source} does not exist")
    try:
        path = screenshot(source, Path(args.png), args.width, None if args.full_page else args.height)
    except (ReportError, BrowserUnavailable) as err:
        print(f"actmatch screenshot: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
