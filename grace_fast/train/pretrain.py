"""`grace-fast pretrain` and `pretrain(config)`: self-supervised VideoMAE pretraining of the video tower on
unlabelled clips, into a folder that GraceConfig's `video_pretrained` loads.

VideoMAE's recipe (masked autoencoding with tube masking): each clip is sampled and augmented as for training
(`frames` frames, random resized crop, flip), and a random `mask_ratio` share of the patch positions (0.9 by
default, VideoMAE's) is hidden in every tubelet alike, so that a hidden patch cannot be copied from the next
frame. transformers' VideoMAEForPreTraining encodes the visible patches, decodes every position and is scored by
the mean squared error of the hidden patches' pixels, each patch normalised by its own mean and std.

The clips: a folder of videos or a list file (`videos`), or the training split of a data set's fold (`dataset`,
`data_root`, `fold`; never its test split), the synthetic set included. Labels are not used.

The run goes through the training loop (`grace_fast.train.loop.fit`), so it has the loop's progress bars,
checkpoints (written whole or not at all), exact resumption after a crash or kill -9 (`resume`), DDP under
torchrun and the stop at a step boundary on SIGINT/SIGTERM. Run folder: config.yaml, metrics.jsonl (the
reconstruction loss of each epoch), checkpoints/ (encoder and decoder, to resume) and best/: the encoder of the
last finished epoch, a VideoMAEModel folder with its preprocessor_config.json.

>>> result = pretrain(PretrainConfig(dataset="synthetic", data_root="data/synthetic", out="runs/pretrain"))
... # doctest: +SKIP
>>> GraceModel(tiny_config(tokenizer, video_pretrained=str(result.best_checkpoint)))  # doctest: +SKIP
"""

import argparse
import copy
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, NamedTuple

import torch
from torch import nn
from torch.utils.data import Dataset

from grace_fast.data.datasets import BadClip, Batch, ClipDataset, collate
from grace_fast.data.layouts import Clip, ClipList
from grace_fast.data.transforms import Normalization, VideoTransform, save_normalization
from grace_fast.data.video import list_videos
from grace_fast.files import save_safetensors, temporary_file, write_atomic
from grace_fast.train import distributed
from grace_fast.train.batch_order import MASK_STREAM, derive_seed
from grace_fast.train.config import TrainConfig, _field, add_config_arguments, config_from_args
from grace_fast.train.loop import FitResult, fit
from grace_fast.train.task import split_clips, warn_missing

TINY_FRAMES, TINY_IMAGE_SIZE = 16, 32
DECODER_LAYERS = 4  # VideoMAE's


@dataclass
class PretrainConfig(TrainConfig):
    """A pretraining run: TrainConfig's data, optimisation and bookkeeping fields (`grace-fast pretrain --help`
    lists them), a few with pretraining's meaning or default, and the mask. The fields of supervised training
    (UNUSED) are refused when set."""

    UNUSED: ClassVar[tuple[str, ...]] = ("descriptions", "folds", "val_fraction", "text", "select_metric")

    videos: str | None = _field(
        None, "a folder of videos, or a text file of video paths, to pretrain on (else dataset)"
    )
    model: str = _field(
        "tiny",
        f'the video tower: "tiny" (a tiny random VideoMAE, {TINY_FRAMES} frames of {TINY_IMAGE_SIZE} px), a '
        "GraceConfig JSON file (its video, frames, image_size and video_pretrained) or a VideoMAE folder to continue",
    )
    model_overrides: dict = _field({}, "VideoMAEConfig fields to change (num_frames, image_size, decoder_*)")
    mask_ratio: float = _field(0.9, "the share of each tubelet's patch positions hidden (tube masking)")
    betas: tuple[float, float] = _field((0.9, 0.95), "AdamW's two betas (VideoMAE's)")
    val_fraction: float = _field(0.0, "not used: pretraining has no validation split")
    out: str = _field("runs/pretrain", "the run folder; the encoder is written to out/best")

    def __post_init__(self):
        super().__post_init__()
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        changed = [name for name in self.UNUSED if getattr(self, name) != defaults[name]]
        if changed:
            raise ValueError(f"{', '.join(changed)}: not used by pretraining, leave unset")
        if not 0 < self.mask_ratio < 1:
            raise ValueError(f"mask_ratio must be in (0, 1), got {self.mask_ratio!r}")
        if self.videos is not None and self.data_root is not None:
            raise ValueError("give videos or data_root, not both")


