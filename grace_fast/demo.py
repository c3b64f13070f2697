"""`grace-fast demo`: the README's main job. Generates the synthetic set, trains the tiny GRACE and its ablations
on CPU over one or more seeds, tests each on the held-out fold and prints their UAR/WAR (mean +- std over the seeds)
with a verdict per ablation; plots and reports go to `--out`.

VARIANTS names the ablations (the issue's: balanced OT, cosine, cross-attention and no alignment; motion "temporal",
"spatial" and "off"; and "neither", motion off with cosine). Each is compared with GRACE by RULE, fixed before any
run: the paired differences of test UAR over the same seeds, "real" when their mean exceeds twice its standard
error and there are at least 3 seeds (verdict). The set-up (README, "The demo"): `clips` clips rendered at 32 px,
fold 1 as the test split (a fifth of the clips); the model of `model.tiny.demo_config` with a tokenizer learnt from
the training fold's captions; `epochs` epochs of batch 16 at lr 3e-3. A seed makes its own synthetic set, tokenizer
and model config (out/seed-S) and seeds the training of each variant. The (variant, seed) runs go `jobs` at a time,
each in its own process on one torch thread, each into its own run folder (out/seed-S/runs/NAME). Every step is
resumable: rerunning the command continues where it stopped, and adding seeds or variants trains only the new runs.

>>> summary = demo("demo", seeds=[0, 1, 2], variants=["GRACE", "cosine"])  # doctest: +SKIP
>>> [(c["name"], c["verdict"]) for c in summary["comparisons"]]  # doctest: +SKIP
"""

import argparse
import contextlib
import json
import math
import multiprocessing
import queue
import statistics
import time
from collections.abc import Sequence
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

VARIANTS = {  # name (also its run folder's) -> GraceConfig overrides; the paper's ablations of GRACE
    "GRACE": {},  # semi-relaxed OT, motion "both"
    "ot_balanced": {"alignment": "ot_balanced"},
    "cosine": {"alignment": "cosine"},
    "cross_attention": {"alignment": "cross_attention"},
    "no_alignment": {"alignment": "none"},
    "motion_temporal": {"motion": "temporal"},
    "motion_spatial": {"motion": "spatial"},
    "motion_off": {"motion": "off"},
    "neither": {"motion": "off", "alignment": "cosine"},
}
BASELINE = "GRACE"  # every other variant is compared with it
DEFAULT_VARIANTS = (BASELINE, "motion_off", "cosine", "neither")  # about 10 minutes on 2 cores with one seed
FULL_SEEDS = (0, 1, 2)
MIN_SEEDS = 3
RULE = (
    f"a variant differs from {BASELINE} when the mean of its paired test-UAR differences over the same seeds is "
    f"larger in size than twice its standard error (sample std / sqrt(n)) and n >= {MIN_SEEDS}; else not shown"
)
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
    seeds: Sequence[int] = (0,),
    variants: Sequence[str] = DEFAULT_VARIANTS,
    jobs: int = 2,
    progress: bool = True,
) -> dict:
    """Runs the demo into out and returns {"clips", "epochs", "seeds", "jobs", "pretrain_epochs", "seconds": {"data",
    "pretrain", "total"}, "runs": [{name, seed, uar, war, best_epoch, seconds (train + validation), run}] (seed-major),
    "variants": [{name, n, uar_mean, uar_std, war_mean, war_std}], "rule": RULE, "comparisons": [{name, baseline,
    seeds, differences, mean, std, se, n, verdict}] (test UAR of name minus the baseline's, per seed; verdict()),
    "mechanism": the first seed's GRACE's eval.mechanism.model_mechanism on its test fold}, or {"interrupted": True}
    when a stop request (SIGINT, SIGTERM) ended it early.

    A seed is a whole repeat of the experiment, as `--seed` always was: it makes its own synthetic set (make_synthetic
    with that seed), tokenizer and model config in out/seed-S, and seeds the training of every variant in
    out/seed-S/runs/NAME. The baseline GRACE is always run, first. pretrain_epochs > 0 pretrains each seed's video
    tower first (pretrained_model)."""
    if not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be an integer >= 1, got {jobs!r}")
    unknown = [name for name in variants if name not in VARIANTS]
    if unknown:
        raise ValueError(f"variants must be names of VARIANTS ({', '.join(VARIANTS)}), got {', '.join(unknown)}")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be a non-empty list of distinct integers, got {list(seeds)!r}")
    variants = [BASELINE, *dict.fromkeys(name for name in variants if name != BASELINE)]
    start = time.perf_counter()
    out = Path(out).resolve()
    folders = {seed: out / f"seed-{seed}" for seed in seeds}
    models = {}
    for seed, folder in folders.items():
        make_synthetic(folder / "data", clips, seed, size=IMAGE_SIZE, progress=progress)
        models[seed] = demo_model(folder, folder / "data")
    data_seconds = time.perf_counter() - start
    if pretrain_epochs:
        for seed, folder in folders.items():
            models[seed] = pretrained_model(folder, folder / "data", models[seed], pretrain_epochs, seed, progress)
            if models[seed] is None:
                return {"interrupted": True}
    pretrain_seconds = time.perf_counter() - start - data_seconds
    configs = {
        (name, seed): _train_config(folders[seed], models[seed], name, seed, epochs)
        for seed in seeds
        for name in variants
    }
    rows = _train_variants(configs, jobs, progress)
    if rows is None:
        return {"interrupted": True}
    grace = next(row for row in rows if row["name"] == BASELINE)
    best = Predictor.from_pretrained(Path(grace["run"]) / BEST, device="cpu", dtype="float32")
    mechanism = model_mechanism(best, folders[seeds[0]] / "data", FOLD)  # measured against the ground truth
    summary = {
        "clips": clips,
        "epochs": epochs,
        "seeds": list(seeds),
        "jobs": jobs,
        "pretrain_epochs": pretrain_epochs,
        "seconds": {
            "data": round(data_seconds, 1),
            "pretrain": round(pretrain_seconds, 1),
            "total": round(time.perf_counter() - start, 1),
        },
        "runs": rows,
        "variants": [_spread(name, [row for row in rows if row["name"] == name]) for name in variants],
        "rule": RULE,
        "comparisons": [_compare(name, rows) for name in variants if name != BASELINE],
        "mechanism": mechanism,
    }
    write_atomic(out / "demo.json", (json.dumps(summary, indent=1) + "\n").encode())
    _plot(summary, out / "demo.png")
    return summary


