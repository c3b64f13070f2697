"""`grace-fast demo`: the README's main job. Generates the synthetic set, trains the tiny GRACE and its ablations
on CPU, tests each on the held-out fold and prints their UAR/WAR; plots and reports go to `--out`.

Ablations (the paper's): no motion weighting (motion="off": every token kept, unweighted), cosine instead of OT
(sentence-level alignment), and neither. The set-up (README, "The demo"): `clips` clips rendered at 32 px, fold 1
as the test split (a fifth of the clips); the model of `model.tiny.demo_config` with a tokenizer learnt from the
training fold's captions (out/tokenizer, out/model.json, made once); `epochs` epochs of batch 16 at lr 3e-3.
The variants run `jobs` at a time, each in its own process on one torch thread, each into its own run folder
(out/runs/NAME). Every step is resumable: rerunning the command continues where it stopped.

>>> summary = demo("demo", clips=1000, epochs=16)  # doctest: +SKIP
>>> [(row["name"], round(100 * row["uar"], 1)) for row in summary["variants"]]  # doctest: +SKIP
"""

import argparse
import contextlib
import json
import multiprocessing
import queue
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

import matplotlib
import torch
from tqdm import tqdm

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from grace_fast.data.layouts import DFEW_CLASSES, load_clips  # noqa: E402
from grace_fast.data.synthetic import make_synthetic  # noqa: E402
from grace_fast.eval.mechanism import mechanism_report, model_mechanism  # noqa: E402
from grace_fast.files import write_atomic, write_figure  # noqa: E402
from grace_fast.model.config import GraceConfig  # noqa: E402
from grace_fast.model.tiny import CORPUS, build_tiny_tokenizer, demo_config  # noqa: E402
from grace_fast.predict import Predictor  # noqa: E402
from grace_fast.train.batch_order import steps_per_epoch  # noqa: E402
from grace_fast.train.config import TrainConfig  # noqa: E402
from grace_fast.train.loop import BEST, METRICS_NAME  # noqa: E402
from grace_fast.train.pretrain import PretrainConfig, pretrain  # noqa: E402
from grace_fast.train.run import train  # noqa: E402
from grace_fast.train.task import fold_clips  # noqa: E402

VARIANTS = {  # name -> GraceConfig overrides
    "GRACE": {},
    "no motion weighting": {"motion": "off"},
    "cosine instead of OT": {"alignment": "cosine"},
    "neither": {"motion": "off", "alignment": "cosine"},
}
IMAGE_SIZE = 32  # the clips are rendered at the model's size: 5x cheaper to make and decode than 64 px
TOKENIZER_VOCAB = 2048  # room for every merge of the captions' words: one token per word
FOLD, BATCH_SIZE, LR = 1, 16, 3e-3
# no pretraining by default: measured, it does not make the video tower learn here (README, grace-fast pretrain)
PRETRAIN_EPOCHS, PRETRAIN_LR = 0, 1e-3
CHANCE_UAR = 100 / len(DFEW_CLASSES)  # %, the synthetic set's classes


def demo(
    out: str | Path,
    *,
    clips: int = 1000,
    epochs: int = 16,
    pretrain_epochs: int = PRETRAIN_EPOCHS,
    seed: int = 0,
    jobs: int = 2,
    progress: bool = True,
) -> dict:
    """Runs the demo into out and returns {"clips", "epochs", "seed", "jobs", "pretrain_epochs", "seconds": {"data",
    "pretrain", "total"}, "variants": [{name, uar, war, best_epoch, seconds (train + validation), run}], "mechanism":
    GRACE's eval.mechanism.model_mechanism on the test fold}, or {"interrupted": True} when a stop request (SIGINT,
    SIGTERM) ended it early. pretrain_epochs > 0 pretrains the video tower first (pretrained_model)."""
    if not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be an integer >= 1, got {jobs!r}")
    start = time.perf_counter()
    out = Path(out).resolve()
    data = out / "data"
    make_synthetic(data, clips, seed, size=IMAGE_SIZE, progress=progress)
    model = demo_model(out, data)
    data_seconds = time.perf_counter() - start
    if pretrain_epochs:
        model = pretrained_model(out, data, model, pretrain_epochs, seed, progress)
        if model is None:
            return {"interrupted": True}
    pretrain_seconds = time.perf_counter() - start - data_seconds
    runs = {name: out / "runs" / name.replace(" ", "-") for name in VARIANTS}
    configs = {
        name: TrainConfig(
            dataset="synthetic",
            data_root=str(data),
            fold=FOLD,
            cache_frames=True,
            model=str(model),
            model_overrides=overrides,
            epochs=epochs,
            batch_size=BATCH_SIZE,
            lr=LR,
            warmup_fraction=0.1,
            seed=seed,
            amp="off",  # the tiny model steps 1.6x slower in bf16 autocast, and fp32 gives one table on every CPU
            out=str(runs[name]),
            checkpoint_every=0,
            resume=(runs[name] / "config.yaml").is_file(),
            progress=False,
        )
        for name, overrides in VARIANTS.items()
    }
    rows = _train_variants(configs, jobs, progress)
    if rows is None:
        return {"interrupted": True}
    grace = next(row for row in rows if row["name"] == "GRACE")
    best = Predictor.from_pretrained(Path(grace["run"]) / BEST, device="cpu", dtype="float32")
    mechanism = model_mechanism(best, data, FOLD)  # measured against the ground truth
    summary = {
        "clips": clips,
        "epochs": epochs,
        "seed": seed,
        "jobs": jobs,
        "pretrain_epochs": pretrain_epochs,
        "seconds": {
            "data": round(data_seconds, 1),
            "pretrain": round(pretrain_seconds, 1),
            "total": round(time.perf_counter() - start, 1),
        },
        "variants": rows,
        "mechanism": mechanism,
    }
    write_atomic(out / "demo.json", (json.dumps(summary, indent=1) + "\n").encode())
    _plot(rows, out / "demo.png")
    return summary


