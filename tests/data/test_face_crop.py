"""grace_fast.data.face_crop: the Haar detector finds the synthetic faces where the generator drew them; the
track ignores stray boxes, carries the box over missed frames, smooths it and falls back to the whole frame."""

import json
import pickle

import numpy as np
import pytest
import torch

from grace_fast.data.face_crop import TRACKS_NAME, FaceCrop, FaceDetector, FaceTrack, HaarFaceDetector
from grace_fast.data.faces import regions
from grace_fast.data.synthetic import frame_states, render_clip, sample_specs
from grace_fast.data.transforms import VideoTransform

pytest.importorskip("cv2", reason="the faces extra (opencv-python-headless) is not installed")

SIZE = 64
CLIPS = 6
FACE = {"face": (-1.0, 1.0, -1.1, 1.3)}  # face-local box of the drawn face, hairline to chin


def _truth(spec, size: int) -> np.ndarray:
    """The face box the generator drew in each frame: [T, 4] (x0, y0, x1, y1) in pixels."""
    masks = regions(frame_states(spec), size, size, FACE)["face"]
    boxes = []
    for mask in masks:
        cols, rows = np.flatnonzero(mask.any(0)), np.flatnonzero(mask.any(1))
        boxes.append((cols[0], rows[0], cols[-1] + 1, rows[-1] + 1))
    return np.array(boxes, dtype=np.float64)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    overlap = np.prod(np.clip(np.minimum(a[:, 2:], b[:, 2:]) - np.maximum(a[:, :2], b[:, :2]), 0, None), axis=1)
    area_a, area_b = (np.prod(x[:, 2:] - x[:, :2], axis=1) for x in (a, b))
    return overlap / (area_a + area_b - overlap)


class Scripted:
    """A detector that returns the boxes given for each frame in turn (frames are told apart by their value)."""

    def __init__(self, boxes: list[list[list[float]]]):
        self.boxes = boxes

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        return np.array(self.boxes[int(frame[0, 0, 0])], dtype=np.float64).reshape(-1, 4)


def _frames(count: int, height: int = 60, width: int = 80) -> np.ndarray:
    frames = np.zeros((count, height, width, 3), np.uint8)
    frames[:, 0, 0, 0] = np.arange(count)
    return frames


def test_haar_detector_finds_the_synthetic_faces_where_they_were_drawn():
    """On clips 1-6 of seed 0 at 64 px; clip 1's only detection is a false one on an eye (so 82% of frames, not
    all, overlap the drawn face by IoU >= 0.5). Over clips 1-40 it finds 38 clips and 95% of their frames."""
    crop = FaceCrop(HaarFaceDetector())
    found, overlaps = 0, []
    for spec in sample_specs(CLIPS, seed=0):
        track = crop.track(render_clip(spec, SIZE))
        if track.found:
            found += 1
            overlaps.append(_iou(track.boxes, _truth(spec, SIZE)))
    overlaps = np.concatenate(overlaps)
    assert found >= CLIPS - 2, f"faces found in only {found} of {CLIPS} clips"
    assert np.median(overlaps) >= 0.7 and np.mean(overlaps >= 0.5) >= 0.75, np.percentile(overlaps, [5, 50])


def test_haar_detector_finds_nothing_in_a_frame_without_a_face():
    wall = np.broadcast_to(np.linspace(60, 200, SIZE, dtype=np.uint8)[:, None, None], (SIZE, SIZE, 3))
    assert HaarFaceDetector()(np.ascontiguousarray(wall)).shape == (0, 4)


def test_haar_detector_pickles_without_its_cascade_and_detects_after():
    detector = HaarFaceDetector()
    frame = render_clip(sample_specs(1, seed=0)[0], SIZE)[0]
    before = detector(frame)
    again = pickle.loads(pickle.dumps(detector))
    np.testing.assert_array_equal(again(frame), before)


def test_a_callable_is_a_detector():
    assert isinstance(HaarFaceDetector(), FaceDetector) and isinstance(Scripted([]), FaceDetector)


