"""The data order: a function of (seed, epoch), the same micro-batches whatever the number of processes, resumable
at any step; seeded item loading; the warm-up + cosine schedule."""

import math

import pytest
import torch

from grace_fast.train.batch_order import SeededItems, ShardBatches, StepBatches, epoch_order
from grace_fast.train.schedule import warmup_cosine


def batches(**kw) -> list[list[int]]:
    return [[i for i, _ in batch] for batch in StepBatches(**kw)]


def test_one_process_with_accumulation_sees_what_two_processes_see():
    common = dict(num_items=23, batch_size=2, seed=5, epoch=3)
    single = batches(accumulation=2, rank=0, world=1, **common)
    rank0, rank1 = (batches(accumulation=1, rank=r, world=2, **common) for r in (0, 1))
    assert len(single) == 10 and len(rank0) == len(rank1) == 5  # 23 // 4 steps, 3 clips dropped
    assert single == [b for pair in zip(rank0, rank1, strict=True) for b in pair]
    seen = [i for b in single for i in b]
    assert len(set(seen)) == 20 and seen == epoch_order(23, 5, 3)[:20]


def test_resumed_epoch_continues_the_same_order():
    full = batches(num_items=30, batch_size=3, accumulation=2, rank=0, world=1, seed=1, epoch=0)
    assert batches(num_items=30, batch_size=3, accumulation=2, rank=0, world=1, seed=1, epoch=0, start=2) == full[4:]


def test_order_changes_with_epoch_and_seed_only():
    assert epoch_order(50, 0, 1) == epoch_order(50, 0, 1)
    assert epoch_order(50, 0, 1) != epoch_order(50, 0, 2) != epoch_order(50, 1, 1)
    assert sorted(epoch_order(50, 0, 1)) == list(range(50))


def test_eval_shards_cover_every_clip_once():
    shards = [[i for b in ShardBatches(11, 3, rank, 3) for i, _ in b] for rank in range(3)]
    assert sorted(sum(shards, [])) == list(range(11))


def test_too_few_clips_for_one_step_is_refused():
    with pytest.raises(ValueError, match="7 clips, fewer than one optimiser step takes: batch_size 4 x accumulation 1"):
        StepBatches(7, 4, 1, 0, 2, 0, 0)


class Noisy(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return torch.rand(2)


def test_items_depend_on_their_seed_not_on_the_global_generator():
    items = SeededItems(Noisy())
    torch.manual_seed(0)
    a = items[(1, 77)][1]
    torch.rand(5)  # moves the global generator
    before = torch.get_rng_state()
    b = items[(1, 77)][1]
    assert torch.equal(a, b) and not torch.equal(a, items[(1, 78)][1])
    assert torch.equal(torch.get_rng_state(), before)  # loading leaves the global generator where it was


def test_schedule_warms_up_linearly_then_decays_by_cosine_to_the_floor():
    values = [warmup_cosine(s, warmup=4, total=12, floor=0.1) for s in range(12)]
    assert values[:4] == [0.25, 0.5, 0.75, 1.0]
    for s in range(4, 12):
        assert values[s] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - 4) / 8)))
    assert warmup_cosine(12, 4, 12, 0.1) == pytest.approx(0.1)
