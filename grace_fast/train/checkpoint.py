"""Resumable training checkpoints and the exported best model, each complete or absent after any crash.

A checkpoint is a folder RUN/checkpoints/step-NNNNNNNN holding model.safetensors (the weights), trainer.pt (the
optimiser, scheduler, gradient scaler, epoch, step, best-so-far and history) and rank-R.pt per process (its
python, numpy, torch and CUDA random states and running sums). It is written under a temporary name and renamed
when every file is on disk, so a folder with the final name is always whole; resuming takes the highest step.
"""

import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from grace_fast.files import read_safetensors, read_torch, save_safetensors
from grace_fast.train.distributed import Processes

CHECKPOINTS = "checkpoints"
MODEL_NAME, TRAINER_NAME = "model.safetensors", "trainer.pt"
STEP_PATTERN = re.compile(r"^step-(\d{8})$")


def rng_state() -> dict[str, Any]:
    """This process's random states: python, numpy (legacy global), torch CPU and every CUDA device."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()  # noqa: NPY002
    return {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    run: Path,
    step: int,
    processes: Processes,
    model: nn.Module,
    trainer: dict[str, Any],
    rank_state: dict[str, Any],
    keep: int,
) -> Path:
    """Write checkpoint `step` of every process into run/checkpoints (call on every rank), keep the newest `keep`."""
    root = run / CHECKPOINTS
    final, staging = root / f"step-{step:08d}", root / f".tmp-step-{step:08d}"
    if final.is_dir():  # this step is saved already (a stop request right after a checkpoint): same state
        return final
    if processes.main:
        shutil.rmtree(staging, ignore_errors=True)  # left by a crash
        staging.mkdir(parents=True)
    processes.barrier()
    _save_torch(rank_state, staging / f"rank-{processes.rank}.pt")
    if processes.main:
        state = {name: tensor.detach().contiguous().cpu() for name, tensor in model.state_dict().items()}
        save_safetensors(state, staging / MODEL_NAME)
        _fsync(staging / MODEL_NAME)
        _save_torch(trainer, staging / TRAINER_NAME)
    processes.barrier()
    if processes.main:
        os.rename(staging, final)
        _fsync(root)
        for old in checkpoints(run)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    processes.barrier()
    return final


def checkpoints(run: Path) -> list[Path]:
    """The complete checkpoints of a run, oldest first."""
    root = run / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if STEP_PATTERN.match(p.name) and (p / TRAINER_NAME).is_file()]
    return sorted(found, key=lambda p: int(STEP_PATTERN.match(p.name).group(1)))


def load_checkpoint(folder: Path, model: nn.Module, rank: int) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Load the weights of checkpoint `folder` into model; return (trainer state, this rank's state or None when
    the checkpoint was written by fewer processes). Every file is read before the model is touched: a file that
    cannot be read raises CheckpointError naming it and leaves the model as it was."""
    state = read_safetensors(folder / MODEL_NAME)
    trainer = read_torch(folder / TRAINER_NAME)
    rank_file = folder / f"rank-{rank}.pt"
    rank_state = read_torch(rank_file) if rank_file.is_file() else None
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {folder} does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return trainer, rank_state


def set_aside(folder: Path) -> Path:
    """Rename a checkpoint that cannot be read to step-N.corrupt, out of the run's checkpoints (so that the run
    writes step N again) but kept for a look; returns the new path."""
    target = folder.with_name(f"{folder.name}.corrupt")
    shutil.rmtree(target, ignore_errors=True)  # an earlier copy of the same step
    os.rename(folder, target)
    return target


def export_model(model: nn.Module, folder: Path) -> None:
    """Write model for inference into folder, replacing what is there only once the new copy is whole: through
    its save_pretrained when it has one (a GraceModel checkpoint), else its weights as model.safetensors."""
    staging, old = folder.with_name(f".{folder.name}.tmp"), folder.with_name(f".{folder.name}.old")
    shutil.rmtree(staging, ignore_errors=True)
    if hasattr(model, "save_pretrained"):
        model.save_pretrained(staging)
    else:
        staging.mkdir(parents=True)
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_safetensors(state, staging / MODEL_NAME)
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.rename(folder, old)
    os.rename(staging, folder)
    shutil.rmtree(old, ignore_errors=True)


def recover_export(folder: Path) -> None:
    """Undo a crash between the two renames of export_model: bring back the previous copy."""
    old = folder.with_name(f".{folder.name}.old")
    if not folder.exists() and old.exists():
        os.rename(old, folder)


def _save_torch(value: Any, path: Path) -> None:
    with open(path, "wb") as file:
        torch.save(value, file)
        file.flush()
        os.fsync(file.fileno())


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
