"""``actmatch report OUT``: rebuild ``OUT/report.html`` from the files an explain or benchmark run wrote.

The page (:mod:`actmatch.report`) links the PNGs in OUT by relative paths and inlines its
CSS and JavaScript: open it from the folder, no server, no network.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from actmatch.commands.parsers.report import parse_args
from actmatch.report import ReportError, write_report

__all__ = ["main", "run"]


def main(command: str, argv: list[str]) -> int:
    return run(command, parse_args(command, argv))


def run(command: str, args: argparse.Namespace) -> int:
    """``actmatch report`` with arguments checked by :func:`~actmatch.commands.parsers.report.parse_args`."""
    try:
        path = write_report(Path(args.out))
    except ReportError as err:
        print(f"actmatch {command}: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0
