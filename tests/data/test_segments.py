"""grace_fast.data.segments: DFEW-style segment sampling, centres to evaluate, random within segments to train."""

import numpy as np
import pytest

from grace_fast.data.segments import segment_indices
from grace_fast.data.video import uniform_indices

CASES = [(64, 16), (20, 8), (16, 16), (17, 16), (100, 3), (5, 16), (1, 4)]
IDS = ["4-per-segment", "uneven", "equal", "one-extra", "long", "short-clip", "one-frame"]


@pytest.mark.parametrize("length, num_frames", CASES, ids=IDS)
def test_evaluation_takes_the_segment_centres(length, num_frames):
    centres = np.floor((np.arange(num_frames) + 0.5) * length / num_frames).astype(np.int64)
    assert (
        segment_indices(length, num_frames).tolist() == centres.tolist() == uniform_indices(length, num_frames).tolist()
    )


@pytest.mark.parametrize("length, num_frames", CASES, ids=IDS)
def test_training_takes_one_frame_inside_each_segment(length, num_frames):
    rng = np.random.default_rng(0)
    draws = np.stack([segment_indices(length, num_frames, rng) for _ in range(300)])  # [300, T]
    segment = np.arange(num_frames)
    first = np.floor(segment * length / num_frames)
    last = np.ceil((segment + 1) * length / num_frames) - 1  # the frames a segment overlaps
    assert draws.dtype == np.int64 and (draws >= first).all() and (draws <= last).all()
    assert (np.diff(draws, axis=1) >= 0).all()  # in temporal order
    for i in range(num_frames):  # every frame a segment covers is drawn sometimes
        assert set(draws[:, i].tolist()) == set(range(int(first[i]), int(last[i]) + 1)) or length < num_frames


def test_a_short_clip_repeats_its_frames_in_order():
    assert segment_indices(5, 16).tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 4, 4, 4]
    drawn = segment_indices(5, 16, np.random.default_rng(3))
    assert sorted(set(drawn.tolist())) == [0, 1, 2, 3, 4] and (np.diff(drawn) >= 0).all()


def test_training_draws_follow_the_generator():
    a = segment_indices(90, 16, np.random.default_rng(7))
    assert a.tolist() == segment_indices(90, 16, np.random.default_rng(7)).tolist()
    assert a.tolist() != segment_indices(90, 16, np.random.default_rng(8)).tolist()


def test_bad_lengths_are_named():
    with pytest.raises(ValueError, match="length and num_frames must be >= 1, got 0 and 16"):
        segment_indices(0, 16, np.random.default_rng(0))
