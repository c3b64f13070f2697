"""`grace-fast evaluate`: score predictions (UAR, WAR, per-class recall, confusion matrix PNG, JSON report).

Either a trained checkpoint is run on a data split, or a predictions CSV (columns `label` and `prediction`,
class ids or names) is scored as it is. The output folder receives report.json and confusion.png (and, for a
checkpoint, predictions.csv: clip, label, prediction and the class probabilities).

>>> report = score([0, 0, 1, 2], [0, 1, 1, 1], "out/", class_names=["happy", "sad", "angry"])
>>> report["uar"], report["war"]
(0.5, 0.5)
"""

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from grace_fast.eval.metrics import classification_metrics
from grace_fast.eval.report import plot_confusion, report_dict, write_report

REPORT_NAME, CONFUSION_NAME, PREDICTIONS_NAME = "report.json", "confusion.png", "predictions.csv"


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


def read_predictions(path: str | os.PathLike, class_names: Sequence[str] | None) -> tuple[list[int], list[int]]:
    """(labels, predictions) from a CSV with `label` and `prediction` columns holding class ids or class names."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--predictions: no file at {path}")
    index = {name: i for i, name in enumerate(class_names or [])}
    with path.open(newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        missing = {"label", "prediction"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"--predictions: {path} lacks the columns {sorted(missing)} (found {reader.fieldnames})")
        labels, predictions = [], []
        for line, row in enumerate(reader, 2):
            labels.append(_class_id(row["label"], index, path, line))
            predictions.append(_class_id(row["prediction"], index, path, line))
    return labels, predictions


def _class_id(value: str, index: dict[str, int], path: Path, line: int) -> int:
    value = value.strip()
    if value in index:
        return index[value]
    try:
        return int(value)
    except ValueError:
        known = f"one of {list(index)}" if index else "an integer class id (or pass --classes to use names)"
        raise ValueError(f"--predictions: {path} line {line}: class {value!r} is not {known}") from None


def write_predictions(path: str | os.PathLike, rows: list[dict[str, Any]]) -> None:
    """Write prediction rows (same keys each) as CSV, atomically."""
    import io

    from grace_fast.model.config import write_atomic

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["clip", "label", "prediction"])
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(Path(path), buffer.getvalue().encode())


def add_arguments(parser) -> None:
    parser.add_argument("--predictions", required=True, help="CSV with `label` and `prediction` columns")
    parser.add_argument("--classes", help="comma-separated class names in class-id order (names in the CSV need it)")
    parser.add_argument("--num-classes", type=int, help="number of classes (default: len(--classes))")
    parser.add_argument("--out", required=True, help="folder for report.json and confusion.png")


def run(args) -> int:
    class_names = [c.strip() for c in args.classes.split(",")] if args.classes else None
    if class_names is None and args.num_classes is None:
        raise SystemExit("evaluate: give --classes or --num-classes")
    labels, predictions = read_predictions(args.predictions, class_names)
    report = score(
        labels, predictions, args.out, class_names=class_names, num_classes=args.num_classes, source=args.predictions
    )
    print(_summary_line(report, args.out))
    return 0


def _summary_line(report: dict[str, Any], out) -> str:
    return (
        f"evaluate: UAR {100 * report['uar']:.2f}  WAR {100 * report['war']:.2f}  on {report['num_samples']} clips"
        f" -> {Path(out) / REPORT_NAME}, {Path(out) / CONFUSION_NAME}"
    )
