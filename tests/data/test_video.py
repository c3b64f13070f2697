"""grace_fast.data.video: mp4 writing, uniform frame sampling through decord, clip listing, errors naming files."""

import os
import subprocess
import sys

import av
import numpy as np
import pytest
import torch

from grace_fast.data.video import VideoReadError, list_videos, read_video, uniform_indices, write_mp4


def _numbered_frames(n: int, height: int = 32, width: int = 80) -> np.ndarray:
    """Frame i is flat grey at level 20 + 10 i, so a decoded frame tells its index (H.264 keeps flat areas)."""
    levels = (20 + 10 * np.arange(n)).astype(np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (n, height, width, 3)).copy()


def _decoded_index(frames: np.ndarray) -> np.ndarray:
    return np.rint((frames.reshape(len(frames), -1).mean(1) - 20) / 10).astype(np.int64)


def _moving_texture(n: int, size: int) -> np.ndarray:
    """[n, size, size, 3] uint8: a drifting coloured texture with noise, for which x264 has motion to search and
    references to weigh."""
    t = np.arange(n)[:, None, None]
    y, x = np.mgrid[:size, :size]
    grey = 128 + 60 * np.sin((x + 3 * t) / 7) * np.cos((y - 2 * t) / 11)
    noise = np.random.default_rng(0).normal(0, 6, (n, size, size, 3))
    return np.clip(np.rint(grey[..., None] + np.array([0, 20, -20]) + noise), 0, 255).astype(np.uint8)


# writes each FOLDER/NAME.npy to FOLDER/NAME-PROCESS.mp4 (argv: FOLDER PROCESS); a PROCESS name ending in
# "one-core" first confines it to one CPU
WRITE_IN_A_FRESH_PROCESS = """
import os, pathlib, sys
import numpy as np
if sys.argv[2].endswith("one-core"):
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
from grace_fast.data.video import write_mp4
for frames in pathlib.Path(sys.argv[1]).glob("*.npy"):
    write_mp4(frames.with_name(f"{frames.stem}-{sys.argv[2]}.mp4"), np.load(frames), fps=25)
"""


@pytest.mark.parametrize(
    "length, num_frames, expected",
    [(20, 8, [1, 3, 6, 8, 11, 13, 16, 18]), (8, 8, list(range(8))), (3, 8, [0, 0, 0, 1, 1, 2, 2, 2]), (1, 2, [0, 0])],
    ids=["longer", "equal", "shorter-repeats", "single-frame"],
)
def test_uniform_indices_are_segment_centres(length, num_frames, expected):
    assert uniform_indices(length, num_frames).tolist() == expected


def test_read_video_returns_the_uniformly_sampled_frames_of_a_written_mp4(tmp_path):
    path = tmp_path / "clip.mp4"
    write_mp4(path, _numbered_frames(20), fps=12.5)
    frames = read_video(path, 8)
    assert frames.shape == (8, 32, 80, 3) and frames.dtype == np.uint8
    assert _decoded_index(frames).tolist() == uniform_indices(20, 8).tolist()
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.average_rate, stream.frames) == ("h264", 12.5, 20)


def test_write_mp4_gives_the_same_bytes_in_any_process_and_on_any_number_of_cores(tmp_path):
    """Issue 15: with x264's assembly the bytes followed what the heap held (each fresh process here starts from
    other heap bytes: MALLOC_PERTURB_, read by glibc; it showed at 64 px), and from 128 px up x264 cut each frame
    into one slice per core (hence a process confined to one core; on a one-core machine that part cannot fail)."""
    sizes = (64, 128)
    for size in sizes:
        np.save(tmp_path / f"{size}px.npy", _moving_texture(24, size))
    plain = {name: value for name, value in os.environ.items() if name != "MALLOC_PERTURB_"}
    fresh = {"plain": {}, "heap-85": {"MALLOC_PERTURB_": "85"}, "heap-170-one-core": {"MALLOC_PERTURB_": "170"}}
    processes = [
        subprocess.Popen([sys.executable, "-c", WRITE_IN_A_FRESH_PROCESS, tmp_path, name], env={**plain, **env})
        for name, env in fresh.items()
    ]
    for run in range(2):
        for size in sizes:
            write_mp4(tmp_path / f"{size}px-this-process-{run}.mp4", np.load(tmp_path / f"{size}px.npy"), fps=25)
    assert [process.wait() for process in processes] == [0] * len(fresh)
    for size in sizes:
        written = {path.name: path.read_bytes() for path in tmp_path.glob(f"{size}px-*.mp4")}
        assert len(written) == 2 + len(fresh)
        assert [name for name, data in written.items() if data != written[f"{size}px-this-process-0.mp4"]] == []


