"""grace_fast.data.datasets and frames: samples, reproducible training randomness, collate, bad files both ways."""

import os
import shutil

import numpy as np
import pytest
import torch

from grace_fast.data.datasets import BadClip, Batch, ClipDataset, Sample, collate
from grace_fast.data.frames import read_clip, read_frame_folder
from grace_fast.data.layouts import Clip, ClipList, read_captions, synthetic
from grace_fast.data.segments import segment_indices
from grace_fast.data.transforms import VideoTransform
from grace_fast.data.video import VideoReadError, read_video

FRAMES, SIZE = 8, 16


@pytest.fixture
def clips(synthetic_dir):
    return synthetic(synthetic_dir, fold=1, split="train")


def _loader(dataset, **kwargs):
    return torch.utils.data.DataLoader(dataset, batch_size=3, collate_fn=collate, **kwargs)


def test_a_sample_is_the_clips_sampled_normalised_frames_with_its_label_id_and_caption(clips, synthetic_dir):
    transform = VideoTransform(SIZE)
    sample = ClipDataset(clips, num_frames=FRAMES, transform=transform)[1]
    assert isinstance(sample, Sample) and sample.frames.shape == (FRAMES, 3, SIZE, SIZE)
    expected = transform(read_video(clips[1].path, FRAMES))  # the segment centres
    torch.testing.assert_close(sample.frames, expected, rtol=0, atol=0)
    captions = read_captions(synthetic_dir / "captions.csv")
    assert (sample.label, sample.id, sample.caption) == (clips[1].label, clips[1].id, captions[clips[1].id])


def test_training_samples_depend_on_seed_epoch_and_index_only(clips):
    def dataset(seed=0):
        return ClipDataset(clips, num_frames=FRAMES, transform=VideoTransform(SIZE, train=True), seed=seed)

    first, again = dataset(), dataset()
    torch.testing.assert_close(first[2].frames, again[2].frames, rtol=0, atol=0)
    rng = np.random.default_rng([0, 0, 2])  # what the sample drew: its frames, then its crop and flip
    frames = read_clip(clips[2].path, FRAMES, sampler=lambda n, t: segment_indices(n, t, rng))
    torch.testing.assert_close(first[2].frames, VideoTransform(SIZE, train=True)(frames, rng), rtol=0, atol=0)
    again.set_epoch(1)
    assert not torch.equal(first[2].frames, again[2].frames)
    assert not torch.equal(first[2].frames, dataset(seed=1)[2].frames)


def test_batches_are_the_same_with_worker_processes(clips):
    dataset = ClipDataset(clips, num_frames=FRAMES, transform=VideoTransform(SIZE, train=True))
    dataset.set_epoch(3)
    alone, workers = list(_loader(dataset)), list(_loader(dataset, num_workers=2))
    assert [b.ids for b in alone] == [b.ids for b in workers]
    for a, b in zip(alone, workers, strict=True):
        torch.testing.assert_close(a.frames, b.frames, rtol=0, atol=0)


def test_collate_stacks_frames_labels_ids_and_captions(clips):
    batch = next(iter(_loader(ClipDataset(clips, num_frames=FRAMES, transform=VideoTransform(SIZE)))))
    assert isinstance(batch, Batch) and len(batch) == 3 and batch.skipped == []
    assert batch.frames.shape == (3, FRAMES, 3, SIZE, SIZE) and batch.labels.dtype == torch.int64
    assert batch.labels.tolist() == [c.label for c in clips.clips[:3]] and batch.ids == [c.id for c in clips.clips[:3]]
    assert all(isinstance(caption, str) and caption for caption in batch.captions)
    moved = batch.to("cpu")
    assert torch.equal(moved.frames, batch.frames) and moved.ids == batch.ids


@pytest.mark.parametrize("train", [True, False])
def test_a_cached_dataset_gives_the_same_samples_and_decodes_each_clip_once(clips, monkeypatch, train):
    import grace_fast.data.datasets as datasets

    def dataset(cache):
        return ClipDataset(clips, num_frames=FRAMES, transform=VideoTransform(SIZE, train=train), cache=cache)

    plain, cached = dataset(False), dataset(True)
    decoded = []
    monkeypatch.setattr(datasets, "read_clip", lambda path, *a, **k: decoded.append(path) or read_clip(path, *a, **k))
    for epoch in range(3):
        plain.set_epoch(epoch), cached.set_epoch(epoch)
        for i in range(len(clips)):
            torch.testing.assert_close(cached[i].frames, plain[i].frames, rtol=0, atol=0)
    assert len(decoded) == 3 * len(clips) + len(clips)  # plain: every epoch; cached: once per clip
    assert sorted(cached.cache) == list(range(len(clips)))


@pytest.fixture
def broken(clips, tmp_path):
    """The clips with the second one missing and the third one corrupt (copies, not the shared set)."""
    paths = []
    for i, clip in enumerate(clips.clips[:5]):
        path = tmp_path / f"{clip.id}.mp4"
        if i == 2:
            path.write_bytes(b"not a video" * 100)
        elif i != 1:
            shutil.copy(clip.path, path)
        paths.append(str(path))
    return ClipList(
        [Clip(c.id, p, c.label, c.caption) for c, p in zip(clips.clips[:5], paths, strict=True)], clips.classes
    )


