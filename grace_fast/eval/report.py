"""Evaluation reports: a JSON file of the metrics and a confusion matrix PNG, each written atomically."""

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from grace_fast.eval.metrics import Metrics
from grace_fast.files import write_atomic, write_figure


def report_dict(metrics: Metrics, class_names: Sequence[str] | None = None, **extra: Any) -> dict[str, Any]:
    """The JSON report: uar, war, num_samples, per_class [{class, name, recall, support, predicted}], confusion,
    and extra fields (what was evaluated)."""
    num_classes = len(metrics.support)
    names = _names(class_names, num_classes)
    predicted = np.asarray(metrics.confusion).sum(axis=0).tolist()
    per_class = [
        {"class": c, "name": names[c], "recall": metrics.recall[c], "support": metrics.support[c], "predicted": p}
        for c, p in enumerate(predicted)
    ]
    return {
        "uar": metrics.uar,
        "war": metrics.war,
        "num_samples": metrics.num_samples,
        "num_classes": num_classes,
        "per_class": per_class,
        "confusion": metrics.confusion,
        **extra,
    }


def write_report(path: str | os.PathLike, report: dict[str, Any]) -> None:
    write_atomic(Path(path), (json.dumps(report, indent=2) + "\n").encode())


def plot_confusion(
    path: str | os.PathLike, metrics: Metrics, class_names: Sequence[str] | None = None, title: str = ""
) -> None:
    """Draw the row-normalised confusion matrix (colour: share of the true class, text: count) to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    confusion = np.asarray(metrics.confusion, dtype=np.float64)
    num_classes = confusion.shape[0]
    names = _names(class_names, num_classes)
    shares = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    size = 2.0 + 0.6 * num_classes
    figure, axes = plt.subplots(figsize=(size + 1.0, size))
    image = axes.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(num_classes):
        for j in range(num_classes):
            axes.text(
                j,
                i,
                f"{int(confusion[i, j])}",
                ha="center",
                va="center",
                color="white" if shares[i, j] > 0.5 else "black",
                fontsize=8,
            )
    axes.set_xticks(range(num_classes), names, rotation=45, ha="right")
    axes.set_yticks(range(num_classes), names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title or f"UAR {100 * metrics.uar:.2f}  WAR {100 * metrics.war:.2f}")
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="share of the true class")
    figure.tight_layout()
    write_figure(figure, path, dpi=120)


def _names(class_names: Sequence[str] | None, num_classes: int) -> list[str]:
    if class_names is None:
        return [str(c) for c in range(num_classes)]
    if len(class_names) != num_classes:
        raise ValueError(f"class_names must have {num_classes} entries, got {len(class_names)}")
    return list(class_names)
