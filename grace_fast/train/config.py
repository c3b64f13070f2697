"""TrainConfig: every setting of a training run, from a YAML or JSON file with each field overridable on the
command line (`--lr 3e-4`, `--no-resume`, `--model-overrides '{"alignment": "cosine"}'`,
`--set model_overrides.motion=off`).

Precedence: the defaults, then the file given by --config, then the field flags, then --set, in that order.

>>> config = TrainConfig(epochs=2, lr=1e-3)
>>> TrainConfig.from_dict(config.to_dict()) == config
True
"""

import argparse
import dataclasses
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from grace_fast.arguments import DEVICE, DEVICE_HELP
from grace_fast.data.layouts import LAYOUTS
from grace_fast.files import write_atomic

AMP_MODES = ("auto", "bf16", "fp16", "off")
SELECT_METRICS = ("uar", "war")
TEXT_MODES = ("caption", "prompts")


def _field(default: Any, help: str) -> Any:
    """A TrainConfig field with its help text, the one place that says what the field does (its --flag's help)."""
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """A training run (docs/method.md section 6): data, model, optimisation and bookkeeping. Each field's help text (its
    metadata, shown by `grace-fast train --help`) says what it does.

    Optimisation is AdamW (no decay on biases, norms and scalars), a linear warm-up then cosine decay, gradient
    clipping and accumulation: one optimiser step sees batch_size * accumulation * processes clips.
    """

    dataset: str = _field("synthetic", f"the data set's layout: {', '.join(LAYOUTS)}")
    data_root: str | None = _field(None, "the data set's folder (csv: a folder with train.csv and test.csv)")
    classes: list[str] | None = _field(
        None, "class names in label-index order, comma-separated (csv: labels may then be names)"
    )
    descriptions: str | None = _field(
        None, "a `grace-fast refine` JSONL whose emotion-aware texts replace the captions of the clips it lists"
    )
    fold: int = _field(1, "the test fold of the k-fold protocol")
    folds: str | None = _field(
        None, 'several test folds ("1-5", "1,3"), each trained into out/fold-K; their mean and std are reported'
    )
    val_fraction: float = _field(
        0.1, "the part of the training fold held out (stratified, by seed) to select the epoch; 0: the last epoch"
    )
    text: str = _field(
        "caption",
        "the text aligned: caption (each clip's caption or description) or prompts (no caption: the class-prompt "
        "mode, every class scored by its own prompt)",
    )
    skip_bad: bool = _field(False, "leave out unreadable clips, listed in skipped.jsonl, instead of stopping")
    face_crop: bool = _field(
        False, "cut every clip to its tracked face (OpenCV's Haar cascade, the faces extra); checkpoints record it"
    )
    num_workers: int = _field(0, "DataLoader worker processes")
    cache_frames: bool = _field(
        False, "keep every clip's decoded frames in memory after its first read (small sets; needs num_workers 0)"
    )
    model: str = _field("tiny", '"tiny" (a small random GRACE), a GraceConfig JSON file or a checkpoint folder')
    model_overrides: dict[str, Any] = _field(
        {}, "GraceConfig fields to change, a mapping: the ablations (--set model_overrides.motion=off)"
    )
    epochs: int = _field(10, "passes over the training split")
    batch_size: int = _field(8, "clips per micro-batch and process")
    accumulation: int = _field(1, "micro-batches per optimiser step")
    lr: float = _field(1e-4, "peak learning rate of AdamW")
    weight_decay: float = _field(0.05, "AdamW weight decay of the weight matrices")
    betas: tuple[float, float] = _field((0.9, 0.999), "AdamW's two betas, e.g. [0.9, 0.999]")
    warmup_steps: int | None = _field(None, "optimiser steps of linear warm-up (none: warmup_fraction of all steps)")
    warmup_fraction: float = _field(0.05, "the part of all optimiser steps that warms up, when warmup_steps is none")
    min_lr_ratio: float = _field(0.0, "the learning rate the cosine decays to, as a fraction of lr")
    grad_clip: float = _field(1.0, "the largest gradient norm; 0: no clipping")
    amp: str = _field(
        "auto",
        "autocast: auto is bf16 on a GPU or a CPU with AMX or AVX512-BF16, fp32 elsewhere; bf16 (any device), "
        "fp16 (GPU, with a scaler) or off",
    )
    select_metric: str = _field("uar", "the validation metric that selects the epoch: uar or war")
    seed: int = _field(0, "seeds the weights, the validation split, the data order and the augmentation")
    device: str = _field("auto", DEVICE_HELP)
    out: str = _field("runs/grace", "the run folder")
    checkpoint_every: int = _field(
        50, "optimiser steps between resumable checkpoints, besides one at each epoch end; 0: epoch ends only"
    )
    keep_checkpoints: int = _field(2, "resumable checkpoints kept, the newest")
    resume: bool = _field(False, "continue the run in out from its newest checkpoint, exactly")
    progress: bool = _field(True, "progress bars")
    tensorboard: bool = _field(False, "also log each epoch's metrics to out/tensorboard (needs tensorboard)")

    def __post_init__(self):
        for f in dataclasses.fields(self):
            setattr(self, f.name, parse_field(f.name, getattr(self, f.name), type(self)))
        choices_of = (
            ("dataset", LAYOUTS),
            ("amp", AMP_MODES),
            ("select_metric", SELECT_METRICS),
            ("text", TEXT_MODES),
        )
        for name, choices in choices_of:
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {list(choices)}, got {getattr(self, name)!r}")
        for name in ("epochs", "batch_size", "accumulation", "fold", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        for name in ("num_workers", "checkpoint_every", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {getattr(self, name)!r}")
        if not DEVICE.fullmatch(self.device):
            raise ValueError(f"device must be {DEVICE_HELP}, got {self.device!r}")
        if self.cache_frames and self.num_workers:
            raise ValueError("cache_frames needs num_workers 0: worker processes would start every epoch uncached")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be None or an integer >= 0, got {self.warmup_steps!r}")
        for name, low, high in (("val_fraction", 0, 1), ("warmup_fraction", 0, 1), ("min_lr_ratio", 0, 1)):
            value = getattr(self, name)
            if not low <= value < high and not (name == "min_lr_ratio" and value == 1):
                raise ValueError(f"{name} must be in [{low}, {high}), got {value!r}")
        if not self.lr > 0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError(
                f"need lr > 0, weight_decay >= 0, grad_clip >= 0; got {self.lr}, {self.weight_decay}, {self.grad_clip}"
            )
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        self.fold_list()  # checks folds

    def fold_list(self) -> list[int]:
        """The test folds to run: parsed `folds` ("1-5" -> [1, 2, 3, 4, 5], "1,3" -> [1, 3]), else [fold]."""
        if self.folds is None:
            return [self.fold]
        folds: list[int] = []
        try:
            for part in str(self.folds).split(","):
                low, _, high = part.strip().partition("-")
                folds += range(int(low), int(high or low) + 1)
        except ValueError:
            raise ValueError(f'folds must look like "1-5" or "1,3,5", got {self.folds!r}') from None
        if not folds or min(folds) < 1 or len(set(folds)) != len(folds):
            raise ValueError(f"folds must name distinct folds >= 1, got {self.folds!r}")
        return folds

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["betas"] = list(self.betas)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        _check_names(values, cls)
        return cls(**values)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TrainConfig":
        """A config from a YAML or JSON file (JSON is YAML); fields it leaves out keep their defaults."""
        return cls.from_dict(read_config_file(path, cls))

    def save(self, path: str | os.PathLike) -> None:
        write_atomic(Path(path), yaml.safe_dump(self.to_dict(), sort_keys=False).encode())

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


class _Loader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false, so that `motion: off` stays the string "off"."""


_Loader.yaml_implicit_resolvers = {
    key: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
# YAML 1.2 floats without a dot (1e-3); YAML 1.1 reads them as strings
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9]+[eE][-+]?[0-9]+$"), list("-+0123456789")
)

BOOLEAN_WORDS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


def parse_field(name: str, value: Any, config_class: type = TrainConfig) -> Any:
    """value as the type of field `name` of config_class (TrainConfig or a subclass): a string of that type parsed
    ("1e-3" for a float, "no" for a bool, "a,b" for a list of names), numbers widened (3 -> 3.0, or "3" for a
    string); anything else raises a ValueError naming the field, the value and the type expected."""
    annotation = _field_types(config_class)[name]
    if value is None and _is_optional(annotation):
        return None
    kind = _plain_type(annotation)
    if kind is dict:
        if isinstance(value, dict):
            return value
        raise ValueError(f"{name} must be a mapping, got {value!r}")
    if kind is list:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list | tuple) and all(_is_scalar(v) for v in value):
            return [str(v) for v in value]
        raise ValueError(f"{name} must be a list of names or one comma-separated string, got {value!r}")
    if kind is tuple:
        count = len(typing.get_args(annotation))
        if isinstance(value, list | tuple) and len(value) == count:
            try:
                return tuple(_number(v) for v in value)
            except ValueError:
                pass
        raise ValueError(f"{name} must be {count} numbers, got {value!r}")
    try:
        return {bool: _boolean, int: _integer, float: _number, str: _string}[kind](value)
    except ValueError:
        expected = {bool: "true or false (or yes/no, on/off)", int: "an integer", float: "a number", str: "a string"}
        raise ValueError(f"{name} must be {expected[kind]}, got {value!r}") from None


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in BOOLEAN_WORDS:
        return BOOLEAN_WORDS[value.lower()]
    raise ValueError


def _integer(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+\s*", value):
        return int(value)
    raise ValueError


def _number(value: Any) -> float:
    if isinstance(value, str | int | float) and not isinstance(value, bool) and not math.isnan(float(value)):
        return float(value)
    raise ValueError


def _string(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise ValueError


def _is_scalar(value: Any) -> bool:
    return isinstance(value, str | int | float) and not isinstance(value, bool)


def _field_types(config_class: type) -> dict[str, Any]:
    return {f.name: f.type for f in dataclasses.fields(config_class)}


def _check_names(values: dict[str, Any], config_class: type) -> None:
    unknown = sorted(set(values) - set(_field_types(config_class)))
    if unknown:
        raise ValueError(f"unknown {config_class.__name__} fields {unknown}")


def read_config_file(path: str | os.PathLike, config_class: type = TrainConfig) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--config: no file at {path}")
    try:
        values = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"--config: {path} is not valid YAML or JSON: {error}") from error
    if not isinstance(values, dict):
        raise ValueError(
            f"--config: {path} must hold a mapping of {config_class.__name__} fields, got {type(values).__name__}"
        )
    try:
        _check_names(values, config_class)
        return {name: parse_field(name, value, config_class) for name, value in values.items()}
    except ValueError as error:
        raise ValueError(f"--config {path}: {error}") from None


def parse_value(text: str) -> Any:
    """A command-line value: JSON or YAML flow syntax (`3`, `1e-4`, `[1, 2]`, `{a: 1}`, `null`), else the string."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError:
        return text


def add_config_arguments(parser: argparse.ArgumentParser, config_class: type = TrainConfig) -> None:
    """--config FILE, one --field flag per field of config_class (TrainConfig or a subclass), and --set KEY=VALUE
    (dotted keys reach into dicts)."""
    parser.add_argument("--config", help=f"YAML or JSON file of {config_class.__name__} fields")
    options = parser.add_argument_group("config (each overrides --config)")
    defaults = config_class()
    for f in dataclasses.fields(config_class):
        if f.name in getattr(config_class, "UNUSED", ()):  # fields a subclass does not use get no flag
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = _plain_type(f.type)
        help_text = f"{f.metadata['help']} (default: {_shown(getattr(defaults, f.name))})"
        if kind is bool:
            options.add_argument(
                flag, dest=f.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text
            )
        else:
            convert = kind if kind in (int, float, str) else parse_value
            if _is_optional(f.type):  # "none" / "null" clears the field
                convert = _optional(convert)
            options.add_argument(
                flag, dest=f.name, type=convert, default=argparse.SUPPRESS, metavar=f.name.upper(), help=help_text
            )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a field, dotted keys reach into mappings: --set model_overrides.alignment=cosine",
    )


def config_from_args(args: argparse.Namespace, config_class: type = TrainConfig) -> TrainConfig:
    values = read_config_file(args.config, config_class) if getattr(args, "config", None) else {}
    for f in dataclasses.fields(config_class):
        if hasattr(args, f.name):
            values[f.name] = getattr(args, f.name)
    for item in getattr(args, "overrides", []):
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        *parents, leaf = key.split(".")
        target = values
        for i, name in enumerate(parents):
            if i == 0 and name not in target:
                target[name] = dict(getattr(config_class(), name, {}) or {})
            target = target.setdefault(name, {})
            if not isinstance(target, dict):
                raise ValueError(f"--set {item!r}: {name} is not a mapping")
        target[leaf] = parse_value(text)
    return config_class.from_dict(values)


def _shown(value: Any) -> str:
    """A default as the command line writes it; argparse's help formats % signs, hence doubled."""
    text = "none" if value is None else yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...")
    return text.strip().replace("%", "%%")


def _is_optional(annotation) -> bool:
    return isinstance(annotation, types.UnionType) and type(None) in typing.get_args(annotation)


def _plain_type(annotation):
    """T for T | None, else the annotation's origin (dict, tuple) or itself."""
    if _is_optional(annotation):
        (annotation,) = [a for a in typing.get_args(annotation) if a is not type(None)]
    return typing.get_origin(annotation) or annotation


def _optional(convert):
    def parse(text: str):
        return None if text.lower() in ("none", "null") else convert(text)

    parse.__name__ = getattr(convert, "__name__", "value")
    return parse