def verdict(differences: Sequence[float]) -> dict:
    """RULE on the paired differences of one comparison (one per seed) -> {n, mean, std, se, verdict}: verdict "real"
    when n >= MIN_SEEDS and |mean| > 2 se, with se = std / sqrt(n) and std the sample standard deviation; else "not
    shown". std and se are None for n < 2.

    >>> verdict([0.10, 0.12, 0.11])["verdict"], verdict([0.10, -0.12, 0.05])["verdict"]
    ('real', 'not shown')
    """
    n = len(differences)
    mean = statistics.fmean(differences) if n else None
    std = statistics.stdev(differences) if n >= 2 else None
    se = std / math.sqrt(n) if std is not None else None
    real = n >= MIN_SEEDS and abs(mean) > 2 * se
    return {"n": n, "mean": mean, "std": std, "se": se, "verdict": "real" if real else "not shown"}


def _compare(name: str, rows: list[dict]) -> dict:
    """name against BASELINE on the seeds both ran: test UAR differences (name minus baseline) and their verdict."""
    uar = {(row["name"], row["seed"]): row["uar"] for row in rows}
    seeds = [seed for (variant, seed) in uar if variant == name and (BASELINE, seed) in uar]
    differences = [uar[name, seed] - uar[BASELINE, seed] for seed in seeds]
    return {"name": name, "baseline": BASELINE, "seeds": seeds, "differences": differences, **verdict(differences)}


def _spread(name: str, rows: list[dict]) -> dict:
    """Mean and sample std (None for one seed) of one variant's test UAR and WAR over its seeds."""
    summary = {"name": name, "n": len(rows)}
    for metric in ("uar", "war"):
        values = [row[metric] for row in rows]
        summary[f"{metric}_mean"] = statistics.fmean(values)
        summary[f"{metric}_std"] = statistics.stdev(values) if len(values) >= 2 else None
    return summary


