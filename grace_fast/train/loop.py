"""The training loop of one fold: AdamW, warm-up + cosine schedule, gradient clipping and accumulation, AMP,
DistributedDataParallel, per-epoch validation and model selection, resumable checkpoints.

It is written against three small interfaces, so any module trains with it:
- collate(items) -> batch with labels [B] long class ids: a mapping with "labels", or an object with .labels
  (grace_fast.data's Batch); an object batch moves to the device by its .to(device), and one with no clips
  (every clip bad under skip_bad) is passed over;
- model(batch) -> an output with .logits: [B, num_classes];
- loss_fn(output, labels) -> terms with .total (a scalar; the other fields of a NamedTuple are logged too).

A run folder holds config.yaml, metrics.jsonl (one line per finished epoch), checkpoints/ (resumable) and best/
(the weights selected on the validation split, via the model's save_pretrained when it has one).
"""

import contextlib
import dataclasses
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from grace_fast.errors import CheckpointError
from grace_fast.eval.metrics import classification_metrics
from grace_fast.eval.report import write_report
from grace_fast.files import write_jsonl
from grace_fast.hardware import auto_dtype
from grace_fast.train import checkpoint as ckpt
from grace_fast.train.batch_order import (
    PROCESS_STREAM,
    IndexedCollate,
    SeededItems,
    ShardBatches,
    StepBatches,
    derive_seed,
)
from grace_fast.train.config import TrainConfig
from grace_fast.train.distributed import Processes
from grace_fast.train.logs import TENSORBOARD_DIR, log_epoch, open_tensorboard
from grace_fast.train.schedule import build_scheduler

logger = logging.getLogger(__name__)
BEST, METRICS_NAME, CONFIG_NAME, SELECTION_NAME = "best", "metrics.jsonl", "config.yaml", "selection.json"
SKIPPED_NAME = "skipped.jsonl"
# fields that may change between a run and its resumption without changing what it computes
RESUMABLE_CHANGES = (
    "resume",
    "progress",
    "tensorboard",
    "num_workers",
    "cache_frames",
    "checkpoint_every",
    "keep_checkpoints",
    "device",
    "out",
)


@dataclass
class FitResult:
    """What fit() did: the run folder, the exported best model (None if no epoch finished), the selected
    epoch and its validation metrics, the per-epoch history, whether a stop request ended it early, and the
    records of the clips skipped as unreadable (those of skipped.jsonl)."""

    run: Path
    best_checkpoint: Path | None
    best_epoch: int | None
    best: dict[str, Any]
    history: list[dict[str, Any]]
    global_step: int
    interrupted: bool = False
    skipped: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _State:
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best_value: float = -math.inf
    best_epoch: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)


def fit(
    config: TrainConfig,
    model: nn.Module,
    loss_fn: Callable,
    train_set: Dataset,
    val_set: Dataset | None,
    collate: Callable[[list], Any],
    run: str | Path,
    processes: Processes,
    *,
    on_step: Callable[[dict[str, Any]], None] | None = None,
) -> FitResult:
    """Train model on train_set for config.epochs, selecting on val_set, into the run folder (every rank calls it).

    With config.resume the newest checkpoint in run/checkpoints is continued exactly (same weights as a run
    never stopped, bit for bit on CPU); without it, a run folder that already has checkpoints is refused.
    SIGINT or SIGTERM finishes the current optimiser step, writes a checkpoint and returns interrupted=True.
    on_step(info) is called after each optimiser step with epoch, step, global_step and loss.
    """
    return _Trainer(config, model, loss_fn, train_set, val_set, collate, Path(run), processes).run(on_step)


