"""GraceModel.save_pretrained / from_pretrained: a checkpoint folder of config.json, model.safetensors, the
tokenizer files, preprocessor_config.json and a model card (README.md).

preprocessor_config.json is a VideoMAEImageProcessor config (transformers reads it): the frames' resize, centre
crop and normalisation (the backbone's statistics unless given), plus "face_crop", whether the clips were cut to
the face (data.face_crop) before that. The model card states the config, and the training data and the metrics
when the caller knows them. Each file is written atomically (a temporary file in the folder, then os.replace),
weights last; the weights carry the config they were saved with, so a config.json that does not match them is
reported field by field.
"""

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from grace_fast.files import read_safetensors, safetensors_metadata, save_safetensors, temporary_file, write_atomic
from grace_fast.model.config import GraceConfig, check_definition
from grace_fast.model.text import load_tokenizer

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
CONFIG_METADATA_KEY = "grace_config"


def save_checkpoint(
    model,
    folder: str | os.PathLike,
    *,
    normalization=None,
    face_crop: bool = False,
    data: str | None = None,
    metrics: dict | None = None,
) -> None:
    """Write model's tokenizer files, preprocessor_config.json, README.md, config.json and model.safetensors into
    folder (created if missing). normalization (data.transforms.Normalization): the frames' statistics, default
    the video backbone's (its video_pretrained folder's preprocessor_config.json, else VideoMAE's ImageNet
    statistics, which a backbone without one was built for); face_crop: the clips were cut to the face; data and
    metrics: for the model card (write_model_card)."""
    from grace_fast.data.transforms import Normalization

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder, prefix=".tokenizer."))
    try:
        model.tokenizer.save_pretrained(staging)
        for file in staging.iterdir():
            os.replace(file, folder / file.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if normalization is None:
        normalization = Normalization.of_backbone(model.config.video_pretrained)
    save_preprocessor(folder, model.config, normalization, face_crop)
    write_model_card(folder, model.config, data=data, metrics=metrics)
    config_json = model.config.to_json()
    write_atomic(folder / CONFIG_NAME, config_json.encode())
    state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    tmp = temporary_file(folder / WEIGHTS_NAME)
    try:
        save_safetensors(state, tmp, metadata={"format": "pt", CONFIG_METADATA_KEY: config_json})
        os.replace(tmp, folder / WEIGHTS_NAME)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_preprocessor(folder: Path, config: GraceConfig, normalization, face_crop: bool) -> None:
    """Write folder/preprocessor_config.json: a VideoMAEImageProcessor config of the evaluation transform
    (shortest edge and centre crop to image_size, x / 255, the normalisation) and "face_crop"."""
    from grace_fast.data.transforms import PROCESSOR_CONFIG

    values = {
        "image_processor_type": "VideoMAEImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": config.image_size},
        "do_center_crop": True,
        "crop_size": {"height": config.image_size, "width": config.image_size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(normalization.mean),
        "image_std": list(normalization.std),
        "face_crop": bool(face_crop),
    }
    write_atomic(folder / PROCESSOR_CONFIG, (json.dumps(values, indent=2) + "\n").encode())


def write_model_card(
    folder: str | os.PathLike, config: GraceConfig, *, data: str | None = None, metrics: dict | None = None
) -> None:
    """Write folder/README.md: a Hugging Face model card (YAML front matter, then the config, the training data
    and the metrics; "not recorded" where the caller did not know them). metrics: {split: {name: value}}."""
    lines = [
        "---",
        "library_name: grace_fast",
        "pipeline_tag: video-classification",
        "tags: [dynamic-facial-expression-recognition, grace]",
        "---",
        "",
        "# GRACE dynamic facial expression recognition",
        "",
        f"A GRACE model (method definition {config.definition}) classifying clips into {config.num_classes} "
        f"classes: {', '.join(map(str, config.class_names or range(config.num_classes)))}.",
        "Load it with `grace_fast.predict.Predictor.from_pretrained(folder)` or `GraceModel.from_pretrained(folder)`"
        " (`grace_fast.model.hf.register()` makes `AutoModel.from_pretrained(folder)` work too).",
        "",
        "## Training data",
        "",
        data or "Not recorded (saved outside `grace-fast train`).",
        "",
        "## Metrics",
        "",
    ]
    if metrics:
        names = sorted({name for values in metrics.values() for name in values})
        lines += ["| split | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        for split, values in metrics.items():
            cells = [f"{values[n]:.4f}" if isinstance(values.get(n), float) else str(values.get(n, "")) for n in names]
            lines.append(f"| {split} | " + " | ".join(cells) + " |")
    else:
        lines.append("Not recorded.")
    lines += ["", "## Config", "", "```json", config.to_json(), "```", ""]
    write_atomic(Path(folder) / CARD_NAME, "\n".join(lines).encode())


def load_checkpoint(model_class, folder: str | os.PathLike, **overrides):
    """The model_class (GraceModel) saved in folder; overrides change config fields before the model is built.

    A weights file that does not fit the requested config raises a ValueError naming the config fields that
    differ from those the weights were saved with and the mismatching tensors; one that cannot be read raises
    CheckpointError naming it. A config.json, or weights, of another definition of the method
    (GraceConfig.definition; written before definition 2 they have none) raise a ValueError that names what changed:
    their weights belong to a different model.
    """
    folder = Path(folder)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder} is not a GRACE checkpoint: {name} is missing")
    config = GraceConfig.load(folder / CONFIG_NAME).replace(tokenizer=str(folder), **overrides)
    saved_json = safetensors_metadata(folder / WEIGHTS_NAME).get(CONFIG_METADATA_KEY)
    if saved_json is not None:
        check_definition(json.loads(saved_json).get("definition", 1), f"the weights {folder / WEIGHTS_NAME}")
    model = model_class(config, tokenizer=load_tokenizer(folder), load_pretrained=False)
    state = read_safetensors(folder / WEIGHTS_NAME)
    problems = _state_mismatch(model.state_dict(), state)
    if problems:
        raise ValueError(
            f"{folder / WEIGHTS_NAME} does not fit the requested config.\n"
            f"{_config_differences(saved_json, model.config)}\n{problems}"
        )
    model.load_state_dict(state)
    return model


def _state_mismatch(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], show: int = 8) -> str:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = [
        f"{k}: checkpoint {tuple(found[k].shape)}, model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in found and found[k].shape != v.shape
    ]
    lines = []
    for title, items in (
        ("missing tensors", missing),
        ("unexpected tensors", unexpected),
        ("shape mismatches", shapes),
    ):
        if items:
            more = f" (+{len(items) - show} more)" if len(items) > show else ""
            lines.append(f"{title}{more}:\n  " + "\n  ".join(items[:show]))
    return "\n".join(lines)


def _config_differences(saved_json: str | None, config: GraceConfig) -> str:
    if saved_json is None:
        return "The weights carry no config to compare with."
    saved = GraceConfig.from_dict(json.loads(saved_json))
    differences = []
    for name, (a, b) in saved.diff(config).items():
        if isinstance(a, dict) and isinstance(b, dict):  # a backbone config: name its fields that differ
            differences += [
                f"{name}.{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)
            ]
        elif name != "tokenizer":
            differences.append(f"{name}: {a!r} -> {b!r}")
    if not differences:
        return "The config matches the one the weights were saved with."
    return "Config fields that differ (saved with -> requested):\n  " + "\n  ".join(differences)