def _train_config(folder: Path, model: Path, name: str, seed: int, epochs: int) -> TrainConfig:
    """The training of variant name for one seed, in folder/runs/name; resumed when that run folder exists."""
    run = folder / "runs" / name
    return TrainConfig(
        dataset="synthetic",
        data_root=str(folder / "data"),
        fold=FOLD,
        cache_frames=True,
        model=str(model),
        model_overrides=VARIANTS[name],
        epochs=epochs,
        batch_size=BATCH_SIZE,
        lr=LR,
        warmup_fraction=0.1,
        seed=seed,
        amp="off",  # the tiny model steps 1.6x slower in bf16 autocast, and fp32 gives one table on every CPU
        out=str(run),
        checkpoint_every=0,
        resume=(run / "config.yaml").is_file(),
        progress=False,
    )


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


def _train_variants(configs: dict[tuple[str, int], TrainConfig], jobs: int, progress: bool) -> list[dict] | None:
    """Train and test every (variant, seed), `jobs` processes at a time (1: in this process), with one progress bar
    over the optimiser steps of all of them -> the rows in the order of configs, or None when a stop request (SIGINT,
    SIGTERM) ended a run early (each run checkpoints and continues on a rerun)."""
    per_run = {
        key: config.epochs * steps_per_epoch(len(fold_clips(config, FOLD).train), config.batch_size, 1, 1)
        for key, config in configs.items()
    }
    done = dict.fromkeys(configs, 0)
    rows = {}
    with tqdm(total=sum(per_run.values()), desc="demo", unit="step", disable=not progress) as bar:

        def advance(key: tuple[str, int], global_step: int) -> None:
            done[key] = global_step
            bar.update(sum(done.values()) - bar.n)

        if jobs == 1:
            for key, config in configs.items():
                rows[key] = _train_variant(key, config, lambda info, key=key: advance(key, info["global_step"]))
                if rows[key] is None:
                    return None
                advance(key, per_run[key])
            return [rows[key] for key in configs]
        context = multiprocessing.get_context("spawn")  # no OpenMP or tokenizer threads inherited by a fork
        steps = context.Queue()
        workers = ProcessPoolExecutor(min(jobs, len(configs)), context, initializer=_set_steps, initargs=(steps,))
        with workers:
            pending = {workers.submit(_train_variant, key, config): key for key, config in configs.items()}
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
                    key = pending.pop(future)
                    rows[key] = future.result()
                    stopping = stopping or rows[key] is None
                    advance(key, per_run[key])
                if stopping:  # variants not started yet stay unstarted
                    for future in [f for f in pending if f.cancel()]:
                        rows[pending.pop(future)] = None
    return None if None in rows.values() else [rows[key] for key in configs]


_steps = None  # a worker process's queue for (variant, global step) progress messages


def _set_steps(steps) -> None:
    global _steps
    _steps = steps


def _train_variant(key: tuple[str, int], config: TrainConfig, on_step=None) -> dict | None:
    """Train and test one (variant, seed) on one torch thread -> its row, or None when a stop request ended it.
    Its epoch lines go to RUN/train.log; progress goes to on_step(info), else to the worker's queue."""
    torch.set_num_threads(1)  # the tiny model's ops are too small to share across threads; one is faster
    if on_step is None:

        def on_step(info):
            _steps.put((key, info["global_step"]))

    run = Path(config.out)
    run.mkdir(parents=True, exist_ok=True)
    with open(run / "train.log", "a") as log, contextlib.redirect_stdout(log):
        result = train(config, on_step=on_step)
    if result["interrupted"]:
        return None
    fold = result["folds"][0]
    history = [json.loads(line) for line in (run / METRICS_NAME).read_text().splitlines()]
    return {
        "name": key[0],
        "seed": key[1],
        "uar": fold["test"]["uar"],
        "war": fold["test"]["war"],
        "best_epoch": fold["best_epoch"],
        "seconds": round(sum(record["seconds"] for record in history), 1),
        "run": fold["run"],
    }


