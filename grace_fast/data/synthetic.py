"""`grace-fast make-synthetic`: a small DFER data set of drawn faces, written as real mp4 files in DFEW's layout.

Each clip shows one face (`faces`) whose expression, one of DFEW's 7 classes, unfolds as local motion shaped like
action units (happy: AU6 + AU12; sad: AU1 + AU4 + AU15; angry: AU4 + AU7 + AU23; surprise: AU1 + AU2 + AU5 + AU26;
disgust: AU9 + AU10; fear: AU1 + AU2 + AU4 + AU5 + AU20; neutral: none), starting from a resting face whose own
shape varies from person to person as much as a weak expression would, so that one frame says less than the
motion. Nuisances that carry no label are drawn independently of it: whole-head translation, roll, yaw and
zoom, camera shake, blinks, speech-like jaw motion, a brief stray action unit, lighting level, direction, flicker
and colour, sensor noise; clips vary in length (1 to 3 s) and frame rate (10 to 25 fps). Classes are as imbalanced
as in DFEW, with at least 5 clips per class when there are 35 or more clips, and split into DFEW's 5 folds.

Each clip has an English caption of what a video captioner sees (`_caption`, at CAPTION_RATES): the person and the
scene, then each visible nuisance (head turn, tilt, sway, moving closer or away, camera shake, light change,
flicker, blinks, talking) with probability 0.7; with probability 0.3 it names one action unit by the movement of its
face part (AU_PHRASES), and that unit is one that does not move in the clip with probability 0.3 (always for a face
where none moves). It never names the emotion. `grace_fast.eval.caption_baseline` measures how much of the label
the captions still give away.

The output folder (read back by `layouts.synthetic`)::

    DIR/Clip/original/1.mp4 ... N.mp4
    DIR/EmoLabel_DataSplit/train(single-labeled)/set_1.csv ... set_5.csv   video_name,label (1..7)
    DIR/EmoLabel_DataSplit/test(single-labeled)/set_1.csv ... set_5.csv
    DIR/captions.csv          clip,caption
    DIR/annotations.jsonl     every clip's parameters (label, fps, action units, nuisances, caption, the action
                              unit it names) and where each unit and nuisance is in each frame (`region_record`)
    DIR/clips.md5             the md5 of every clip written (`md5sum -c clips.md5` in DIR checks them)
    DIR/synthetic.json        the arguments; a rerun with other arguments into DIR is refused

Everything follows from (seed, clips, size): the same arguments give byte-identical files (`write_mp4`). DIR must
be new, empty, or made by this function: it writes into no folder it did not make. Clips are written atomically
and each is recorded in clips.md5 once written, so an interrupted run is finished by running it again: the rerun
keeps the clips recorded there with their md5 and rewrites any other file in their place; the annotation files
are written last.

>>> import tempfile
>>> summary = make_synthetic(tempfile.mkdtemp(), clips=7, seed=0, progress=False)
>>> summary["written"], summary["skipped"]
(7, 0)
"""

import argparse
import csv
import hashlib
import io
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from grace_fast.data.faces import (
    ACTION_UNITS,
    AU_REGIONS,
    HEAD_BOX,
    REGION_BOXES,
    FrameStates,
    Identity,
    part_boxes,
    render,
)
from grace_fast.data.layouts import DFEW_CLASSES, DFEW_SPLIT_FILE, FOLDS
from grace_fast.data.video import VideoReadError, read_video, write_mp4
from grace_fast.files import write_atomic

