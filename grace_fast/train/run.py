"""`grace-fast train` and `train(config)`: train GRACE on one fold or on each fold of the k-fold protocol,
select on the validation split, then score the selected model on the fold's test split.

Layout of `out` (one fold: out is the fold's run folder; several: out/fold-K each, and out/summary.json)::

    config.yaml  metrics.jsonl  curves.png  checkpoints/  best/ (GraceModel checkpoint + selection.json + README.md)
    [tensorboard/ (tensorboard: true)]
    test/report.json  test/confusion.png  test/predictions.csv  [skipped.jsonl]

>>> result = train(TrainConfig(dataset="synthetic", data_root="data/synthetic", epochs=2, out="runs/demo"))
... # doctest: +SKIP
>>> result["best_checkpoint"], result["mean"]["uar"]  # doctest: +SKIP
('runs/demo/best', 0.41)
"""

import argparse
import json
import os
import statistics
from pathlib import Path
from typing import Any

import torch

from grace_fast.data.datasets import collate
from grace_fast.data.transforms import Normalization
from grace_fast.eval.report import write_evaluation, write_report
from grace_fast.files import read_safetensors
from grace_fast.model.io import WEIGHTS_NAME, write_model_card
from grace_fast.train import distributed
from grace_fast.train.config import TrainConfig, add_config_arguments, config_from_args
from grace_fast.train.logs import CURVES_NAME, plot_curves
from grace_fast.train.loop import (
    BEST,
    CONFIG_NAME,
    METRICS_NAME,
    SELECTION_NAME,
    SKIPPED_NAME,
    amp_dtype,
    check_same_run,
    collect_predictions,
    fit,
    write_skipped,
)
from grace_fast.train.task import (
    FoldClips,
    GraceClassifier,
    build_model,
    clip_dataset,
    fold_clips,
    grace_loss,
    prepare_tokenizer,
    warn_missing,
)

TEST_DIR, SUMMARY_NAME = "test", "summary.json"


def train(config: TrainConfig, *, on_step=None) -> dict[str, Any]:
    """Run config (each fold of config.fold_list()) and return {"folds": [per-fold result], "mean": {uar, war},
    "std": {uar, war}, "best_checkpoint": the first fold's best/ folder, "interrupted": bool}.

    A per-fold result has fold, run, best_checkpoint, best_epoch, val (the selected epoch's record) and test
    (the test report's uar, war and num_samples, or None when the data set has no test split there).
    With config.resume, folds whose test report exists are read back, the unfinished one continues.
    """
    joined = distributed.joined()
    processes = distributed.start(config.device)
    try:
        folds = config.fold_list()
        # every fold's splits are read before any fold trains: a fold the data set lacks fails at once
        clips = {fold: fold_clips(config, fold) for fold in folds}
        out = Path(config.out)
        results = []
        for fold in folds:
            run = out / f"fold-{fold}" if config.folds is not None else out
            fold_config = config.replace(fold=fold, folds=None, out=str(run))
            result = _train_fold(fold_config, clips[fold], run, processes, out, on_step)
            results.append(result)
            if result["interrupted"]:
                break
        summary = _summary(results, folds)
        if processes.main and config.folds is not None and not summary["interrupted"]:
            write_report(out / SUMMARY_NAME, summary)
        return summary
    finally:
        if not joined:  # a caller that started the process group keeps it
            distributed.stop()


def _train_fold(config: TrainConfig, clips: FoldClips, run: Path, processes, workdir: Path, on_step) -> dict[str, Any]:
    report_path = run / TEST_DIR / "report.json"
    if config.resume and report_path.is_file() and (run / BEST / SELECTION_NAME).is_file():
        check_same_run(TrainConfig.load(run / CONFIG_NAME), config, run)
        return _fold_result(config.fold, run, report_path)
    if processes.main:
        workdir.mkdir(parents=True, exist_ok=True)
        prepare_tokenizer(config, workdir)
    processes.barrier()
    torch.manual_seed(config.seed)  # the same initial weights on every rank and in every fold
    grace = build_model(config, clips.classes, workdir)
    normalization = Normalization.of_backbone(grace.config.video_pretrained)
    data = _data_description(config, clips)
    model = GraceClassifier(grace, config.text, normalization, face_crop=config.face_crop, data=data)
    datasets = {
        name: clip_dataset(
            part,
            grace.config,
            normalization,
            train=name == "train",
            seed=config.seed,
            skip_bad=config.skip_bad,
            cache=config.cache_frames and name != "test",  # read once
            face_crop=config.face_crop,
        )
        for name, part in (("train", clips.train), ("val", clips.val), ("test", clips.test))
        if part is not None
    }
    if processes.main:
        for name, dataset in datasets.items():
            warn_missing(f"fold {config.fold} {name}", dataset)
    result = fit(
        config,
        model,
        grace_loss(grace.config, clips.train),
        datasets["train"],
        datasets.get("val"),
        collate,
        run,
        processes,
        on_step=on_step,
    )
    if processes.main and (run / METRICS_NAME).stat().st_size:
        plot_curves(run / METRICS_NAME, run / CURVES_NAME)
    if result.interrupted:
        return {"fold": config.fold, "run": str(run), "interrupted": True}
    test = None
    if "test" in datasets:
        grace.load_state_dict(read_safetensors(run / BEST / WEIGHTS_NAME))
        predicted = collect_predictions(
            model,
            datasets["test"],
            collate,
            config.batch_size,
            processes,
            amp_dtype(config.amp, processes.device),
            num_workers=config.num_workers,
            progress=config.progress,
        )
        if processes.main:
            title = f"fold {config.fold} test (epoch {result.best_epoch})"
            write_evaluation(
                run / TEST_DIR, predicted, clips.classes, title=title, fold=config.fold, best_epoch=result.best_epoch
            )
            write_skipped(run, result.skipped, predicted.skipped)
        processes.barrier()
        test = report_path
    fold_result = _fold_result(config.fold, run, test)
    if processes.main:
        metrics = {f"validation (epoch {fold_result['best_epoch']})": _scores(fold_result["val"])}
        if fold_result["test"] is not None:
            metrics["test"] = _scores(fold_result["test"])
        write_model_card(run / BEST, grace.config, data=data, metrics=metrics)
    return fold_result


