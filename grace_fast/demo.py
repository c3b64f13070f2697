"""`grace-fast demo`: the README's main job. Generates the synthetic set, trains the tiny GRACE and its ablations
on CPU in each text mode over one or more seeds, tests each on the held-out fold and prints their UAR/WAR (mean +- std
over the seeds) with a verdict per ablation and per mode; plots and reports go to `--out`.

MODES names the text each clip is trained and tested with: its caption; its CATE description (the paper's loop,
docs/method.md section 3: the caption-mode GRACE's auxiliary head gives every clip's top-2 classes, `grace-fast
coarse-labels`, and the template refiner, standing in for the LLM of `grace-fast refine`, rewrites the caption with
them); or none, the video-only class-prompt mode.

VARIANTS names the ablations (the issue's: balanced OT, cosine, cross-attention and no alignment; motion "temporal",
"spatial" and "off"; and "neither", motion off with cosine). Each is compared with GRACE by RULE, fixed before any
run: the paired differences of test UAR over the same seeds, "real" when their mean exceeds twice its standard
error and there are at least 3 seeds (verdict); so is GRACE in each other mode with GRACE in caption mode.
The set-up (README, "The demo"): `clips` clips rendered at 32 px, fold 1 as the test split (a fifth of the clips);
the model of `model.tiny.demo_config` with a tokenizer learnt from the training fold's captions; `epochs` epochs
of batch 16 at lr 3e-3. A seed makes its own synthetic set, tokenizer and model config (out/seed-S) and seeds the
training of each variant. The (variant, mode, seed) runs go `jobs` at a time, each in its own process on one torch
thread, each into its own run folder (out/seed-S/runs/NAME, NAME-cate, NAME-prompts); the CATE runs after the
others, once their seed's descriptions are written (out/seed-S/cate). Every step is resumable: rerunning the command
continues where it stopped, and adding seeds, variants or modes trains only the new runs.

>>> summary = demo("demo", seeds=[0, 1, 2], variants=["GRACE", "cosine"], modes=["caption", "cate"])  # doctest: +SKIP
>>> [(c["name"], c["mode"], c["verdict"]) for c in summary["comparisons"]]  # doctest: +SKIP
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
from grace_fast.data.video import VideoReadError  # noqa: E402
from grace_fast.eval.mechanism import mechanism_report, model_mechanism  # noqa: E402
from grace_fast.files import write_atomic, write_figure, write_jsonl  # noqa: E402
from grace_fast.model.config import GraceConfig  # noqa: E402
from grace_fast.model.tiny import CORPUS, build_tiny_tokenizer, demo_config  # noqa: E402
from grace_fast.predict import Predictor, coarse_classifier  # noqa: E402
from grace_fast.text.cache import Cache  # noqa: E402
from grace_fast.text.coarse_labels import label_clips  # noqa: E402
from grace_fast.text.jobs import CACHE_NAME, LABELS_NAME, fingerprint  # noqa: E402
from grace_fast.text.lexicon import Lexicon  # noqa: E402
from grace_fast.text.refiner import ClipText, Refiner, refine_clips  # noqa: E402
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
MODES = {  # mode (NAME-mode names its run folders, NAME alone for caption) -> the text of each clip
    "caption": "its synthetic caption",
    "cate": "its CATE description: the caption refined with the top-2 classes of the caption-mode GRACE's auxiliary "
    "head, for the test fold's clips too (the template stands in for the LLM)",
    "prompts": "none: the class-prompt mode, the video alone decides",
}
BASELINE, BASE_MODE = "GRACE", "caption"  # every other variant is compared with it, every other mode with this one
# 3 runs in 2 rounds on 2 cores, as the 4 caption-mode variants before: within about 10 minutes (README)
DEFAULT_VARIANTS, DEFAULT_MODES = (BASELINE,), tuple(MODES)
DESCRIPTIONS = Path("cate") / "refined.jsonl"  # a seed folder's CATE descriptions, in `grace-fast refine`'s format
FULL_SEEDS = (0, 1, 2)
MIN_SEEDS = 3
RULE = (
    f"a variant differs from {BASELINE} in the same mode, and {BASELINE} in a mode from {BASELINE} in {BASE_MODE} "
    "mode, when the mean of the paired test-UAR differences over the same seeds is larger in size than twice its "
    f"standard error (sample std / sqrt(n)) and n >= {MIN_SEEDS}; else not shown"
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
    modes: Sequence[str] = DEFAULT_MODES,
    jobs: int = 2,
    progress: bool = True,
) -> dict:
    """Runs the demo into out and returns {"clips", "epochs", "seeds", "modes", "jobs", "pretrain_epochs", "seconds":
    {"data", "pretrain", "cate", "total"}, "runs": [{name, mode, seed, uar, war, best_epoch, seconds (train +
    validation), run}] (seed-major, then mode, then variant), "variants": [{name, mode, n, uar_mean, uar_std, war_mean,
    war_std}], "rule": RULE, "comparisons": [{name, mode, baseline, baseline_mode, seeds, differences, mean, std, se,
    n, verdict}] (test UAR of (name, mode) minus the baseline's, per seed; verdict()), "mechanism": the first seed's
    caption-mode GRACE's eval.mechanism.model_mechanism on its test fold}, or {"interrupted": True} when a stop
    request (SIGINT, SIGTERM) ended it early.

    A seed is a whole repeat of the experiment, as `--seed` always was: it makes its own synthetic set (make_synthetic
    with that seed), tokenizer and model config in out/seed-S, and seeds the training of every run in
    out/seed-S/runs. The baseline, GRACE in caption mode, is always run, first; the "cate" runs train on the
    descriptions that cate_descriptions writes from it. pretrain_epochs > 0 pretrains each seed's video tower first
    (pretrained_model)."""
    if not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be an integer >= 1, got {jobs!r}")
    for what, names, known in (("variants", variants, VARIANTS), ("modes", modes, MODES)):
        unknown = [name for name in names if name not in known]
        if unknown:
            raise ValueError(f"{what} must be names of {', '.join(known)}, got {', '.join(unknown)}")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be a non-empty list of distinct integers, got {list(seeds)!r}")
    variants = [BASELINE, *dict.fromkeys(name for name in variants if name != BASELINE)]
    modes = [BASE_MODE, *dict.fromkeys(mode for mode in modes if mode != BASE_MODE)]
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

    def configs(phase_modes):
        return {
            (name, mode, seed): _train_config(folders[seed], models[seed], name, mode, seed, epochs)
            for seed in seeds
            for mode in phase_modes
            for name in variants
        }

    rows = _train_variants(configs([mode for mode in modes if mode != "cate"]), jobs, progress)
    if rows is None:
        return {"interrupted": True}
    cate_seconds = 0.0
    if "cate" in modes:  # CATE's coarse labels come from the caption-mode GRACE: its runs wait for it
        cate_start = time.perf_counter()
        for seed, folder in folders.items():
            cate_descriptions(folder, Path(_row(rows, BASELINE, BASE_MODE, seed)["run"]) / BEST, progress)
        cate_seconds = time.perf_counter() - cate_start
        cate_rows = _train_variants(configs(["cate"]), jobs, progress)
        if cate_rows is None:
            return {"interrupted": True}
        rows = sorted([*rows, *cate_rows], key=lambda r: (seeds.index(r["seed"]), modes.index(r["mode"])))
    grace = Path(_row(rows, BASELINE, BASE_MODE, seeds[0])["run"])
    best = Predictor.from_pretrained(grace / BEST, device="cpu", dtype="float32")
    mechanism = model_mechanism(best, folders[seeds[0]] / "data", FOLD)  # measured against the ground truth
    summary = {
        "clips": clips,
        "epochs": epochs,
        "seeds": list(seeds),
        "modes": modes,
        "jobs": jobs,
        "pretrain_epochs": pretrain_epochs,
        "seconds": {
            "data": round(data_seconds, 1),
            "pretrain": round(pretrain_seconds, 1),
            "cate": round(cate_seconds, 1),
            "total": round(time.perf_counter() - start, 1),
        },
        "runs": rows,
        "variants": [
            _spread(name, mode, [row for row in rows if (row["name"], row["mode"]) == (name, mode)])
            for mode in modes
            for name in variants
        ],
        "rule": RULE,
        "comparisons": [
            *(_compare((name, mode), (BASELINE, mode), rows) for mode in modes for name in variants[1:]),
            *(_compare((BASELINE, mode), (BASELINE, BASE_MODE), rows) for mode in modes[1:]),
        ],
        "mechanism": mechanism,
    }
    write_atomic(out / "demo.json", (json.dumps(summary, indent=1) + "\n").encode())
    _plot(summary, out / "demo.png")
    return summary


def cate_descriptions(folder: Path, baseline: Path, progress: bool) -> Path:
    """folder/DESCRIPTIONS: the CATE loop of docs/method.md section 3 on every clip of the seed's set, test fold
    included, with the checkpoint baseline (the caption-mode GRACE) as its baseline classifier. Its auxiliary head's
    top-2 classes (text.coarse_labels.label_clips, as `grace-fast coarse-labels --classifier
    grace_fast.predict:coarse_classifier`; folder/cate/coarse_labels.jsonl) and the template refiner (as `grace-fast
    refine --template`) rewrite each caption. A clip's own label never enters: the test fold's descriptions name
    what the model predicts for them, right or wrong. The training fold's labels are the same model's predictions
    on clips it trained on, as in the paper's loop. Cached (folder/cate/cate_cache.sqlite, keyed by the
    checkpoint): a rerun with the same baseline reads no clip again."""
    path, data = folder / DESCRIPTIONS, folder / "data"
    cate = path.parent
    cate.mkdir(parents=True, exist_ok=True)
    splits = [load_clips("synthetic", data, split=split, fold=FOLD) for split in ("train", "test")]
    clips = [clip for split in splits for clip in split.clips]
    model = GraceConfig.load(baseline / "config.json")
    classify = coarse_classifier(baseline, "cpu", dtype="float32")  # fp32, as the runs test
    lexicon = Lexicon.load()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the runs: the same numbers in every process
    try:
        with Cache(cate / CACHE_NAME) as cache:
            labels, summary = label_clips(
                [(clip.id, clip.path) for clip in clips],
                classify,
                lexicon.classes("synthetic"),
                cache,
                num_frames=model.frames,
                size=model.image_size,
                batch_size=BATCH_SIZE,
                classifier_id=fingerprint(baseline),
                progress=progress,
            )
            if summary.failed:
                clip, reason = next(iter(summary.failed.items()))
                raise VideoReadError(f"{len(summary.failed)} clips of {data} could not be read, e.g. {clip}: {reason}")
            texts = [ClipText(clip.id, clip.caption or "", tuple(labels[clip.id]["labels"])) for clip in clips]
            refined, _ = refine_clips(texts, Refiner(lexicon), cache, progress=progress)
    finally:
        torch.set_num_threads(threads)
    write_jsonl(cate / LABELS_NAME, [labels[clip.id] for clip in clips])
    write_jsonl(path, [refined[clip.id] for clip in clips])
    return path


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


def _row(rows: list[dict], name: str, mode: str, seed: int) -> dict:
    return next(row for row in rows if (row["name"], row["mode"], row["seed"]) == (name, mode, seed))


def _compare(run: tuple[str, str], baseline: tuple[str, str], rows: list[dict]) -> dict:
    """(variant, mode) against the baseline's on the seeds both ran: test UAR differences (run minus baseline) and
    their verdict."""
    uar = {(row["name"], row["mode"], row["seed"]): row["uar"] for row in rows}
    seeds = [key[2] for key in uar if key[:2] == run and (*baseline, key[2]) in uar]
    differences = [uar[(*run, seed)] - uar[(*baseline, seed)] for seed in seeds]
    names = {"name": run[0], "mode": run[1], "baseline": baseline[0], "baseline_mode": baseline[1]}
    return {**names, "seeds": seeds, "differences": differences, **verdict(differences)}


def _spread(name: str, mode: str, rows: list[dict]) -> dict:
    """Mean and sample std (None for one seed) of one (variant, mode)'s test UAR and WAR over its seeds."""
    summary = {"name": name, "mode": mode, "n": len(rows)}
    for metric in ("uar", "war"):
        values = [row[metric] for row in rows]
        summary[f"{metric}_mean"] = statistics.fmean(values)
        summary[f"{metric}_std"] = statistics.stdev(values) if len(values) >= 2 else None
    return summary


def _train_config(folder: Path, model: Path, name: str, mode: str, seed: int, epochs: int) -> TrainConfig:
    """The training of variant name in mode for one seed, in folder/runs/name (caption mode) or name-mode; resumed
    when that run folder exists."""
    run = folder / "runs" / (name if mode == BASE_MODE else f"{name}-{mode}")
    return TrainConfig(
        dataset="synthetic",
        data_root=str(folder / "data"),
        descriptions=str(folder / DESCRIPTIONS) if mode == "cate" else None,
        text="prompts" if mode == "prompts" else "caption",
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


def _train_variants(configs: dict[tuple[str, str, int], TrainConfig], jobs: int, progress: bool) -> list[dict] | None:
    """Train and test every (variant, mode, seed), `jobs` processes at a time (1: in this process), with one progress
    bar over the optimiser steps of all of them -> the rows in the order of configs, or None when a stop request
    (SIGINT, SIGTERM) ended a run early (each run checkpoints and continues on a rerun)."""
    per_run = {
        key: config.epochs * steps_per_epoch(len(fold_clips(config, FOLD).train), config.batch_size, 1, 1)
        for key, config in configs.items()
    }
    done = dict.fromkeys(configs, 0)
    rows = {}
    with tqdm(total=sum(per_run.values()), desc="demo", unit="step", disable=not progress) as bar:

        def advance(key: tuple[str, str, int], global_step: int) -> None:
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


_steps = None  # a worker process's queue for ((variant, mode, seed), global step) progress messages


def _set_steps(steps) -> None:
    global _steps
    _steps = steps


def _train_variant(key: tuple[str, str, int], config: TrainConfig, on_step=None) -> dict | None:
    """Train and test one (variant, mode, seed) on one torch thread -> its row, or None when a stop request ended it.
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
        "mode": key[1],
        "seed": key[2],
        "uar": fold["test"]["uar"],
        "war": fold["test"]["war"],
        "best_epoch": fold["best_epoch"],
        "seconds": round(sum(record["seconds"] for record in history), 1),
        "run": fold["run"],
    }


def _plot(summary: dict, path: Path) -> None:
    """Top: bars of each (variant, mode)'s mean test UAR and WAR over its seeds, one point per seed, the verdicts in
    the labels. Bottom: the mechanism metrics of the first seed's GRACE, each against its reference: the motion mass
    on action-unit and nuisance tokens per weighting against those tokens' share, and the pointing game's hits per
    alignment and text against chance."""
    fig = plt.figure(figsize=(max(7, 1.1 * len(summary["variants"])), 7.6))
    grid = fig.add_gridspec(2, 2, height_ratios=(1, 0.8))
    ax = fig.add_subplot(grid[0, :])
    verdicts = {(c["name"], c["mode"]): c["verdict"] for c in summary["comparisons"]}
    for offset, metric, label in ((-0.2, "uar", "UAR"), (0.2, "war", "WAR")):
        x = [i + offset for i in range(len(summary["variants"]))]
        ax.bar(x, [100 * v[f"{metric}_mean"] for v in summary["variants"]], width=0.4, label=f"{label} (mean)")
        for i, variant in zip(x, summary["variants"], strict=True):
            runs = [r for r in summary["runs"] if (r["name"], r["mode"]) == (variant["name"], variant["mode"])]
            points = [100 * r[metric] for r in runs]
            ax.scatter([i] * len(points), points, color="black", s=8, zorder=3)
    ax.axhline(CHANCE_UAR, color="grey", linestyle="--", linewidth=1, label="chance UAR")
    labels = [
        f"{v['name']}\n{v['mode']}\n{verdicts.get((v['name'], v['mode']), 'baseline')}" for v in summary["variants"]
    ]
    ax.set_xticks(range(len(labels)), labels, fontsize=7)
    seeds = ", ".join(map(str, summary["seeds"]))
    title = f"GRACE, its ablations and text modes on the synthetic set, seeds {seeds}"
    ax.set(ylabel="% on the test fold", title=title)
    ax.legend(fontsize=7)
    motion, pointing = summary["mechanism"]["motion"], summary["mechanism"]["pointing"]
    cases = [(alignment, text) for alignment, texts in pointing.items() for text in texts]

    def weighting(key):
        return [m[key] for m in motion.values()]

    def hits(key):
        return [pointing[alignment][text][key] for alignment, text in cases]

    mass = {"mass on action-unit tokens": ("au", "au_area"), "mass on nuisance tokens": ("nuisance", "nuisance_area")}
    measured = f"seed {summary['seeds'][0]}'s GRACE, {summary['mechanism']['measured']} test clips"
    _bars_against(
        fig.add_subplot(grid[1, 0]),
        list(motion),
        {name: (weighting(value), weighting(share)) for name, (value, share) in mass.items()},
        "the tokens' share",
        f"motion weighting ({measured})",
    )
    _bars_against(
        fig.add_subplot(grid[1, 1]),
        [f"{alignment}\n{text}" for alignment, text in cases],
        {"word hits": (hits("rows"), hits("rows_chance")), "q hits": (hits("q"), hits("q_chance"))},
        "chance",
        f"OT pointing game: plan mass of action-unit words on their region ({measured})",
    )
    fig.tight_layout()
    write_figure(fig, path)


def _bars_against(ax, labels: list[str], series: dict[str, tuple[list, list]], reference: str, title: str) -> None:
    """Grouped bars of each series' values (fractions, drawn in %) at each label, a black dash at the value it is
    read against (None: not measured, left out)."""
    width = 0.8 / len(series)
    for k, (name, (values, references)) in enumerate(series.items()):
        x = [i + (k - (len(series) - 1) / 2) * width for i in range(len(labels))]
        ax.bar(x, [math.nan if v is None else 100 * v for v in values], width=width, label=name)
        dashes = [math.nan if r is None else 100 * r for r in references]
        ax.scatter(x, dashes, marker="_", s=200, color="black", zorder=3, label=reference if k == 0 else None)
    ax.set_xticks(range(len(labels)), labels, fontsize=7)
    ax.set(ylabel="%", title=title)
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _spread_text(mean: float, std: float | None) -> str:
    """mean +- std in %, the mean alone for one seed."""
    return _percent(mean) if std is None else f"{_percent(mean)} +- {_percent(std)}"


def table(summary: dict) -> str:
    """The per-(variant, mode) table (mean +- sample std over the seeds, in %) and one verdict line per comparison."""
    lines = ["| variant | mode | seeds | UAR % | WAR % |", "| --- | --- | --- | --- | --- |"]
    for v in summary["variants"]:
        uar, war = (_spread_text(v[f"{m}_mean"], v[f"{m}_std"]) for m in ("uar", "war"))
        lines.append(f"| {v['name']} | {v['mode']} | {v['n']} | {uar} | {war} |")
    lines.append(f"rule: {summary['rule']}")
    for c in summary["comparisons"]:
        lines.append(
            f"{c['name']} {c['mode']} - {c['baseline']} {c['baseline_mode']}: UAR {_percent(c['mean'])} points, "
            f"SE {_percent(c['se'])}, n = {c['n']}: {c['verdict']}"
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
        "--modes",
        nargs="+",
        choices=list(MODES),
        help=f"text modes each variant trains in; {BASE_MODE} always runs (default {' '.join(DEFAULT_MODES)})",
    )
    runs = len(VARIANTS) * len(MODES) * len(FULL_SEEDS)
    parser.add_argument(
        "--full",
        action="store_true",
        help=f"every variant in every mode over seeds {' '.join(map(str, FULL_SEEDS))} ({runs} runs)",
    )
    parser.add_argument("--jobs", type=int, default=2, help="runs trained at a time, one process each (default 2)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def plan(args: argparse.Namespace) -> tuple[list[int], list[str], list[str]]:
    """(seeds, variants, modes) the arguments ask for: --full, else --seeds, --variants and --modes, else their
    defaults."""
    if args.full:
        if (args.seeds, args.variants, args.modes) != (None, None, None):
            seeds = " ".join(map(str, FULL_SEEDS))
            raise ValueError(
                f"--full runs every variant in every mode over seeds {seeds}; do not give --seeds, --variants or "
                "--modes with it"
            )
        return list(FULL_SEEDS), list(VARIANTS), list(MODES)
    return args.seeds or [0], args.variants or list(DEFAULT_VARIANTS), args.modes or list(DEFAULT_MODES)


def run(args: argparse.Namespace) -> int:
    """`grace-fast demo`: exit 0 with the table printed, 130 when a stop request ended it (rerun to continue)."""
    progress = not args.quiet
    seeds, variants, modes = plan(args)
    summary = demo(
        args.out,
        clips=args.clips,
        epochs=args.epochs,
        pretrain_epochs=args.pretrain_epochs,
        seeds=seeds,
        variants=variants,
        modes=modes,
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
        f"CATE labels and descriptions {seconds['cate']} s, total {seconds['total']} s"
    )
    print(f"mechanism metrics of seed {seeds[0]}'s GRACE in {BASE_MODE} mode")
    print(mechanism_report(summary["mechanism"]))
    print(f"plots and reports: {args.out}/demo.png, {args.out}/seed-*/runs/*/test/confusion.png, {args.out}/demo.json")
    return 0
