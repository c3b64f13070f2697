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

from grace_fast.files import write_atomic

DATASETS = ("synthetic", "dfew", "ferv39k", "mafw", "csv")
AMP_MODES = ("auto", "bf16", "fp16", "off")
SELECT_METRICS = ("uar", "war")
TEXT_MODES = ("caption", "prompts")


@dataclass
class TrainConfig:
    """A training run (GRACE.md section 6): data, model, optimisation and bookkeeping.

    Data: `dataset` names a loader of grace_fast.data (synthetic, dfew, ferv39k, mafw, csv) reading `data_root`
    (for csv: a folder with train.csv and test.csv, whose labels are indices or names from `classes`).
    `descriptions` names a `grace-fast refine` output (JSONL) whose emotion-aware text replaces the caption of
    each clip it lists (clip ids as the data set names them). `skip_bad` leaves out unreadable clips and lists
    them in skipped.jsonl instead of stopping. `cache_frames` keeps every clip's decoded frames in memory after its
    first read, for small low-resolution data sets such as the demo's (needs num_workers 0). `fold` is the test
    fold of a k-fold protocol, `folds` ("1-5", "1,3") runs several folds, each into out/fold-K, and reports the
    mean and (population) std of their test UAR and WAR. `val_fraction` of the training fold, stratified by class
    and chosen by `seed`, is held out for model selection on `select_metric` (never the test fold); 0 keeps the
    last epoch. `text`: "caption" aligns each clip's caption (or description), "prompts" the class prompts
    (low-latency mode).

    Model: `model` is "tiny" (a small random GRACE, built offline), a GraceConfig JSON file, or a checkpoint
    folder to start from; `model_overrides` changes GraceConfig fields (the ablations: motion, alignment, ...).

    Optimisation: AdamW (no decay on biases, norms and scalars), a linear warm-up over `warmup_steps` (or
    `warmup_fraction` of all steps) then cosine decay to `min_lr_ratio * lr`; gradients clipped to `grad_clip`
    (0: off); an optimiser step every `accumulation` micro-batches of `batch_size` clips per process, so one
    step sees batch_size * accumulation * processes clips. `amp`: "auto" is bf16 autocast on GPU and fp32 on
    CPU; "fp16" adds a gradient scaler.

    Bookkeeping: a resumable checkpoint every `checkpoint_every` optimiser steps (0: at epoch ends only) and at
    each epoch end, the last `keep_checkpoints` kept; `resume` continues the run in `out` exactly.
    """

    dataset: str = "synthetic"
    data_root: str | None = None
    classes: list[str] | None = None
    descriptions: str | None = None
    fold: int = 1
    folds: str | None = None
    val_fraction: float = 0.1
    text: str = "caption"
    skip_bad: bool = False
    num_workers: int = 0
    cache_frames: bool = False
    model: str = "tiny"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    epochs: int = 10
    batch_size: int = 8
    accumulation: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int | None = None
    warmup_fraction: float = 0.05
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0
    amp: str = "auto"
    select_metric: str = "uar"
    seed: int = 0
    device: str = "auto"
    out: str = "runs/grace"
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    resume: bool = False
    progress: bool = True

    def __post_init__(self):
        for f in dataclasses.fields(self):
            setattr(self, f.name, parse_field(f.name, getattr(self, f.name)))
        choices_of = (
            ("dataset", DATASETS),
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
        _check_names(values)
        return cls(**values)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TrainConfig":
        """A config from a YAML or JSON file (JSON is YAML); fields it leaves out keep their defaults."""
        return cls.from_dict(read_config_file(path))

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
_FIELD_TYPES = {f.name: f.type for f in dataclasses.fields(TrainConfig)}


def parse_field(name: str, value: Any) -> Any:
    """value as the type of TrainConfig field `name`: a string of that type parsed ("1e-3" for a float, "no" for a
    bool, "a,b" for a list of names), numbers widened (3 -> 3.0, or "3" for a string); anything else raises a
    ValueError naming the field, the value and the type expected."""
    annotation = _FIELD_TYPES[name]
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


def _check_names(values: dict[str, Any]) -> None:
    unknown = sorted(set(values) - set(_FIELD_TYPES))
    if unknown:
        raise ValueError(f"unknown TrainConfig fields {unknown}")


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--config: no file at {path}")
    try:
        values = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"--config: {path} is not valid YAML or JSON: {error}") from error
    if not isinstance(values, dict):
        raise ValueError(f"--config: {path} must hold a mapping of TrainConfig fields, got {type(values).__name__}")
    try:
        _check_names(values)
        return {name: parse_field(name, value) for name, value in values.items()}
    except ValueError as error:
        raise ValueError(f"--config {path}: {error}") from None


def parse_value(text: str) -> Any:
    """A command-line value: JSON or YAML flow syntax (`3`, `1e-4`, `[1, 2]`, `{a: 1}`, `null`), else the string."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError:
        return text


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """--config FILE, one --field flag per TrainConfig field, and --set KEY=VALUE (dotted keys reach into dicts)."""
    parser.add_argument("--config", help="YAML or JSON file of TrainConfig fields")
    options = parser.add_argument_group("training config (each overrides --config)")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = _plain_type(f.type)
        if kind is bool:
            options.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS)
        else:
            convert = kind if kind in (int, float, str) else parse_value
            if _is_optional(f.type):  # "none" / "null" clears the field
                convert = _optional(convert)
            options.add_argument(flag, dest=f.name, type=convert, default=argparse.SUPPRESS, metavar=f.name.upper())
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a field, dotted keys reach into mappings: --set model_overrides.alignment=cosine",
    )


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = read_config_file(args.config) if getattr(args, "config", None) else {}
    for f in dataclasses.fields(TrainConfig):
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
                target[name] = dict(getattr(TrainConfig(), name, {}) or {})
            target = target.setdefault(name, {})
            if not isinstance(target, dict):
                raise ValueError(f"--set {item!r}: {name} is not a mapping")
        target[leaf] = parse_value(text)
    return TrainConfig.from_dict(values)


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