def demo_model(out: Path, data: Path) -> Path:
    """out/model.json, the demo's GraceConfig, with its tokenizer out/tokenizer learnt from CORPUS and the captions
    of the training fold (never the test fold's); made once, so that a rerun resumes with the same model."""
    path = out / "model.json"
    if not path.is_file():
        captions = [clip.caption or "" for clip in load_clips("synthetic", data, split="train", fold=FOLD)]
        tokenizer = build_tiny_tokenizer(out / "tokenizer", TOKENIZER_VOCAB, corpus=(*CORPUS, *captions))
        demo_config(tokenizer).save(path)
    return path


def pretrained_model(out: Path, data: Path, model: Path, epochs: int, seed: int, progress: bool) -> Path | None:
    """out/model-pretrained.json: the demo's GraceConfig whose video tower starts from VideoMAE masked autoencoding
    (`grace-fast pretrain`, out/pretrain) of the training fold's clips, labels unused, for `epochs` epochs on one
    torch thread; resumed on a rerun. None when a stop request (SIGINT, SIGTERM) ended it early."""
    run, path = out / "pretrain", out / "model-pretrained.json"
    config = PretrainConfig(
        data_root=str(data),
        fold=FOLD,
        cache_frames=True,
        model=str(model),
        epochs=epochs,
        batch_size=BATCH_SIZE,
        lr=PRETRAIN_LR,
        warmup_fraction=0.1,
        seed=seed,
        amp="off",
        out=str(run),
        checkpoint_every=0,
        resume=(run / "config.yaml").is_file(),
        progress=progress,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the variants: the tiny model's ops are too small to share across threads
    try:
        with open(out / "pretrain.log", "a") as log, contextlib.redirect_stdout(log):
            result = pretrain(config)
    finally:
        torch.set_num_threads(threads)
    if result.interrupted:
        return None
    GraceConfig.load(model).replace(video_pretrained=str(result.best_checkpoint)).save(path)
    return path


def _train_variants(configs: dict[str, TrainConfig], jobs: int, progress: bool) -> list[dict] | None:
    """Train and test every variant, `jobs` processes at a time (1: in this process), with one progress bar over
    the optimiser steps of all of them -> the rows in the order of configs, or None when a stop request (SIGINT,
    SIGTERM) ended a variant early (each run checkpoints and continues on a rerun)."""
    config = next(iter(configs.values()))
    per_run = config.epochs * steps_per_epoch(len(fold_clips(config, FOLD).train), config.batch_size, 1, 1)
    done = dict.fromkeys(configs, 0)
    rows = {}
    with tqdm(total=per_run * len(configs), desc="demo", unit="step", disable=not progress) as bar:

        def advance(name: str, global_step: int) -> None:
            done[name] = global_step
            bar.update(sum(done.values()) - bar.n)

        if jobs == 1:
            for name, config in configs.items():
                rows[name] = _train_variant(name, config, lambda info, name=name: advance(name, info["global_step"]))
                if rows[name] is None:
                    return None
                advance(name, per_run)
            return [rows[name] for name in configs]
        context = multiprocessing.get_context("spawn")  # no OpenMP or tokenizer threads inherited by a fork
        steps = context.Queue()
        workers = ProcessPoolExecutor(min(jobs, len(configs)), context, initializer=_set_steps, initargs=(steps,))
        with workers:
            pending = {workers.submit(_train_variant, name, config): name for name, config in configs.items()}
            stopping = False
            while pending:
                try:
                    finished, _ = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                except KeyboardInterrupt:  # the running variants got it too: they checkpoint and return None
                    if stopping:
                        raise
                    finished, stopping = set(), True
                with contextlib.suppress(queue.Empty):
                    while True:
                        advance(*steps.get_nowait())
                for future in finished:
                    name = pending.pop(future)
                    rows[name] = future.result()
                    stopping = stopping or rows[name] is None
                    advance(name, per_run)
                if stopping:  # variants not started yet stay unstarted
                    for future in [f for f in pending if f.cancel()]:
                        rows[pending.pop(future)] = None
    return None if None in rows.values() else [rows[name] for name in configs]


_steps = None  # a worker process's queue for (variant, global step) progress messages


def _set_steps(steps) -> None:
    global _steps
    _steps = steps


def _train_variant(name: str, config: TrainConfig, on_step=None) -> dict | None:
    """Train and test one variant on one torch thread -> its table row, or None when a stop request ended it.
    Its epoch lines go to RUN/train.log; progress goes to on_step(info), else to the worker's queue."""
    torch.set_num_threads(1)  # the tiny model's ops are too small to share across threads; one is faster
    if on_step is None:

        def on_step(info):
            _steps.put((name, info["global_step"]))

    run = Path(config.out)
    run.mkdir(parents=True, exist_ok=True)
    with open(run / "train.log", "a") as log, contextlib.redirect_stdout(log):
        result = train(config, on_step=on_step)
    if result["interrupted"]:
        return None
    fold = result["folds"][0]
    history = [json.loads(line) for line in (run / METRICS_NAME).read_text().splitlines()]
    return {
        "name": name,
        "uar": fold["test"]["uar"],
        "war": fold["test"]["war"],
        "best_epoch": fold["best_epoch"],
        "seconds": round(sum(record["seconds"] for record in history), 1),
        "run": fold["run"],
    }


def _plot(rows: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 3.5))
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [100 * r["uar"] for r in rows], width=0.4, label="UAR")
    ax.bar([i + 0.2 for i in x], [100 * r["war"] for r in rows], width=0.4, label="WAR")
    ax.axhline(CHANCE_UAR, color="grey", linestyle="--", linewidth=1, label="chance UAR")
    ax.set_xticks(list(x), [r["name"] for r in rows], fontsize=8)
    ax.set(ylabel="% on the test fold", title="GRACE and its ablations on the synthetic set")
    ax.legend(fontsize=8)
    fig.tight_layout()
    write_figure(fig, path)


