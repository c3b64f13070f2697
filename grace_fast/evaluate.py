"""`grace-fast evaluate`: score predictions (UAR, WAR, per-class recall, confusion matrix PNG, JSON report).

Either a trained checkpoint is run on a data split, or a predictions CSV (columns `label` and `prediction`,
class ids or names) is scored as it is. The output folder receives report.json and confusion.png (and, for a
checkpoint, predictions.csv: clip, label, prediction and the class probabilities). The scoring itself is
grace_fast.eval's.
"""

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from grace_fast.arguments import DEVICE_HELP, device, integer
from grace_fast.data.layouts import LAYOUTS
from grace_fast.errors import UserError
from grace_fast.eval.report import CONFUSION_NAME, REPORT_NAME, score, write_evaluation
from grace_fast.predict import COMPILE_HELP, DTYPE_HELP, compile_parts

DTYPE_AMP = {"auto": "auto", "float32": "off", "bfloat16": "bf16"}  # --dtype as the --amp it means


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


def add_arguments(parser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a trained GRACE checkpoint folder (e.g. RUN/best) to run on --data-root")
    source.add_argument("--predictions", help="a CSV with `label` and `prediction` columns to score as it is")
    parser.add_argument("--out", required=True, help="folder for report.json, confusion.png (and predictions.csv)")
    data = parser.add_argument_group("with --checkpoint")
    data.add_argument("--dataset", default="synthetic", choices=list(LAYOUTS), help="the data set's layout")
    data.add_argument("--data-root", help="the data set's folder (csv: a folder with train.csv / test.csv)")
    data.add_argument("--split", default="test", choices=["train", "test"])
    data.add_argument("--fold", type=integer(1), default=1, help="the fold of the split")
    data.add_argument("--text", default="caption", choices=["caption", "prompts"], help="what text is aligned")
    data.add_argument("--descriptions", help="a `grace-fast refine` JSONL whose texts replace the captions")
    data.add_argument("--batch-size", type=integer(1), default=8, help="clips per batch")
    data.add_argument("--num-workers", type=integer(0), default=0, help="DataLoader worker processes")
    data.add_argument("--skip-bad", action="store_true", help="leave out unreadable clips (listed in the report)")
    data.add_argument("--device", type=device, default="auto", help=DEVICE_HELP)
    data.add_argument(
        "--amp",
        choices=["auto", "bf16", "fp16", "off"],
        help="autocast, as train's --amp (default auto); an alternative to --dtype that also offers fp16 on a GPU",
    )
    data.add_argument("--dtype", choices=list(DTYPE_AMP), help=DTYPE_HELP + " (default auto)")
    data.add_argument("--compile", action="store_true", help=COMPILE_HELP)
    data.add_argument("--quiet", action="store_true", help="no progress bar")
    scored = parser.add_argument_group("with --predictions")
    scored.add_argument("--classes", help="comma-separated class names in class-id order (names in the CSV need it)")
    scored.add_argument("--num-classes", type=integer(1), help="number of classes (default: len(--classes))")


def run(args) -> int:
    """`grace-fast evaluate`: exit 0 once the report is written."""
    if args.checkpoint:
        report = _evaluate_checkpoint(args)
    else:
        class_names = [c.strip() for c in args.classes.split(",")] if args.classes else None
        if class_names is None and args.num_classes is None:
            raise UserError("--predictions needs --classes or --num-classes")
        labels, predictions = read_predictions(args.predictions, class_names)
        report = score(
            labels,
            predictions,
            args.out,
            class_names=class_names,
            num_classes=args.num_classes,
            source=args.predictions,
        )
    print(_summary_line(report, args.out))
    return 0


def _evaluate_checkpoint(args) -> dict[str, Any]:
    from grace_fast.data.datasets import collate
    from grace_fast.data.transforms import Normalization, read_processor_config
    from grace_fast.model import GraceModel
    from grace_fast.train import distributed
    from grace_fast.train.loop import amp_dtype, collect_predictions
    from grace_fast.train.task import GraceClassifier, clip_dataset, split_clips, warn_missing

    if args.data_root is None:
        raise UserError("--checkpoint needs --data-root")
    if args.amp is not None and args.dtype is not None:
        raise UserError(f"--amp {args.amp} and --dtype {args.dtype} both set the autocast; give one")
    amp = DTYPE_AMP[args.dtype] if args.dtype is not None else args.amp or "auto"
    joined = distributed.joined()
    processes = distributed.start(args.device)
    try:
        grace = GraceModel.from_pretrained(args.checkpoint)
        classes = tuple(grace.config.class_names or range(grace.config.num_classes))
        names = list(map(str, classes))
        clips = split_clips(args.dataset, args.data_root, args.split, args.fold, names, args.descriptions)
        if clips is None:
            raise UserError(f"--data-root {args.data_root} has no {args.split} split")
        if tuple(clips.classes) != tuple(map(str, classes)):
            raise UserError(
                f"--checkpoint {args.checkpoint} has the classes {list(classes)}, the data {list(clips.classes)}"
            )
        normalization = Normalization.from_pretrained(args.checkpoint)
        face_crop = bool(read_processor_config(args.checkpoint).get("face_crop", False))
        dataset = clip_dataset(
            clips, grace.config, normalization, train=False, skip_bad=args.skip_bad, face_crop=face_crop
        )
        if processes.main:
            warn_missing(args.split, dataset)
        model = GraceClassifier(grace, args.text, normalization).to(processes.device)
        if args.compile:
            compile_parts(grace)
        predicted = collect_predictions(
            model,
            dataset,
            collate,
            args.batch_size,
            processes,
            amp_dtype(amp, processes.device),
            num_workers=args.num_workers,
            progress=not args.quiet,
        )
        extra = dict(checkpoint=str(args.checkpoint), dataset=args.dataset, split=args.split, fold=args.fold)
        return write_evaluation(args.out, predicted, clips.classes, text=args.text, **extra)
    finally:
        if not joined:
            distributed.stop()


def _summary_line(report: dict[str, Any], out) -> str:
    skipped = f" ({len(report['skipped'])} skipped as unreadable)" if report.get("skipped") else ""
    return (
        f"evaluate: UAR {100 * report['uar']:.2f}  WAR {100 * report['war']:.2f}  on {report['num_samples']} clips"
        f"{skipped} -> {Path(out) / REPORT_NAME}, {Path(out) / CONFUSION_NAME}"
    )
