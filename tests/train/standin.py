"""A tiny stand-in for GRACE behind the trainer's interfaces: clips of F features, an MLP with dropout, and a
loss with two terms. Its data set draws augmentation noise from the global torch generator, as real
augmentation does, so that the tests see whether items are seeded.

`python -m tests.train.standin RUN [--resume] [--sleep S] ...` trains it (for the subprocess tests; under torchrun
with several processes).
"""

import argparse
import sys
import time
from types import SimpleNamespace
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from grace_fast.train.config import TrainConfig
from grace_fast.train.distributed import start, stop
from grace_fast.train.loop import fit

FEATURES, CLASSES = 6, 3


class Clips(torch.utils.data.Dataset):
    def __init__(self, n: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, CLASSES, (n,), generator=g).tolist()
        centres = torch.randn(CLASSES, FEATURES, generator=g)
        self.x = centres[self.labels] + 0.8 * torch.randn(n, FEATURES, generator=g)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.x[i] + 0.1 * torch.randn(FEATURES), self.labels[i]  # augmentation from the global generator


def collate(items):
    return {"features": torch.stack([x for x, _ in items]), "labels": torch.tensor([y for _, y in items])}


class Net(nn.Module):
    def __init__(self, dropout: float = 0.2):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(FEATURES, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, CLASSES))
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, batch):
        return SimpleNamespace(logits=self.body(batch["features"]) * self.scale)


class Terms(NamedTuple):
    total: torch.Tensor
    ce: torch.Tensor
    l2: torch.Tensor


class Loss(nn.Module):
    def forward(self, output, labels):
        ce = F.cross_entropy(output.logits, labels)
        l2 = output.logits.pow(2).mean()
        return Terms(ce + 0.01 * l2, ce, l2)


def config(run, **changes) -> TrainConfig:
    # amp off: the trainer's tests compare runs to 1e-5, which bf16 autocast (amp auto on a bf16 CPU) would not keep
    values = dict(epochs=3, batch_size=4, lr=0.05, warmup_steps=2, checkpoint_every=2, progress=False, out=str(run))
    values["amp"] = "off"
    return TrainConfig(**{**values, **changes})


def train(run, *, on_step=None, dropout=0.2, **changes):
    """fit() the stand-in on 40 training and 9 validation clips; returns (FitResult, model)."""
    processes = start("cpu")
    torch.manual_seed(0)
    model = Net(dropout)
    result = fit(
        config(run, **changes), model, Loss(), Clips(40), Clips(9, seed=1), collate, run, processes, on_step=on_step
    )
    return result, model


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("run")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--sleep", type=float, default=0.0, help="seconds to wait after each step")
    parser.add_argument("--accumulation", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--dropout", type=float, default=0.2)
    args = parser.parse_args()
    torch.set_num_threads(1)

    def on_step(info):
        print(f"step {info['global_step']}", flush=True)
        time.sleep(args.sleep)

    result, model = train(
        args.run,
        on_step=on_step,
        resume=args.resume,
        accumulation=args.accumulation,
        batch_size=args.batch_size,
        dropout=args.dropout,
    )
    if start("cpu").main:
        torch.save(model.state_dict(), f"{args.run}/final.pt")
    stop()
    return 130 if result.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
