"""Which clips each process sees, and in what order: a function of (seed, epoch) alone.

Epoch e shuffles the training clips by a generator seeded from (seed, e) and cuts the order into micro-batches
of batch_size clips; optimiser step s takes micro-batches (s * accumulation + a) * world + rank for a in
[0, accumulation) on each rank. So the sequence of micro-batches does not depend on the number of processes (one
process with accumulation 2 sees exactly what two processes with accumulation 1 see), a resumed epoch starts at
its step without loading the clips before it, and the last order % (batch_size * accumulation * world) clips of
each epoch's order are dropped (others next epoch). Each clip is loaded under a seed of (seed, epoch, index),
so random augmentation is the same whichever process, worker or resume loads it.

>>> sampler = StepBatches(num_items=10, batch_size=2, accumulation=1, rank=0, world=1, seed=0, epoch=0, start=3)
>>> len(sampler), len(list(sampler)[0])
(2, 2)
"""

import contextlib
import random
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

# independent random streams derived from the one seed of a run
TRAIN_STAGE, EVAL_STAGE, PROCESS_STREAM, MASK_STREAM = 0, 1, 3, 4  # MASK_STREAM: pretraining's tube masks


def epoch_order(num_items: int, seed: int, epoch: int) -> list[int]:
    """The shuffled clip order of one epoch: [num_items] indices."""
    generator = torch.Generator().manual_seed(derive_seed(seed, TRAIN_STAGE, epoch))
    return torch.randperm(num_items, generator=generator).tolist()


def item_seed(seed: int, epoch: int, index: int, stage: int = TRAIN_STAGE) -> int:
    """The seed under which clip `index` is loaded in `epoch` (augmentation randomness)."""
    return derive_seed(seed, stage, epoch, index)


def derive_seed(*entropy: int) -> int:
    """A 63-bit seed from non-negative integers (a stream name and its coordinates), e.g. (seed, stage, epoch)."""
    return int(np.random.SeedSequence(list(entropy)).generate_state(1, np.uint64)[0] >> 1)


def steps_per_epoch(num_items: int, batch_size: int, accumulation: int, world: int) -> int:
    return num_items // (batch_size * accumulation * world)


class StepBatches(Sampler):
    """The micro-batches of one rank in one epoch from optimiser step `start` on, each a list of
    (clip index, item seed) pairs (the keys of SeededItems)."""

    def __init__(
        self, num_items: int, batch_size: int, accumulation: int, rank: int, world: int, seed: int, epoch: int, start=0
    ):
        self.num_items, self.batch_size, self.accumulation = num_items, batch_size, accumulation
        self.rank, self.world, self.seed, self.epoch, self.start = rank, world, seed, epoch, start
        self.steps = steps_per_epoch(num_items, batch_size, accumulation, world)
        if self.steps == 0:
            raise ValueError(
                f"the training split has {num_items} clips, fewer than one optimiser step takes: batch_size "
                f"{batch_size} x accumulation {accumulation} x processes {world}; lower them or add clips"
            )
        if not 0 <= start <= self.steps:
            raise ValueError(f"start step {start} outside [0, {self.steps}]")

    def __len__(self) -> int:
        return (self.steps - self.start) * self.accumulation

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order, B = epoch_order(self.num_items, self.seed, self.epoch), self.batch_size
        for step in range(self.start, self.steps):
            for a in range(self.accumulation):
                g = (step * self.accumulation + a) * self.world + self.rank
                yield [(i, item_seed(self.seed, self.epoch, i)) for i in order[g * B : (g + 1) * B]]


class ShardBatches(Sampler):
    """Evaluation: rank r takes clips r, r + world, ... in batches of batch_size (none dropped or repeated)."""

    def __init__(self, num_items: int, batch_size: int, rank: int, world: int, seed: int = 0):
        self.indices = list(range(rank, num_items, world))
        self.batch_size, self.seed = batch_size, seed

    def __len__(self) -> int:
        return -(-len(self.indices) // self.batch_size)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for start in range(0, len(self.indices), self.batch_size):
            chunk = self.indices[start : start + self.batch_size]
            yield [(i, item_seed(self.seed, 0, i, EVAL_STAGE)) for i in chunk]


@contextlib.contextmanager
def seeded(seed: int):
    """Run a block with python, numpy and torch (CPU) random generators seeded by seed; restore them after.

    numpy's legacy global generator is the one augmentation code draws from when it is given none."""
    python_state, numpy_state = random.getstate(), np.random.get_state()  # noqa: NPY002
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed % 2**32)  # noqa: NPY002
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)  # noqa: NPY002


class SeededItems(Dataset):
    """dataset[index] loaded under its item seed: key (index, seed) -> (index, item)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        with seeded(seed):
            return index, self.dataset[index]


class IndexedCollate:
    """[(index, item), ...] -> (indices [B] long, collate(items)); picklable for loader workers."""

    def __init__(self, collate: Callable[[list], object]):
        self.collate = collate

    def __call__(self, items: list) -> tuple[torch.Tensor, object]:
        return torch.tensor([index for index, _ in items]), self.collate([item for _, item in items])
