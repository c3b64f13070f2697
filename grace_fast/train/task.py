"""The GRACE task adapter, shared by training and evaluation: the model built from a TrainConfig, the data sets
of a fold, and the adapter that feeds a grace_fast.data Batch to GraceModel.

Class names come from the data set and class prompts from the CATE lexicon ("a face showing happiness: cheeks
raised, lip corners pulled up"), so that logit c, class name c and prompt c always agree.
"""

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from grace_fast.data.datasets import ClipDataset
from grace_fast.data.face_crop import face_crop_of
from grace_fast.data.layouts import ClipList, layout, load_split
from grace_fast.data.transforms import Normalization, VideoTransform
from grace_fast.model import GraceConfig, GraceLoss, GraceModel, GraceOutput, inverse_frequency_weights
from grace_fast.train.config import TrainConfig

logger = logging.getLogger(__name__)
TOKENIZER_DIR = "tokenizer"


class GraceClassifier(nn.Module):
    """model(batch) -> GraceOutput for a Batch (frames [B, T, 3, H, W], captions): text="caption" aligns each
    clip's caption (an empty text where it has none), "prompts" the class prompts (low-latency mode).
    save_pretrained writes the GraceModel checkpoint with the frames' normalisation and face_crop (its
    preprocessor_config.json) and a model card naming `data` and the metrics given."""

    def __init__(
        self,
        grace: GraceModel,
        text: str = "caption",
        normalization: Normalization | None = None,
        *,
        face_crop: bool = False,
        data: str | None = None,
    ):
        super().__init__()
        self.grace, self.text = grace, text
        self.normalization = normalization or Normalization()
        self.face_crop, self.data = face_crop, data

    def forward(self, batch) -> GraceOutput:
        captions = None if self.text == "prompts" else [caption or "" for caption in batch.captions]
        return self.grace(batch.frames, captions)

    def save_pretrained(self, folder: str | os.PathLike, metrics: dict | None = None) -> None:
        self.grace.save_pretrained(
            folder, normalization=self.normalization, face_crop=self.face_crop, data=self.data, metrics=metrics
        )


def class_prompts(classes: tuple[str, ...]) -> list[str]:
    """The lexicon's class prompt of each class; "a face showing NAME" for names the lexicon does not know."""
    from grace_fast.text.lexicon import Lexicon
    from grace_fast.text.prompt import class_prompt

    lexicon = Lexicon.load()
    prompts = []
    for name in classes:
        try:
            prompts.append(class_prompt(name, lexicon))
        except ValueError:
            prompts.append(f"a face showing {name}")
    return prompts


def prepare_tokenizer(config: TrainConfig, workdir: Path) -> None:
    """For model "tiny": train its tokenizer offline into workdir/tokenizer once (one process, before the others
    build the model)."""
    folder = workdir / TOKENIZER_DIR
    if config.model == "tiny" and not (folder / "tokenizer_config.json").is_file():
        from grace_fast.model.tiny import build_tiny_tokenizer

        build_tiny_tokenizer(folder)


def build_model(config: TrainConfig, classes: tuple[str, ...], workdir: Path) -> GraceModel:
    """The GraceModel config.model names, for these classes, with config.model_overrides applied.

    "tiny": small random backbones and the tokenizer prepare_tokenizer wrote into workdir. A .json file: that
    GraceConfig. A checkpoint folder: its weights, to fine-tune (its classes must match).
    """
    source, overrides = config.model, dict(config.model_overrides)
    labels = {"num_classes": len(classes), "class_names": list(classes), "class_prompts": class_prompts(classes)}
    if source == "tiny":
        from grace_fast.model.tiny import tiny_config

        return GraceModel(tiny_config(workdir / TOKENIZER_DIR, **{**labels, **overrides}))
    path = Path(source)
    if path.is_dir():
        model = GraceModel.from_pretrained(path, **overrides)
        if list(model.config.class_names or []) != list(classes):
            raise ValueError(
                f"--model {path} was trained for classes {model.config.class_names}, the data has {list(classes)}"
            )
        return model
    if path.suffix == ".json" and path.is_file():
        return GraceModel(GraceConfig.load(path).replace(**{**labels, **overrides}))
    raise ValueError(f'--model must be "tiny", a GraceConfig .json file or a checkpoint folder, got {source!r}')