class _Trainer:
    """The state of one fit(): optimiser, schedule, scaler, progress (_State) and the running loss sums."""

    def __init__(self, config, model, loss_fn, train_set, val_set, collate, run: Path, processes: Processes):
        self.config, self.model, self.loss_fn, self.run_dir, self.processes = config, model, loss_fn, run, processes
        self.train_set, self.val_set, self.collate = train_set, val_set, collate
        self.device = processes.device
        model.to(self.device)
        loss_fn.to(self.device)
        # raises, naming the sizes, when the split is smaller than one optimiser step
        self.steps = StepBatches(len(train_set), config.batch_size, config.accumulation, 0, processes.world, 0, 0).steps
        total = config.epochs * self.steps
        warmup = config.warmup_steps if config.warmup_steps is not None else round(config.warmup_fraction * total)
        self.optimizer = torch.optim.AdamW(
            _parameter_groups(model, config.weight_decay), lr=config.lr, betas=config.betas, weight_decay=0.0
        )
        self.scheduler = build_scheduler(self.optimizer, min(warmup, total), total, config.min_lr_ratio)
        self.autocast_dtype = amp_dtype(config.amp, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.autocast_dtype is torch.float16)
        self.state, self.sums = _State(), {}
        self.tensorboard = open_tensorboard(run / TENSORBOARD_DIR) if config.tensorboard and processes.main else None

        found = ckpt.checkpoints(run)
        if found and not config.resume:
            raise FileExistsError(f"{run} already holds checkpoints: pass --resume to continue it, or a new --out")
        if found:
            self._resume(found)
        else:
            _seed_everything(derive_seed(config.seed, PROCESS_STREAM, processes.rank))
        # clips the data sets left out when they were built (skip_bad: files missing on disk)
        missing = [*getattr(train_set, "skipped", []), *getattr(val_set, "skipped", [])]
        self.state.skipped = _merge_skipped(self.state.skipped, missing)
        if processes.main:
            run.mkdir(parents=True, exist_ok=True)
            config.save(run / CONFIG_NAME)
            ckpt.recover_export(run / BEST)
            self._write_logs()
        processes.barrier()
        self.net = model
        if processes.distributed:
            ids = [self.device] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def run(self, on_step) -> FitResult:
        board = contextlib.closing(self.tensorboard) if self.tensorboard is not None else contextlib.nullcontext()
        with _StopRequest() as stop, board:
            while self.state.epoch < self.config.epochs:
                skipped: list = []
                if not self._train_epoch(stop, on_step, skipped):
                    self._save()
                    return self._result(interrupted=True)
                self._end_epoch(skipped)
        return self._result(interrupted=False)

    def _train_epoch(self, stop: "_StopRequest", on_step, skipped: list) -> bool:
        """The remaining optimiser steps of the current epoch; False when a stop request ended it early."""
        config, state, processes = self.config, self.state, self.processes
        if hasattr(self.train_set, "set_epoch"):  # data sets that draw their own augmentation per (seed, epoch)
            self.train_set.set_epoch(state.epoch)
        sampler = StepBatches(
            len(self.train_set),
            config.batch_size,
            config.accumulation,
            processes.rank,
            processes.world,
            config.seed,
            state.epoch,
            start=state.step_in_epoch,
        )
        loader = DataLoader(
            SeededItems(self.train_set),
            batch_sampler=sampler,
            collate_fn=IndexedCollate(self.collate),
            num_workers=config.num_workers,
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator(),  # keeps the global generator out of the loader
        )
        self.started = time.perf_counter()
        self.model.train()
        batches = iter(loader)
        bar = tqdm(
            total=self.steps,
            initial=state.step_in_epoch,
            desc=f"epoch {state.epoch + 1}/{config.epochs}",
            unit="step",
            disable=not (processes.main and config.progress),
            dynamic_ncols=True,
        )
        with bar:
            while state.step_in_epoch < self.steps:
                if processes.any(stop.requested):
                    return False
                terms = self._step(batches, skipped)
                self.scheduler.step()
                for name, value in terms.items():
                    self.sums[name] = self.sums.get(name, 0.0) + value
                self.sums["steps"] = self.sums.get("steps", 0) + 1
                state.step_in_epoch += 1
                state.global_step += 1
                bar.update(1)
                loss = terms.get("total", math.nan)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}")
                if on_step is not None:
                    info = {"epoch": state.epoch, "step": state.step_in_epoch, "global_step": state.global_step}
                    on_step({**info, "loss": loss})
                every = config.checkpoint_every
                if every and state.global_step % every == 0 and state.step_in_epoch < self.steps:
                    self._save()  # the epoch's end saves after validation
        return True

    def _step(self, batches, skipped: list) -> dict[str, float]:
        """One optimiser step over config.accumulation micro-batches -> the mean of each loss term and the grad
        norm; the clips the batches skipped as unreadable are added to `skipped`."""
        config, processes, accumulation = self.config, self.processes, self.config.accumulation
        means: dict[str, float] = {}
        for a in range(accumulation):
            _, batch = next(batches)
            skipped += getattr(batch, "skipped", [])
            if len(labels_of(batch)) == 0:
                if processes.distributed:
                    raise RuntimeError(
                        "every clip of a micro-batch was unreadable; under DDP remove them from the split"
                    )
                continue
            batch = to_device(batch, self.device)
            last = a == accumulation - 1
            with contextlib.nullcontext() if last or not processes.distributed else self.net.no_sync():
                with _autocast(self.device, self.autocast_dtype):
                    terms = self.loss_fn(self.net(batch), labels_of(batch))
                self.scaler.scale(terms.total / accumulation).backward()
            for name, value in _term_values(terms).items():
                means[name] = means.get(name, 0.0) + value / accumulation
        self.scaler.unscale_(self.optimizer)
        limit = config.grad_clip if config.grad_clip > 0 else math.inf
        means["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), limit))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return means

    def _end_epoch(self, skipped: list) -> None:
        """Validate, select, checkpoint and log the epoch just trained."""
        config, state, processes = self.config, self.state, self.processes
        record = {"epoch": state.epoch + 1, "global_step": state.global_step, "lr": self.scheduler.get_last_lr()[0]}
        record.update(_mean_terms(processes.gather(self.sums)))
        if self.val_set is not None and len(self.val_set):
            predicted = collect_predictions(
                self.model,
                self.val_set,
                self.collate,
                config.batch_size,
                processes,
                self.autocast_dtype,
                num_workers=config.num_workers,
                progress=False,
            )
            probs = predicted.probabilities
            metrics = classification_metrics(predicted.labels, probs.argmax(1), probs.shape[1])
            skipped += predicted.skipped
            record.update(val_uar=metrics.uar, val_war=metrics.war, val_clips=metrics.num_samples)
            value = record[f"val_{config.select_metric}"]
        else:
            value = float(state.epoch)  # no validation split: the last epoch is selected
        record["seconds"] = round(time.perf_counter() - self.started, 3)
        record["best"] = value > state.best_value
        if record["best"]:
            state.best_value, state.best_epoch = value, state.epoch + 1
        state.history.append(record)
        state.skipped = _merge_skipped(state.skipped, [s for part in processes.gather(skipped) for s in part])
        state.epoch, state.step_in_epoch, self.sums = state.epoch + 1, 0, {}
        if record["best"] and processes.main:
            ckpt.export_model(self.model, self.run_dir / BEST)
            write_report(self.run_dir / BEST / SELECTION_NAME, {**record, "select_metric": config.select_metric})
        self._save()
        if processes.main:
            self._write_logs()
            _log_epoch(record)
            if self.tensorboard is not None:
                log_epoch(self.tensorboard, record)

    def _save(self) -> None:
        trainer = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "state": vars(self.state).copy(),
            "config": self.config.to_dict(),
            "world": self.processes.world,
        }
        rank_state = {"rng": ckpt.rng_state(), "sums": dict(self.sums)}
        keep = self.config.keep_checkpoints
        ckpt.save_checkpoint(
            self.run_dir, self.state.global_step, self.processes, self.model, trainer, rank_state, keep
        )

    def _resume(self, found: list[Path]) -> None:
        """Continue from the newest of the checkpoints found that every process can read. Newer ones with a file
        that cannot be read (truncated or corrupt) are set aside as step-N.corrupt with a warning naming the file;
        when none can be read, the newest one's CheckpointError is raised and nothing is set aside."""
        unreadable: list[tuple[Path, CheckpointError | None]] = []
        for folder in reversed(found):
            try:
                trainer, rank_state = ckpt.load_checkpoint(folder, self.model, self.processes.rank)
                error = None
            except CheckpointError as raised:
                error = raised
            if not self.processes.any(error is not None):
                break
            unreadable.append((folder, error))
        else:
            error = next((e for _, e in unreadable if e is not None), None)
            reason = str(error) if error else f"checkpoint {found[-1]} cannot be read by another process"
            raise CheckpointError(f"{reason}; no earlier checkpoint of {self.run_dir} can be read either")
        self.processes.barrier()
        for bad, error in unreadable:
            if error is not None:
                logger.warning(f"{error}; set aside as {bad.name}.corrupt, resuming from {folder.name}")
            if self.processes.main:
                ckpt.set_aside(bad)
        self.processes.barrier()
        _check_resumable(trainer, self.config, self.processes, folder)
        if rank_state is None:
            raise ValueError(f"checkpoint {folder} has no state for rank {self.processes.rank}")
        self.optimizer.load_state_dict(trainer["optimizer"])
        self.scheduler.load_state_dict(trainer["scheduler"])
        self.scaler.load_state_dict(trainer["scaler"])
        self.state = _State(**trainer["state"])
        self.sums = rank_state["sums"]
        ckpt.set_rng_state(rank_state["rng"])
        if self.processes.main:
            logger.info(
                f"resuming {self.run_dir} from {folder.name}: epoch {self.state.epoch + 1}, step "
                f"{self.state.step_in_epoch}"
            )

    def _write_logs(self) -> None:
        """metrics.jsonl (and skipped.jsonl) rewritten whole from the state, so that they match the checkpoint."""
        write_jsonl(self.run_dir / METRICS_NAME, self.state.history)
        if self.state.skipped:
            write_jsonl(self.run_dir / SKIPPED_NAME, self.state.skipped)

    def _result(self, interrupted: bool) -> FitResult:
        state = self.state
        best = next((r for r in state.history if r["epoch"] == state.best_epoch), {})
        return FitResult(
            run=self.run_dir,
            best_checkpoint=self.run_dir / BEST if state.best_epoch is not None else None,
            best_epoch=state.best_epoch,
            best=best,
            history=list(state.history),
            global_step=state.global_step,
            interrupted=interrupted,
            skipped=list(state.skipped),
        )


