"""Face crops: find the face in each frame, track one box over the clip, smooth it and crop every frame to it.

DFER models are trained on face crops (DFEW's clip_224x224 and FERV39k's folders are crops; MAFW's clips and a
user's videos are not). A `FaceCrop` turns frames [T, H, W, 3] uint8 into crops [T, S, S, 3] uint8 in four steps:

1. detect: a `FaceDetector` (any callable frame -> boxes) finds the candidate faces of each frame; the default,
   `HaarFaceDetector`, runs OpenCV's frontal-face Haar cascade, whose weights ship inside the opencv wheel (the
   `faces` extra: `pip install grace_fast[faces]`), so nothing is downloaded.
2. track: one face is followed. Its reference is the coordinate-wise median of each frame's largest box, so a few
   false detections do not capture the track; each frame then takes the candidate nearest to the previous box,
   and a candidate whose centre is further from it than `max_jump` times its side is treated as no detection.
3. fill: a frame without a detection carries the box of the last frame that had one (frames before the first
   detection take the first one). A clip in which no face is ever found keeps the whole frame: its crop is the
   centre square, and `FaceTrack.found` is False so that callers can report it.
4. smooth and crop: the centre and side of the box are averaged over a centred window of `window` frames; the
   crop is the square around the box grown by `margin` on each side, moved (not cut) to lie inside the frame
   and shrunk to the frame's short side if larger, then resized to `size` pixels (default: the median crop side).

`--face-crop` turns the stage on in `predict`, `caption` and `coarse-labels` (on the sampled frames), and
`face_crop: true` in `train` (a checkpoint then records it in preprocessor_config.json, so that `predict` and
`evaluate` crop too). `grace-fast crop-faces --videos DIR --out OUT` writes face-cropped copies of a data set's
video files (MAFW's data/clips, a user's videos), for a layout's clip_dir; frame folders (DFEW's clip_224x224,
FERV39k) are crops already.

>>> import numpy as np
>>> class Fixed:  # any frame -> boxes callable is a detector
...     def __call__(self, frame):
...         return np.array([[20.0, 10.0, 40.0, 30.0]])
>>> crop = FaceCrop(Fixed(), size=32)
>>> crop(np.zeros((4, 64, 80, 3), np.uint8)).shape
(4, 32, 32, 3)
>>> crop.track(np.zeros((4, 64, 80, 3), np.uint8)).boxes[0].tolist()
[20.0, 10.0, 40.0, 30.0]
"""

import argparse
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from grace_fast.errors import UserError

FACES_EXTRA = "pip install 'grace_fast[faces]' (or opencv-python-headless<5)"
FACE_CROP_HELP = "cut each clip to its tracked face (OpenCV's Haar cascade; needs the faces extra)"
TRACKS_NAME = "faces.jsonl"


@runtime_checkable
class FaceDetector(Protocol):
    """Finds faces in one frame: frame [H, W, 3] uint8 RGB -> boxes [K, 4] float (x0, y0, x1, y1) in pixels, K >= 0."""

    def __call__(self, frame: np.ndarray) -> np.ndarray: ...