def test_a_missed_frame_carries_the_last_box_and_leading_ones_take_the_first():
    box = [10.0, 10.0, 30.0, 30.0]
    moved = [14.0, 10.0, 34.0, 30.0]
    track = FaceCrop(Scripted([[], box, [], moved, []]), window=1).track(_frames(5))
    np.testing.assert_array_equal(track.detected, [False, True, False, True, False])
    np.testing.assert_array_equal(track.boxes, [box, box, box, moved, moved])


def test_a_stray_box_far_from_the_face_is_not_followed():
    face, stray = [20.0, 20.0, 40.0, 40.0], [60.0, 0.0, 70.0, 10.0]
    track = FaceCrop(Scripted([[face], [stray], [face, stray], [face]]), window=1).track(_frames(4))
    np.testing.assert_array_equal(track.detected, [True, False, True, True])
    np.testing.assert_array_equal(track.boxes, [face] * 4)


def test_smoothing_averages_the_box_over_the_window():
    rng = np.random.default_rng(0)
    centres = 30 + rng.normal(0, 2, size=(20, 2))
    boxes = [[[x - 10, y - 10, x + 10, y + 10]] for x, y in centres]
    raw = FaceCrop(Scripted(boxes), window=1, max_jump=5).track(_frames(20)).boxes
    smooth = FaceCrop(Scripted(boxes), window=5, max_jump=5).track(_frames(20)).boxes
    np.testing.assert_allclose(smooth[2], raw[:5].mean(axis=0))
    np.testing.assert_allclose(smooth[0], raw[:3].mean(axis=0))  # fewer frames at the ends
    assert np.abs(np.diff(smooth, axis=0)).mean() < 0.5 * np.abs(np.diff(raw, axis=0)).mean()


def test_no_face_in_the_clip_keeps_the_whole_frame_as_its_centre_square():
    frames = _frames(3, 60, 80)
    frames[:, 10:50, 10:70] = 200
    crop = FaceCrop(Scripted([[]] * 3))
    track = crop.track(frames)
    assert not track.found
    np.testing.assert_array_equal(crop.crop_boxes(track, 60, 80), [[10, 0, 70, 60]] * 3)
    np.testing.assert_array_equal(crop(frames), frames[:, :, 10:70])


def test_crop_is_the_grown_square_moved_inside_the_frame():
    crop = FaceCrop(Scripted([]), margin=0.25, size=16)
    track = FaceTrack(np.array([[0.0, 10.0, 20.0, 30.0], [70.0, 50.0, 80.0, 58.0]]), np.array([True, True]))
    boxes = crop.crop_boxes(track, 60, 80)
    np.testing.assert_array_equal(boxes, [[0, 5, 30, 35], [65, 45, 80, 60]])
    frames = np.random.default_rng(0).integers(0, 256, (2, 60, 80, 3), dtype=np.uint8)
    assert crop.crop(frames, track).shape == (2, 16, 16, 3)


def test_crops_hold_the_face_at_the_size_asked():
    spec = sample_specs(1, seed=0)[0]
    frames = render_clip(spec, SIZE)[:8]
    crops = FaceCrop(size=32)(frames)
    assert crops.shape == (8, 32, 32, 3) and crops.dtype == np.uint8
    assert crops.std() > 10  # a face, not a flat wall


@pytest.mark.parametrize(
    "argument, value",
    [("size", 0), ("margin", -0.1), ("window", 2), ("max_jump", 0)],
)
def test_bad_settings_are_refused_naming_the_setting(argument, value):
    with pytest.raises(ValueError, match=argument):
        FaceCrop(Scripted([]), **{argument: value})


def test_a_detector_returning_bad_boxes_is_refused():
    with pytest.raises(ValueError, match=r"\[K, 4\]"):
        FaceCrop(lambda frame: np.ones((1, 3))).track(_frames(1))


