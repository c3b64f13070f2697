"""Segment sampling of a clip's frames (the DFEW protocol): split the clip into T equal segments, one frame each.

Evaluation takes each segment's centre (the same indices as `video.uniform_indices`); training takes a uniformly
random point of each segment. A clip shorter than T frames repeats its frames in order.

>>> segment_indices(20, 4).tolist()
[2, 7, 12, 17]
>>> segment_indices(3, 6).tolist()
[0, 0, 1, 1, 2, 2]
>>> import numpy as np
>>> segment_indices(20, 4, np.random.default_rng(0)).tolist()
[3, 6, 10, 15]
"""

import numpy as np

from grace_fast.data.video import uniform_indices


def segment_indices(length: int, num_frames: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """Frame indices [num_frames] int64: frame floor((i + x_i) * length / num_frames) for segment i, where x_i is
    0.5 (rng None: the centres) or uniform in [0, 1) drawn from rng (training)."""
    if rng is None:
        return uniform_indices(length, num_frames)
    if length < 1 or num_frames < 1:
        raise ValueError(f"length and num_frames must be >= 1, got {length} and {num_frames}")
    return ((np.arange(num_frames) + rng.random(num_frames)) * length / num_frames).astype(np.int64)
