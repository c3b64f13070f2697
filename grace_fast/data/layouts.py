"""The clips of a data set split, read from the annotation files the data sets ship with.

Each loader returns a ClipList: (clip id, path, label, caption) per clip plus the class names. A path is a video
file or a folder of frame images (`frames.read_clip` reads both). Paths are resolved, not checked: a missing file
is reported by `ClipDataset`, which raises or skips it. The layouts below are the published releases' as far as
we know them; every folder and file name is a keyword argument, so a differently unpacked copy can be pointed at.

DFEW (7 classes; 5 folds)::

    DFEW/
      Clip/clip_224x224/00001/...jpg       face crops as frame folders (5-digit ids); or
      Clip/original/1.mp4                  the original clips (either is found, clip_224x224 first)
      EmoLabel_DataSplit/
        train(single-labeled)/set_1.csv ... set_5.csv     "video_name,label", label 1..7
        test(single-labeled)/set_1.csv ... set_5.csv

FERV39k (7 classes, DFEW's order; one split)::

    FERV39k/
      2_ClipsforFaceCrop/<Scene>/<Emotion>/<clip>/*.jpg   face crops as frame folders
      4_setups/All_scenes/train_All.csv, test_All.csv     "Action/Happy/0001 Happy" per line, no header

MAFW (11 classes; 5 folds; English captions for the non-neutral clips)::

    MAFW/
      data/clips/00001.mp4 ...
      Train & Test Set/single/no_caption/set_1/train.txt, test.txt      "00001.mp4 anger" per line
      Train & Test Set/single/with_caption/set_1/train.txt, test.txt    clip, label, Chinese caption, English
                                                                         caption, tab separated (not UTF-8)

Generic CSV: a header with `path` and `label` columns, optionally `caption` and `id`; relative paths are
relative to the CSV's folder.

>>> import tempfile
>>> from grace_fast.data.synthetic import make_synthetic
>>> root = make_synthetic(tempfile.mkdtemp(), clips=10, progress=False)["out"]
>>> clips = synthetic(root, fold=1, split="train")
>>> len(clips), clips.classes
(8, ('happy', 'sad', 'neutral', 'angry', 'surprise', 'disgust', 'fear'))
"""

import csv
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from grace_fast.data.video import VIDEO_SUFFIXES

DFEW_CLASSES = ("happy", "sad", "neutral", "angry", "surprise", "disgust", "fear")
FERV39K_CLASSES = DFEW_CLASSES
MAFW_CLASSES = (
    "anger",
    "disgust",
    "fear",
    "happiness",
    "neutral",
    "sadness",
    "surprise",
    "contempt",
    "anxiety",
    "helplessness",
    "disappointment",
)
DFEW_CLIP_DIRS = ("Clip/clip_224x224", "Clip/original")
DFEW_SPLIT_FILE = "EmoLabel_DataSplit/{split}(single-labeled)/set_{fold}.csv"
FERV39K_SPLIT_FILE = "4_setups/All_scenes/{split}_All.csv"
MAFW_SPLIT_DIR = "Train & Test Set/single"
SPLITS = ("train", "test")
FOLDS = (1, 2, 3, 4, 5)


@dataclass(frozen=True)
class Clip:
    """One labelled clip: id (as the data set names it), path (video file or frame folder), label (class index),
    caption (None when the clip has none)."""

    id: str
    path: str
    label: int
    caption: str | None = None


