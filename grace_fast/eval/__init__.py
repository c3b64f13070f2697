"""Evaluation: DFER metrics (UAR, WAR, per-class recall, confusion matrix) and their reports."""

from grace_fast.eval.evaluate import score
from grace_fast.eval.metrics import Metrics, classification_metrics, confusion_matrix, metrics_from_confusion

__all__ = ["Metrics", "classification_metrics", "confusion_matrix", "metrics_from_confusion", "score"]
