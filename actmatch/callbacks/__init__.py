"""Lightning callbacks: mask panels, synced explanation metrics, evidence metrics, results table."""

from actmatch.callbacks.masks import MaskImages
from actmatch.callbacks.metrics import EvidenceMetrics, ExplanationMetrics
from actmatch.callbacks.table import ResultsTable

__all__ = ["MaskImages", "ExplanationMetrics", "EvidenceMetrics", "ResultsTable"]
