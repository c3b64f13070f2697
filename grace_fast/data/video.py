"""Video files: write H.264 mp4 with PyAV, read sampled frames with decord, list the clips of a folder.

>>> import numpy as np
>>> frames = np.zeros((16, 64, 64, 3), dtype=np.uint8)
>>> write_mp4("/tmp/clip.mp4", frames, fps=25)
>>> read_video("/tmp/clip.mp4", 8).shape
(8, 64, 64, 3)
"""

import os
from collections import Counter
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import decord
import numpy as np
import torch

from grace_fast.errors import UserError
from grace_fast.files import temporary_file

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg")


class VideoReadError(UserError, RuntimeError):
    """A video file is missing, unreadable or has no frames; the message names the file."""


def write_mp4(path: str | os.PathLike, frames, fps: float) -> None:
    """Write frames [T, H, W, 3] uint8 RGB (numpy or torch) to an H.264 mp4 (yuv420p), atomically.

    H and W must be even (yuv420p halves the chroma planes). The file appears complete or not at all. The same
    frames and fps give the same bytes in any process and on any number of cores (libx264 runs its C code on one
    thread; see the README, "The synthetic set", for what may differ between machines).
    """
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu().numpy()
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise ValueError(f"frames must be [T, H, W, 3] with T >= 1, got shape {frames.shape}")
    if frames.dtype != np.uint8:
        raise TypeError(f"frames must be uint8 RGB, got {frames.dtype}")
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise ValueError(f"frames height and width must be even for yuv420p H.264, got {height}x{width}")
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    path = Path(path)
    tmp = temporary_file(path)
    try:
        with av.open(tmp, mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            # x264's AVX-512 code reads memory it has not written (in its MB-tree pass), so that with its assembly
            # the bytes followed whatever the heap held; its C code does not, nor does it change with the CPU
            stream.options = {"crf": "18", "x264-params": "no-asm=1"}
            # by default a frame is cut into one slice per core (from 128 px up), so the bytes followed the core count
            stream.codec_context.thread_count = 1
            for frame in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
            container.mux(stream.encode())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def uniform_indices(length: int, num_frames: int) -> np.ndarray:
    """The centres of num_frames equal segments of a clip of `length` frames: [num_frames] int64.

    A clip shorter than num_frames repeats frames.
    """
    if length < 1 or num_frames < 1:
        raise ValueError(f"length and num_frames must be >= 1, got {length} and {num_frames}")
    return ((np.arange(num_frames) + 0.5) * length / num_frames).astype(np.int64)


def read_video(
    path: str | os.PathLike,
    num_frames: int,
    *,
    sampler: Callable[[int, int], np.ndarray] = uniform_indices,
) -> np.ndarray:
    """Decode num_frames frames of a video, chosen by sampler(length, num_frames): [T, H, W, 3] uint8 RGB.

    Raises VideoReadError naming the file when it is missing, corrupt or empty (or narrower than decord handles:
    it mis-sizes the rows of a few widths up to 72 pixels).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise VideoReadError(f"video file not found: {path}")
    try:
        reader = decord.VideoReader(path, ctx=decord.cpu(0))
        length = len(reader)
        if length == 0:
            raise VideoReadError(f"video has no frames: {path}")
        return reader.get_batch(sampler(length, num_frames).tolist()).asnumpy()
    except (RuntimeError, decord.DECORDError) as error:
        if isinstance(error, VideoReadError):
            raise
        raise VideoReadError(f"cannot decode video {path}: {str(error).splitlines()[0]}") from error


def read_whole_video(path: str | os.PathLike) -> tuple[np.ndarray, float]:
    """Every frame of a video, [T, H, W, 3] uint8 RGB, and its average frame rate (VideoReadError as read_video)."""
    frames = read_video(path, 1, sampler=lambda length, _: np.arange(length))
    return frames, float(decord.VideoReader(os.fspath(path), ctx=decord.cpu(0)).get_avg_fps())


def list_videos(source: str | os.PathLike) -> list[tuple[str, str]]:
    """The clips of a data set as (clip id, path) pairs, sorted by clip id.

    source is a folder (every video file under it; the id is the path relative to it without the suffix) or a
    text file with one video path per line (relative paths are relative to the file; the id is the file stem).
    """
    source = Path(source)
    if source.is_dir():
        paths = sorted(p for p in source.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
        clips = [(p.relative_to(source).with_suffix("").as_posix(), str(p)) for p in paths]
    elif source.is_file():
        lines = [line.strip() for line in source.read_text().splitlines()]
        paths = [Path(line) if Path(line).is_absolute() else source.parent / line for line in lines if line]
        clips = sorted((p.stem, str(p)) for p in paths)
    else:
        raise FileNotFoundError(f"videos: no folder or list file at {source}")
    duplicates = [clip for clip, count in Counter(clip for clip, _ in clips).items() if count > 1]
    if duplicates:
        raise ValueError(f"videos: clip ids occur more than once in {source}: {duplicates[:5]}")
    if not clips:
        raise ValueError(f"videos: no video files ({', '.join(VIDEO_SUFFIXES)}) in {source}")
    return clips
