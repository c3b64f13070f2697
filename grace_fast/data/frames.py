"""Read a clip stored either as a video file (decoded by decord through `video.read_video`) or as a folder of
frame images (how DFEW's clip_224x224 and FERV39k's 2_ClipsforFaceCrop ship), with errors naming the clip.

>>> import numpy as np, tempfile
>>> from grace_fast.data.video import write_mp4
>>> path = tempfile.mkdtemp() + "/clip.mp4"
>>> write_mp4(path, np.zeros((10, 64, 64, 3), np.uint8), fps=25)
>>> read_clip(path, 4).shape
(4, 64, 64, 3)
"""

import os
import re
from collections.abc import Callable

import numpy as np
from PIL import Image, UnidentifiedImageError

from grace_fast.data.video import VideoReadError, read_video, uniform_indices

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def read_clip(
    path: str | os.PathLike,
    num_frames: int,
    *,
    sampler: Callable[[int, int], np.ndarray] = uniform_indices,
) -> np.ndarray:
    """num_frames frames of the clip at path (a video file or a folder of frames) chosen by
    sampler(length, num_frames): [T, H, W, 3] uint8 RGB. Raises VideoReadError naming the clip when it is missing,
    empty or unreadable."""
    if os.path.isdir(path):
        return read_frame_folder(path, num_frames, sampler=sampler)
    return read_video(path, num_frames, sampler=sampler)


def frame_files(folder: str | os.PathLike) -> list[str]:
    """The image files of a frame folder in natural order (2.jpg before 10.jpg)."""
    names = [name for name in os.listdir(folder) if name.lower().endswith(IMAGE_SUFFIXES)]
    key = [[int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)] for name in names]
    return [os.path.join(folder, name) for _, name in sorted(zip(key, names, strict=True))]


def read_frame_folder(
    folder: str | os.PathLike,
    num_frames: int,
    *,
    sampler: Callable[[int, int], np.ndarray] = uniform_indices,
) -> np.ndarray:
    """Decode the sampled frames of a folder of frame images: [T, H, W, 3] uint8 RGB (only those frames are read)."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise VideoReadError(f"frame folder not found: {folder}")
    files = frame_files(folder)
    if not files:
        raise VideoReadError(f"frame folder has no images ({', '.join(IMAGE_SUFFIXES)}): {folder}")
    frames, cache = [], {}
    for index in sampler(len(files), num_frames).tolist():
        if index not in cache:
            try:
                with Image.open(files[index]) as image:
                    cache[index] = np.asarray(image.convert("RGB"))
            except (OSError, UnidentifiedImageError) as error:
                raise VideoReadError(f"cannot decode frame {files[index]} of clip {folder}: {error}") from error
        frames.append(cache[index])
    if len({frame.shape for frame in frames}) > 1:
        raise VideoReadError(f"frames of {folder} differ in size: {sorted({frame.shape for frame in frames})}")
    return np.stack(frames)
