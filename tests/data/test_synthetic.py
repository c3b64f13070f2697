"""grace_fast.data.synthetic: determinism, decodable mp4s, DFEW folds, resume, the label in local motion, the CLI."""

import csv
import hashlib
import json
import os
import re
import subprocess
import sys

import av
import numpy as np
import pytest
from scipy.stats import f_oneway

from grace_fast.data import synthetic
from grace_fast.data.faces import regions
from grace_fast.data.layouts import DFEW_CLASSES
from grace_fast.data.synthetic import (
    AU_PHRASES,
    CAPTION_RATES,
    EXPRESSIONS,
    NAMED_WEIGHT,
    PART_WORDS,
    class_counts,
    clip_spec,
    folds,
    frame_states,
    make_synthetic,
    region_record,
    render_clip,
    sample_specs,
)
from grace_fast.data.video import read_video
from grace_fast.eval.caption_baseline import folder_caption_metrics, synthetic_caption_metrics, words
from tests.data.conftest import CLIPS, SEED, SIZE


def _all_frames(path) -> np.ndarray:
    return read_video(path, 1, sampler=lambda length, _: np.arange(length))


def _files(folder) -> dict[str, bytes]:
    """Every file under folder, by its path relative to folder."""
    files = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            files[os.path.relpath(path, folder)] = open(path, "rb").read()
    return files


def _annotation_files(folder) -> dict[str, bytes]:
    return {name: data for name, data in _files(folder).items() if not name.endswith(".mp4")}


def _clip(folder, clip) -> str:
    return os.path.join(folder, "Clip", "original", f"{clip}.mp4")