def test_crop_faces_writes_cropped_clips_that_a_layout_reads(synthetic_dir, tmp_path):
    from grace_fast.cli import main
    from grace_fast.data.datasets import ClipDataset
    from grace_fast.data.layouts import dfew
    from grace_fast.data.video import read_whole_video

    out = tmp_path / "faces"  # not in synthetic_dir: other tests check what that folder holds
    assert main(["crop-faces", "--videos", str(synthetic_dir / "Clip" / "original"), "--out", str(out)]) == 0
    records = [json.loads(line) for line in (out / TRACKS_NAME).read_text().splitlines()]
    assert sorted(r["clip"] for r in records) == sorted(p.stem for p in (synthetic_dir / "Clip" / "original").glob("*"))
    assert sum(r["found"] for r in records) >= len(records) - 3, records
    for record in records:
        frames, _ = read_whole_video(out / f"{record['clip']}.mp4")
        source, _ = read_whole_video(record["video"])
        assert frames.shape == (len(source), 224, 224, 3) and len(record["boxes"]) == len(source)
    clips = dfew(synthetic_dir, fold=1, split="test", clip_dir=str(out))  # an absolute clip_dir
    assert all(clip.path.startswith(str(out)) for clip in clips.clips)
    assert ClipDataset(clips, num_frames=4, transform=VideoTransform(32))[0].frames.shape == (4, 3, 32, 32)


def test_crop_faces_refuses_an_odd_size_and_an_out_inside_the_videos(synthetic_dir, tmp_path, capsys):
    from grace_fast.cli import main

    videos = synthetic_dir / "Clip" / "original"
    assert main(["crop-faces", "--videos", str(videos), "--out", str(videos / "faces")]) == 2
    assert "inside the videos folder" in capsys.readouterr().err
    assert (
        main(
            ["crop-faces", "--videos", str(synthetic_dir / "Clip" / "original"), "--out", str(tmp_path), "--size", "33"]
        )
        == 2
    )
    assert "size must be an even number" in capsys.readouterr().err


def test_the_dataset_cuts_its_sampled_frames_to_the_face(synthetic_dir):
    from grace_fast.data.datasets import ClipDataset
    from grace_fast.data.layouts import synthetic
    from grace_fast.data.segments import segment_indices

    clips = synthetic(synthetic_dir, fold=1, split="test")
    crop = FaceCrop(Scripted([[[4.0, 6.0, 20.0, 22.0]]] * 256), size=16, margin=0.0)
    plain = ClipDataset(clips, num_frames=4, transform=VideoTransform(16))
    cropped = ClipDataset(clips, num_frames=4, transform=VideoTransform(16), face_crop=crop)
    frames = plain._read(0, lambda n, t: segment_indices(n, t, None))
    expected = VideoTransform(16)(np.ascontiguousarray(frames[:, 6:22, 4:20]))
    torch.testing.assert_close(cropped[0].frames, expected)


def test_coarse_labels_see_the_face_crop_and_cache_it_apart(tmp_path):
    from grace_fast.data.video import write_mp4
    from grace_fast.text.cache import Cache
    from grace_fast.text.coarse_labels import label_clips, load_clip

    frames = np.zeros((6, 40, 40, 3), np.uint8)
    frames[:, 10:30, 10:30] = 250  # a bright "face" on a black frame
    write_mp4(tmp_path / "a.mp4", frames, fps=5)
    crop = FaceCrop(lambda frame: np.array([[10.0, 10.0, 30.0, 30.0]]), margin=0.0)
    assert load_clip(str(tmp_path / "a.mp4"), 4, 8).mean() < 0.5 < load_clip(str(tmp_path / "a.mp4"), 4, 8, crop).mean()
    seen = []

    def classify(batch):
        seen.append(batch.mean().item())
        return torch.zeros(len(batch), 7)

    classes = [str(c) for c in range(7)]
    with Cache(tmp_path / "cache.sqlite") as cache:
        for face_crop in (None, crop):
            _, summary = label_clips([("a", str(tmp_path / "a.mp4"))], classify, classes, cache, face_crop=face_crop)
            assert summary.done == 1 and summary.cached == 0
    assert seen[0] < 0.5 < seen[1]


def test_haar_detector_gives_the_same_boxes_from_several_threads():
    from concurrent.futures import ThreadPoolExecutor

    detector = HaarFaceDetector()
    frames = [frame for spec in sample_specs(4, seed=0) for frame in render_clip(spec, 32)[:4]]
    serial = [detector(frame).tolist() for frame in frames]
    with ThreadPoolExecutor(4) as pool:
        assert [boxes.tolist() for boxes in pool.map(detector, frames)] == serial
