"""Inference: `Predictor.from_pretrained(folder).predict(clip)` -> the emotion and its class probabilities, and the
`grace-fast predict clip.mp4 ...` command.

A clip is a video file (or a folder of frame images), a uint8 frames array/tensor [T, H, W, 3], or model-ready
frames [T, 3, S, S] float (already normalised). The clip is sampled uniformly to the model's frame count,
centre-cropped, resized and normalised as in evaluation. By default every class is scored by its own prompt and
the auxiliary head predicts (the low-latency mode: the prompts' encodings are cached after the first call); pass
captions to align those instead, for the main head.

>>> predictor = Predictor.from_pretrained("runs/demo/best")  # doctest: +SKIP
>>> predictor.predict("clip.mp4")  # doctest: +SKIP
Prediction(label='happy', index=0, probabilities={'happy': 0.71, 'sad': 0.04, ...})
"""

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from grace_fast.arguments import DEVICE_HELP, device, integer
from grace_fast.errors import UserError

Clip = str | os.PathLike | np.ndarray | torch.Tensor


@dataclass
class Prediction:
    """label: the most probable class; index: its logit index; probabilities: {class name: probability}."""

    label: str
    index: int
    probabilities: dict[str, float]

    def top(self, k: int) -> list[tuple[str, float]]:
        """The k most probable (class, probability) pairs, most probable first."""
        return sorted(self.probabilities.items(), key=lambda item: -item[1])[:k]


class Predictor:
    """A trained GRACE model in eval mode with its evaluation transform."""

    def __init__(self, model, transform, device: str | torch.device = "cpu", batch_size: int = 8):
        self.model = model.eval().to(device)
        self.transform = transform
        self.device = torch.device(device)
        self.batch_size = batch_size
        config = model.config
        self.frames, self.size = config.frames, config.image_size
        self.classes = [str(c) for c in (config.class_names or range(config.num_classes))]

    @classmethod
    def from_pretrained(
        cls, folder: str | os.PathLike, device: str = "auto", batch_size: int = 8, **overrides
    ) -> "Predictor":
        """Load a checkpoint folder written by training (RUN/best) or GraceModel.save_pretrained; overrides change
        GraceConfig fields (e.g. frames=32). device "auto" is the GPU when there is one."""
        from grace_fast.data.transforms import VideoTransform
        from grace_fast.model import GraceModel
        from grace_fast.train.grace import load_normalization

        model = GraceModel.from_pretrained(folder, **overrides)
        transform = VideoTransform(model.config.image_size, train=False, normalization=load_normalization(folder))
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        return cls(model, transform, device, batch_size)

    def predict(
        self, clips: Clip | Sequence[Clip], captions: str | Sequence[str] | None = None
    ) -> Prediction | list[Prediction]:
        """The prediction of one clip, or a list for a list of clips (run in batches of batch_size).

        captions: None (class prompts), or one text per clip to align with it.
        """
        single = not isinstance(clips, list | tuple)
        clips = [clips] if single else list(clips)
        if captions is not None:
            captions = [captions] if isinstance(captions, str) else list(captions)
            if len(captions) != len(clips):
                raise ValueError(f"captions has {len(captions)} entries for {len(clips)} clips")
        out = []
        for start in range(0, len(clips), self.batch_size):
            chunk = clips[start : start + self.batch_size]
            text = captions[start : start + self.batch_size] if captions is not None else None
            probabilities = self.probabilities(torch.stack([self.load(clip) for clip in chunk]), text)
            out += [self._prediction(p) for p in probabilities.tolist()]
        return out[0] if single else out

    @torch.inference_mode()
    def probabilities(self, frames: torch.Tensor, captions: Sequence[str] | None = None) -> torch.Tensor:
        """Class probabilities [B, num_classes] float32 of model-ready frames [B, T, 3, S, S]."""
        logits = self.model(frames.to(self.device), None if captions is None else list(captions)).logits
        return logits.float().softmax(-1).cpu()

    def load(self, clip: Clip) -> torch.Tensor:
        """A clip as model-ready frames [T, 3, S, S] float32."""
        if isinstance(clip, str | os.PathLike):
            from grace_fast.data.frames import read_clip

            return self.transform(read_clip(clip, self.frames))
        if isinstance(clip, torch.Tensor) and clip.is_floating_point():
            expected = (self.frames, 3, self.size, self.size)
            if tuple(clip.shape) != expected:
                raise ValueError(
                    f"float frames must be model-ready [T, 3, S, S] = {list(expected)}, got {list(clip.shape)}"
                )
            return clip.float()
        frames = clip.cpu().numpy() if isinstance(clip, torch.Tensor) else np.asarray(clip)
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(
                "a clip must be a path, uint8 frames [T, H, W, 3] or model-ready float frames [T, 3, S, S]; "
                f"got {frames.dtype} {list(frames.shape)}"
            )
        from grace_fast.data.video import uniform_indices

        return self.transform(frames[uniform_indices(len(frames), self.frames)])

    def _prediction(self, probabilities: list[float]) -> Prediction:
        index = int(np.argmax(probabilities))
        return Prediction(self.classes[index], index, dict(zip(self.classes, probabilities, strict=True)))


