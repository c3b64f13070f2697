"""Scoring: DFER metrics (UAR, WAR, per-class recall, confusion matrix) and their reports (`grace-fast evaluate`
is grace_fast.evaluate)."""

from grace_fast.eval.metrics import Metrics, classification_metrics, confusion_matrix, metrics_from_confusion
from grace_fast.eval.report import score

__all__ = ["Metrics", "classification_metrics", "confusion_matrix", "metrics_from_confusion", "score"]
