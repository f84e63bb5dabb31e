"""Lightning callbacks: mask panels, synced explanation metrics, evidence metrics, results table, circuit graphs."""

from actmatch.callbacks.circuit import CircuitGraphs
from actmatch.callbacks.masks import MaskImages
from actmatch.callbacks.metrics import EvidenceMetrics, ExplanationMetrics
from actmatch.callbacks.table import ResultsTable

__all__ = ["CircuitGraphs", "MaskImages", "ExplanationMetrics", "EvidenceMetrics", "ResultsTable"]