def coarse_classifier(checkpoint: str | os.PathLike, device: str = "cpu"):
    """A trained checkpoint's auxiliary head as the classifier of CATE step 2 (`grace-fast coarse-labels
    --classifier grace_fast.predict:coarse_classifier --checkpoint RUN/best --frames F --size S`, F and S the
    checkpoint's frames and image_size): classify(frames [B, F, 3, S, S] float in [0, 1]) -> logits [B, C]."""
    predictor = Predictor.from_pretrained(checkpoint, device=device)
    normalization = predictor.transform.normalization
    mean = torch.tensor(normalization.mean, device=predictor.device).view(1, 1, 3, 1, 1)
    std = torch.tensor(normalization.std, device=predictor.device).view(1, 1, 3, 1, 1)

    @torch.inference_mode()
    def classify(frames: torch.Tensor) -> torch.Tensor:
        if frames.dim() != 5 or frames.shape[1] != predictor.frames or frames.shape[-1] != predictor.size:
            raise ValueError(
                f"the checkpoint takes [B, {predictor.frames}, 3, {predictor.size}, {predictor.size}] frames "
                f"(--frames {predictor.frames} --size {predictor.size}), got {list(frames.shape)}"
            )
        pixels = (frames.to(predictor.device) - mean) / std
        return predictor.model(pixels, None).aux_logits.float()

    return classify


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("clips", nargs="+", help="video files or frame folders")
    parser.add_argument("--checkpoint", required=True, help="a trained GRACE checkpoint folder (e.g. RUN/best)")
    parser.add_argument("--caption", action="append", help="a caption per clip, in order (default: class prompts)")
    parser.add_argument("--top-k", type=integer(1), default=3, help="classes shown per clip")
    parser.add_argument("--batch-size", type=integer(1), default=8, help="clips per batch")
    parser.add_argument("--device", type=device, default="auto", help=DEVICE_HELP)
    parser.add_argument("--json", action="store_true", help="print one JSON object per clip")


def run(args: argparse.Namespace) -> int:
    """`grace-fast predict`: one line (or JSON object) per clip on stdout; exit 1 if a clip could not be read (its
    error goes to stderr)."""
    from grace_fast.data.video import VideoReadError

    if args.caption is not None and len(args.caption) != len(args.clips):
        raise UserError(f"--caption: given {len(args.caption)} times for {len(args.clips)} clips; give one per clip")
    predictor = Predictor.from_pretrained(args.checkpoint, device=args.device, batch_size=args.batch_size)
    frames, names, captions, failed = [], [], [], 0
    for i, clip in enumerate(args.clips):
        try:
            frames.append(predictor.load(clip))
        except VideoReadError as error:
            print(f"grace-fast predict: {error}", file=sys.stderr)  # names the clip
            failed += 1
            continue
        names.append(clip)
        captions.append(args.caption[i] if args.caption is not None else None)
    texts = captions if args.caption is not None else None
    predictions = predictor.predict(frames, texts) if frames else []
    for clip, prediction in zip(names, predictions, strict=True):
        if args.json:
            print(json.dumps({"clip": str(clip), **vars(prediction)}))
        else:
            top = ", ".join(f"{name} {p:.3f}" for name, p in prediction.top(args.top_k))
            print(f"{clip}: {prediction.label}  ({top})")
    return 1 if failed else 0