def _plot(summary: dict, path: Path) -> None:
    """Bars of each variant's mean test UAR and WAR over its seeds, one point per seed, the verdicts in the labels."""
    fig, ax = plt.subplots(figsize=(max(7, 1.1 * len(summary["variants"])), 3.8))
    verdicts = {c["name"]: c["verdict"] for c in summary["comparisons"]}
    for offset, metric, label in ((-0.2, "uar", "UAR"), (0.2, "war", "WAR")):
        x = [i + offset for i in range(len(summary["variants"]))]
        ax.bar(x, [100 * v[f"{metric}_mean"] for v in summary["variants"]], width=0.4, label=f"{label} (mean)")
        for i, variant in zip(x, summary["variants"], strict=True):
            points = [100 * r[metric] for r in summary["runs"] if r["name"] == variant["name"]]
            ax.scatter([i] * len(points), points, color="black", s=8, zorder=3)
    ax.axhline(CHANCE_UAR, color="grey", linestyle="--", linewidth=1, label="chance UAR")
    labels = [f"{v['name']}\n{verdicts.get(v['name'], 'baseline')}" for v in summary["variants"]]
    ax.set_xticks(range(len(labels)), labels, fontsize=7)
    seeds = ", ".join(map(str, summary["seeds"]))
    ax.set(ylabel="% on the test fold", title=f"GRACE and its ablations on the synthetic set, seeds {seeds}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    write_figure(fig, path)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _spread_text(mean: float, std: float | None) -> str:
    """mean +- std in %, the mean alone for one seed."""
    return _percent(mean) if std is None else f"{_percent(mean)} +- {_percent(std)}"


def table(summary: dict) -> str:
    """The per-variant table (mean +- sample std over the seeds, in %) and one verdict line per comparison."""
    lines = ["| variant | seeds | UAR % | WAR % |", "| --- | --- | --- | --- |"]
    for v in summary["variants"]:
        uar, war = (_spread_text(v[f"{m}_mean"], v[f"{m}_std"]) for m in ("uar", "war"))
        lines.append(f"| {v['name']} | {v['n']} | {uar} | {war} |")
    lines.append(f"rule: {summary['rule']}")
    for c in summary["comparisons"]:
        lines.append(
            f"{c['name']} - {c['baseline']}: UAR {_percent(c['mean'])} points, SE {_percent(c['se'])}, "
            f"n = {c['n']}: {c['verdict']}"
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
    parser.add_argument(
        "--seeds",
        "--seed",
        type=int,
        nargs="+",
        help="seeds, each its own synthetic set and training (default 0; a difference needs 3 to be called real)",
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=list(VARIANTS),
        help=f"variants to train; {BASELINE} always runs (default {' '.join(DEFAULT_VARIANTS)})",
    )
    parser.add_argument(
        "--full",
        action="store_true",
        help=f"every variant over seeds {' '.join(map(str, FULL_SEEDS))} ({len(VARIANTS) * len(FULL_SEEDS)} runs)",
    )
    parser.add_argument("--jobs", type=int, default=2, help="runs trained at a time, one process each (default 2)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def plan(args: argparse.Namespace) -> tuple[list[int], list[str]]:
    """(seeds, variants) the arguments ask for: --full, else --seeds and --variants, else their defaults."""
    if args.full:
        if args.seeds is not None or args.variants is not None:
            seeds = " ".join(map(str, FULL_SEEDS))
            raise ValueError(f"--full runs every variant over seeds {seeds}; do not give --seeds or --variants with it")
        return list(FULL_SEEDS), list(VARIANTS)
    return args.seeds or [0], args.variants or list(DEFAULT_VARIANTS)


def run(args: argparse.Namespace) -> int:
    """`grace-fast demo`: exit 0 with the table printed, 130 when a stop request ended it (rerun to continue)."""
    progress = not args.quiet
    seeds, variants = plan(args)
    summary = demo(
        args.out,
        clips=args.clips,
        epochs=args.epochs,
        pretrain_epochs=args.pretrain_epochs,
        seeds=seeds,
        variants=variants,
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
    print(f"mechanism metrics of seed {seeds[0]}'s GRACE")
    print(mechanism_report(summary["mechanism"]))
    print(f"plots and reports: {args.out}/demo.png, {args.out}/seed-*/runs/*/test/confusion.png, {args.out}/demo.json")
    return 0