@dataclass(frozen=True)
class ClipList:
    """The clips of one split and the class names their labels index."""

    clips: tuple[Clip, ...]
    classes: tuple[str, ...]
    source: str = field(default="", compare=False)

    def __post_init__(self):
        object.__setattr__(self, "clips", tuple(self.clips))
        object.__setattr__(self, "classes", tuple(self.classes))
        bad = [clip.id for clip in self.clips if not 0 <= clip.label < len(self.classes)]
        if bad:
            raise ValueError(f"{self.source}: labels outside 0..{len(self.classes) - 1} for clips {bad[:5]}")

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> Clip:
        return self.clips[index]

    @property
    def labels(self) -> np.ndarray:
        """[N] int64 class index of each clip."""
        return np.array([clip.label for clip in self.clips], dtype=np.int64)

    def class_counts(self) -> np.ndarray:
        """[C] int64 number of clips of each class (for class-weighted losses)."""
        return np.bincount(self.labels, minlength=len(self.classes))

    def with_captions(self, captions: Mapping[str, str]) -> "ClipList":
        """A copy whose clips take their caption from captions[clip id] where it has one (e.g. the JSONL of
        `grace-fast caption` or `refine` read into {clip: text}); the others keep theirs."""
        clips = tuple(replace(c, caption=captions[c.id]) if c.id in captions else c for c in self.clips)
        return ClipList(clips, self.classes, self.source)

    def holdout(self, fraction: float, seed: int = 0) -> tuple["ClipList", "ClipList"]:
        """(rest, held out): a stratified random part of the clips, e.g. a validation split carved from a
        training fold; the same split for the same seed.

        Each class holds out round(fraction x its clips) of them, but never its last one, so every class with
        two or more clips keeps a clip in rest (a class with one keeps it). When that holds out nothing (small
        classes, small fraction), one clip of the largest class is held out: the held-out part is never empty.
        Only when every class has a single clip does that clip's class go without one in rest.
        Raises ValueError for fewer than 2 clips, which cannot be split into two non-empty parts.
        """
        if not 0 < fraction < 1:
            raise ValueError(f"fraction must be in (0, 1), got {fraction!r}")
        if len(self.clips) < 2:
            raise ValueError(
                f"{self.source or 'clips'}: cannot hold out a part of {len(self.clips)} clip(s); at least 2 are "
                "needed (one to hold out, one to keep)"
            )
        rng = np.random.default_rng(seed)
        shuffled = [rng.permutation(np.flatnonzero(self.labels == label)) for label in range(len(self.classes))]
        counts = [
            min(round(fraction * len(members)), len(members) - 1) if len(members) > 1 else 0 for members in shuffled
        ]
        held = {int(i) for members, count in zip(shuffled, counts, strict=True) for i in members[:count]}
        if not held:
            held.add(int(max(shuffled, key=len)[0]))
        rest = tuple(c for i, c in enumerate(self.clips) if i not in held)
        out = tuple(c for i, c in enumerate(self.clips) if i in held)
        return ClipList(rest, self.classes, self.source), ClipList(out, self.classes, f"{self.source} (held out)")


def dfew(
    root: str | os.PathLike,
    fold: int = 1,
    split: str = "train",
    *,
    clip_dir: str | None = None,
    split_file: str = DFEW_SPLIT_FILE,
) -> ClipList:
    """DFEW's single-labelled 5-fold protocol. clip_dir (relative to root) holds one frame folder or video file
    per clip, named by video_name as is or zero-padded to 5 digits; None takes the first of DFEW_CLIP_DIRS that
    exists. split_file is formatted with split ("train"/"test") and fold (1..5)."""
    root = Path(root)
    _check_choice("split", split, SPLITS)
    _check_choice("fold", fold, FOLDS)
    if clip_dir is None:
        found = [d for d in DFEW_CLIP_DIRS if (root / d).is_dir()]
        if not found:
            raise FileNotFoundError(f"DFEW: none of the clip folders {list(DFEW_CLIP_DIRS)} exists under {root}")
        clip_dir = found[0]
    annotations = root / split_file.format(split=split, fold=fold)
    rows = _read_rows(annotations, delimiter=",")
    if rows and not rows[0][1].strip().lstrip("-").isdigit():
        rows = rows[1:]  # the "video_name,label" header
    entries = _entries(root / clip_dir)
    clips = []
    for number, row in enumerate(rows, 1):
        name, label = row[0].strip(), _integer(row[1], annotations, number)
        if not 1 <= label <= len(DFEW_CLASSES):
            raise ValueError(f"DFEW: {annotations} row {number}: label {label} is not in 1..{len(DFEW_CLASSES)}")
        path = entries.get(name) or entries.get(name.zfill(5)) or str(root / clip_dir / name)
        clips.append(Clip(name, path, label - 1))
    return ClipList(clips, DFEW_CLASSES, str(annotations))


def ferv39k(
    root: str | os.PathLike,
    split: str = "train",
    *,
    clip_dir: str = "2_ClipsforFaceCrop",
    split_file: str = FERV39K_SPLIT_FILE,
) -> ClipList:
    """FERV39k's single train/test split. Each line of split_file (formatted with split) is a clip path relative
    to clip_dir and its emotion name, separated by a space (a header line, if any, is skipped)."""
    root = Path(root)
    _check_choice("split", split, SPLITS)
    annotations = root / split_file.format(split=split)
    names = {name: index for index, name in enumerate(FERV39K_CLASSES)}
    rows = _read_rows(annotations, delimiter=" ")
    clips = []
    for number, row in enumerate(rows, 1):
        relative, emotion = row[0].strip(), row[-1].strip().lower()
        if emotion not in names:
            if number == 1 and len(rows) > 1:
                continue  # a header
            raise ValueError(
                f"FERV39k: {annotations} line {number}: emotion {row[-1]!r} is not one of {FERV39K_CLASSES}"
            )
        clips.append(Clip(relative, str(root / clip_dir / relative), names[emotion]))
    return ClipList(clips, FERV39K_CLASSES, str(annotations))


