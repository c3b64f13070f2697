"""Frames to model input: crop and resize to the model's square size, train augmentation, normalisation.

Evaluation takes the centre square and resizes it (the same frames as VideoMAE's processor: shortest edge to
size, then a centre crop); training takes a random resized crop (one box for the whole clip) and flips the clip
horizontally with probability `flip`. Normalisation uses the backbone's image processor statistics.

>>> import numpy as np
>>> frames = np.zeros((16, 64, 80, 3), np.uint8)
>>> VideoTransform(32)(frames).shape
torch.Size([16, 3, 32, 32])
>>> VideoTransform(32, train=True)(frames, np.random.default_rng(0)).shape
torch.Size([16, 3, 32, 32])
"""

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from grace_fast.files import write_atomic

# VideoMAE's statistics (timm's IMAGENET_DEFAULT_MEAN/STD, in the preprocessor_config.json of its checkpoints)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PROCESSOR_CONFIG = "preprocessor_config.json"


@dataclass(frozen=True)
class Normalization:
    """Per-channel (x / 255 - mean) / std of RGB frames; the default is VideoMAE's ImageNet statistics."""

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self):
        for name in ("mean", "std"):
            value = tuple(float(x) for x in getattr(self, name))
            if len(value) != 3:
                raise ValueError(f"{name} must have 3 values (R, G, B), got {getattr(self, name)!r}")
            object.__setattr__(self, name, value)
        if min(self.std) <= 0:
            raise ValueError(f"std must be > 0, got {self.std}")

    @classmethod
    def of_backbone(cls, folder: str | os.PathLike | None) -> "Normalization":
        """The statistics of a video backbone folder (from_pretrained) if it has a preprocessor_config.json, else
        VideoMAE's default (what a randomly initialised or config-only backbone is built for)."""
        if folder is not None and (Path(folder) / PROCESSOR_CONFIG).is_file():
            return cls.from_pretrained(folder)
        return cls()

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> "Normalization":
        """image_mean / image_std of the image processor saved in folder (transformers' preprocessor_config.json,
        as GraceModel.save_pretrained, VideoMAEImageProcessor.save_pretrained or a VideoMAE checkpoint folder
        write it); no download. A folder without one raises FileNotFoundError: its statistics are unknown."""
        config = read_processor_config(folder)
        if not config.get("do_normalize", True):
            return cls((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
        if "image_mean" not in config or "image_std" not in config:
            raise ValueError(f"image processor config {Path(folder) / PROCESSOR_CONFIG} has no image_mean/image_std")
        return cls(tuple(config["image_mean"]), tuple(config["image_std"]))


def read_processor_config(folder: str | os.PathLike) -> dict:
    """The mapping in folder/preprocessor_config.json; errors name the file."""
    path = Path(folder) / PROCESSOR_CONFIG
    if not path.is_file():
        raise FileNotFoundError(
            f"image processor config not found: {path}, so the frames' normalisation is unknown (a folder saved by "
            "GraceModel.save_pretrained of grace_fast 0.1.0 lacks it: save it again, or write that file with "
            "image_mean and image_std)"
        )
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"image processor config {path} is not JSON ({error})") from None
    if not isinstance(config, dict):
        raise ValueError(f"image processor config {path} must hold a mapping, got {type(config).__name__}")
    return config


@dataclass(frozen=True)
class VideoTransform:
    """uint8 frames [T, H, W, 3] -> normalised float32 [T, 3, size, size].

    train=True: a random resized crop whose area is a `scale` fraction of the frame and whose aspect ratio lies
    in `ratio` (log-uniform, as torchvision's RandomResizedCrop), then a horizontal flip with probability `flip`;
    the randomness comes from the rng passed in. train=False: the centre square, no randomness.
    """

    size: int = 224
    train: bool = False
    normalization: Normalization = field(default_factory=Normalization)
    scale: tuple[float, float] = (0.5, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: float = 0.5

    def __post_init__(self):
        if not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"size must be an integer >= 1, got {self.size!r}")
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"scale must be (low, high) with 0 < low <= high <= 1, got {self.scale!r}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio must be (low, high) with 0 < low <= high, got {self.ratio!r}")
        if not 0 <= self.flip <= 1:
            raise ValueError(f"flip must be a probability in [0, 1], got {self.flip!r}")

    def __call__(self, frames: np.ndarray, rng: np.random.Generator | None = None) -> torch.Tensor:
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
        if self.train and rng is None:
            raise ValueError("a training transform needs rng (a numpy Generator)")
        height, width = frames.shape[1:3]
        top, left, h, w = self.crop_box(height, width, rng if self.train else None)
        x = torch.from_numpy(np.ascontiguousarray(frames[:, top : top + h, left : left + w])).permute(0, 3, 1, 2)
        x = x.float().div_(255)
        if (h, w) != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        if self.train and rng.random() < self.flip:
            x = x.flip(-1)
        mean = torch.tensor(self.normalization.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.normalization.std).view(1, 3, 1, 1)
        return ((x - mean) / std).contiguous()

    def crop_box(self, height: int, width: int, rng: np.random.Generator | None = None) -> tuple[int, int, int, int]:
        """(top, left, h, w) of the crop: random resized (rng given) or the centre square (rng None)."""
        if rng is not None:
            area = height * width
            for _ in range(10):
                target = area * rng.uniform(*self.scale)
                aspect = math.exp(rng.uniform(math.log(self.ratio[0]), math.log(self.ratio[1])))
                w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
                if 0 < w <= width and 0 < h <= height:
                    return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
        side = min(height, width)
        return (height - side) // 2, (width - side) // 2, side, side


def save_normalization(folder: Path, normalization: Normalization) -> None:
    """Write mean/std as a transformers image processor config, which Normalization.from_pretrained reads."""
    values = {"do_normalize": True, "image_mean": list(normalization.mean), "image_std": list(normalization.std)}
    write_atomic(folder / PROCESSOR_CONFIG, (json.dumps(values, indent=2) + "\n").encode())