class HaarFaceDetector:
    """OpenCV's Haar cascade face detector (Viola-Jones), run on the frame's contrast-equalised grey image.

    The grey image is rescaled so that its short side is `work_side` pixels (small frames are enlarged so that a
    face spans more than the cascade's 20-24 pixel window, large ones shrunk for speed) and equalised with CLAHE
    (on synthetic clips 1-40 of seed 0 it raised the clips with a face found from 35 to 38, the frames with a
    detection from 69% to 76%; the faces it still misses are dark-skinned). Faces smaller than `min_face` of the
    short side are ignored. The cascade is loaded on first use in each thread (one OpenCV CascadeClassifier
    shared by threads returned wrong boxes for a third of the frames) and not pickled, so a detector can be used
    by Predictor's decoding threads and sent to DataLoader worker processes.
    """

    def __init__(
        self,
        cascade: str = "haarcascade_frontalface_alt2.xml",
        *,
        work_side: int = 160,
        min_face: float = 0.15,
        scale_factor: float = 1.1,
        min_neighbors: int = 4,
    ):
        if not isinstance(work_side, int) or work_side < 24:
            raise ValueError(f"work_side must be an integer >= 24 (the cascade's window), got {work_side!r}")
        if not 0 < min_face <= 1:
            raise ValueError(f"min_face must be a fraction of the short side in (0, 1], got {min_face!r}")
        if not scale_factor > 1:
            raise ValueError(f"scale_factor must be > 1, got {scale_factor!r}")
        self.cascade, self.work_side, self.min_face = cascade, work_side, min_face
        self.scale_factor, self.min_neighbors = scale_factor, min_neighbors
        self._local = threading.local()

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_local"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _local=threading.local())

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        cv2 = _cv2()
        if not hasattr(self._local, "classifier"):
            self._local.classifier = _load_cascade(cv2, self.cascade)
        scale = self.work_side / min(frame.shape[:2])
        grey = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
        grey = cv2.resize(grey, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
        grey = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(4, 4)).apply(grey)
        side = max(int(self.min_face * self.work_side), 20)
        found = self._local.classifier.detectMultiScale(
            grey, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors, minSize=(side, side)
        )
        boxes = np.asarray(found, dtype=np.float64).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]  # (x, y, w, h) -> (x0, y0, x1, y1)
        return boxes / scale


@dataclass(frozen=True)
class FaceTrack:
    """The face of a clip: boxes [T, 4] float64 (x0, y0, x1, y1) in pixels after filling and smoothing, detected
    [T] bool (the frame had a detection on the track), found (any frame had one; if not, boxes are whole frames)."""

    boxes: np.ndarray
    detected: np.ndarray

    @property
    def found(self) -> bool:
        return bool(self.detected.any())


