"""CATE step 1 (docs/method.md section 3): an initial caption per clip, from Video-LLaVA run through transformers from a
local folder, or imported from a file (MAFW ships English captions).

The folder holds what `save_pretrained` writes for VideoLlavaForConditionalGeneration, its tokenizer and its
VideoLlavaImageProcessor (e.g. a copy of LanguageBind/Video-LLaVA-7B-hf). Frames go through the image processor
and the prompt's video token is expanded to one token per patch (+ CLS) per frame, which is what
VideoLlavaProcessor does; VideoLlavaProcessor itself is not used because in transformers 5 its video path needs
torchvision, which has no CPU build on PyPI to match torch's.

>>> captioner = Captioner("checkpoints/Video-LLaVA-7B-hf", device="cuda")
>>> captioner.caption([read_video("clip.mp4", 8)])
['The man in the video is talking and smiling ...']
"""

import argparse
import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, AutoTokenizer, VideoLlavaForConditionalGeneration, VideoLlavaImageProcessor

from grace_fast.arguments import DEVICE_HELP, device, integer
from grace_fast.data.face_crop import FaceCrop, add_face_crop_argument, face_crop_of
from grace_fast.data.video import list_videos, read_video
from grace_fast.errors import UserError
from grace_fast.files import write_jsonl
from grace_fast.text.cache import Cache
from grace_fast.text.jobs import CACHE_NAME, Summary, fingerprint, process_videos

