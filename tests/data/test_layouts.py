"""grace_fast.data.layouts: each loader on generated clips laid out as DFEW, FERV39k, MAFW and a generic CSV ship."""

import csv
import os

import numpy as np
import pytest
from PIL import Image

from grace_fast.data.frames import read_clip
from grace_fast.data.layouts import (
    DFEW_CLASSES,
    LAYOUTS,
    MAFW_CLASSES,
    Clip,
    ClipList,
    csv_clips,
    dfew,
    ferv39k,
    load_clips,
    load_split,
    mafw,
    read_captions,
    synthetic,
)
from grace_fast.data.synthetic import clip_spec, render_clip
from grace_fast.data.video import write_mp4

SIZE = 32


def _frames(index: int, label: int = 0) -> np.ndarray:
    return render_clip(clip_spec(9, index, label % 7), SIZE)


def _frame_folder(folder, frames: np.ndarray) -> None:
    """Frames as 1.jpg, 2.jpg, ... (not zero padded: the reader must sort 2 before 10)."""
    os.makedirs(folder)
    for i, frame in enumerate(frames, 1):
        Image.fromarray(frame).save(os.path.join(folder, f"{i}.jpg"), quality=95)


def _write(path, text: str | bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as file:
        file.write(text.encode() if isinstance(text, str) else text)


@pytest.fixture
def dfew_root(tmp_path):
    """Face-crop frame folders (Clip/clip_224x224/00001 ...) and the original mp4s (Clip/original/1.mp4 ...)."""
    labels = {1: 1, 2: 5, 3: 7, 10: 3, 11: 4}  # DFEW's 1..7
    for clip, label in labels.items():
        frames = _frames(clip, label - 1)
        _frame_folder(tmp_path / "Clip" / "clip_224x224" / f"{clip:05d}", frames)
        os.makedirs(tmp_path / "Clip" / "original", exist_ok=True)
        write_mp4(tmp_path / "Clip" / "original" / f"{clip}.mp4", frames, fps=25)
    for fold in range(1, 6):
        test = {[1, 2, 3, 10, 11][fold - 1]}
        for split, clips in (("train", set(labels) - test), ("test", test)):
            rows = "".join(f"{clip},{labels[clip]}\n" for clip in sorted(clips))
            _write(
                tmp_path / "EmoLabel_DataSplit" / f"{split}(single-labeled)" / f"set_{fold}.csv",
                "video_name,label\n" + rows,
            )
    return tmp_path


def test_dfew_reads_a_fold_of_face_crop_frame_folders(dfew_root):
    train = dfew(dfew_root, fold=2, split="train")
    assert train.classes == DFEW_CLASSES
    assert [(c.id, c.label, c.caption) for c in train] == [
        ("1", 0, None),
        ("3", 6, None),
        ("10", 2, None),
        ("11", 3, None),
    ]
    assert train[2].path == str(dfew_root / "Clip" / "clip_224x224" / "00010")
    test = dfew(dfew_root, fold=2, split="test")
    assert [(c.id, c.label) for c in test] == [("2", 4)]
    frames = read_clip(train[2].path, 16, sampler=lambda length, _: np.arange(length)).astype(np.int64)
    distance = np.abs(frames[:, None] - _frames(10, 2)[None]).mean(axis=(2, 3, 4))  # [decoded, drawn]
    assert distance.argmin(1).tolist() == list(range(len(frames)))  # natural order: 2.jpg before 10.jpg


def test_dfew_reads_the_original_mp4s_when_told_or_when_they_are_all_there_is(dfew_root):
    chosen = dfew(dfew_root, fold=1, split="test", clip_dir="Clip/original")
    assert [(c.id, c.path) for c in chosen] == [("1", str(dfew_root / "Clip" / "original" / "1.mp4"))]
    os.rename(dfew_root / "Clip" / "clip_224x224", dfew_root / "elsewhere")
    assert dfew(dfew_root, fold=1, split="test")[0].path == str(dfew_root / "Clip" / "original" / "1.mp4")


def test_dfew_errors_name_the_file_the_row_or_the_argument(dfew_root):
    with pytest.raises(ValueError, match="fold must be one of .* got 6"):
        dfew(dfew_root, fold=6)
    with pytest.raises(ValueError, match="split must be one of .* got 'val'"):
        dfew(dfew_root, split="val")
    _write(dfew_root / "EmoLabel_DataSplit" / "test(single-labeled)" / "set_3.csv", "video_name,label\n3,8\n")
    with pytest.raises(ValueError, match=r"set_3.csv row 1: label 8 is not in 1..7"):
        dfew(dfew_root, fold=3, split="test")
    os.remove(dfew_root / "EmoLabel_DataSplit" / "test(single-labeled)" / "set_4.csv")
    with pytest.raises(FileNotFoundError, match=r"annotation file not found: .*test\(single-labeled\)/set_4.csv"):
        dfew(dfew_root, fold=4, split="test")
    with pytest.raises(FileNotFoundError, match="none of the clip folders"):
        dfew(dfew_root / "EmoLabel_DataSplit")


def test_ferv39k_reads_scene_and_emotion_frame_folders(tmp_path):
    clips = [("Action/Happy/0001", "Happy"), ("Talkshow/Fear/0012", "Fear"), ("DailyLife/Disgust/0003", "Disgust")]
    for index, (relative, _) in enumerate(clips, 1):
        _frame_folder(tmp_path / "2_ClipsforFaceCrop" / relative, _frames(index)[:12])
    lines = "".join(f"{relative} {emotion}\n" for relative, emotion in clips)
    _write(tmp_path / "4_setups" / "All_scenes" / "train_All.csv", lines)
    _write(tmp_path / "4_setups" / "All_scenes" / "test_All.csv", lines.splitlines(keepends=True)[2])
    train = ferv39k(tmp_path, split="train")
    assert [(c.id, c.label) for c in train] == [
        ("Action/Happy/0001", 0),
        ("Talkshow/Fear/0012", 6),
        ("DailyLife/Disgust/0003", 5),
    ]
    assert train[1].path == str(tmp_path / "2_ClipsforFaceCrop" / "Talkshow" / "Fear" / "0012")
    assert read_clip(train[1].path, 4).shape == (4, SIZE, SIZE, 3)
    assert [c.id for c in ferv39k(tmp_path, split="test")] == ["DailyLife/Disgust/0003"]


def test_ferv39k_skips_a_header_and_names_an_unknown_emotion(tmp_path):
    path = tmp_path / "4_setups" / "All_scenes" / "train_All.csv"
    _write(path, "path emotion\nAction/Sad/0010 Sad\n")
    assert [(c.id, c.label) for c in ferv39k(tmp_path)] == [("Action/Sad/0010", 1)]
    _write(path, "Action/Sad/0010 Sad\nAction/Calm/0011 Calm\n")
    with pytest.raises(ValueError, match="train_All.csv line 2: emotion 'Calm'"):
        ferv39k(tmp_path)


@pytest.fixture
def mafw_root(tmp_path):
    """data/clips/*.mp4, the no_caption split and a with_caption split in a legacy (GBK) encoding."""
    labels = {"00001.mp4": "anger", "00002.mp4": "neutral", "00003.mp4": "helplessness", "00004.mp4": "happiness"}
    captions = {"00001.mp4": ("他皱着眉头。", "A man frowns and his eyes narrow."),
                "00003.mp4": ("她低下头。", "A woman lowers her head, looking lost."),
                "00004.mp4": ("他笑了。", "A man laughs   at the table.")}  # fmt: skip
    for index, name in enumerate(labels, 1):
        os.makedirs(tmp_path / "data" / "clips", exist_ok=True)
        write_mp4(tmp_path / "data" / "clips" / name, _frames(index)[:10], fps=25)
    split = tmp_path / "Train & Test Set" / "single"
    parts = {"train": ["00001.mp4", "00002.mp4", "00003.mp4"], "test": ["00004.mp4"]}
    for part, names in parts.items():
        _write(split / "no_caption" / "set_1" / f"{part}.txt", "".join(f"{n} {labels[n]}\n" for n in names))
        lines = [b"\t".join([n.encode(), labels[n].encode(), captions[n][0].encode("gbk"), captions[n][1].encode()])
                 for n in names if n in captions]  # fmt: skip
        _write(split / "with_caption" / "set_1" / f"{part}.txt", b"\r\n".join(lines) + b"\r\n")
    return tmp_path


def test_mafw_reads_the_eleven_classes_and_the_english_captions(mafw_root):
    train = mafw(mafw_root, fold=1, split="train")
    assert train.classes == MAFW_CLASSES and len(train.classes) == 11
    assert [(c.id, c.label, c.caption) for c in train] == [
        ("00001", 0, "A man frowns and his eyes narrow."),
        ("00002", 4, None),  # MAFW has no captions for neutral clips
        ("00003", 9, "A woman lowers her head, looking lost."),
    ]
    assert train[0].path == str(mafw_root / "data" / "clips" / "00001.mp4")
    assert [(c.id, c.caption) for c in mafw(mafw_root, split="test")] == [("00004", "A man laughs at the table.")]
    assert read_clip(train[2].path, 4).shape == (4, SIZE, SIZE, 3)


def test_mafw_with_caption_protocol_has_only_the_captioned_clips(mafw_root):
    train = mafw(mafw_root, fold=1, split="train", with_caption=True)
    assert [(c.id, c.label) for c in train] == [("00001", 0), ("00003", 9)]


def test_mafw_names_a_bad_line(mafw_root):
    _write(mafw_root / "Train & Test Set" / "single" / "no_caption" / "set_2" / "test.txt", "00001.mp4 joy\n")
    with pytest.raises(ValueError, match=r"set_2/test.txt line 1: .*'00001.mp4 joy'"):
        mafw(mafw_root, fold=2, split="test")


def test_csv_reads_paths_labels_and_captions_relative_to_itself(tmp_path):
    os.makedirs(tmp_path / "videos")
    write_mp4(tmp_path / "videos" / "a.mp4", _frames(1)[:8], fps=25)
    rows = [["path", "label", "caption"], ["videos/a.mp4", "sad", "a sad face"], [str(tmp_path / "b.mp4"), "2", ""]]
    with open(tmp_path / "clips.csv", "w", newline="") as file:
        csv.writer(file).writerows(rows)
    clips = csv_clips(tmp_path / "clips.csv", classes=["happy", "Sad", "neutral"])
    assert clips.classes == ("happy", "Sad", "neutral")
    assert clips.clips == (
        Clip("videos/a", str(tmp_path / "videos" / "a.mp4"), 1, "a sad face"),
        Clip("b", str(tmp_path / "b.mp4"), 2, None),
    )
    with pytest.raises(ValueError, match=r"clips.csv line 2: label 'sad' is not an integer \(or pass classes\)"):
        csv_clips(tmp_path / "clips.csv")


def test_csv_without_classes_takes_integer_labels_and_needs_the_header(tmp_path):
    (tmp_path / "clips.csv").write_text("id,path,label\nfirst,x.mp4,0\nsecond,y.mp4,1\n")
    clips = csv_clips(tmp_path / "clips.csv")
    assert clips.classes == ("0", "1") and [c.id for c in clips] == ["first", "second"]
    (tmp_path / "bare.csv").write_text("x.mp4,0\n")
    with pytest.raises(ValueError, match="bare.csv: the header must name 'path' and 'label'"):
        csv_clips(tmp_path / "bare.csv")
    with pytest.raises(ValueError, match=r"labels outside 0..0 for clips \['second'\]"):
        csv_clips(tmp_path / "clips.csv", classes=["a"])


def test_csv_without_classes_refuses_labels_that_skip_a_class(tmp_path):
    rows = [f"c{i}.mp4,{label}" for i, label in enumerate([0, 1, 2, 0, 1, 2, 9, 1])]  # a typo: 9 for 2
    (tmp_path / "clips.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=r"clips.csv: labels 3..8 have no clip; label 9 is on line 8") as error:
        csv_clips(tmp_path / "clips.csv")
    assert "pass classes" in str(error.value)
    assert len(csv_clips(tmp_path / "clips.csv", classes=[str(i) for i in range(10)]).classes) == 10


def test_synthetic_reads_the_made_set_with_its_captions(synthetic_dir):
    captions = read_captions(synthetic_dir / "captions.csv")
    tested = []
    for fold in range(1, 6):
        train, test = synthetic(synthetic_dir, fold, "train"), synthetic(synthetic_dir, fold, "test")
        assert {c.id for c in train}.isdisjoint(c.id for c in test) and len(train) + len(test) == len(captions)
        assert all(c.caption == captions[c.id] and os.path.isfile(c.path) for c in (*train, *test))
        tested += [c.id for c in test]
    assert sorted(tested) == sorted(captions)


def test_load_clips_dispatches_by_name(synthetic_dir):
    assert load_clips("synthetic", synthetic_dir, fold=3, split="test") == synthetic(synthetic_dir, 3, "test")
    with pytest.raises(ValueError, match="dataset must be one of .* got 'afew'"):
        load_clips("afew", synthetic_dir)


def test_load_split_reads_the_fold_its_layout_has_and_ignores_it_for_a_foldless_one(synthetic_dir, tmp_path):
    assert LAYOUTS["synthetic"].folds == (1, 2, 3, 4, 5) and LAYOUTS["ferv39k"].folds == ()
    synthetic_fold = load_split("synthetic", synthetic_dir, "test", fold=4)
    assert synthetic_fold == synthetic(synthetic_dir, 4, "test") != synthetic(synthetic_dir, 1, "test")
    assert synthetic_fold.classes == LAYOUTS["synthetic"].classes
    (tmp_path / "train.csv").write_text("path,label\na.mp4,1\nb.mp4,0\n")
    assert load_split("csv", tmp_path, "train", fold=3) == load_clips("csv", tmp_path / "train.csv")
    assert load_split("csv", tmp_path, "test") is None  # no test.csv: no test split


def test_clip_list_counts_classes_replaces_captions_and_holds_out_a_stratified_part():
    clips = ClipList([Clip(str(i), f"{i}.mp4", i % 3) for i in range(30)] + [Clip("x", "x.mp4", 3)], "abcd")
    assert clips.class_counts().tolist() == [10, 10, 10, 1]
    assert clips.with_captions({"2": "a face"})[2].caption == "a face" and clips[3].caption is None
    rest, held = clips.holdout(0.2, seed=1)
    assert rest.class_counts().tolist() == [8, 8, 8, 1] and held.class_counts().tolist() == [2, 2, 2, 0]
    assert sorted(c.id for c in (*rest, *held)) == sorted(c.id for c in clips)
    assert held == clips.holdout(0.2, seed=1)[1] and held != clips.holdout(0.2, seed=2)[1]