@dataclass
class Predictions:
    """A model's predictions on a data set: labels [L] int64, probabilities [L, C] float32, the clip ids (the
    batches' ids, else dataset indices) and the clips skipped as unreadable (skip_bad)."""

    labels: np.ndarray
    probabilities: np.ndarray
    ids: list
    skipped: list = field(default_factory=list)


@torch.inference_mode()
def collect_predictions(
    model: nn.Module,
    dataset: Dataset,
    collate: Callable[[list], Any],
    batch_size: int,
    processes: Processes,
    autocast_dtype: torch.dtype | None = None,
    *,
    num_workers: int = 0,
    progress: bool = True,
) -> Predictions:
    """Run model over dataset, each rank a shard, and gather the predictions on every rank (grouped by rank).
    The skipped clips are those the data set left out when it was built (its .skipped) and those its batches
    skipped. The model is put in eval mode and back into the mode it had."""
    was_training = model.training
    model.eval()
    loader = DataLoader(
        SeededItems(dataset),
        batch_sampler=ShardBatches(len(dataset), batch_size, processes.rank, processes.world),
        collate_fn=IndexedCollate(collate),
        num_workers=num_workers,
        pin_memory=processes.device.type == "cuda",
        generator=torch.Generator(),
    )
    labels, probs, ids, skipped = [], [], [], []
    for index, batch in tqdm(loader, desc="evaluate", unit="batch", disable=not (progress and processes.main)):
        skipped += getattr(batch, "skipped", [])
        if len(labels_of(batch)) == 0:
            continue
        batch = to_device(batch, processes.device)
        with _autocast(processes.device, autocast_dtype):
            logits = model(batch).logits
        labels.append(labels_of(batch).cpu())
        probs.append(logits.float().softmax(-1).cpu())
        ids += list(getattr(batch, "ids", None) or index.tolist())
    model.train(was_training)
    parts = processes.gather((labels, probs, ids, skipped))
    labels = [t for part in parts for t in part[0]]
    probs = [t for part in parts for t in part[1]]
    if not labels:
        raise ValueError(f"no readable clip to evaluate among the {len(dataset)} of the data set")
    return Predictions(
        torch.cat(labels).numpy(),
        torch.cat(probs).numpy(),
        [i for part in parts for i in part[2]],
        [*getattr(dataset, "skipped", []), *[s for part in parts for s in part[3]]],
    )