def test_the_same_arguments_give_byte_identical_files_in_fresh_processes_and_twice_in_one(tmp_path):
    """Issue 15: x264's AVX-512 code read memory it had not written, so clips followed what the heap held. Each fresh
    process here starts from other heap bytes (MALLOC_PERTURB_, read by glibc): on an AVX-512 machine the two
    perturbed runs then differed every time (clips 4 and 20); plain fresh runs differed in 24 of 28 pairs."""
    clips, seed, size = 24, 0, 32
    command = [sys.executable, "-m", "grace_fast", "make-synthetic", "--clips", str(clips), "--seed", str(seed)]
    plain = {name: value for name, value in os.environ.items() if name != "MALLOC_PERTURB_"}
    outs = []
    for perturb in (None, "85", "170"):
        outs.append(tmp_path / f"process-{perturb or 'plain'}")
        env = plain if perturb is None else {**plain, "MALLOC_PERTURB_": perturb}
        done = subprocess.run(
            [*command, "--size", str(size), "--quiet", "--out", str(outs[-1])], env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
    for run in range(2):  # after torch and the other tests' imports, and after a first run
        outs.append(tmp_path / f"this-process-{run}")
        make_synthetic(outs[-1], clips, seed, size=size, progress=False)
    first = _files(outs[0])
    assert sum(name.endswith(".mp4") for name in first) == clips
    assert len(first) == clips + 2 * 5 + 4  # 5 folds x train/test, captions, annotations, clips.md5, synthetic.json
    for out in outs[1:]:
        files = _files(out)
        assert files.keys() == first.keys()
        assert [name for name in first if files[name] != first[name]] == [], out.name


def test_clips_md5_holds_the_md5_of_every_clip_in_md5sum_format(synthetic_dir):
    lines = (synthetic_dir / "clips.md5").read_text().splitlines()
    assert lines == [
        f"{hashlib.md5(open(_clip(synthetic_dir, clip), 'rb').read()).hexdigest()}  Clip/original/{clip}.mp4"
        for clip in range(1, CLIPS + 1)
    ]


def test_another_seed_gives_other_clips_and_annotations(synthetic_dir, tmp_path):
    make_synthetic(tmp_path, CLIPS, SEED + 1, size=SIZE, progress=False)
    first, second = _annotation_files(synthetic_dir), _annotation_files(tmp_path)
    assert first["captions.csv"] != second["captions.csv"]
    assert first["annotations.jsonl"] != second["annotations.jsonl"]
    a, b = _all_frames(_clip(synthetic_dir, 1)), _all_frames(_clip(tmp_path, 1))
    assert a.shape != b.shape or np.abs(a.astype(int) - b).mean() > 10


def test_clips_decode_to_their_rendered_frames_at_their_length_and_frame_rate(synthetic_dir):
    specs = sample_specs(CLIPS, SEED)
    for spec, other in zip(specs, specs[1:] + specs[:1], strict=True):
        with av.open(_clip(synthetic_dir, spec.clip)) as container:
            stream = container.streams.video[0]
            assert (stream.codec_context.name, float(stream.average_rate)) == ("h264", spec.fps)
        decoded = _all_frames(_clip(synthetic_dir, spec.clip)).astype(np.int64)
        assert decoded.shape == (spec.frames, SIZE, SIZE, 3)
        error = np.abs(decoded - render_clip(spec, SIZE)).mean()
        n = min(spec.frames, other.frames)
        assert error < 10 and error < 0.5 * np.abs(decoded[:n] - render_clip(other, SIZE)[:n]).mean()


def test_split_files_are_dfew_folds_of_the_annotated_labels(synthetic_dir):
    records = [json.loads(line) for line in open(synthetic_dir / "annotations.jsonl")]
    labels = {r["clip"]: r["label"] + 1 for r in records}
    tested = []
    for fold in range(1, 6):
        parts = {}
        for split in ("train", "test"):
            with open(synthetic_dir / "EmoLabel_DataSplit" / f"{split}(single-labeled)" / f"set_{fold}.csv") as file:
                rows = list(csv.reader(file))
            assert rows[0] == ["video_name", "label"]
            parts[split] = {name: int(label) for name, label in rows[1:]}
        assert parts["train"].keys().isdisjoint(parts["test"]) and {**parts["train"], **parts["test"]} == labels
        assert all(r["fold"] == fold for r in records if r["clip"] in parts["test"])
        tested += list(parts["test"])
    assert sorted(tested) == sorted(labels)  # every clip is tested in exactly one fold


def test_class_counts_follow_dfew_imbalance_with_a_floor_per_class():
    counts = class_counts(1000)
    assert counts.sum() == 1000 and counts.tolist() == [240, 170, 230, 180, 100, 12, 68]
    assert class_counts(35).tolist() == [5] * 7
    small = class_counts(50)
    assert small.sum() == 50 and small.min() == 5 and small.argmax() == DFEW_CLASSES.index("happy")
    assert class_counts(3).sum() == 3


def test_every_class_is_in_every_test_fold_from_35_clips():
    specs = sample_specs(35, 4)
    test_fold = folds(specs, 4)
    for fold in range(1, 6):
        assert {s.label for s, f in zip(specs, test_fold, strict=True) if f == fold} == set(range(7))


def test_an_interrupted_run_is_completed_without_rewriting_finished_clips(synthetic_dir, tmp_path, monkeypatch):
    render, calls = synthetic.render_clip, []

    def interrupted(spec, size):
        calls.append(spec.clip)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return render(spec, size)

    monkeypatch.setattr(synthetic, "render_clip", interrupted)
    with pytest.raises(KeyboardInterrupt):
        make_synthetic(tmp_path, CLIPS, SEED, size=SIZE, progress=False)
    monkeypatch.undo()
    clip_dir = tmp_path / "Clip" / "original"
    assert sorted(os.listdir(clip_dir)) == ["1.mp4", "2.mp4", "3.mp4"]  # nothing half written
    assert not (tmp_path / "captions.csv").exists() and not (tmp_path / "EmoLabel_DataSplit").exists()
    finished = {name: os.stat(clip_dir / name).st_mtime_ns for name in os.listdir(clip_dir)}
    (clip_dir / ".5.mp4.x1y2.tmp").write_bytes(b"left by kill -9")
    with open(tmp_path / "clips.md5", "a") as ledger:
        ledger.write("0f3c2a  Clip/orig")  # a line cut short by kill -9

    summary = make_synthetic(tmp_path, CLIPS, SEED, size=SIZE, progress=False)
    assert (summary["written"], summary["skipped"]) == (CLIPS - 3, 3)
    assert {name: os.stat(clip_dir / name).st_mtime_ns for name in finished} == finished
    assert _files(tmp_path) == _files(synthetic_dir)


def test_a_rerun_rewrites_every_file_in_place_of_a_clip_it_did_not_write(synthetic_dir, tmp_path):
    """Issue 19: a rerun counted any file named N.mp4 as a finished clip, even a text file."""
    make_synthetic(tmp_path, CLIPS, SEED, size=SIZE, progress=False)
    clip_dir = tmp_path / "Clip" / "original"
    (clip_dir / "2.mp4").write_bytes(b"not a video")
    (clip_dir / "3.mp4").write_bytes((clip_dir / "1.mp4").read_bytes())  # a valid mp4, but another clip
    (clip_dir / "4.mp4").unlink()
    kept = {name: os.stat(clip_dir / f"{name}.mp4").st_mtime_ns for name in (1, 5, 6, 7, 8)}

    summary = make_synthetic(tmp_path, CLIPS, SEED, size=SIZE, progress=False)
    assert (summary["written"], summary["skipped"]) == (3, CLIPS - 3)
    assert {name: os.stat(clip_dir / f"{name}.mp4").st_mtime_ns for name in kept} == kept
    assert _files(tmp_path) == _files(synthetic_dir)


@pytest.mark.parametrize(
    "user_files",
    [
        {"EmoLabel_DataSplit/train(single-labeled)/set_1.csv": b"video_name,label\nmine,3\n"},
        {"Clip/original/1.mp4": b"my notes"},
        {"notes.txt": b"keep me"},
    ],
    ids=["split-file", "file-named-like-a-clip", "other-file"],
)
def test_a_folder_it_did_not_make_is_refused_and_left_as_it_was(tmp_path, user_files):
    """Issue 19: make-synthetic into a folder it had not made overwrote the user's split files."""
    for name, data in user_files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    with pytest.raises(ValueError, match=f"out {re.escape(str(tmp_path))} is not an empty folder and holds no"):
        make_synthetic(tmp_path, CLIPS, SEED, size=SIZE, progress=False)
    assert _files(tmp_path) == user_files


def test_a_rerun_with_other_arguments_is_refused_and_changes_nothing(synthetic_dir):
    before = _files(synthetic_dir)
    with pytest.raises(ValueError, match=r"other arguments .*'clips': \(8, 9\)"):
        make_synthetic(synthetic_dir, CLIPS + 1, SEED, size=SIZE, progress=False)
    assert _files(synthetic_dir) == before


def test_make_synthetic_rejects_a_bad_size(tmp_path):
    with pytest.raises(ValueError, match="size must be an even integer >= 32, got 33"):
        make_synthetic(tmp_path, 2, size=33, progress=False)


@pytest.mark.parametrize("label", range(7), ids=DFEW_CLASSES)
def test_the_expression_changes_only_pixels_of_the_face_parts(label):
    spec = clip_spec(3, 2, label)
    changed = np.any(render_clip(spec, 64) != render_clip(spec, 64, expression=False), axis=-1)
    parts = np.any(list(regions(frame_states(spec), 64, 64).values()), axis=0)  # follows head and camera
    assert not changed[~parts].any()
    if EXPRESSIONS[DFEW_CLASSES[label]]:
        assert changed[parts].sum() > 100
    else:
        assert not changed.any()


def test_looks_and_nuisances_do_not_depend_on_the_label():
    specs = [clip_spec(3, 2, label) for label in range(7)]
    for spec in specs[1:]:
        assert (spec.looks, spec.identity, spec.nuisance, spec.fps, spec.frames) == (
            specs[0].looks,
            specs[0].identity,
            specs[0].nuisance,
            specs[0].fps,
            specs[0].frames,
        )
        np.testing.assert_array_equal(
            render_clip(spec, 32, expression=False), render_clip(specs[0], 32, expression=False)
        )


def test_the_class_shows_in_local_motion_and_not_in_global_motion():
    """On full clips (every nuisance on): the lighting-normalised change of tracked eye and mouth regions differs
    between classes (one-way ANOVA), in the directions the action units predict, while the background's motion
    and the head's speed do not."""
    size, per_class = 48, 5
    boxes = {"eyes": (-0.6, 0.6, -0.25, 0.05), "mouth": (-0.4, 0.4, 0.45, 1.0), "face": (-0.85, 0.85, -1.0, 1.3)}
    local, global_, labels = [], [], []
    for label in range(7):
        for k in range(per_class):
            spec = clip_spec(0, 1 + label * per_class + k, label)
            frames = render_clip(spec, size).astype(np.float64).mean(-1)  # [T, H, W]
            states = frame_states(spec)
            parts = regions(states, size, size, boxes)
            early, late = slice(0, max(1, int(0.15 * spec.frames))), slice(int(0.6 * spec.frames), None)
            change = []
            for name in ("eyes", "mouth"):
                level = np.array(
                    [
                        f[m].mean() / f[face].mean()
                        for f, m, face in zip(frames, parts[name], parts["face"], strict=True)
                    ]
                )
                change.append(level[late].mean() - level[early].mean())
            x = (np.arange(size) + 0.5)[None, None, :]
            background = np.broadcast_to(np.abs(x - states.x[:, None, None] * size) > 0.45 * size, frames.shape)
            still = background[1:] & background[:-1]
            head_speed = (np.abs(np.diff(states.x)) + np.abs(np.diff(states.y))).mean() * spec.fps
            global_.append([np.abs(np.diff(frames, axis=0))[still].mean(), head_speed])
            local.append(change)
            labels.append(label)
    local, global_, labels = np.array(local), np.array(global_), np.array(labels)

    def p_value(values):
        return f_oneway(*[values[labels == c] for c in range(7)]).pvalue

    assert p_value(local[:, 0]) < 0.01 and p_value(local[:, 1]) < 0.01
    means = np.array([local[labels == c].mean(0) for c in range(7)])
    surprise, fear = DFEW_CLASSES.index("surprise"), DFEW_CLASSES.index("fear")
    assert means[surprise, 1] == means[:, 1].min()  # the jaw drop darkens the mouth most
    assert means[surprise, 0] > 0 and means[fear, 0] > 0  # raised upper lids show more white
    assert p_value(global_[:, 0]) > 0.05 and p_value(global_[:, 1]) > 0.05


EMOTION_WORDS = {  # what a caption must not say: the classes, their nouns and adjectives, and the giveaways
    *DFEW_CLASSES,
    *("happiness", "sadness", "anger", "surprised", "disgusted", "afraid", "scared", "frightened", "pleased"),
    *("upset", "annoyed", "astonished", "repulsed", "indifferent", "calm", "emotion", "smile", "smiles", "frown"),
}


def test_captions_name_an_action_unit_at_the_documented_rates_and_never_the_emotion():
    specs = sample_specs(300, 2)
    named = [spec for spec in specs if spec.caption_au is not None]
    wrong = [spec for spec in named if EXPRESSIONS[spec.emotion].get(spec.caption_au, 0) < NAMED_WEIGHT]
    stray = [spec for spec in wrong if spec.nuisance["stray"] and spec.nuisance["stray"]["au"] == spec.caption_au]
    # 300 draws: 4 standard deviations either side of the rates
    assert abs(len(named) / len(specs) - CAPTION_RATES["names_au"]) < 4 * (0.3 * 0.7 / len(specs)) ** 0.5
    assert len(wrong) - len(stray) >= CAPTION_RATES["wrong_au"] * len(named) - 4 * (0.21 * len(named)) ** 0.5
    for spec in specs:
        assert spec.looks["hair"] in spec.caption and f"{spec.looks['wall']} wall" in spec.caption
        said = set(words(spec.caption))
        assert not said & EMOTION_WORDS, spec.caption
        phrases = [name for name, options in AU_PHRASES.items() if any(p[1:] in spec.caption for p in options)]
        assert phrases == ([] if spec.caption_au is None else [spec.caption_au])
        assert len(said & set(PART_WORDS)) == (spec.caption_au is not None)  # the pointing game's one part word


def test_captions_alone_score_near_chance_where_they_once_scored_78_percent_uar():
    """Issue 17: a bag of words on the old captions scored 77.5% UAR on the demo's set (docs/runs)."""
    assert synthetic_caption_metrics(500, 0).uar < 2 / len(DFEW_CLASSES)


def test_the_caption_baseline_reads_the_same_captions_and_folds_from_the_files(synthetic_dir):
    assert folder_caption_metrics(synthetic_dir) == synthetic_caption_metrics(CLIPS, SEED)


def test_the_recorded_regions_hold_every_pixel_the_expression_changes_in_each_frame():
    spec = clip_spec(3, 2, DFEW_CLASSES.index("surprise"))
    record = region_record(spec)
    changed = np.any(render_clip(spec, 64) != render_clip(spec, 64, expression=False), axis=-1)  # [T, H, W]
    centres = (np.arange(64) + 0.5) / 64
    units = list(EXPRESSIONS["surprise"])
    nuisances = [name for name in ("blink", "talk", "stray") if name in record["parts"]]
    assert sorted(record["levels"]) == sorted(units + nuisances) and record["parts"]["head"] == ["head"]
    for t in range(spec.frames):
        moved = [name for name in units if record["levels"][name][t] > 0]
        assert changed[t].any() == bool(moved)
        inside = np.zeros((64, 64), dtype=bool)
        for part in {part for name in moved for part in record["parts"][name]}:
            x0, y0, x1, y1 = np.add(record["boxes"][part][t], [-0.001, -0.001, 0.001, 0.001])  # 3 decimals
            inside |= ((centres >= y0) & (centres <= y1))[:, None] & ((centres >= x0) & (centres <= x1))[None, :]
        assert not changed[t][~inside].any(), t


def test_cli_make_synthetic_writes_a_set_and_refuses_other_arguments_with_one_line_and_exit_2(tmp_path):
    command = [sys.executable, "-m", "grace_fast", "make-synthetic", "--out", str(tmp_path), "--clips", "3"]
    done = subprocess.run([*command, "--seed", "5", "--size", "32", "--quiet"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "3 clips written, 0 already there" in done.stdout
    assert sorted(os.listdir(tmp_path / "Clip" / "original")) == ["1.mp4", "2.mp4", "3.mp4"]
    refused = subprocess.run([*command, "--seed", "6", "--size", "32", "--quiet"], capture_output=True, text=True)
    assert refused.returncode == 2
    assert refused.stderr.startswith("grace-fast make-synthetic: error: ") and "'seed': (5, 6)" in refused.stderr
    assert len(refused.stderr.splitlines()) == 1


def test_cli_make_synthetic_refuses_a_folder_it_did_not_make_with_one_line_and_exit_2(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    command = [sys.executable, "-m", "grace_fast", "make-synthetic", "--out", str(tmp_path), "--clips", "3", "--quiet"]
    refused = subprocess.run(command, capture_output=True, text=True)
    assert refused.returncode == 2
    assert refused.stderr == (
        f"grace-fast make-synthetic: error: out {tmp_path} is not an empty folder and holds no synthetic.json, so"
        " make-synthetic did not make it; choose a new or empty --out\n"
    )
    assert os.listdir(tmp_path) == ["notes.txt"]
