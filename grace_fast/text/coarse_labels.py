"""CATE step 2 (docs/method.md section 3): the top-k (k = 2) emotions of each clip from a baseline classifier.

The classifier is any callable `logits = classify(frames)`, frames [B, T, 3, H, W] float32 in [0, 1] (the
classifier normalises them its own way), logits [B, C] in the class order of the data set (Lexicon.classes).
In GRACE that is the auxiliary head of a trained model; `grace-fast coarse-labels` loads one through
`--classifier MODULE:FACTORY`, where FACTORY(checkpoint, device) returns the callable.

>>> records, summary = label_clips(list_videos("videos/"), classify, Lexicon.load().classes("dfew"), cache)
>>> records["00001"]
{'clip': '00001', 'labels': ['sadness', 'neutral'], 'scores': [0.61, 0.22]}
"""

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from grace_fast.arguments import DEVICE_HELP, device, integer
from grace_fast.data.face_crop import FaceCrop, add_face_crop_argument, face_crop_of
from grace_fast.data.video import list_videos, read_video
from grace_fast.errors import UserError
from grace_fast.files import write_jsonl
from grace_fast.text.cache import Cache
from grace_fast.text.jobs import CACHE_NAME, LABELS_NAME, Summary, fingerprint, process_videos
from grace_fast.text.lexicon import DEFAULT_PATH, Lexicon

Classifier = Callable[[torch.Tensor], torch.Tensor]


def top_k(logits: torch.Tensor, classes: Sequence[str], k: int) -> list[tuple[list[str], list[float]]]:
    """The k most probable classes of each row of logits [B, C], most probable first, with their softmax."""
    if logits.dim() != 2 or logits.shape[1] != len(classes):
        raise ValueError(f"logits must be [B, {len(classes)}] (one per class), got shape {tuple(logits.shape)}")
    if not 1 <= k <= len(classes):
        raise ValueError(f"k must be in [1, {len(classes)}], got {k}")
    probs, index = logits.float().softmax(-1).topk(k, dim=-1)
    rows = zip(index.tolist(), probs.tolist(), strict=True)
    return [([classes[i] for i in row], [round(p, 6) for p in ps]) for row, ps in rows]


def load_clip(path: str, num_frames: int, size: int, face_crop: FaceCrop | None = None) -> torch.Tensor:
    """num_frames frames sampled uniformly from a video (cut to the tracked face with face_crop), resized to
    size x size: [T, 3, size, size] in [0, 1]."""
    frames = read_video(path, num_frames)
    if face_crop is not None:
        frames = face_crop(frames)
    frames = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    return F.interpolate(frames, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)


def label_clips(
    clips: Sequence[tuple[str, str]],
    classify: Classifier,
    classes: Sequence[str],
    cache: Cache,
    *,
    k: int = 2,
    num_frames: int = 16,
    size: int = 224,
    batch_size: int = 8,
    classifier_id=None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    face_crop: FaceCrop | None = None,
) -> tuple[dict[str, dict], Summary]:
    """Top-k labels of every (clip id, video path) not yet in the cache, batch by batch; face_crop: cut the
    sampled frames to the tracked face first (it enters the cache key).

    classifier_id (JSON-able, e.g. the checkpoint's fingerprint) enters the cache key, so that another
    classifier's labels are not reused. Returns the records by clip and the summary.
    """

    def process(frames: list[torch.Tensor]) -> list[dict]:
        with torch.inference_mode():
            logits = classify(torch.stack(frames).to(device))
        return [{"labels": labels, "scores": scores} for labels, scores in top_k(logits.cpu(), classes, k)]

    settings = dict(task="coarse", classifier=classifier_id, classes=list(classes), k=k, frames=num_frames, size=size)
    if face_crop is not None:
        settings["face_crop"] = True
    results, summary = process_videos(
        clips,
        settings,
        lambda path: load_clip(path, num_frames, size, face_crop),
        process,
        cache,
        batch_size=batch_size,
        desc="coarse-labels",
        progress=progress,
    )
    return {clip: {"clip": clip, **value} for clip, value in results.items()}, summary


def load_classifier(spec: str, checkpoint: str | None, device: str) -> Classifier:
    """FACTORY(checkpoint, device) for spec "package.module:FACTORY" (importable, or under the working folder)."""
    module_name, _, factory_name = spec.partition(":")
    if not module_name or not factory_name:
        raise ValueError(f"--classifier must be MODULE:FACTORY, got {spec!r}")
    if os.getcwd() not in sys.path:  # the console script's path lacks it, unlike `python -m`
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is None or not module_name.startswith(error.name):
            raise  # the module is there but imports something missing: its problem, with its traceback
        raise UserError(f"--classifier: no module named {module_name!r} (importable, or in {os.getcwd()})") from None
    factory = getattr(module, factory_name, None)
    if factory is None:
        raise ValueError(f"--classifier: module {module_name} has no {factory_name!r}")
    return factory(checkpoint, device)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--videos", required=True, help="folder of videos, or a text file with one video path per line")
    parser.add_argument("--classifier", required=True, help="MODULE:FACTORY; FACTORY(checkpoint, device) -> classify")
    parser.add_argument("--checkpoint", help="passed to the factory (its file or folder enters the cache key)")
    parser.add_argument("--dataset", required=True, help="class order of the logits: dfew, ferv39k or mafw")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--captions", help=f"captions JSONL; the labels go to {LABELS_NAME} beside it")
    where.add_argument("--out", help="output labels JSONL")
    parser.add_argument("--k", type=integer(1), default=2, help="labels per clip")
    parser.add_argument("--frames", type=integer(1), default=16, help="frames sampled uniformly per clip")
    parser.add_argument("--size", type=integer(1), default=224, help="frame height and width fed to the classifier")
    parser.add_argument("--batch-size", type=integer(1), default=8, help="clips per classifier call")
    parser.add_argument("--device", type=device, default="auto", help=DEVICE_HELP)
    parser.add_argument("--cache", help=f"cache file (default: {CACHE_NAME} beside the output)")
    parser.add_argument("--lexicon", default=str(DEFAULT_PATH), help="lexicon JSON (default: the built-in one)")
    add_face_crop_argument(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """`grace-fast coarse-labels`: exit 0 when every clip is labelled, 1 when some video failed."""
    classes = Lexicon.load(args.lexicon).classes(args.dataset)
    out = Path(args.out) if args.out else Path(args.captions).with_name(LABELS_NAME)
    clips = list_videos(args.videos)
    face_crop = face_crop_of(args.face_crop)
    classify = load_classifier(args.classifier, args.checkpoint, args.device)
    identity = [args.classifier, fingerprint(args.checkpoint) if args.checkpoint else None]
    with Cache(args.cache or out.with_name(CACHE_NAME)) as cache:
        records, summary = label_clips(
            clips,
            classify,
            classes,
            cache,
            k=args.k,
            num_frames=args.frames,
            size=args.size,
            batch_size=args.batch_size,
            classifier_id=identity,
            device=args.device,
            progress=not args.quiet,
            face_crop=face_crop,
        )
    write_jsonl(out, [records[clip] for clip, _ in clips if clip in records])
    summary.report("coarse-labels")
    return 1 if summary.failed else 0
