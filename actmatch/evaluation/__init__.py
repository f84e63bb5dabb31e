"""The evaluation, kept apart from the method (as ``captum.metrics`` is from ``captum.attr``).

Nothing here is used by a fit: the metrics (:mod:`~actmatch.evaluation.metrics`), the exam's
perturbation families and seed stream (:mod:`~actmatch.evaluation.families`), ROAD's imputation
(:mod:`~actmatch.evaluation.imputation`), the per-image protocol (:mod:`~actmatch.evaluation.exam`),
statistics over images (:mod:`~actmatch.evaluation.statistics`) and the benchmark protocol
(:mod:`~actmatch.evaluation.benchmark`).
"""

from actmatch.evaluation.exam import COLUMN_GROUPS, score_maps
from actmatch.evaluation.families import Exam, default_exam

__all__ = ["Exam", "default_exam", "score_maps", "COLUMN_GROUPS"]