VERSION = 2  # 2: captions at CAPTION_RATES, regions in the annotations
CLIP_DIR = "Clip/original"
LEDGER = "clips.md5"  # md5sum's format: "<md5>  Clip/original/<clip>.mp4"
# the action units of each class at the expression's apex (DFEW's class order)
EXPRESSIONS = {
    "happy": {"AU6": 0.8, "AU12": 1.0, "AU26": 0.15},
    "sad": {"AU1": 1.0, "AU4": 0.6, "AU15": 1.0},
    "neutral": {},
    "angry": {"AU4": 1.0, "AU7": 1.0, "AU23": 1.0},
    "surprise": {"AU1": 1.0, "AU2": 1.0, "AU5": 1.0, "AU26": 1.0},
    "disgust": {"AU9": 1.0, "AU10": 1.0, "AU4": 0.4, "AU15": 0.3},
    "fear": {"AU1": 1.0, "AU2": 0.6, "AU4": 0.7, "AU5": 1.0, "AU20": 1.0, "AU26": 0.35},
}
# approximately DFEW's single-label class shares
CLASS_SHARES = {
    "happy": 0.24,
    "sad": 0.17,
    "neutral": 0.23,
    "angry": 0.18,
    "surprise": 0.10,
    "disgust": 0.012,
    "fear": 0.068,
}
FRAME_RATES = (10.0, 12.0, 15.0, 20.0, 25.0)
# independent random streams of a clip, so that no nuisance depends on the label
LOOKS, EXPRESSION, MOTION, CAPTION = 1, 2, 3, 4

SKIN = {
    "pale": (0.93, 0.80, 0.72),
    "light": (0.87, 0.70, 0.58),
    "olive": (0.75, 0.58, 0.42),
    "brown": (0.58, 0.40, 0.28),
    "dark": (0.38, 0.25, 0.18),
}
HAIR = {
    "black": (0.08, 0.07, 0.07),
    "brown": (0.32, 0.20, 0.12),
    "blond": (0.82, 0.68, 0.40),
    "red": (0.60, 0.25, 0.12),
    "grey": (0.62, 0.62, 0.62),
}
CLOTHES = {
    "red": (0.70, 0.15, 0.15),
    "blue": (0.15, 0.25, 0.65),
    "green": (0.20, 0.50, 0.25),
    "yellow": (0.85, 0.75, 0.20),
    "white": (0.92, 0.92, 0.92),
    "black": (0.10, 0.10, 0.12),
    "grey": (0.50, 0.50, 0.52),
    "purple": (0.45, 0.22, 0.55),
}
WALLS = {
    "beige": (0.85, 0.78, 0.62),
    "grey": (0.58, 0.60, 0.62),
    "blue": (0.45, 0.58, 0.75),
    "green": (0.50, 0.65, 0.50),
    "white": (0.90, 0.90, 0.88),
    "dark": (0.22, 0.22, 0.25),
}
IRIS = ((0.30, 0.20, 0.10), (0.20, 0.35, 0.60), (0.25, 0.40, 0.25), (0.10, 0.08, 0.06))

# a video captioner's words for each action unit: the movement of one face part, never an emotion word; each phrase
# names its part with one of PART_WORDS, the words the OT pointing game (grace_fast.eval.mechanism) follows
AU_PHRASES = {
    "AU1": ("the inner ends of the eyebrows rise", "the inner brows lift"),
    "AU2": ("the outer eyebrows lift", "the brows arch upward"),
    "AU4": ("the brows lower and draw together", "the eyebrows knit together"),
    "AU5": ("the eyes widen", "the upper eyelids rise"),
    "AU6": ("the cheeks lift", "the cheeks rise and bunch up"),
    "AU7": ("the eyelids tighten", "the eyes narrow"),
    "AU9": ("the nose wrinkles", "the nose scrunches up"),
    "AU10": ("the upper lip curls up", "the upper lip rises"),
    "AU12": ("the corners of the mouth pull up", "the lip corners rise"),
    "AU15": ("the corners of the mouth turn down", "the lips turn downward"),
    "AU20": ("the lips stretch sideways", "the mouth pulls tight to the sides"),
    "AU23": ("the lips press tight", "the lips tighten into a thin line"),
    "AU26": ("the jaw drops open", "the mouth falls open"),
}
# the face part (faces.REGION_BOXES) that each word of AU_PHRASES names
PART_WORDS = {
    "brows": "brows",
    "eyebrows": "brows",
    "eyes": "eyes",
    "eyelids": "eyes",
    "lids": "eyes",
    "cheeks": "eyes",
    "nose": "nose",
    "lip": "mouth",
    "lips": "mouth",
    "mouth": "mouth",
    "jaw": "jaw",
}
# the caption's rates, chosen once (issue 17) and not tuned afterwards: each visible nuisance is reported with
# probability "nuisance"; a caption names one action unit with probability "names_au", and a named unit is one that
# does not move in the clip with probability "wrong_au" (always when none moves: a neutral face without a stray unit)
CAPTION_RATES = {"nuisance": 0.7, "names_au": 0.3, "wrong_au": 0.3}
NAMED_WEIGHT = 0.5  # an expression's action units of at least this apex weight are visible enough to be named