def _data_description(config: TrainConfig, clips: FoldClips) -> str:
    """The model card's training data: the data set, its folder, the fold and the clips of each split."""
    parts = {"training": clips.train, "validation": clips.val, "test": clips.test}
    sizes = ", ".join(f"{len(part)} {name}" for name, part in parts.items() if part is not None)
    crop = "cut to the tracked face (data.face_crop)" if config.face_crop else "whole frames"
    return (
        f"`grace-fast train` on {config.dataset} at `{config.data_root}`, test fold {config.fold} ({sizes} clips), "
        f"{crop}; classes {', '.join(clips.classes)}."
    )


def _scores(record: dict[str, Any]) -> dict[str, float]:
    return {name: record[name] for name in ("uar", "war") if isinstance(record.get(name), float)}


def _fold_result(fold: int, run: Path, test_report: Path | None) -> dict[str, Any]:
    val = json.loads((run / BEST / SELECTION_NAME).read_text())
    test = None
    if test_report is not None:
        report = json.loads(Path(test_report).read_text())
        test = {"uar": report["uar"], "war": report["war"], "num_samples": report["num_samples"]}
    skipped = run / SKIPPED_NAME
    return {
        "fold": fold,
        "run": str(run),
        "best_checkpoint": str(run / BEST),
        "best_epoch": val.get("epoch"),
        "val": val,
        "test": test,
        "skipped": len(skipped.read_text().splitlines()) if skipped.is_file() else 0,
        "interrupted": False,
    }


def _summary(results: list[dict[str, Any]], folds: list[int]) -> dict[str, Any]:
    scored = [r["test"] for r in results if r.get("test")]
    mean = {k: statistics.fmean(t[k] for t in scored) for k in ("uar", "war")} if scored else {}
    std = {k: statistics.pstdev(t[k] for t in scored) for k in ("uar", "war")} if scored else {}
    finished = [r for r in results if not r["interrupted"]]
    return {
        "folds": results,
        "mean": mean,
        "std": std,
        "best_checkpoint": finished[0]["best_checkpoint"] if finished else None,
        "interrupted": any(r["interrupted"] for r in results) or len(results) < len(folds),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument(
        "--quiet", dest="progress", action="store_false", default=argparse.SUPPRESS, help="no progress bars"
    )


def run(args: argparse.Namespace) -> int:
    """`grace-fast train`: exit 0 when every fold finished, 130 when a SIGINT/SIGTERM stopped it (resumable)."""
    config = config_from_args(args)
    summary = train(config)
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun: the main process reports
        return 130 if summary["interrupted"] else 0
    if summary["interrupted"]:
        print(f"train: stopped; continue with the same command and --resume (run folder {config.out})")
        return 130
    for result in summary["folds"]:
        test = result["test"]
        scores = f"test UAR {100 * test['uar']:.2f} WAR {100 * test['war']:.2f}" if test else "no test split"
        print(f"fold {result['fold']}: best epoch {result['best_epoch']}, {scores} -> {result['best_checkpoint']}")
        if result["skipped"]:
            listed = Path(result["run"]) / SKIPPED_NAME
            print(f"fold {result['fold']}: {result['skipped']} clips skipped as unreadable, listed in {listed}")
    if len(summary["folds"]) > 1 and summary["mean"]:
        mean, std = summary["mean"], summary["std"]
        print(
            f"{len(summary['folds'])} folds: UAR {100 * mean['uar']:.2f} +- {100 * std['uar']:.2f}, "
            f"WAR {100 * mean['war']:.2f} +- {100 * std['war']:.2f}"
        )
    return 0
