"""Arguments of ``actmatch report``."""

from __future__ import annotations

import argparse

__all__ = ["parse_args"]


def parse_args(command: str, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"actmatch {command}",
        description="Rebuild OUT/report.html (summary table, plots, sortable gallery) from an "
        "`actmatch explain` or `actmatch benchmark` output folder.",
    )
    parser.add_argument("out", metavar="OUT", help="the output folder of `actmatch explain` or `actmatch benchmark`")
    return parser.parse_args(argv)
