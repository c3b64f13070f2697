"""The torch Dataset of labelled clips and its collate function.

A sample is a clip's frames, decoded and segment-sampled (`sampling`), optionally cut to the face
(`face_crop`: the face is tracked over the sampled frames), cropped, resized and normalised (`transforms`), with
its label, id and caption. Training randomness (which frame of each segment, crop, flip) is
drawn from a generator seeded by (seed, epoch, index): a sample depends on nothing else, so it is the same with
any number of workers, on any DDP rank and after a resume; call `set_epoch` at the start of every epoch (with
DataLoader workers, leave persistent_workers off so that they see it).

cache=True decodes each clip whole on its first read, keeps all its frames in memory (uint8) and samples later
epochs from there: for small, low-resolution data sets such as the demo's, whose time goes to opening and
decoding videos. It holds every frame of every clip, and a clip with an unreadable frame is bad even where
sampling would have skipped that frame; otherwise the samples are the same. The cache lives in the process that
reads: DataLoader worker processes (not persistent, see above) start each epoch with the dataset's, so it pays
with num_workers=0.

Bad files: a clip whose file or frame folder is missing raises VideoReadError naming it when the dataset is
built, and one that cannot be decoded raises when it is read. With skip_bad=True the missing ones are left out
and listed in `dataset.skipped`, and an undecodable one comes back as a BadClip that `collate` drops from its
batch and lists in `batch.skipped`; nothing else is skipped.

>>> import tempfile
>>> from grace_fast.data.layouts import synthetic
>>> from grace_fast.data.synthetic import make_synthetic
>>> root = make_synthetic(tempfile.mkdtemp(), clips=10, progress=False)["out"]
>>> train = ClipDataset(synthetic(root, fold=1), transform=VideoTransform(32, train=True))
>>> loader = torch.utils.data.DataLoader(train, batch_size=4, shuffle=True, collate_fn=collate)
>>> batch = next(iter(loader))
>>> batch.frames.shape, batch.labels.shape, len(batch.captions)
(torch.Size([4, 16, 3, 32, 32]), torch.Size([4]), 4)
"""

import os
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch

from grace_fast.data.face_crop import FaceCrop
from grace_fast.data.frames import read_clip
from grace_fast.data.layouts import Clip, ClipList
from grace_fast.data.segments import segment_indices
from grace_fast.data.transforms import VideoTransform
from grace_fast.data.video import VideoReadError


class Sample(NamedTuple):
    """One clip: frames [T, 3, H, W] float32 normalised, label (class index), id, caption (None if it has none)."""

    frames: torch.Tensor
    label: int
    id: str
    caption: str | None


@dataclass(frozen=True)
class BadClip:
    """A clip that was skipped: its id, path and why."""

    id: str
    path: str
    error: str


@dataclass
class Batch:
    """Collated samples: frames [B, T, 3, H, W] float32, labels [B] int64, ids and captions (B each), and the
    clips of this batch that were skipped (skip_bad). B may be 0 when every clip of a batch was bad."""

    frames: torch.Tensor
    labels: torch.Tensor
    ids: list[str]
    captions: list[str | None]
    skipped: list[BadClip] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def to(self, device, non_blocking: bool = False) -> "Batch":
        return Batch(
            self.frames.to(device, non_blocking=non_blocking),
            self.labels.to(device, non_blocking=non_blocking),
            self.ids,
            self.captions,
            self.skipped,
        )

    def pin_memory(self) -> "Batch":
        """Called by DataLoader(pin_memory=True)."""
        return Batch(self.frames.pin_memory(), self.labels.pin_memory(), self.ids, self.captions, self.skipped)


class ClipDataset(torch.utils.data.Dataset):
    """Labelled clips as model input: item i is a Sample, or a BadClip when skip_bad is on and the clip cannot
    be decoded. num_frames frames per clip by segment sampling (random within each segment when the transform
    trains, the centres otherwise); face_crop (a FaceCrop, or None for the whole frame) cuts them to the face;
    transform crops, resizes and normalises them. cache: keep decoded clips in memory (see the module doc; face
    crops are not cached)."""

    def __init__(
        self,
        clips: ClipList,
        *,
        num_frames: int = 16,
        transform: VideoTransform | None = None,
        seed: int = 0,
        skip_bad: bool = False,
        cache: bool = False,
        face_crop: FaceCrop | None = None,
    ):
        if not isinstance(num_frames, int) or num_frames < 1:
            raise ValueError(f"num_frames must be an integer >= 1, got {num_frames!r}")
        self.classes = clips.classes
        self.num_frames = num_frames
        self.transform = transform if transform is not None else VideoTransform()
        self.seed, self.epoch, self.skip_bad = seed, 0, skip_bad
        self.face_crop = face_crop
        self.skipped: list[BadClip] = []
        self.cache: dict[int, np.ndarray] | None = {} if cache else None
        kept = []
        for clip in clips.clips:
            if os.path.exists(clip.path):
                kept.append(clip)
            elif skip_bad:
                self.skipped.append(BadClip(clip.id, clip.path, "video file or frame folder not found"))
            else:
                raise VideoReadError(f"clip {clip.id}: video file or frame folder not found: {clip.path}")
        self.clips = ClipList(kept, clips.classes, clips.source)

    def __len__(self) -> int:
        return len(self.clips)

    def set_epoch(self, epoch: int) -> None:
        """Draw the training randomness of this epoch (a different crop, flip and frames every epoch)."""
        self.epoch = epoch

    def __getitem__(self, index: int) -> Sample | BadClip:
        clip: Clip = self.clips[index]
        rng = np.random.default_rng([self.seed, self.epoch, index]) if self.transform.train else None
        try:
            frames = self._read(index, lambda n, t: segment_indices(n, t, rng))
        except VideoReadError as error:
            if not self.skip_bad:
                raise
            return BadClip(clip.id, clip.path, str(error))
        if self.face_crop is not None:
            frames = self.face_crop(frames)
        return Sample(self.transform(frames, rng), clip.label, clip.id, clip.caption)

    def _read(self, index: int, sampler) -> np.ndarray:
        """The sampled frames of clip `index`, [T, H, W, 3] uint8: decoded, or from the cache."""
        if self.cache is None:
            return read_clip(self.clips[index].path, self.num_frames, sampler=sampler)
        if index not in self.cache:
            self.cache[index] = read_clip(self.clips[index].path, self.num_frames, sampler=lambda n, _: np.arange(n))
        every = self.cache[index]
        return every[sampler(len(every), self.num_frames)]


def collate(items: list[Sample | BadClip]) -> Batch:
    """Stack Samples into a Batch; BadClips are left out and listed in batch.skipped."""
    samples = [item for item in items if isinstance(item, Sample)]
    skipped = [item for item in items if isinstance(item, BadClip)]
    if not samples:
        return Batch(torch.empty(0), torch.empty(0, dtype=torch.int64), [], [], skipped)
    return Batch(
        torch.stack([s.frames for s in samples]),
        torch.tensor([s.label for s in samples], dtype=torch.int64),
        [s.id for s in samples],
        [s.caption for s in samples],
        skipped,
    )