def table(summary: dict) -> str:
    lines = ["| variant | UAR % | WAR % | best epoch | train s |", "| --- | --- | --- | --- | --- |"]
    for r in summary["variants"]:
        lines.append(
            f"| {r['name']} | {100 * r['uar']:.1f} | {100 * r['war']:.1f} | {r['best_epoch']} | {r['seconds']} |"
        )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo", help="folder for the data, the runs and the plots (default demo)")
    parser.add_argument("--clips", type=int, default=1000, help="synthetic clips (default 1000; a fifth are tested)")
    parser.add_argument("--epochs", type=int, default=16, help="epochs per variant (default 16)")
    parser.add_argument(
        "--pretrain-epochs",
        type=int,
        default=PRETRAIN_EPOCHS,
        help=f"epochs of VideoMAE pretraining of the video tower, e.g. 30 (default {PRETRAIN_EPOCHS}: a random tower)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2, help="variants trained at a time, one process each (default 2)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    """`grace-fast demo`: exit 0 with the table printed, 130 when a stop request ended it (rerun to continue)."""
    progress = not args.quiet
    summary = demo(
        args.out,
        clips=args.clips,
        epochs=args.epochs,
        pretrain_epochs=args.pretrain_epochs,
        seed=args.seed,
        jobs=args.jobs,
        progress=progress,
    )
    if summary.get("interrupted"):
        print(f"demo: stopped; run the same command again to continue (folder {args.out})")
        return 130
    print(table(summary))
    seconds = summary["seconds"]
    print(
        f"chance: UAR {CHANCE_UAR:.1f}%; data {seconds['data']} s, pretraining {seconds['pretrain']} s, "
        f"total {seconds['total']} s"
    )
    print(mechanism_report(summary["mechanism"]))
    print(f"plots and reports: {args.out}/demo.png, {args.out}/runs/*/test/confusion.png, {args.out}/demo.json")
    return 0
