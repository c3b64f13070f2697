"""Inference: `Predictor.from_pretrained(folder).predict(clip)` -> the emotion and its class probabilities, and the
`grace-fast predict clip.mp4 ...` command.

A clip is a video file (or a folder of frames), a uint8 frames array/tensor [T, H, W, 3], or model-ready
frames [T, 3, S, S] float (already normalised). The clip is sampled uniformly to the model's frame count, cut to
the tracked face when the checkpoint was trained on face crops (or face_crop=True; data.face_crop), centre-cropped,
resized and normalised as in evaluation, with the statistics of the checkpoint's preprocessor_config.json (a
folder without one is refused: its statistics are unknown). By default every class is scored by its own prompt and
the auxiliary head predicts (the low-latency mode: the prompts' encodings are cached after the first call); pass
captions to align those instead, for the main head.

dtype "auto" runs bf16 autocast where the hardware has bf16 (a GPU, or a CPU with AMX or AVX512-BF16:
grace_fast.hardware) and fp32 elsewhere; compile=True compiles the backbones, the alignment and the heads with
torch.compile (tokenisation stays outside the graphs; the first calls of each batch size take seconds to compile).
The clips of a batch are decoded in parallel threads.

>>> predictor = Predictor.from_pretrained("runs/demo/best")  # doctest: +SKIP
>>> predictor.predict("clip.mp4")  # doctest: +SKIP
Prediction(label='happy', index=0, probabilities={'happy': 0.71, 'sad': 0.04, ...})
"""

import argparse
import json
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from grace_fast.arguments import DEVICE_HELP, device, integer
from grace_fast.errors import UserError
from grace_fast.hardware import auto_dtype

Clip = str | os.PathLike | np.ndarray | torch.Tensor
DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16}  # None: decided by the hardware
DTYPE_HELP = "the compute dtype: auto is bfloat16 (autocast) on a GPU or a CPU with AMX or AVX512-BF16, else float32"
COMPILE_HELP = "compile the model with torch.compile (the first call of each batch size compiles, for seconds)"


def compute_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """The dtype Predictor computes in: dtype ("auto", "float32" or "bfloat16") on device."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype] or auto_dtype(device) or torch.float32


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
    """A trained GRACE model in eval mode with its evaluation transform.

    dtype: "auto", "float32" or "bfloat16" (autocast; the weights stay float32); compile: torch.compile the model's
    parts (see the module doc); face_crop: a data.face_crop.FaceCrop applied to decoded frames (None: whole
    frames). self.dtype is the resolved compute dtype.
    """

    def __init__(
        self,
        model,
        transform,
        device: str | torch.device = "cpu",
        batch_size: int = 8,
        dtype: str = "auto",
        compile: bool = False,
        face_crop=None,
    ):
        self.model = model.eval().to(device)
        self.transform, self.face_crop = transform, face_crop
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.dtype = compute_dtype(dtype, self.device)
        self.compiled = bool(compile)
        if compile:
            compile_parts(self.model)
        config = model.config
        self.frames, self.size = config.frames, config.image_size
        self.classes = [str(c) for c in (config.class_names or range(config.num_classes))]

    @classmethod
    def from_pretrained(
        cls,
        folder: str | os.PathLike,
        device: str = "auto",
        batch_size: int = 8,
        dtype: str = "auto",
        compile: bool = False,
        face_crop: bool | None = None,
        **overrides,
    ) -> "Predictor":
        """Load a checkpoint folder written by training (RUN/best) or GraceModel.save_pretrained, with the
        normalisation and face crop of its preprocessor_config.json (face_crop True/False overrides the latter);
        overrides change GraceConfig fields (e.g. frames=32). device "auto" is the GPU when there is one; dtype
        and compile as for Predictor."""
        from grace_fast.data.face_crop import face_crop_of
        from grace_fast.data.transforms import Normalization, VideoTransform, read_processor_config
        from grace_fast.model import GraceModel

        model = GraceModel.from_pretrained(folder, **overrides)
        normalization = Normalization.from_pretrained(folder)
        if face_crop is None:
            face_crop = bool(read_processor_config(folder).get("face_crop", False))
        transform = VideoTransform(model.config.image_size, train=False, normalization=normalization)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        return cls(
            model, transform, device, batch_size, dtype=dtype, compile=compile, face_crop=face_crop_of(face_crop)
        )

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
            probabilities = self.probabilities(torch.stack(self.load_all(chunk)), text)
            out += [self._prediction(p) for p in probabilities.tolist()]
        return out[0] if single else out

    @torch.inference_mode()
    def probabilities(self, frames: torch.Tensor, captions: Sequence[str] | None = None) -> torch.Tensor:
        """Class probabilities [B, num_classes] float32 of model-ready frames [B, T, 3, S, S]."""
        return self.forward(frames, captions).logits.float().softmax(-1).cpu()

    def forward(self, frames: torch.Tensor, captions: Sequence[str] | None = None):
        """The model's GraceOutput for model-ready frames [B, T, 3, S, S], in the predictor's dtype."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.dtype == torch.bfloat16):
            return self.model(frames.to(self.device), None if captions is None else list(captions))

    def load_all(self, clips: Sequence[Clip], errors: tuple[type[Exception], ...] = ()) -> list:
        """load() of each clip, decoded in parallel threads: [T, 3, S, S] float32 each, or in its place the
        exception of a type in errors that loading it raised (others propagate)."""

        def load(clip):
            try:
                return self.load(clip)
            except errors as error:
                return error

        if len(clips) < 2:
            return [load(clip) for clip in clips]
        with ThreadPoolExecutor(min(len(clips), os.cpu_count() or 1)) as pool:
            return list(pool.map(load, clips))

    def load(self, clip: Clip) -> torch.Tensor:
        """A clip as model-ready frames [T, 3, S, S] float32."""
        if isinstance(clip, str | os.PathLike):
            from grace_fast.data.frames import read_clip

            return self.transform(self._crop(read_clip(clip, self.frames)))
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

        return self.transform(self._crop(frames[uniform_indices(len(frames), self.frames)]))

    def _crop(self, frames: np.ndarray) -> np.ndarray:
        return frames if self.face_crop is None else self.face_crop(frames)

    def _prediction(self, probabilities: list[float]) -> Prediction:
        index = int(np.argmax(probabilities))
        return Prediction(self.classes[index], index, dict(zip(self.classes, probabilities, strict=True)))


