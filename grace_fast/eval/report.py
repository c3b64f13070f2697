"""Evaluation reports: a JSON file of the metrics, a confusion matrix PNG and a model's predictions as CSV, each
written atomically.

>>> report = score([0, 0, 1, 2], [0, 1, 1, 1], "out/", class_names=["happy", "sad", "angry"])
>>> report["uar"], report["war"]
(0.5, 0.5)
"""

import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from grace_fast.eval.metrics import Metrics, classification_metrics
from grace_fast.files import write_atomic, write_figure

REPORT_NAME, CONFUSION_NAME, PREDICTIONS_NAME = "report.json", "confusion.png", "predictions.csv"


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


def score(
    labels: Sequence[int],
    predictions: Sequence[int],
    out: str | os.PathLike | None,
    *,
    class_names: Sequence[str] | None = None,
    num_classes: int | None = None,
    title: str = "",
    **extra: Any,
) -> dict[str, Any]:
    """The report of predicted class ids against true ones; written to out/report.json and out/confusion.png
    unless out is None. num_classes defaults to len(class_names); extra fields go into the report."""
    if num_classes is None:
        if class_names is None:
            raise ValueError("score needs class_names or num_classes")
        num_classes = len(class_names)
    metrics = classification_metrics(labels, predictions, num_classes)
    report = report_dict(metrics, class_names, **extra)
    if out is not None:
        out = Path(out)
        write_report(out / REPORT_NAME, report)
        plot_confusion(out / CONFUSION_NAME, metrics, class_names, title)
    return report


def write_predictions(path: str | os.PathLike, rows: list[dict[str, Any]]) -> None:
    """Write prediction rows (same keys each) as CSV, atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["clip", "label", "prediction"])
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(Path(path), buffer.getvalue().encode())


def write_evaluation(folder: str | os.PathLike, predicted, classes: Sequence[str], **extra: Any) -> dict[str, Any]:
    """Score a model's Predictions (grace_fast.train.loop.collect_predictions) into folder: report.json (with the
    skipped clips), confusion.png and predictions.csv (clip, label, prediction, one probability per class)."""
    predictions = predicted.probabilities.argmax(1)
    title = extra.pop("title", "")
    report = score(
        predicted.labels,
        predictions,
        folder,
        class_names=list(classes),
        title=title,
        skipped=[getattr(s, "id", str(s)) for s in predicted.skipped],
        **extra,
    )
    rows = [
        {
            "clip": clip,
            "label": classes[label],
            "prediction": classes[prediction],
            **{f"p_{name}": round(float(p), 6) for name, p in zip(classes, probs, strict=True)},
        }
        for clip, label, prediction, probs in zip(
            predicted.ids, predicted.labels, predictions, predicted.probabilities, strict=True
        )
    ]
    write_predictions(Path(folder) / PREDICTIONS_NAME, rows)
    return report


def _names(class_names: Sequence[str] | None, num_classes: int) -> list[str]:
    if class_names is None:
        return [str(c) for c in range(num_classes)]
    if len(class_names) != num_classes:
        raise ValueError(f"class_names must have {num_classes} entries, got {len(class_names)}")
    return list(class_names)