@dataclass(frozen=True)
class FaceCrop:
    """frames [T, H, W, 3] uint8 -> face crops [T, size, size, 3] uint8 (see the module doc for the steps).

    detector: a FaceDetector (default: HaarFaceDetector()); size: crop side in pixels (None: the median side of
    the clip's crop boxes); margin: added on each side, as a fraction of the face box's side; window: frames in
    the centred moving average of the box (odd; 1: no smoothing); max_jump: how far (in box sides) the face may move
    from one frame to the next before a detection is taken for another face.
    """

    detector: FaceDetector = field(default_factory=HaarFaceDetector)
    size: int | None = None
    margin: float = 0.15
    window: int = 5
    max_jump: float = 0.5

    def __post_init__(self):
        if not callable(self.detector):
            raise TypeError(f"detector must be callable frame -> boxes, got {type(self.detector).__name__}")
        if self.size is not None and (not isinstance(self.size, int) or self.size < 1):
            raise ValueError(f"size must be None or an integer >= 1, got {self.size!r}")
        if not self.margin >= 0:
            raise ValueError(f"margin must be >= 0, got {self.margin!r}")
        if not isinstance(self.window, int) or self.window < 1 or self.window % 2 == 0:
            raise ValueError(f"window must be an odd integer >= 1, got {self.window!r}")
        if not self.max_jump > 0:
            raise ValueError(f"max_jump must be > 0, got {self.max_jump!r}")

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        return self.crop(frames, self.track(frames))

    def track(self, frames: np.ndarray) -> FaceTrack:
        """Detect, track, fill and smooth the face box of frames [T, H, W, 3] uint8."""
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or not len(frames):
            raise ValueError(f"frames must be uint8 [T, H, W, 3] with T >= 1, got {frames.dtype} {frames.shape}")
        candidates = [_check_boxes(self.detector(frame)) for frame in frames]
        picked = _follow(candidates, self.max_jump)
        detected = np.array([box is not None for box in picked])
        height, width = frames.shape[1:3]
        if not detected.any():
            return FaceTrack(np.tile([0.0, 0.0, float(width), float(height)], (len(frames), 1)), detected)
        first = picked[int(np.argmax(detected))]
        filled, last = [], first
        for box in picked:
            last = box if box is not None else last
            filled.append(last)
        return FaceTrack(_smooth(np.stack(filled), self.window), detected)

    def crop_boxes(self, track: FaceTrack, height: int, width: int) -> np.ndarray:
        """The square crop of each frame, [T, 4] int64 (x0, y0, x1, y1) inside a height x width frame."""
        if not track.found:
            side = min(height, width)
            x0, y0 = (width - side) // 2, (height - side) // 2
            return np.tile([x0, y0, x0 + side, y0 + side], (len(track.boxes), 1)).astype(np.int64)
        boxes = track.boxes
        centre = (boxes[:, :2] + boxes[:, 2:]) / 2
        side = np.minimum(np.max(boxes[:, 2:] - boxes[:, :2], axis=1) * (1 + 2 * self.margin), min(height, width))
        side = np.maximum(np.rint(side), 1)
        x0 = np.clip(np.rint(centre[:, 0] - side / 2), 0, width - side)
        y0 = np.clip(np.rint(centre[:, 1] - side / 2), 0, height - side)
        return np.stack([x0, y0, x0 + side, y0 + side], axis=1).astype(np.int64)

    def crop(self, frames: np.ndarray, track: FaceTrack) -> np.ndarray:
        """Crop frames [T, H, W, 3] uint8 to the track's squares and resize them: [T, S, S, 3] uint8."""
        boxes = self.crop_boxes(track, *frames.shape[1:3])
        size = self.size or int(np.median(boxes[:, 2] - boxes[:, 0]))
        out = np.empty((len(frames), size, size, 3), np.uint8)
        for t, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
            patch = torch.from_numpy(np.ascontiguousarray(frames[t, y0:y1, x0:x1])).permute(2, 0, 1)[None].float()
            if patch.shape[-1] != size:
                patch = F.interpolate(patch, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
            out[t] = patch[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
        return out


def add_face_crop_argument(parser: argparse.ArgumentParser) -> None:
    """--face-crop, shared by the commands that read clips."""
    parser.add_argument("--face-crop", action="store_true", help=FACE_CROP_HELP)


def face_crop_of(enabled: bool) -> FaceCrop | None:
    """The default FaceCrop when enabled, after checking that OpenCV is there (before any work starts)."""
    if not enabled:
        return None
    _cv2()
    return FaceCrop()


def crop_videos(source: str | Path, out: str | Path, crop: FaceCrop, *, progress: bool = True) -> dict:
    """Write a face-cropped mp4 of each video of source (a folder or a list file, as `video.list_videos`) to
    out/ID.mp4 at the video's frame rate, and out/faces.jsonl: per clip its id, source path, whether a face was
    found, the fraction of frames with a detection and the crop boxes [T, 4] (x0, y0, x1, y1). Returns {"out",
    "clips", "found"}. A clip that cannot be read stops the run (VideoReadError naming it)."""
    from tqdm import tqdm

    from grace_fast.data.video import list_videos, read_whole_video, write_mp4
    from grace_fast.files import write_atomic

    if crop.size is None or crop.size % 2:
        raise ValueError(f"size must be an even number of pixels for an mp4, got {crop.size!r}")
    out = Path(out)
    clips = list_videos(source)
    if Path(source).resolve() in (out.resolve(), *out.resolve().parents):
        raise ValueError(
            f"out {out} is inside the videos folder {source} (a rerun would crop the crops); choose another"
        )
    records = []
    for clip, path in tqdm(clips, desc="crop-faces", unit="clip", disable=not progress):
        frames, fps = read_whole_video(path)
        track = crop.track(frames)
        boxes = crop.crop_boxes(track, *frames.shape[1:3])
        target = out / f"{clip}.mp4"
        target.parent.mkdir(parents=True, exist_ok=True)
        write_mp4(target, crop.crop(frames, track), fps=fps)
        records.append(
            {
                "clip": clip,
                "video": path,
                "found": track.found,
                "detected": round(float(track.detected.mean()), 4),
                "boxes": boxes.tolist(),
            }
        )
    write_atomic(out / TRACKS_NAME, "".join(json.dumps(r) + "\n" for r in records).encode())
    return {"out": str(out), "clips": len(records), "found": sum(r["found"] for r in records)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from grace_fast.arguments import integer

    parser.add_argument("--videos", required=True, help="folder of videos, or a text file with one video path per line")
    parser.add_argument("--out", required=True, help=f"output folder: ID.mp4 per clip and {TRACKS_NAME}")
    parser.add_argument("--size", type=integer(2), default=224, help="crop side in pixels, even (default 224)")
    parser.add_argument("--margin", type=float, default=0.15, help="added on each side of the face box, in sides")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """`grace-fast crop-faces`: exit 0 once every clip is written (clips without a face keep their centre square,
    and are counted)."""
    face_crop_of(True)
    summary = crop_videos(args.videos, args.out, FaceCrop(size=args.size, margin=args.margin), progress=not args.quiet)
    print(
        f"crop-faces: {summary['clips']} clips written to {summary['out']}, a face found in {summary['found']} "
        f"(the others keep their centre square; per clip in {TRACKS_NAME})"
    )
    return 0


def _cv2():
    try:
        import cv2
    except ImportError as error:
        raise UserError(f"face crops with the Haar detector need OpenCV: {FACES_EXTRA}") from error
    if int(cv2.__version__.split(".")[0]) >= 5 or not hasattr(cv2, "data"):
        raise UserError(f"OpenCV {cv2.__version__} ships no Haar cascades (cv2.data); {FACES_EXTRA}")
    return cv2


def _load_cascade(cv2, cascade: str):
    path = cascade if "/" in cascade else cv2.data.haarcascades + cascade
    classifier = cv2.CascadeClassifier(path)
    if classifier.empty():
        raise UserError(f"cascade {path!r} could not be loaded; give a file of cv2.data.haarcascades or a path")
    return classifier


def _check_boxes(boxes) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.size == 0:
        return boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"a face detector must return boxes [K, 4] (x0, y0, x1, y1), got shape {boxes.shape}")
    return boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]


def _follow(candidates: list[np.ndarray], max_jump: float) -> list[np.ndarray | None]:
    """The box of one face in each frame (None where it was not detected), starting from the median of the
    frames' largest boxes and moving to the nearest candidate within max_jump box sides."""
    largest = [c[np.argmax(_sides(c))] for c in candidates if len(c)]
    if not largest:
        return [None] * len(candidates)
    previous, picked = np.median(np.stack(largest), axis=0), []
    for boxes in candidates:
        box = None
        if len(boxes):
            distance = np.linalg.norm(_centres(boxes) - _centres(previous[None])[0], axis=1)
            nearest = int(np.argmin(distance))
            if distance[nearest] <= max_jump * _sides(previous[None])[0]:
                box = previous = boxes[nearest]
        picked.append(box)
    return picked


def _smooth(boxes: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average of the boxes' centre and half-sides over `window` (odd) frames, fewer at the ends."""
    values = np.concatenate([_centres(boxes), (boxes[:, 2:] - boxes[:, :2]) / 2], axis=1)
    sums = np.concatenate([np.zeros((1, 4)), np.cumsum(values, axis=0)])
    t = np.arange(len(boxes))
    lo, hi = np.maximum(t - window // 2, 0), np.minimum(t + window // 2 + 1, len(boxes))
    centre, half = np.split((sums[hi] - sums[lo]) / (hi - lo)[:, None], 2, axis=1)
    return np.concatenate([centre - half, centre + half], axis=1)


def _centres(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, :2] + boxes[:, 2:]) / 2


def _sides(boxes: np.ndarray) -> np.ndarray:
    return np.max(boxes[:, 2:] - boxes[:, :2], axis=1)