def test_a_missing_file_raises_naming_it(broken):
    with pytest.raises(
        VideoReadError, match=f"clip {broken[1].id}: video file or frame folder not found: .*{broken[1].id}.mp4"
    ):
        ClipDataset(broken)


def test_a_corrupt_file_raises_naming_it_when_read(broken):
    dataset = ClipDataset(ClipList([broken[0], broken[2]], broken.classes), num_frames=FRAMES)
    assert isinstance(dataset[0], Sample)
    with pytest.raises(VideoReadError, match=f"cannot decode video .*{broken[2].id}.mp4"):
        dataset[1]


def test_skip_bad_leaves_out_missing_and_corrupt_files_and_lists_them(broken):
    dataset = ClipDataset(broken, num_frames=FRAMES, transform=VideoTransform(SIZE), skip_bad=True)
    assert len(dataset) == 4 and dataset.skipped == [
        BadClip(broken[1].id, broken[1].path, "video file or frame folder not found")
    ]
    batches = list(_loader(dataset))
    assert [b.ids for b in batches] == [[broken[0].id, broken[3].id], [broken[4].id]]
    assert batches[0].frames.shape[0] == 2 and batches[0].labels.tolist() == [broken[0].label, broken[3].label]
    [bad] = batches[0].skipped
    assert (bad.id, bad.path) == (broken[2].id, broken[2].path) and "cannot decode video" in bad.error
    assert batches[1].skipped == []


def test_a_cached_dataset_reports_a_corrupt_file_every_time(broken):
    dataset = ClipDataset(broken, num_frames=FRAMES, transform=VideoTransform(SIZE), skip_bad=True, cache=True)
    for _ in range(2):
        assert isinstance(dataset[1], BadClip) and isinstance(dataset[0], Sample)
    assert sorted(dataset.cache) == [0]


def test_a_batch_of_only_bad_clips_is_empty():
    batch = collate([BadClip("a", "a.mp4", "gone"), BadClip("b", "b.mp4", "gone")])
    assert len(batch) == 0 and batch.frames.numel() == 0 and [b.id for b in batch.skipped] == ["a", "b"]


def test_skip_bad_does_not_hide_other_errors(broken):
    class Buggy(VideoTransform):
        def __call__(self, frames, rng=None):
            raise RuntimeError("a bug, not a bad file")

    dataset = ClipDataset(broken, num_frames=FRAMES, transform=Buggy(SIZE), skip_bad=True)
    with pytest.raises(RuntimeError, match="a bug, not a bad file"):
        dataset[0]


def test_frame_folders_read_in_natural_order_and_name_a_corrupt_frame(clips, tmp_path):
    from PIL import Image

    os.makedirs(tmp_path / "clip")
    for i in range(12):
        Image.fromarray(np.full((8, 10, 3), 20 * i, np.uint8)).save(tmp_path / "clip" / f"frame_{i + 1}.png")
    frames = read_clip(tmp_path / "clip", 12, sampler=lambda n, t: np.arange(n))
    assert frames.shape == (12, 8, 10, 3) and frames[:, 0, 0, 0].tolist() == [20 * i for i in range(12)]
    (tmp_path / "clip" / "frame_7.png").write_bytes(b"broken")
    with pytest.raises(VideoReadError, match="cannot decode frame .*frame_7.png of clip .*clip"):
        read_frame_folder(tmp_path / "clip", 12)
    os.makedirs(tmp_path / "empty")
    with pytest.raises(VideoReadError, match="frame folder has no images .*empty"):
        read_clip(tmp_path / "empty", 4)


def test_a_cached_frame_folder_gives_the_same_samples_but_reads_every_frame(tmp_path):
    from PIL import Image

    os.makedirs(tmp_path / "clip")
    for i in range(12):
        Image.fromarray(np.full((8, 10, 3), 20 * i, np.uint8)).save(tmp_path / "clip" / f"frame_{i + 1}.png")
    clips = ClipList([Clip("clip", str(tmp_path / "clip"), 0, None)], ["a"])

    def dataset(cache):
        return ClipDataset(clips, num_frames=4, transform=VideoTransform(SIZE), cache=cache)

    torch.testing.assert_close(dataset(True)[0].frames, dataset(False)[0].frames, rtol=0, atol=0)
    (tmp_path / "clip" / "frame_1.png").write_bytes(b"broken")  # the evaluation samples frames 2, 5, 8 and 11
    assert isinstance(dataset(False)[0], Sample)
    with pytest.raises(VideoReadError, match="cannot decode frame .*frame_1.png"):
        dataset(True)[0]


def test_num_frames_is_checked(clips):
    with pytest.raises(ValueError, match="num_frames must be an integer >= 1, got 0"):
        ClipDataset(clips, num_frames=0)
