"""DFER metrics: the confusion matrix, per-class recall, UAR (their mean over the classes present) and WAR
(accuracy, the recall weighted by class support).

>>> m = classification_metrics([0, 0, 1, 2], [0, 1, 1, 1], num_classes=3)
>>> m.war, m.uar, m.recall
(0.5, 0.5, [0.5, 1.0, 0.0])
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Metrics:
    """confusion[i][j]: clips of true class i predicted as j; recall[c] is None for a class with no clip;
    uar: mean recall over the classes present; war: accuracy. All plain Python values (JSON-able)."""

    uar: float
    war: float
    recall: list[float | None]
    support: list[int]
    confusion: list[list[int]]

    @property
    def num_samples(self) -> int:
        return sum(self.support)


def _class_ids(values, name: str, num_classes: int) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.ndim != 1 or (array.size and not np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"{name} must be a 1-D sequence of integer class ids, got dtype {array.dtype} {array.shape}")
    if array.size and (array.min() < 0 or array.max() >= num_classes):
        raise ValueError(f"{name} must lie in [0, {num_classes}), got values {array.min()}..{array.max()}")
    return array.astype(np.int64)


def confusion_matrix(labels: Sequence[int], predictions: Sequence[int], num_classes: int) -> np.ndarray:
    """[num_classes, num_classes] int64 counts, rows the true class, columns the predicted class."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    y = _class_ids(labels, "labels", num_classes)
    p = _class_ids(predictions, "predictions", num_classes)
    if y.shape != p.shape:
        raise ValueError(f"labels and predictions must have the same length, got {y.size} and {p.size}")
    return np.bincount(y * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def metrics_from_confusion(confusion: np.ndarray) -> Metrics:
    """Metrics of a [C, C] confusion matrix (rows true, columns predicted)."""
    confusion = np.asarray(confusion, dtype=np.int64)
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"confusion must be a square [C, C] matrix, got shape {confusion.shape}")
    support = confusion.sum(axis=1)
    if support.sum() == 0:
        raise ValueError("no clips to score: the confusion matrix is empty")
    hits = np.diag(confusion)
    recall = [float(h / s) if s else None for h, s in zip(hits, support, strict=True)]
    present = [r for r in recall if r is not None]
    return Metrics(
        uar=float(np.mean(present)),
        war=float(hits.sum() / support.sum()),
        recall=recall,
        support=support.tolist(),
        confusion=confusion.tolist(),
    )


def classification_metrics(labels: Sequence[int], predictions: Sequence[int], num_classes: int) -> Metrics:
    """UAR, WAR, per-class recall and the confusion matrix of predicted class ids against true ones ([L] each)."""
    return metrics_from_confusion(confusion_matrix(labels, predictions, num_classes))