def videomae_config(config: PretrainConfig):
    """(VideoMAEConfig of the encoder and decoder, the folder whose weights start it or None) for config.model,
    with config.model_overrides applied.

    A random tower's decoder is VideoMAE's at half the encoder's width: DECODER_LAYERS blocks of width
    hidden_size / 2, heads / 2 and an MLP 4x as wide (for ViT-B: 384 wide, 6 heads, MLP 1536, VideoMAE's own); a
    folder's config.json describes its decoder."""
    from transformers import VideoMAEConfig

    from grace_fast.model.config import GraceConfig, check_folder
    from grace_fast.model.tiny import tiny_video_config

    source, start = config.model, None
    if source == "tiny":
        values = {**tiny_video_config(), "num_frames": TINY_FRAMES, "image_size": TINY_IMAGE_SIZE}
    elif source.endswith(".json"):
        grace = GraceConfig.load(source)
        start = grace.video_pretrained  # its config.json, not grace.video, describes that tower (as in GraceModel)
        values = {**({} if start else grace.video), "num_frames": grace.frames, "image_size": grace.image_size}
    else:
        start, values = source, {}
    values.update(config.model_overrides)
    if start is not None:
        check_folder("model", start)
        return VideoMAEConfig.from_pretrained(start, local_files_only=True, **values), start
    encoder = VideoMAEConfig(**values)
    width = max(encoder.hidden_size // 2, 1)
    decoder = {
        "decoder_hidden_size": width,
        "decoder_num_attention_heads": max(encoder.num_attention_heads // 2, 1),
        "decoder_intermediate_size": 4 * width,
        "decoder_num_hidden_layers": DECODER_LAYERS,
    }
    return VideoMAEConfig(**{**values, **decoder, **config.model_overrides}), None


def build_autoencoder(config: PretrainConfig) -> "MaskedVideoAutoencoder":
    """VideoMAEForPreTraining of videomae_config(config), random or loaded from its folder (a folder without a
    decoder, such as a VideoMAEModel's, starts the decoder at random)."""
    from transformers import VideoMAEForPreTraining

    video, start = videomae_config(config)
    if start is None:
        model = VideoMAEForPreTraining(video)
    else:
        model, loaded = VideoMAEForPreTraining.from_pretrained(
            start, config=video, local_files_only=True, output_loading_info=True
        )
        if "mask_token" in loaded["missing_keys"]:  # transformers leaves it uninitialised (VideoMAE's is zeros)
            nn.init.zeros_(model.mask_token)
    return MaskedVideoAutoencoder(model)


def tube_mask(grid: tuple[int, int, int], ratio: float, generator: torch.Generator) -> torch.Tensor:
    """A tube mask over a [T', H', W'] patch grid -> [T' H' W'] bool in (t, h, w) order, True = hidden: the same
    int(ratio H' W') random positions in every tubelet (VideoMAE's TubeMaskingGenerator).

    >>> tube_mask((2, 2, 2), 0.5, torch.Generator().manual_seed(0)).view(2, 4).sum(1).tolist()
    [2, 2]
    """
    t, h, w = grid
    hidden = int(ratio * h * w)
    if not 0 < hidden < h * w:
        raise ValueError(f"mask_ratio {ratio} hides {hidden} of the {h * w} patches of a frame: need 1 to {h * w - 1}")
    frame = torch.zeros(h * w, dtype=torch.bool)
    frame[torch.randperm(h * w, generator=generator)[:hidden]] = True
    return frame.repeat(t)


class MaskedClips(Dataset):
    """A ClipDataset's items with a tube mask each: (Sample, mask [L] bool), or its BadClip. The mask depends only
    on (seed, epoch, clip index), as the augmentation does: the same on any process and after a resume."""

    def __init__(self, clips: ClipDataset, grid: tuple[int, int, int], ratio: float, seed: int = 0):
        self.clips, self.grid, self.ratio, self.seed, self.epoch = clips, grid, ratio, seed, 0
        tube_mask(grid, ratio, torch.Generator())  # checks the ratio against the grid now

    @property
    def skipped(self) -> list[BadClip]:
        return self.clips.skipped

    def __len__(self) -> int:
        return len(self.clips)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.clips.set_epoch(epoch)

    def __getitem__(self, index: int):
        item = self.clips[index]
        if isinstance(item, BadClip):
            return item
        generator = torch.Generator().manual_seed(derive_seed(self.seed, MASK_STREAM, self.epoch, index))
        return item, tube_mask(self.grid, self.ratio, generator)


@dataclass
class MaskedBatch:
    """A Batch of clips (frames [B, T, 3, H, W]) and their masks [B, L] bool, True = hidden."""

    batch: Batch
    masks: torch.Tensor
    skipped: list[BadClip] = field(default_factory=list)

    @property
    def labels(self) -> torch.Tensor:
        return self.batch.labels

    def to(self, device, non_blocking: bool = False) -> "MaskedBatch":
        masks = self.masks.to(device, non_blocking=non_blocking)
        return MaskedBatch(self.batch.to(device, non_blocking), masks, self.skipped)


def collate_masked(items: list) -> MaskedBatch:
    """Stack MaskedClips items; BadClips are left out and listed in .skipped."""
    good = [item for item in items if not isinstance(item, BadClip)]
    batch = collate([sample for sample, _ in good] + [item for item in items if isinstance(item, BadClip)])
    masks = torch.stack([mask for _, mask in good]) if good else torch.empty(0, 0, dtype=torch.bool)
    return MaskedBatch(batch, masks, batch.skipped)


class MaskedVideoAutoencoder(nn.Module):
    """VideoMAEForPreTraining behind the training loop: model(MaskedBatch) -> its output (.loss the
    reconstruction error). save_pretrained writes the encoder alone as a VideoMAEModel folder."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    @property
    def encoder(self) -> nn.Module:
        return self.model.videomae

    @property
    def grid(self) -> tuple[int, int, int]:
        video = self.model.config
        side = video.image_size // video.patch_size
        return video.num_frames // video.tubelet_size, side, side

    def forward(self, batch: MaskedBatch):
        return self.model(pixel_values=batch.batch.frames, bool_masked_pos=batch.masks)

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """config.json, model.safetensors (the encoder's weights, weights last) and preprocessor_config.json."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        video = copy.deepcopy(self.model.config)  # its decoder_* fields stay: a continued run rebuilds the decoder
        video.architectures = ["VideoMAEModel"]
        write_atomic(folder / "config.json", video.to_json_string().encode())
        save_normalization(folder, NORMALIZATION)
        state = {name: tensor.detach().contiguous().cpu() for name, tensor in self.encoder.state_dict().items()}
        tmp = temporary_file(folder / "model.safetensors")
        try:
            save_safetensors(state, tmp, metadata={"format": "pt"})
            os.replace(tmp, folder / "model.safetensors")
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


# VideoMAEForPreTraining un-normalises its targets with ImageNet's statistics, so the clips are normalised with them
NORMALIZATION = Normalization()


class Reconstruction(NamedTuple):
    total: torch.Tensor


class ReconstructionLoss(nn.Module):
    """The loop's loss: the model's own reconstruction error."""

    def forward(self, output, labels) -> Reconstruction:
        return Reconstruction(output.loss)


def pretrain_clips(config: PretrainConfig) -> ClipList:
    """The clips to pretrain on: config.videos (one unlabelled class), else the training split of config.fold."""
    if config.videos is not None:
        clips = tuple(Clip(clip, path, 0) for clip, path in list_videos(config.videos))
        return ClipList(clips, ("unlabelled",), str(config.videos))
    if config.data_root is None:
        raise ValueError("pretrain needs clips: --videos (a folder or list of videos) or --data-root (with --dataset)")
    return split_clips(config.dataset, config.data_root, "train", config.fold, config.classes)


def pretrain(config: PretrainConfig, *, on_step=None) -> FitResult:
    """Run config (every process of a torchrun calls it) -> the loop's FitResult; best_checkpoint is the encoder
    folder (None when stopped before the first epoch ended)."""
    joined = distributed.joined()
    processes = distributed.start(config.device)
    try:
        clips = pretrain_clips(config)
        torch.manual_seed(config.seed)  # the same initial weights on every rank
        model = build_autoencoder(config)
        video = model.model.config
        transform = VideoTransform(video.image_size, train=True, normalization=NORMALIZATION)
        frames = ClipDataset(
            clips,
            num_frames=video.num_frames,
            transform=transform,
            seed=config.seed,
            skip_bad=config.skip_bad,
            cache=config.cache_frames,
        )
        if processes.main:
            warn_missing("pretraining", frames)
        dataset = MaskedClips(frames, model.grid, config.mask_ratio, config.seed)
        run = Path(config.out)
        return fit(config, model, ReconstructionLoss(), dataset, None, collate_masked, run, processes, on_step=on_step)
    finally:
        if not joined:
            distributed.stop()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, PretrainConfig)
    parser.add_argument(
        "--quiet", dest="progress", action="store_false", default=argparse.SUPPRESS, help="no progress bars"
    )


def run(args: argparse.Namespace) -> int:
    """`grace-fast pretrain`: exit 0 when done, 130 when a SIGINT/SIGTERM stopped it (resumable)."""
    config = config_from_args(args, PretrainConfig)
    result = pretrain(config)
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun: the main process reports
        return 130 if result.interrupted else 0
    if result.interrupted:
        print(f"pretrain: stopped; continue with the same command and --resume (run folder {config.out})")
        return 130
    loss = result.history[-1]["train_total"]
    print(
        f"pretrain: {result.global_step} steps, reconstruction loss {loss:.4f} -> encoder {result.best_checkpoint}; "
        f"fine-tune from it with --set model_overrides.video_pretrained={result.best_checkpoint}"
    )
    return 0