@dataclass
class ClipSpec:
    """Everything that determines one clip (times in seconds, positions as image fractions); JSON-serialisable."""

    clip: str
    label: int
    emotion: str
    fps: float
    frames: int
    looks: dict  # colour names for the caption
    identity: dict  # faces.Identity fields
    expression: dict  # onset, rise, intensity, release, release_to, delays {AU: s}
    nuisance: dict  # head, shake, blinks, talk, stray, light, noise, noise_seed
    caption: str = ""
    caption_au: str | None = None  # the action unit the caption names (it may not move in the clip)


def class_counts(clips: int, minimum: int | None = None) -> np.ndarray:
    """[7] clips per class in DFEW's proportions (largest remainders), each at least `minimum` (default
    min(5, clips // 7)), summing to clips."""
    if minimum is None:
        minimum = min(5, clips // 7)
    shares = np.array([CLASS_SHARES[name] for name in DFEW_CLASSES])
    counts = np.maximum(np.floor(shares * clips).astype(np.int64), minimum)
    while counts.sum() < clips:
        counts[np.argmax(shares * clips - counts)] += 1
    while counts.sum() > clips:
        counts[np.argmax(np.where(counts > minimum, counts - shares * clips, -np.inf))] -= 1
    return counts


def sample_specs(clips: int, seed: int) -> list[ClipSpec]:
    """The specs of clips 1..clips for a seed (cheap: no frame is rendered)."""
    if not isinstance(clips, int) or clips < 1:
        raise ValueError(f"clips must be an integer >= 1, got {clips!r}")
    rng = np.random.default_rng([seed, 0])
    labels = rng.permutation(np.repeat(np.arange(len(DFEW_CLASSES)), class_counts(clips)))
    return [clip_spec(seed, index, int(label)) for index, label in enumerate(labels, 1)]


def clip_spec(seed: int, index: int, label: int) -> ClipSpec:
    """The spec of clip `index` (1-based) of a seed, made to show class `label`; everything but the expression
    comes from random streams that do not see the label, so the other labels give the same clip otherwise."""
    emotion = DFEW_CLASSES[label]
    looks_rng = np.random.default_rng([seed, index, LOOKS])
    motion_rng = np.random.default_rng([seed, index, MOTION])
    fps = float(motion_rng.choice(FRAME_RATES))
    duration = motion_rng.uniform(1.0, 3.0)
    frames = max(int(round(duration * fps)), 2)
    duration = frames / fps
    looks, identity = _looks(looks_rng)
    spec = ClipSpec(
        clip=str(index),
        label=label,
        emotion=emotion,
        fps=fps,
        frames=frames,
        looks=looks,
        identity=identity,
        expression=_expression(np.random.default_rng([seed, index, EXPRESSION]), duration),
        nuisance=_nuisance(motion_rng, duration),
    )
    spec.caption, spec.caption_au = _caption(spec, np.random.default_rng([seed, index, CAPTION]))
    return spec


def folds(specs: list[ClipSpec], seed: int) -> np.ndarray:
    """The test fold (1..5) of each clip: each class dealt round-robin over the folds in a random order."""
    rng = np.random.default_rng([seed, 1])
    labels = np.array([spec.label for spec in specs])
    out, start = np.zeros(len(specs), dtype=np.int64), 0
    for label in range(len(DFEW_CLASSES)):
        members = rng.permutation(np.flatnonzero(labels == label))
        out[members] = (start + np.arange(len(members))) % len(FOLDS) + 1
        start += len(members)
    return out


def frame_states(spec: ClipSpec, *, expression: bool = True, nuisance: bool = True) -> FrameStates:
    """The per-frame state of a clip; expression=False keeps a resting face, nuisance=False a still head in
    steady light with no blinks, speech, shake or stray action unit (the label's motion alone)."""
    t = np.arange(spec.frames) / spec.fps
    states = FrameStates.rest(spec.frames)
    n = spec.nuisance
    head = n["head"]
    states.x[:] = head["x"]
    states.y[:] = head["y"]
    states.scale[:] = head["scale"]
    states.gain[:] = n["light"]["gain"]
    if expression:
        e = spec.expression
        for name, weight in EXPRESSIONS[spec.emotion].items():
            tau = t - e["delays"][name]
            level = _smoothstep((tau - e["onset"]) / e["rise"])
            if e["release"] is not None:
                level = level * (1 - (1 - e["release_to"]) * _smoothstep((tau - e["release"]) / e["rise"]))
            states.au[:, ACTION_UNITS.index(name)] = weight * e["intensity"] * level
    if not nuisance:
        return states
    phase = 2 * np.pi * t
    states.x += head["amplitude"] * np.sin(phase * head["frequency"] + head["phase"]) + head["drift_x"] * t
    states.y += 0.6 * head["amplitude"] * np.sin(phase * head["frequency"] * 1.3 + 2 * head["phase"])
    states.angle[:] = head["roll"] * np.sin(phase * head["roll_frequency"] + head["phase"] / 2)
    states.yaw[:] = head["yaw"]
    if head["turn"] is not None:
        turn = head["turn"]
        states.yaw += (turn["to"] - head["yaw"]) * _smoothstep((t - turn["time"]) / turn["duration"])
    states.scale *= 1 + head["zoom"] * t / max(t[-1], 1e-6)
    shake = n["shake"]
    states.shake_x[:] = shake["amplitude"] * np.sin(phase * shake["frequency_x"] + shake["phase"])
    states.shake_y[:] = shake["amplitude"] * np.sin(phase * shake["frequency_y"] + 2 * shake["phase"])
    for blink in n["blinks"]:
        states.blink += _bump((t - blink["time"]) / blink["duration"])
    if n["talk"] is not None:
        talk = n["talk"]
        active = (t >= talk["start"]) & (t <= talk["end"])
        states.talk[:] = talk["amplitude"] * 0.5 * (1 - np.cos(phase * talk["frequency"])) * active
    if n["stray"] is not None:
        stray = n["stray"]
        column = ACTION_UNITS.index(stray["au"])
        states.au[:, column] += stray["intensity"] * _bump((t - stray["time"]) / stray["duration"])
    light = n["light"]
    states.gain *= 1 + light["flicker"] * np.sin(phase * light["flicker_frequency"])
    if light["step"] is not None:
        states.gain *= 1 + (light["step"]["to"] - 1) * _smoothstep((t - light["step"]["time"]) / 0.15)
    progress = t / max(t[-1], 1e-6)
    states.light_x[:] = light["x"][0] + (light["x"][1] - light["x"][0]) * progress
    states.light_y[:] = light["y"]
    states.warmth[:] = light["warmth"][0] + (light["warmth"][1] - light["warmth"][0]) * progress
    states.blink = np.clip(states.blink, 0, 1)
    states.au = np.clip(states.au, 0, 1.2)
    return states


def render_clip(spec: ClipSpec, size: int = 64, *, expression: bool = True, nuisance: bool = True) -> np.ndarray:
    """The frames of a clip: [T, size, size, 3] uint8 RGB (sensor noise only with nuisance)."""
    frames = render(Identity(**spec.identity), frame_states(spec, expression=expression, nuisance=nuisance), size, size)
    if nuisance:
        noise = np.random.default_rng(spec.nuisance["noise_seed"]).standard_normal(frames.shape, dtype=np.float32)
        frames = np.clip(frames + spec.nuisance["noise"] * noise, 0, 1)
    return np.rint(frames * 255).astype(np.uint8)


def region_record(spec: ClipSpec) -> dict:
    """Where each action unit and each nuisance is in each frame of a clip (the "regions" of annotations.jsonl):

    boxes: {part: [T x [x0, y0, x1, y1]]}, the image box of each face part (faces.REGION_BOXES) and of the head
      (faces.HEAD_BOX) in each frame, as fractions of the image side (3 decimals), cut to the image;
    levels: {event: [T]}, rounded up to 2 decimals (whatever shows is > 0): each action unit of the expression
      ("AU12": its intensity, 0 to 1.2), "blink" (lid closure, 0 to 1), "talk" (the jaw opening of speech), "stray"
      (what the stray action unit adds); only the events the clip has;
    parts: {event: [part, ...]}, the boxes each event moves: an action unit's faces.AU_REGIONS, the stray unit's,
      blink the eyes, talk the mouth and jaw, and "head" the head (its motion, with the camera's, is the head box
      moving: it has no level).
    """
    states, expression = frame_states(spec), frame_states(spec, nuisance=False)
    boxes = part_boxes(states, 1, 1, {**REGION_BOXES, "head": HEAD_BOX})
    levels = {name: expression.au[:, ACTION_UNITS.index(name)] for name in EXPRESSIONS[spec.emotion]}
    parts = {name: list(AU_REGIONS[name]) for name in levels}
    if len(spec.nuisance["blinks"]):
        levels["blink"], parts["blink"] = states.blink, ["eyes"]
    if spec.nuisance["talk"] is not None:
        levels["talk"], parts["talk"] = states.talk, ["mouth", "jaw"]
    if spec.nuisance["stray"] is not None:
        column = ACTION_UNITS.index(spec.nuisance["stray"]["au"])
        levels["stray"] = states.au[:, column] - expression.au[:, column]
        parts["stray"] = list(AU_REGIONS[spec.nuisance["stray"]["au"]])
    parts["head"] = ["head"]
    return {
        "boxes": {name: np.round(box, 3).tolist() for name, box in boxes.items()},
        "levels": {name: (np.ceil(np.round(100 * level, 6)) / 100).tolist() for name, level in levels.items()},
        "parts": parts,
    }


def clip_record(path: str | os.PathLike) -> dict | None:
    """The annotations.jsonl record of a clip file in a make-synthetic folder (DIR/Clip/original/N.mp4, beside
    DIR/synthetic.json); None for any other path, or a set made before version 2 (no "regions")."""
    path = Path(path)
    root = path.parent.parent.parent
    annotations = root / "annotations.jsonl"
    if path.parent != root / CLIP_DIR or not (root / "synthetic.json").is_file() or not annotations.is_file():
        return None
    for line in annotations.read_text().splitlines():
        record = json.loads(line)
        if record["clip"] == path.stem:
            return record if "regions" in record else None
    return None


def make_synthetic(out: str | os.PathLike, clips: int, seed: int = 0, *, size: int = 64, progress: bool = True) -> dict:
    """Write the data set to out (see the module doc); returns {"out", "written", "skipped"} (clips written now,
    clips an earlier run wrote). Raises ValueError for a bad argument, or an out that is neither new nor empty nor
    made by this function with the same arguments."""
    if not isinstance(size, int) or size < 32 or size % 2:
        raise ValueError(f"size must be an even integer >= 32, got {size!r}")
    out = Path(out)
    arguments = {
        "generator": "grace_fast.data.synthetic",
        "version": VERSION,
        "clips": clips,
        "seed": seed,
        "size": size,
    }
    specs = sample_specs(clips, seed)
    _claim(out, arguments)
    (out / CLIP_DIR).mkdir(parents=True, exist_ok=True)
    for stale in (out / CLIP_DIR).glob(".*.mp4.*.tmp"):  # left by a killed run
        stale.unlink()
    recorded, digests, written = _recorded(out), {}, 0
    bar = tqdm(total=len(specs), desc="make-synthetic", unit="clip", disable=not progress)
    with open(out / LEDGER, "a") as ledger, bar:
        for spec in specs:
            name = f"{CLIP_DIR}/{spec.clip}.mp4"
            digests[name] = _md5(out / name)
            if digests[name] is None or digests[name] != recorded.get(name):  # missing, or not what a run wrote
                write_mp4(out / name, render_clip(spec, size), fps=spec.fps)
                _check_decodable(out / name, size)
                digests[name] = _md5(out / name)
                ledger.write(f"{digests[name]}  {name}\n")
                ledger.flush()  # a kill from here on loses no finished clip
                written += 1
            bar.update()
    _write_annotations(out, specs, folds(specs, seed))
    write_atomic(out / LEDGER, "".join(f"{digest}  {name}\n" for name, digest in digests.items()).encode())
    return {"out": str(out), "written": written, "skipped": len(specs) - written}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder (DFEW layout)")
    parser.add_argument("--clips", type=int, default=500, help="number of clips (default 500)")
    parser.add_argument("--seed", type=int, default=0, help="random seed: same seed, same files (default 0)")
    parser.add_argument("--size", type=int, default=64, help="frame side in pixels, even, >= 32 (default 64)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """`grace-fast make-synthetic`: exit 0 once every clip and annotation file is written. A bad argument, an --out
    it did not make or made with other arguments, or a --size decord cannot read are user errors (exit 2)."""
    summary = make_synthetic(args.out, args.clips, args.seed, size=args.size, progress=not args.quiet)
    print(f"make-synthetic: {summary['written']} clips written, {summary['skipped']} already there, in {args.out}")
    return 0


def _looks(rng: np.random.Generator) -> tuple[dict, dict]:
    skin, hair, shirt, wall = (str(rng.choice(list(d))) for d in (SKIN, HAIR, CLOTHES, WALLS))

    def jitter(colour, amount=0.04):
        return tuple(float(c) for c in np.clip(np.add(colour, rng.uniform(-amount, amount, 3)), 0, 1))

    skin_rgb = jitter(SKIN[skin])
    wall_rgb = jitter(WALLS[wall])
    x0, y0 = rng.uniform(0.0, 0.75), rng.uniform(0.0, 0.3)
    identity = Identity(
        skin=skin_rgb,
        hair=jitter(HAIR[hair]),
        iris=IRIS[int(rng.integers(len(IRIS)))],
        lips=tuple(float(c) for c in np.clip(np.multiply(skin_rgb, (0.85, 0.5, 0.5)) + (0.1, 0.02, 0.02), 0, 1)),
        shirt=jitter(CLOTHES[shirt]),
        wall_top=wall_rgb,
        wall_bottom=tuple(float(c) * 0.75 for c in wall_rgb),
        accent=jitter((0.8, 0.78, 0.6), 0.2),
        accent_box=(float(x0), float(x0 + rng.uniform(0.1, 0.25)), float(y0), float(y0 + rng.uniform(0.1, 0.3))),
        long_hair=bool(rng.random() < 0.5),
        eye_size=float(rng.uniform(0.85, 1.15)),
        eye_spacing=float(rng.uniform(0.92, 1.08)),
        brow_height=float(rng.uniform(-0.05, 0.05)),
        brow_arch=float(rng.uniform(0.0, 0.09)),
        mouth_width=float(rng.uniform(0.85, 1.15)),
        mouth_curve=float(rng.uniform(-0.06, 0.06)),
        jaw_width=float(rng.uniform(0.85, 0.97)),
    )
    looks = {"skin": skin, "hair": hair, "shirt": shirt, "wall": wall, "long_hair": identity.long_hair}
    return looks, asdict(identity)


def _expression(rng: np.random.Generator, duration: float) -> dict:
    onset = rng.uniform(0.05, 0.45) * duration
    release = rng.uniform(onset + 0.5, duration + 0.5) if rng.random() < 0.4 else None
    return {
        "onset": float(onset),
        "rise": float(rng.uniform(0.2, 0.6)),
        "intensity": float(rng.uniform(0.6, 1.0)),
        "release": None if release is None else float(release),
        "release_to": float(rng.uniform(0.3, 0.7)),
        "delays": {name: float(rng.uniform(-0.1, 0.1)) for name in ACTION_UNITS},
    }


def _nuisance(rng: np.random.Generator, duration: float) -> dict:
    motion = rng.uniform(0, 1) ** 1.5  # how restless the person and the camera are

    def uniform(low, high):
        return float(rng.uniform(low, high))

    head = {
        "x": uniform(0.44, 0.56),
        "y": uniform(0.46, 0.56),
        "scale": uniform(0.85, 1.05),
        "amplitude": 0.06 * motion * uniform(0.3, 1),
        "frequency": uniform(0.2, 1.0),
        "phase": uniform(0, 2 * np.pi),
        "drift_x": 0.03 * motion * uniform(-1, 1),
        "roll": 0.2 * motion * uniform(0, 1),
        "roll_frequency": uniform(0.2, 0.8),
        "yaw": 0.25 * motion * uniform(-1, 1),
        "turn": None,
        "zoom": 0.08 * motion * uniform(-1, 1),
    }
    if rng.random() < 0.35:
        head["turn"] = {"time": uniform(0, duration), "to": uniform(-0.45, 0.45), "duration": uniform(0.2, 0.6)}
    shake = {
        "amplitude": 0.025 * motion * uniform(0, 1) if rng.random() < 0.4 else 0.0,
        "frequency_x": uniform(6, 12),
        "frequency_y": uniform(6, 12),
        "phase": uniform(0, 2 * np.pi),
    }
    blinks = [
        {"time": uniform(0, duration), "duration": uniform(0.15, 0.3)} for _ in range(rng.poisson(0.5 * duration))
    ]
    talk = None
    if rng.random() < 0.25:
        start = uniform(0, 0.6 * duration)
        talk = {
            "amplitude": uniform(0.1, 0.25),
            "frequency": uniform(2, 4.5),
            "start": start,
            "end": uniform(start + 0.3, duration + 0.3),
        }
    stray = None
    if rng.random() < 0.35:
        stray = {
            "au": str(rng.choice(ACTION_UNITS)),
            "intensity": uniform(0.1, 0.3),
            "time": uniform(0, duration),
            "duration": uniform(0.3, 0.8),
        }
    light = {
        "gain": uniform(0.75, 1.15),
        "flicker": uniform(0.02, 0.08) if rng.random() < 0.3 else 0.0,
        "flicker_frequency": uniform(1, 6),
        "step": {"time": uniform(0, duration), "to": uniform(0.75, 1.25)} if rng.random() < 0.2 else None,
        "x": [uniform(-0.6, 0.6), uniform(-0.6, 0.6)],
        "y": uniform(-0.5, 0.5),
        "warmth": [uniform(-0.08, 0.08), uniform(-0.08, 0.08)],
    }
    return {
        "head": head,
        "shake": shake,
        "blinks": blinks,
        "talk": talk,
        "stray": stray,
        "light": light,
        "noise": uniform(0.0, 0.03),
        "noise_seed": int(rng.integers(2**32)),
    }


def _caption(spec: ClipSpec, rng: np.random.Generator) -> tuple[str, str | None]:
    """(caption, the action unit it names or None), at CAPTION_RATES: the person and the scene, the visible head
    motion, talking, blinks, camera and light, and sometimes one action unit, possibly one that does not move."""
    looks, n, head = spec.looks, spec.nuisance, spec.nuisance["head"]
    hair = f"{'long' if looks['long_hair'] else 'short'} {looks['hair']} hair"
    subject = str(rng.choice(["A person", "Someone", "A young adult", "A figure"]))
    sentences = [f"{subject} with {hair} and a {looks['shirt']} top is in front of a {looks['wall']} wall."]
    seen = []
    if head["turn"] is not None:
        seen.append(f"the head turns to the {'left' if head['turn']['to'] > head['yaw'] else 'right'}")
    if head["roll"] > 0.08:
        seen.append("the head tilts from side to side")
    if head["amplitude"] > 0.02:
        seen.append("the head sways")
    if abs(head["zoom"]) > 0.03:
        seen.append(f"the person moves {'closer to' if head['zoom'] > 0 else 'away from'} the camera")
    if n["shake"]["amplitude"] > 0.008:
        seen.append("the camera shakes")
    if n["light"]["step"] is not None:
        seen.append("the room gets " + ("brighter" if n["light"]["step"]["to"] > 1 else "darker"))
    if n["light"]["flicker"] > 0:
        seen.append("the light flickers")
    if len(n["blinks"]) == 1:
        seen.append("the person blinks")
    elif len(n["blinks"]) > 1:
        seen.append("the person blinks several times")
    if n["talk"] is not None:
        seen.append(str(rng.choice(["the person is talking", "the person speaks"])))
    seen = [s for s in seen if rng.random() < CAPTION_RATES["nuisance"]]
    if seen:
        sentences.append(_sentence(_join(list(rng.permutation(seen)))))
    named = None
    if rng.random() < CAPTION_RATES["names_au"]:
        moving = [name for name, weight in EXPRESSIONS[spec.emotion].items() if weight >= NAMED_WEIGHT]
        if n["stray"] is not None and n["stray"]["au"] not in moving:
            moving.append(n["stray"]["au"])
        wrong = rng.random() < CAPTION_RATES["wrong_au"] or not moving
        choices = [name for name in ACTION_UNITS if name not in moving] if wrong else moving
        named = str(rng.choice(choices))
        sentences.append(_sentence(str(rng.choice(AU_PHRASES[named]))))
    return " ".join(sentences), named


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:] + "."


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0, 1)
    return x * x * (3 - 2 * x)


def _bump(x: np.ndarray) -> np.ndarray:
    """A smooth pulse, 0 outside [0, 1] and 1 at 0.5."""
    return np.where((x > 0) & (x < 1), np.sin(np.pi * np.clip(x, 0, 1)) ** 2, 0.0)


def _claim(out: Path, arguments: dict) -> None:
    """Refuse an out that is neither new nor empty nor a set made with the same arguments, then write its
    synthetic.json first, so that a folder holding any of our files holds it."""
    manifest = out / "synthetic.json"
    if manifest.is_file():
        try:
            previous = json.loads(manifest.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{manifest} is not the JSON that make-synthetic writes ({error}); choose another --out"
            ) from error
        if previous != arguments:
            changed = {k: (previous.get(k), v) for k, v in arguments.items() if previous.get(k) != v}
            raise ValueError(
                f"out {out} holds a synthetic set made with other arguments {changed} "
                "(old, new); choose another --out or the same arguments"
            )
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(
            f"out {out} is not an empty folder and holds no synthetic.json, so make-synthetic did not make it; "
            "choose a new or empty --out"
        )
    write_atomic(manifest, (json.dumps(arguments, indent=1) + "\n").encode())


def _recorded(out: Path) -> dict[str, str]:
    """{clip path in out: md5} of the clips earlier runs wrote, from the ledger; a line cut short by a kill is
    skipped (its clip is written again)."""
    if not (out / LEDGER).is_file():
        return {}
    recorded = {}
    for line in (out / LEDGER).read_text().splitlines(keepends=True):
        digest, _, name = line.rstrip("\n").partition("  ")
        if line.endswith("\n") and len(digest) == 32:
            recorded[name] = digest
    return recorded


def _md5(path: Path) -> str | None:
    """The md5 of a file's bytes as hex, None when there is no such file."""
    return hashlib.md5(path.read_bytes()).hexdigest() if path.is_file() else None


def _check_decodable(path: Path, size: int) -> None:
    try:
        read_video(path, 1)
    except VideoReadError as error:
        path.unlink()
        raise VideoReadError(f"{error} (decord cannot read {size}x{size} H.264 here; try another --size)") from error


def _write_annotations(out: Path, specs: list[ClipSpec], test_folds: np.ndarray) -> None:
    for fold in FOLDS:
        for split, members in (("train", test_folds != fold), ("test", test_folds == fold)):
            rows = [[spec.clip, spec.label + 1] for spec, member in zip(specs, members, strict=True) if member]
            write_atomic(
                out / DFEW_SPLIT_FILE.format(split=split, fold=fold), (_csv([["video_name", "label"], *rows])).encode()
            )
    write_atomic(out / "captions.csv", _csv([["clip", "caption"], *[[s.clip, s.caption] for s in specs]]).encode())
    records = [
        {**asdict(spec), "fold": int(fold), "regions": region_record(spec)}
        for spec, fold in zip(specs, test_folds, strict=True)
    ]
    write_atomic(out / "annotations.jsonl", "".join(json.dumps(r) + "\n" for r in records).encode())


def _csv(rows: list[list]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()
