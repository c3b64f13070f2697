"""`grace-fast demo`: the README's main job. Generates the synthetic set, trains the tiny GRACE and its ablations
on CPU, tests each on the held-out fold and prints their UAR/WAR; plots and reports go to `--out`.

Ablations (the paper's): no motion weighting (motion="off": every token kept, unweighted), cosine instead of OT
(sentence-level alignment), and neither. Every run is resumable: rerunning the command continues where it stopped.

>>> summary = demo("demo", clips=200, epochs=8)  # doctest: +SKIP
"""

import argparse
import json
import time
from pathlib import Path

import matplotlib
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from grace_fast.data.synthetic import make_synthetic  # noqa: E402
from grace_fast.files import write_atomic  # noqa: E402
from grace_fast.train.config import TrainConfig  # noqa: E402
from grace_fast.train.run import train  # noqa: E402

VARIANTS = {  # name -> GraceConfig overrides
    "GRACE": {},
    "no motion weighting": {"motion": "off"},
    "cosine instead of OT": {"alignment": "cosine"},
    "neither": {"motion": "off", "alignment": "cosine"},
}


def demo(out: str | Path, *, clips: int = 200, epochs: int = 8, seed: int = 0, progress: bool = True) -> dict:
    """Runs the demo into out and returns {"variants": [{name, uar, war, best_epoch, seconds, run}], ...}."""
    out = Path(out)
    data = out / "data"
    make_synthetic(data, clips, seed, progress=progress)
    rows = []
    for name, overrides in VARIANTS.items():
        run = out / "runs" / name.replace(" ", "-")
        config = TrainConfig(
            dataset="synthetic", data_root=str(data), model="tiny", model_overrides=overrides, epochs=epochs,
            batch_size=8, lr=3e-3, warmup_fraction=0.1, seed=seed, out=str(run), checkpoint_every=0,
            resume=(run / "config.yaml").is_file(), progress=progress,
        )  # fmt: skip
        start = time.perf_counter()
        result = train(config)
        fold = result["folds"][0]
        rows.append(
            {"name": name, "uar": fold["test"]["uar"], "war": fold["test"]["war"], "best_epoch": fold["best_epoch"],
             "seconds": round(time.perf_counter() - start, 1), "run": fold["run"]}
        )  # fmt: skip
    summary = {"clips": clips, "epochs": epochs, "seed": seed, "variants": rows}
    write_atomic(out / "demo.json", (json.dumps(summary, indent=1) + "\n").encode())
    _plot(rows, out / "demo.png")
    return summary


def _plot(rows: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 3.5))
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [100 * r["uar"] for r in rows], width=0.4, label="UAR")
    ax.bar([i + 0.2 for i in x], [100 * r["war"] for r in rows], width=0.4, label="WAR")
    ax.set_xticks(list(x), [r["name"] for r in rows], fontsize=8)
    ax.set(ylabel="% on the test fold", title="GRACE and its ablations on the synthetic set")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path.with_suffix(".png.tmp.png"), dpi=100)
    plt.close(fig)
    path.with_suffix(".png.tmp.png").replace(path)


def table(summary: dict) -> str:
    lines = ["| variant | UAR % | WAR % | best epoch | train+test s |", "| --- | --- | --- | --- | --- |"]
    for r in summary["variants"]:
        lines.append(
            f"| {r['name']} | {100 * r['uar']:.1f} | {100 * r['war']:.1f} | {r['best_epoch']} | {r['seconds']} |"
        )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo", help="folder for the data, the runs and the plots (default demo)")
    parser.add_argument("--clips", type=int, default=200, help="synthetic clips (default 200)")
    parser.add_argument("--epochs", type=int, default=8, help="epochs per variant (default 8)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(1)  # the tiny model's ops are too small to share across threads; one is faster
    summary = demo(args.out, clips=args.clips, epochs=args.epochs, seed=args.seed, progress=not args.quiet)
    print(table(summary))
    print(f"plots and reports: {args.out}/demo.png, {args.out}/runs/*/test/confusion.png, {args.out}/demo.json")
    return 0