def labels_of(batch: Any) -> torch.Tensor:
    """The [B] class ids of a batch: batch["labels"] or batch.labels."""
    return batch["labels"] if isinstance(batch, Mapping) else batch.labels


def to_device(batch: Any, device: torch.device) -> Any:
    """Tensors of a (nested) mapping, list or tuple moved to device, an object by its .to(device); other values
    as they are."""
    if isinstance(batch, torch.Tensor) or (not isinstance(batch, Mapping | list | tuple) and hasattr(batch, "to")):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {key: to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, list | tuple) and any(isinstance(v, torch.Tensor) for v in batch):
        return type(batch)(to_device(value, device) for value in batch)
    return batch


def _term_values(terms) -> dict[str, float]:
    if hasattr(terms, "_asdict"):
        return {name: float(value.detach()) for name, value in terms._asdict().items()}
    return {"total": float(terms.total.detach())}


def _mean_terms(per_rank: list[dict[str, float]]) -> dict[str, float]:
    steps = sum(s.get("steps", 0) for s in per_rank)
    names = [name for name in per_rank[0] if name != "steps"]
    return {f"train_{name}": sum(s[name] for s in per_rank) / steps for name in names} if steps else {}


def write_skipped(run: Path, known: list[dict[str, Any]], new: list) -> None:
    """Write run/skipped.jsonl: the skipped-clip records known (a FitResult's) and new skipped clips (e.g. the
    test split's), each clip once."""
    merged = _merge_skipped(known, new)
    if merged:
        write_jsonl(run / SKIPPED_NAME, merged)