DEFAULT_PROMPT = (
    "USER: <video>\nDescribe the person's face in this video: the expression, how it changes, and the movements "
    "of the brows, eyes, mouth and head. ASSISTANT:"
)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class Captioner:
    """Video-LLaVA captions for clips given as frames, generated greedily in batches (left padded)."""

    def __init__(
        self,
        model_dir: str | os.PathLike,
        *,
        prompt: str = DEFAULT_PROMPT,
        num_frames: int = 8,
        max_new_tokens: int = 96,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise FileNotFoundError(f"model_dir: no config.json in {model_dir} (a Video-LLaVA save_pretrained folder)")
        config = AutoConfig.from_pretrained(model_dir)
        if config.model_type != "video_llava":
            raise ValueError(f"model_dir: {model_dir} holds a {config.model_type!r} model, not video_llava")
        if num_frames < 1 or max_new_tokens < 1:
            raise ValueError(f"num_frames and max_new_tokens must be >= 1, got {num_frames} and {max_new_tokens}")
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.tokenizer.padding_side = "left"  # generation continues from the last position of every row
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.video_token = self.tokenizer.convert_ids_to_tokens(config.video_token_index)
        if prompt.count(self.video_token) != 1:
            raise ValueError(f"prompt must contain the video token {self.video_token!r} once, got {prompt!r}")
        self.image_processor = VideoLlavaImageProcessor.from_pretrained(model_dir)
        self.model = VideoLlavaForConditionalGeneration.from_pretrained(model_dir, dtype=dtype).to(device).eval()
        vision = config.vision_config
        self.tokens_per_frame = (vision.image_size // vision.patch_size) ** 2 + 1  # patches + CLS, as the model
        self.prompt, self.num_frames, self.max_new_tokens = prompt, num_frames, max_new_tokens
        self._model_fingerprint = fingerprint(model_dir)

    @torch.inference_mode()
    def caption(self, videos: Sequence[np.ndarray]) -> list[str]:
        """One caption per video; videos: each [num_frames, H, W, 3] uint8 RGB (e.g. from read_video)."""
        for i, video in enumerate(videos):
            if video.ndim != 4 or video.shape[0] != self.num_frames or video.shape[-1] != 3:
                raise ValueError(f"videos[{i}] must be [{self.num_frames}, H, W, 3], got shape {video.shape}")
        expanded = self.prompt.replace(self.video_token, self.video_token * (self.tokens_per_frame * self.num_frames))
        text = self.tokenizer([expanded] * len(videos), padding=True, return_tensors="pt")
        frames = [frame for video in videos for frame in video]
        pixels = self.image_processor(images=frames, return_tensors="pt", return_legacy_image_output=False)
        pixels = pixels["pixel_values"].reshape(len(videos), self.num_frames, *pixels["pixel_values"].shape[1:])
        out = self.model.generate(
            **text.to(self.model.device),
            pixel_values_videos=pixels.to(self.model.device, self.model.dtype),
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
        )
        new_tokens = out[:, text["input_ids"].shape[1] :]
        return [" ".join(t.split()) for t in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]

    def settings(self) -> dict:
        """What decides a caption besides the video: the model folder and the generation settings."""
        return dict(
            task="caption",
            model=self._model_fingerprint,
            prompt=self.prompt,
            num_frames=self.num_frames,
            max_new_tokens=self.max_new_tokens,
        )


def caption_clips(
    clips: Sequence[tuple[str, str]],
    captioner: Captioner,
    cache: Cache,
    *,
    batch_size: int = 4,
    progress: bool = True,
    face_crop: FaceCrop | None = None,
) -> tuple[dict[str, str], Summary]:
    """Caption every (clip id, video path) not yet in the cache, batch by batch, storing each batch at once.
    face_crop: cut the sampled frames to the tracked face first (it enters the cache key).

    Returns the captions by clip and the summary; a video that cannot be decoded fails alone.
    """

    def load(path: str) -> np.ndarray:
        frames = read_video(path, captioner.num_frames)
        return frames if face_crop is None else face_crop(frames)

    settings = captioner.settings() | ({"face_crop": True} if face_crop is not None else {})
    results, summary = process_videos(
        clips,
        settings,
        load,
        lambda videos: [{"caption": text} for text in captioner.caption(videos)],
        cache,
        batch_size=batch_size,
        desc="caption",
        progress=progress,
    )
    return {clip: value["caption"] for clip, value in results.items()}, summary


def import_captions(
    path: str | os.PathLike, *, id_field: str = "clip", caption_field: str = "caption"
) -> dict[str, str]:
    """Captions from a file, by clip: CSV/TSV with a header, JSON ({clip: caption} or a list of records), JSONL.

    Every record needs a clip id and a caption that is non-empty text; a CSV record is one line (a quoted field
    running over lines is an unterminated quote). Anything else raises a ValueError naming the file and the line
    or record, instead of importing "None" or a caption that swallowed the next clip."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"captions file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".tsv", ".json", ".jsonl"):
        raise ValueError(f"captions file {path}: expected .csv, .tsv, .json or .jsonl, got {suffix!r}")
    text = path.read_text(encoding="utf-8-sig")
    if suffix in (".csv", ".tsv"):
        records = _table_records(path, text, "\t" if suffix == ".tsv" else ",", (id_field, caption_field))
    elif suffix == ".jsonl":
        records = _jsonl_records(path, text)
    else:
        records = _json_records(path, text, id_field, caption_field)
    captions = {}
    for where, row in records:
        if not isinstance(row, dict) or id_field not in row:
            found = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise ValueError(f"captions file {path} {where} has no {id_field!r} (found {found}); set --id-field")
        clip = str(row[id_field]).strip()
        caption = row.get(caption_field)
        if caption is None:
            null = " (null)" if caption_field in row else f" (found {sorted(row)}); set --caption-field"
            raise ValueError(f"captions file {path} {where}: clip {clip!r} has no {caption_field!r}{null}")
        if not isinstance(caption, str):
            raise ValueError(
                f"captions file {path} {where}: clip {clip!r}: {caption_field!r} must be text, got {caption!r}"
            )
        if not caption.strip():
            raise ValueError(
                f"captions file {path} {where}: clip {clip!r} has an empty {caption_field!r} (leave the clip out)"
            )
        if clip in captions:
            raise ValueError(f"captions file {path}: clip {clip!r} occurs twice ({where})")
        captions[clip] = " ".join(caption.split())
    return captions


def _table_records(path: Path, text: str, delimiter: str, needed: tuple[str, str]) -> list[tuple[str, dict]]:
    """("line N", {column: value}) per record of a CSV/TSV file with a header naming the needed columns."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    records, header, last = [], None, 0
    try:
        for row in reader:
            first, last = last + 1, reader.line_num
            if first != last:
                raise ValueError(
                    f"captions file {path}: the quote opened on line {first} closes on line {last}: an unterminated "
                    "quote? (a record must be one line)"
                )
            if header is None:
                header = row
                missing = [name for name in needed if name not in header]
                if missing:
                    raise ValueError(
                        f"captions file {path}: the header names no {missing[0]!r} column (found {header}); set "
                        "--id-field / --caption-field"
                    )
            elif row:
                if len(row) != len(header):
                    hint = ": an unquoted delimiter in a caption?" if len(row) > len(header) else ""
                    raise ValueError(
                        f"captions file {path} line {first} has {len(row)} fields, the header {len(header)}{hint}"
                    )
                records.append((f"line {first}", dict(zip(header, row, strict=True))))
    except csv.Error as error:
        raise ValueError(
            f"captions file {path}: the quote opened on line {last + 1} is not closed where a field ends ({error})"
        ) from None
    return records


def _jsonl_records(path: Path, text: str) -> list[tuple[str, object]]:
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                records.append((f"line {number}", json.loads(line)))
            except json.JSONDecodeError as error:
                raise ValueError(f"captions file {path} line {number} is not JSON ({error})") from None
    return records


def _json_records(path: Path, text: str, id_field: str, caption_field: str) -> list[tuple[str, object]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"captions file {path} is not JSON ({error})") from None
    if isinstance(data, dict):
        data = [{id_field: clip, caption_field: caption} for clip, caption in data.items()]
    if not isinstance(data, list):
        raise ValueError(f"captions file {path}: expected {{clip: caption}} or a list of records, got {data!r:.80}")
    return [(f"record {number}", row) for number, row in enumerate(data, 1)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--videos", help="folder of videos, or a text file with one video path per line")
    source.add_argument("--import", dest="import_file", help="import captions from a CSV/TSV/JSON/JSONL file instead")
    parser.add_argument("--out", required=True, help="output captions JSONL ({clip, caption} per line)")
    parser.add_argument("--model", help="local Video-LLaVA folder (with --videos)")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="generation prompt, with the video token once")
    parser.add_argument("--frames", type=integer(1), default=8, help="frames sampled uniformly per clip")
    parser.add_argument("--batch-size", type=integer(1), default=4, help="clips per generation batch")
    parser.add_argument("--max-new-tokens", type=integer(1), default=96, help="longest caption, in tokens")
    parser.add_argument("--device", type=device, default="auto", help=DEVICE_HELP)
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="default: bfloat16 on cuda, float32 on cpu")
    parser.add_argument("--cache", help=f"cache file (default: {CACHE_NAME} beside --out)")
    parser.add_argument("--id-field", default="clip", help="clip id column/field of an imported file")
    parser.add_argument("--caption-field", default="caption", help="caption column/field of an imported file")
    add_face_crop_argument(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """`grace-fast caption`: exit 0 when every clip has a caption, 1 when some video failed."""
    if args.import_file:
        captions = import_captions(args.import_file, id_field=args.id_field, caption_field=args.caption_field)
        write_jsonl(args.out, [{"clip": clip, "caption": text} for clip, text in sorted(captions.items())])
        Summary(done=len(captions)).report("caption")
        return 0
    if not args.model:
        raise UserError("--model (a local Video-LLaVA folder) is required with --videos")
    face_crop = face_crop_of(args.face_crop)
    dtype = DTYPES[args.dtype or ("bfloat16" if str(args.device).startswith("cuda") else "float32")]
    clips = list_videos(args.videos)
    captioner = Captioner(
        args.model,
        prompt=args.prompt,
        num_frames=args.frames,
        max_new_tokens=args.max_new_tokens,
        device=args.device,
        dtype=dtype,
    )
    out = Path(args.out)
    with Cache(args.cache or out.with_name(CACHE_NAME)) as cache:
        captions, summary = caption_clips(
            clips, captioner, cache, batch_size=args.batch_size, progress=not args.quiet, face_crop=face_crop
        )
    write_jsonl(
        out, [{"clip": clip, "video": path, "caption": captions[clip]} for clip, path in clips if clip in captions]
    )
    summary.report("caption")
    return 1 if summary.failed else 0