def compile_parts(model) -> None:
    """torch.compile, in place, each part of a GraceModel (its child modules: backbones, projections, alignment,
    heads), the text encoder's tower only, after its tokenizer. In place (nn.Module.compile) keeps the state dict's
    keys; by children rather than by name, so that new parts are compiled too."""
    for part in model.children():
        (part.model if part is model.text else part).compile()


def coarse_classifier(checkpoint: str | os.PathLike, device: str = "cpu", dtype: str = "auto"):
    """A trained checkpoint's auxiliary head as the classifier of CATE step 2 (`grace-fast coarse-labels
    --classifier grace_fast.predict:coarse_classifier --checkpoint RUN/best --frames F --size S`, F and S the
    checkpoint's frames and image_size): classify(frames [B, F, 3, S, S] float in [0, 1]) -> logits [B, C];
    dtype as Predictor's."""
    predictor = Predictor.from_pretrained(checkpoint, device=device, dtype=dtype)
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
    parser.add_argument(
        "--face-crop",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="cut each clip to its tracked face (default: as the checkpoint was trained; needs the faces extra)",
    )
    add_speed_arguments(parser)


def add_speed_arguments(parser: argparse.ArgumentParser) -> None:
    """--dtype and --compile, shared by predict, evaluate and explain."""
    parser.add_argument("--dtype", default="auto", choices=list(DTYPES), help=DTYPE_HELP)
    parser.add_argument("--compile", action="store_true", help=COMPILE_HELP)


def run(args: argparse.Namespace) -> int:
    """`grace-fast predict`: one line (or JSON object) per clip on stdout; exit 1 if a clip could not be read (its
    error goes to stderr)."""
    from grace_fast.data.video import VideoReadError

    if args.caption is not None and len(args.caption) != len(args.clips):
        raise UserError(f"--caption: given {len(args.caption)} times for {len(args.clips)} clips; give one per clip")
    predictor = Predictor.from_pretrained(
        args.checkpoint,
        device=args.device,
        batch_size=args.batch_size,
        dtype=args.dtype,
        compile=args.compile,
        face_crop=args.face_crop,
    )
    frames, names, captions, failed = [], [], [], 0
    for i, (clip, loaded) in enumerate(zip(args.clips, predictor.load_all(args.clips, (VideoReadError,)), strict=True)):
        if isinstance(loaded, VideoReadError):
            print(f"grace-fast predict: {loaded}", file=sys.stderr)  # names the clip
            failed += 1
            continue
        frames.append(loaded)
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
