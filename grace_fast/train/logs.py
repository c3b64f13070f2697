"""Training logs besides metrics.jsonl: an optional TensorBoard writer and the loss and UAR curves as a PNG.

Both read the epoch records that the loop writes to metrics.jsonl ({"epoch", "train_total", "train_<term>",
"val_uar", "val_war", "lr", ...}); TensorBoard needs the `tensorboard` package (`pip install
'grace_fast[tensorboard]'`), the curves only matplotlib.

>>> plot_curves("runs/demo/metrics.jsonl", "runs/demo/curves.png")  # doctest: +SKIP
"""

import json
import os
from pathlib import Path
from typing import Any

from grace_fast.errors import UserError
from grace_fast.files import write_figure

TENSORBOARD_DIR, CURVES_NAME = "tensorboard", "curves.png"
NOT_SCALARS = ("epoch", "global_step", "best")


def open_tensorboard(folder: str | os.PathLike):
    """A torch SummaryWriter logging into folder; a UserError naming the extra when tensorboard is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:
        raise UserError(
            f"tensorboard: true needs the tensorboard package ({error}): pip install 'grace_fast[tensorboard]'"
        ) from error
    return SummaryWriter(log_dir=str(folder))


def log_epoch(writer, record: dict[str, Any]) -> None:
    """Every number of an epoch record as a scalar at its epoch ("train/total", "val/uar", "lr", ...)."""
    for name, value in record.items():
        if name not in NOT_SCALARS and isinstance(value, int | float) and not isinstance(value, bool):
            writer.add_scalar(name.replace("_", "/", 1) if "_" in name else name, value, record["epoch"])
    writer.flush()


def plot_curves(metrics: str | os.PathLike, out: str | os.PathLike) -> None:
    """Draw the training loss terms and the validation UAR and WAR (%) of each epoch of a metrics.jsonl to a
    PNG at out (written atomically); a run without a validation split gets the loss panel only."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in Path(metrics).read_text().splitlines() if line.strip()]
    if not records:
        raise ValueError(f"{metrics} holds no epoch yet: nothing to draw")
    epochs = [r["epoch"] for r in records]
    terms = sorted({name for r in records for name in r if name.startswith("train_")})
    validated = any("val_uar" in r for r in records)
    figure, axes = plt.subplots(1, 2 if validated else 1, figsize=(10 if validated else 5, 3.6), squeeze=False)
    loss = axes[0, 0]
    for name in terms:
        loss.plot(epochs, [r.get(name, float("nan")) for r in records], marker="o", label=name.removeprefix("train_"))
    loss.set(xlabel="epoch", ylabel="training loss", title="loss")
    loss.legend(fontsize=8)
    if validated:
        scores = axes[0, 1]
        for name in ("val_uar", "val_war"):
            values = [100 * r[name] if name in r else float("nan") for r in records]
            scores.plot(epochs, values, marker="o", label=name.removeprefix("val_").upper())
        best = [r["epoch"] for r in records if r.get("best")]
        if best:
            scores.axvline(best[-1], color="grey", linestyle=":", label=f"selected (epoch {best[-1]})")
        scores.set(xlabel="epoch", ylabel="%", title="validation")
        scores.legend(fontsize=8)
    for axis in axes.flat:
        axis.grid(alpha=0.3)
    figure.tight_layout()
    write_figure(figure, out)