def _merge_skipped(known: list[dict[str, Any]], new: list) -> list[dict[str, Any]]:
    """Skipped-clip records (dataclasses such as grace_fast.data's BadClip, as dicts), each clip once."""
    records = {r.get("id", str(r)): r for r in known}
    for item in new:
        record = dataclasses.asdict(item) if dataclasses.is_dataclass(item) else {"id": str(item)}
        records.setdefault(record.get("id", str(record)), record)
    return list(records.values())


def _parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only: biases, norms and scalars (the InfoNCE temperature) are left alone."""
    decay, plain = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (decay if parameter.dim() >= 2 else plain).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of config.amp on device (None: full precision). auto is bf16 where the hardware has it (a
    GPU, or a CPU with AMX or AVX512-BF16: grace_fast.hardware) and fp32 elsewhere; bf16 runs on any device (slowly
    on a CPU without bf16 hardware); fp16 needs a GPU."""
    if amp == "auto":
        return auto_dtype(device)
    if amp == "off":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if device.type != "cuda":
        raise ValueError(f"amp={amp!r} needs a GPU (device is {device}); use amp auto, bf16 or off on CPU")
    return torch.float16


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002
    torch.manual_seed(seed)


def check_same_run(saved: TrainConfig, config: TrainConfig, where: Path) -> None:
    """Raise, naming each field, when config differs from the saved one in more than bookkeeping."""
    old, new = saved.to_dict(), config.to_dict()
    changed = [k for k in new if k not in RESUMABLE_CHANGES and old[k] != new[k]]
    if changed:
        details = "; ".join(f"{k}: {old[k]!r} -> {new[k]!r}" for k in changed)
        raise ValueError(f"cannot resume {where}: the config changed ({details}); use a new --out to change it")


def _check_resumable(trainer: dict[str, Any], config: TrainConfig, processes: Processes, folder: Path) -> None:
    check_same_run(type(config).from_dict(trainer["config"]), config, folder)
    if trainer["world"] != processes.world:
        raise ValueError(
            f"cannot resume {folder}: it was written by {trainer['world']} processes, this run has "
            f"{processes.world} (the data order and batch split depend on it)"
        )


def _log_epoch(record: dict[str, Any]) -> None:
    parts = [f"epoch {record['epoch']}", f"loss {record.get('train_total', float('nan')):.4f}"]
    if "val_uar" in record:
        parts.append(f"val UAR {100 * record['val_uar']:.2f} WAR {100 * record['val_war']:.2f}")
    parts.append("(best)" if record["best"] else "")
    logger.info("  ".join(p for p in parts if p))


class _StopRequest:
    """SIGINT / SIGTERM set .requested (the loop then checkpoints at the next step boundary); a second one stops
    at once. Only installed in the main thread."""

    def __init__(self):
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        tqdm.write(f"{signal.Signals(signum).name}: saving a checkpoint after this step (again to stop now)")

    def __enter__(self) -> "_StopRequest":
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