def test_write_mp4_accepts_a_torch_tensor_and_leaves_no_temporary_file(tmp_path):
    write_mp4(tmp_path / "clip.mp4", torch.from_numpy(_numbered_frames(4)), fps=25)
    assert os.listdir(tmp_path) == ["clip.mp4"]
    assert _decoded_index(read_video(tmp_path / "clip.mp4", 4)).tolist() == [0, 1, 2, 3]


def test_read_video_with_a_custom_sampler(tmp_path):
    write_mp4(tmp_path / "clip.mp4", _numbered_frames(10), fps=25)
    frames = read_video(tmp_path / "clip.mp4", 3, sampler=lambda length, n: np.array([length - 1, 0, 4]))
    assert _decoded_index(frames).tolist() == [9, 0, 4]


@pytest.mark.parametrize(
    "frames, error, match",
    [
        (np.zeros((4, 31, 32, 3), np.uint8), ValueError, "even"),
        (np.zeros((4, 32, 32), np.uint8), ValueError, r"\[T, H, W, 3\]"),
        (np.zeros((0, 32, 32, 3), np.uint8), ValueError, "T >= 1"),
        (np.zeros((4, 32, 32, 3), np.float32), TypeError, "uint8"),
    ],
    ids=["odd-height", "no-channels", "no-frames", "float"],
)
def test_write_mp4_rejects_bad_frames_and_writes_nothing(tmp_path, frames, error, match):
    with pytest.raises(error, match=match):
        write_mp4(tmp_path / "clip.mp4", frames, fps=25)
    assert os.listdir(tmp_path) == []


def test_read_video_names_a_missing_file(tmp_path):
    with pytest.raises(VideoReadError, match="not found: .*missing.mp4"):
        read_video(tmp_path / "missing.mp4", 8)


@pytest.mark.parametrize("content", [b"not a video" * 50, b""], ids=["garbage", "empty"])
def test_read_video_names_a_corrupt_file(tmp_path, content):
    (tmp_path / "bad.mp4").write_bytes(content)
    with pytest.raises(VideoReadError, match="cannot decode video .*bad.mp4"):
        read_video(tmp_path / "bad.mp4", 8)


def test_read_video_names_a_truncated_file(tmp_path):
    write_mp4(tmp_path / "clip.mp4", _numbered_frames(20), fps=25)
    data = (tmp_path / "clip.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoReadError, match="cut.mp4"):
        read_video(tmp_path / "cut.mp4", 8)


def test_list_videos_of_a_folder_uses_relative_paths_as_ids(tmp_path):
    for name in ("b/2.mp4", "a/1.avi", "a/notes.txt", "3.MP4"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert list_videos(tmp_path) == [
        ("3", str(tmp_path / "3.MP4")),
        ("a/1", str(tmp_path / "a/1.avi")),
        ("b/2", str(tmp_path / "b/2.mp4")),
    ]


def test_list_videos_of_a_list_file_resolves_relative_paths(tmp_path):
    (tmp_path / "list.txt").write_text(f"clips/x.mp4\n\n{tmp_path}/other/y.mp4\n")
    assert list_videos(tmp_path / "list.txt") == [
        ("x", str(tmp_path / "clips/x.mp4")),
        ("y", str(tmp_path / "other/y.mp4")),
    ]


def test_list_videos_rejects_duplicate_ids_and_missing_sources(tmp_path):
    (tmp_path / "list.txt").write_text("a/x.mp4\nb/x.mp4\n")
    with pytest.raises(ValueError, match="more than once.*'x'"):
        list_videos(tmp_path / "list.txt")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        list_videos(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no video files"):
        list_videos(tmp_path / "empty")
