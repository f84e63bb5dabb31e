"""``actmatch report OUT``: rebuild ``OUT/report.html`` from the files an explain or benchmark run wrote.

The page (:mod:`actmatch.report`) links the PNGs in OUT by relative paths and inlines its
CSS and JavaScript: open it from the folder, no server, no network.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from actmatch.report import ReportError, write_report

__all__ = ["main"]


def parse_args(command: str, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"actmatch {command}",
        description="Rebuild OUT/report.html (summary table, plots, sortable gallery) from an "
        "`actmatch explain` or `actmatch benchmark` output folder.",
    )
    parser.add_argument("out", metavar="OUT", help="the output folder of `actmatch explain` or `actmatch benchmark`")
    return parser.parse_args(argv)


def main(command: str, argv: list[str]) -> int:
    args = parse_args(command, argv)
    try:
        path = write_report(Path(args.out))
    except ReportError as err:
        print(f"actmatch {command}: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0
