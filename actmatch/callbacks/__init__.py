"""Lightning callbacks: mask panels, synced explanation metrics, evidence metrics, results table, circuit graphs,
the validation epochs as a CSV file, training throughput that goes on across a resume, and the prediction writer
of ``actmatch predict``."""

from actmatch.callbacks.circuit import CircuitGraphs
from actmatch.callbacks.epochs import EpochTable
from actmatch.callbacks.masks import MaskImages
from actmatch.callbacks.metrics import EvidenceMetrics, ExplanationMetrics
from actmatch.callbacks.table import ResultsTable
from actmatch.callbacks.throughput import ResumableThroughputMonitor
from actmatch.callbacks.writer import ExplanationWriter

__all__ = [
    "CircuitGraphs",
    "EpochTable",
    "MaskImages",
    "ExplanationMetrics",
    "EvidenceMetrics",
    "ResultsTable",
    "ResumableThroughputMonitor",
    "ExplanationWriter",
]