def mafw(
    root: str | os.PathLike,
    fold: int = 1,
    split: str = "train",
    *,
    clip_dir: str = "data/clips",
    split_dir: str = MAFW_SPLIT_DIR,
    with_caption: bool = False,
) -> ClipList:
    """MAFW's single-label 5-fold protocol (11 classes). The clips are those of
    `<split_dir>/no_caption/set_<fold>/<split>.txt` (all classes), or of `with_caption/...` when with_caption is
    True (MAFW's captioned subset: no neutral clips). Either way a clip takes its English caption from the
    fold's with_caption files where they list it, and None otherwise.

    The with_caption files are not UTF-8 (the Chinese captions are in a legacy encoding); the fields are split
    on tabs as bytes and the English caption, the last field, is decoded as UTF-8 with replacement characters.
    """
    root = Path(root)
    _check_choice("split", split, SPLITS)
    _check_choice("fold", fold, FOLDS)
    captioned = root / split_dir / "with_caption" / f"set_{fold}"
    listed = {
        part: _mafw_caption_rows(captioned / f"{part}.txt") for part in SPLITS if (captioned / f"{part}.txt").is_file()
    }
    captions = {row[0]: row[2] for rows in listed.values() for row in rows}
    if with_caption:
        annotations = captioned / f"{split}.txt"
        if split not in listed:
            raise FileNotFoundError(f"annotation file not found: {annotations}")
        rows = [row[:2] for row in listed[split]]
    else:
        annotations = root / split_dir / "no_caption" / f"set_{fold}" / f"{split}.txt"
        rows = _read_rows(annotations, delimiter=None)
    names = {name: index for index, name in enumerate(MAFW_CLASSES)}
    clips = []
    for number, row in enumerate(rows, 1):
        if len(row) < 2 or row[1].strip().lower() not in names:
            raise ValueError(
                f"MAFW: {annotations} line {number}: expected '<clip>.mp4 <emotion>' with an emotion in "
                f"{MAFW_CLASSES}, got {' '.join(row)!r}"
            )
        file_name = row[0].strip()
        label = names[row[1].strip().lower()]
        clips.append(Clip(Path(file_name).stem, str(root / clip_dir / file_name), label, captions.get(file_name)))
    return ClipList(clips, MAFW_CLASSES, str(annotations))


def csv_clips(
    path: str | os.PathLike,
    classes: Sequence[str] | None = None,
) -> ClipList:
    """A generic CSV with a header naming a `path` and a `label` column (optional: `caption`, `id`). A label is a
    class index, or a class name when classes is given; without classes the labels must be integers and the
    classes are named "0".."max label" and each needs a clip (a gap is refused as a likely typo; pass classes so
    that every split agrees on them). The id defaults to
    the path relative to the CSV's folder without its suffix."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"clips CSV not found: {path}")
    with path.open(newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        if not reader.fieldnames or not {"path", "label"} <= set(reader.fieldnames):
            raise ValueError(
                f"clips CSV {path}: the header must name 'path' and 'label' columns, got {reader.fieldnames}"
            )
        rows = list(reader)
    index = {name.lower(): i for i, name in enumerate(classes)} if classes is not None else {}
    clips, labels = [], []
    for number, row in enumerate(rows, 2):
        label = row["label"].strip()
        if label.lower() in index:
            labels.append(index[label.lower()])
        elif label.lstrip("-").isdigit():
            labels.append(int(label))
        else:
            expected = f"an index or one of {list(classes)}" if classes is not None else "an integer (or pass classes)"
            raise ValueError(f"clips CSV {path} line {number}: label {label!r} is not {expected}")
        file = Path(row["path"].strip())
        file = file if file.is_absolute() else path.parent / file
        clip_id = (row.get("id") or "").strip() or _relative_id(file, path.parent)
        clips.append(Clip(clip_id, str(file), labels[-1], (row.get("caption") or "").strip() or None))
    if classes is None:
        _check_contiguous(labels, path)
        classes = tuple(str(i) for i in range(max(labels, default=-1) + 1))
    return ClipList(clips, tuple(classes), str(path))


def _check_contiguous(labels: list[int], path: Path) -> None:
    """Without class names the labels must be 0..K-1, each with a clip: a gap is most likely a typo (9 for 2), which
    would otherwise make K classes of the largest label silently."""
    missing = sorted(set(range(max(labels, default=-1) + 1)) - set(labels))
    if missing:
        gap = f"{missing[0]}..{missing[-1]}" if missing == list(range(missing[0], missing[-1] + 1)) else str(missing)
        beyond = [(label, number) for number, label in enumerate(labels, 2) if label > missing[0]]
        where = ", ".join(f"label {label} is on line {number}" for label, number in beyond[:3])
        more = ", ..." if len(beyond) > 3 else ""
        raise ValueError(
            f"clips CSV {path}: labels {gap} have no clip; {where}{more}: a typo? Without classes the labels must "
            "be 0..K-1 with a clip each; pass classes (--classes) to name every class"
        )


def synthetic(root: str | os.PathLike, fold: int = 1, split: str = "train") -> ClipList:
    """A `grace-fast make-synthetic` folder: DFEW's layout (mp4 clips in Clip/original) with its captions.csv."""
    clips = dfew(root, fold, split, clip_dir="Clip/original")
    return clips.with_captions(read_captions(Path(root) / "captions.csv"))


