"""ClipList.holdout on hand-made clip lists: stratified counts, a non-empty held-out part, a clip kept in the rest
for every class with two or more, determinism per seed, and errors where no split exists."""

import numpy as np
import pytest

from grace_fast.data.layouts import Clip, ClipList


def clip_list(counts: list[int]) -> ClipList:
    """counts[c] clips of class c, classes interleaved so that list order and class order differ."""
    labels = [c for c, n in enumerate(counts) for _ in range(n)]
    order = np.random.default_rng(0).permutation(len(labels))
    clips = [Clip(f"clip{i}", f"clip{i}.mp4", labels[j]) for i, j in enumerate(order)]
    return ClipList(clips, [f"class{c}" for c in range(len(counts))], "hand-made")


@pytest.mark.parametrize(
    "counts, fraction, held_counts",
    [
        pytest.param([10, 5, 2, 1], 0.3, [3, 2, 1, 0], id="round-each-class-keep-the-last-clip"),
        pytest.param([2, 2, 2], 0.5, [1, 1, 1], id="pairs-half"),
        pytest.param([2, 3], 0.9, [1, 2], id="large-fraction-keeps-one-each"),
        pytest.param([0, 3, 0], 0.2, [0, 1, 0], id="empty-classes"),
        pytest.param([3, 4, 3], 0.1, [0, 1, 0], id="rounds-to-nothing-takes-one-of-the-largest"),
        pytest.param([4, 4], 0.1, [1, 0], id="largest-tie-takes-the-first"),
        pytest.param([1, 1, 1], 0.5, [1, 0, 0], id="single-clip-classes-give-one"),
    ],
)
def test_holdout_holds_out_the_stratified_count_of_each_class(counts, fraction, held_counts):
    clips = clip_list(counts)
    rest, held = clips.holdout(fraction, seed=3)
    assert held.class_counts().tolist() == held_counts
    assert rest.class_counts().tolist() == [n - h for n, h in zip(counts, held_counts, strict=True)]
    assert sorted(c.id for c in (*rest, *held)) == sorted(c.id for c in clips)
    assert [c.id for c in rest] == [c.id for c in clips if c not in held.clips]  # the list's order is kept


@pytest.mark.parametrize("seed", range(40))
def test_holdout_is_never_empty_and_keeps_a_training_clip_of_every_class_with_two(seed):
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 6, size=rng.integers(1, 8)).tolist()
    counts[0] += 2 - min(sum(counts), 2)  # at least 2 clips in all
    clips = clip_list(counts)
    fraction = float(rng.choice([0.01, 0.05, 0.1, 0.2, 0.5, 0.9, 0.99]))
    rest, held = clips.holdout(fraction, seed=seed)
    assert len(held) >= 1 and len(rest) >= 1
    assert all(r >= 1 for r, n in zip(rest.class_counts(), counts, strict=True) if n >= 2)
    assert {c.id for c in rest}.isdisjoint(c.id for c in held) and len(rest) + len(held) == len(clips)
    assert (rest, held) == clips.holdout(fraction, seed=seed)


def test_holdout_draws_the_held_out_clips_by_seed():
    clips = clip_list([12, 9, 6])
    splits = {tuple(c.id for c in clips.holdout(0.25, seed=seed)[1]) for seed in range(5)}
    assert len(splits) == 5
    fallback = {clips.holdout(0.01, seed=seed)[1][0].id for seed in range(10)}  # one clip of class 0, drawn
    assert len(fallback) > 1 and all(clips[[c.id for c in clips].index(i)].label == 0 for i in fallback)


@pytest.mark.parametrize("counts", [[], [1], [0, 1]], ids=["no-clip", "one-clip", "one-clip-two-classes"])
def test_holdout_of_fewer_than_two_clips_raises(counts):
    with pytest.raises(ValueError, match=rf"hand-made: cannot hold out a part of {sum(counts)} clip\(s\)"):
        clip_list(counts).holdout(0.5)


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5])
def test_holdout_fraction_outside_0_1_raises(fraction):
    with pytest.raises(ValueError, match=rf"fraction must be in \(0, 1\), got {fraction}"):
        clip_list([3, 3]).holdout(fraction)