@dataclass
class FoldClips:
    """The clips of one fold: train (minus the validation part), validation (None with val_fraction 0) and test
    (None where the data set has no test split there)."""

    train: ClipList
    val: ClipList | None
    test: ClipList | None

    @property
    def classes(self) -> tuple[str, ...]:
        return self.train.classes


def split_clips(
    dataset: str, root: str | os.PathLike, split: str, fold: int = 1, classes=None, descriptions=None
) -> ClipList | None:
    """The clips of one split of a data set (grace_fast.data.layouts.load_split) with the captions of
    descriptions, a `grace-fast refine` JSONL whose texts replace the captions of the clips it lists."""
    clips = load_split(dataset, root, split, fold, classes)
    if clips is not None and descriptions is not None:
        from grace_fast.text.refiner import load_descriptions

        texts = load_descriptions(descriptions)
        if clips.clips and not any(clip.id in texts for clip in clips.clips):
            raise ValueError(
                f"descriptions: {descriptions} names none of the {len(clips)} {split} clips (ids like "
                f"{clips[0].id!r}; the file has ids like {next(iter(texts), None)!r})"
            )
        clips = clips.with_captions(texts)
    return clips


def fold_clips(config: TrainConfig, fold: int) -> FoldClips:
    """Read fold `fold` of config.dataset from config.data_root and carve the validation split from its training
    part (stratified, by config.seed)."""
    if config.data_root is None:
        raise ValueError(f"data_root is needed to read the {config.dataset} data set (--data-root)")
    if not layout(config.dataset).folds and (config.folds is not None or fold != 1):
        raise ValueError(f"{config.dataset} has one train/test split: leave fold and folds unset")
    train = split_clips(config.dataset, config.data_root, "train", fold, config.classes, config.descriptions)
    test = split_clips(config.dataset, config.data_root, "test", fold, train.classes, config.descriptions)
    val = None
    if config.val_fraction > 0:
        train, val = train.holdout(config.val_fraction, seed=config.seed)
    return FoldClips(train, val, test)


def clip_dataset(
    clips: ClipList,
    model_config: GraceConfig,
    normalization: Normalization,
    *,
    train: bool,
    seed=0,
    skip_bad=False,
    cache=False,
    face_crop: bool = False,
) -> ClipDataset:
    """A ClipDataset sampling model_config.frames frames at model_config.image_size pixels (train: augmented),
    cut to the tracked face with face_crop."""
    transform = VideoTransform(model_config.image_size, train=train, normalization=normalization)
    return ClipDataset(
        clips,
        num_frames=model_config.frames,
        transform=transform,
        seed=seed,
        skip_bad=skip_bad,
        cache=cache,
        face_crop=face_crop_of(face_crop),
    )


def warn_missing(split: str, dataset: ClipDataset) -> None:
    """Log a warning naming the clips of a split that the data set left out because their files are missing."""
    if dataset.skipped:
        shown = ", ".join(f"{bad.id} ({bad.path})" for bad in dataset.skipped[:5])
        more = f" and {len(dataset.skipped) - 5} more" if len(dataset.skipped) > 5 else ""
        total = len(dataset) + len(dataset.skipped)
        logger.warning(
            f"{split}: {len(dataset.skipped)} of {total} clips are missing on disk and left out (skip_bad): "
            f"{shown}{more}"
        )


def grace_loss(model_config: GraceConfig, train: ClipList) -> GraceLoss:
    """GraceLoss with the focal term weighted by the inverse class frequency of the training clips."""
    counts = torch.as_tensor(train.class_counts())
    return GraceLoss(model_config, inverse_frequency_weights(counts))