def read_captions(path: str | os.PathLike) -> dict[str, str]:
    """{clip: caption} from a CSV with `clip` and `caption` columns."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"captions file not found: {path}")
    with path.open(newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        if not reader.fieldnames or not {"clip", "caption"} <= set(reader.fieldnames):
            raise ValueError(
                f"captions file {path}: the header must name 'clip' and 'caption', got {reader.fieldnames}"
            )
        return {row["clip"]: row["caption"] for row in reader}


@dataclass(frozen=True)
class Layout:
    """What grace_fast knows of a data set: its name (the --dataset value), the loader of its annotation files,
    its class names in label order (None: named by the annotation or the caller, as csv) and its test folds (none:
    one train/test split)."""

    name: str
    loader: Callable[..., ClipList]
    classes: tuple[str, ...] | None
    folds: tuple[int, ...] = ()


LAYOUTS = {
    layout.name: layout
    for layout in (
        Layout("synthetic", synthetic, DFEW_CLASSES, FOLDS),
        Layout("dfew", dfew, DFEW_CLASSES, FOLDS),
        Layout("ferv39k", ferv39k, FERV39K_CLASSES),
        Layout("mafw", mafw, MAFW_CLASSES, FOLDS),
        Layout("csv", csv_clips, None),
    )
}


def layout(dataset: str) -> Layout:
    """The Layout of a data set by name (one of LAYOUTS)."""
    if dataset not in LAYOUTS:
        raise ValueError(f"dataset must be one of {list(LAYOUTS)}, got {dataset!r}")
    return LAYOUTS[dataset]


def load_clips(dataset: str, root: str | os.PathLike, **options) -> ClipList:
    """The ClipList of a data set by name (one of LAYOUTS), e.g. load_clips("dfew", root, fold=2, split="test");
    options go to the loader (for "csv", root is the CSV file)."""
    return layout(dataset).loader(root, **options)


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def _read_rows(path: Path, delimiter: str | None) -> list[list[str]]:
    """The non-empty rows of a text annotation file, split on delimiter (None: any whitespace)."""
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    lines = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines()]
    return [line.split(delimiter) for line in lines if line]


def _integer(text: str, path: Path, number: int) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{path} row {number}: expected an integer label, got {text!r}") from None


def _entries(folder: Path) -> dict[str, str]:
    """{name without suffix: path} of the frame folders and video files directly in folder."""
    if not folder.is_dir():
        return {}
    out = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            stem, suffix = os.path.splitext(entry.name)
            if entry.is_dir():
                out[entry.name] = entry.path
            elif suffix.lower() in VIDEO_SUFFIXES:
                out.setdefault(stem, entry.path)
    return out


def _mafw_caption_rows(path: Path) -> list[list[str]]:
    """[clip file, label, English caption] of each line of a with_caption split file."""
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    rows = []
    for number, line in enumerate(path.read_bytes().splitlines(), 1):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split(b"\t")]
        if len(fields) < 3:
            raise ValueError(f"MAFW: {path} line {number}: expected tab-separated clip, label and captions")
        rows.append(
            [
                fields[0].decode("ascii", "replace"),
                fields[1].decode("ascii", "replace"),
                " ".join(fields[-1].decode("utf-8", "replace").split()),
            ]
        )
    return rows


def _relative_id(file: Path, folder: Path) -> str:
    try:
        return file.relative_to(folder).with_suffix("").as_posix()
    except ValueError:
        return file.stem


def load_split(
    dataset: str, root: str | os.PathLike, split: str, fold: int = 1, classes: Sequence[str] | None = None
) -> ClipList | None:
    """The clips of one split ("train" or "test") of a data set by name; the fold is ignored for a data set with
    one split (no Layout.folds). For csv, root is a folder with train.csv and test.csv (a missing test.csv gives
    None) and classes names the classes of its labels."""
    root = Path(root)
    if dataset == "csv":
        path = root / f"{split}.csv"
        if split == "test" and not path.is_file():
            return None
        return load_clips("csv", path, classes=classes)
    options = {"fold": fold} if layout(dataset).folds else {}
    return load_clips(dataset, root, split=split, **options)
