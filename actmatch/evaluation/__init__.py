"""The evaluation, kept apart from the method (as ``captum.metrics`` is from ``captum.attr``).

Nothing here is used by a fit: the metrics (:mod:`~actmatch.evaluation.metrics`), the exam's
perturbation families and seed stream (:mod:`~actmatch.evaluation.families`), ROAD's imputation
(:mod:`~actmatch.evaluation.imputation`), the per-image protocol (:mod:`~actmatch.evaluation.exam`),
statistics over images (:mod:`~actmatch.evaluation.statistics`), timings compared as ratios
(:mod:`~actmatch.evaluation.timing`), the benchmark protocol
(:mod:`~actmatch.evaluation.benchmark`) and its columns and tables (:mod:`~actmatch.evaluation.columns`,
torch-free).

The names below are imported on first use, so a torch-free submodule stays torch-free.
"""

from __future__ import annotations

import importlib

__all__ = ["Exam", "default_exam", "score_maps", "COLUMN_GROUPS"]
_HOMES = {
    "Exam": "actmatch.evaluation.families",
    "default_exam": "actmatch.evaluation.families",
    "score_maps": "actmatch.evaluation.exam",
    "COLUMN_GROUPS": "actmatch.evaluation.columns",
}


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'actmatch.evaluation' has no attribute {name!r}")
