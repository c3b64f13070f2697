"""transformers' Auto classes for GRACE checkpoint folders: `register()` (run when grace_fast.model is imported)
maps model_type "grace" to GraceHFConfig (AutoConfig) and GraceAutoModel (AutoModel), which load and build
GraceModel.

A GRACE checkpoint folder (GraceModel.save_pretrained) holds a config.json with "model_type": "grace", so that
once registered `AutoConfig.from_pretrained(folder)` gives a GraceHFConfig (`.to_grace()` is its GraceConfig)
and `AutoModel.from_pretrained(folder)` the GraceModel itself (the same as GraceModel.from_pretrained; keyword
arguments naming GraceConfig fields override them). Nothing is fetched from the hub: folder is a local path.

>>> from transformers import AutoModel
>>> import grace_fast.model  # registers
>>> model = AutoModel.from_pretrained("runs/demo/best")  # doctest: +SKIP
"""

import dataclasses
import os
from pathlib import Path

from transformers import AutoConfig, AutoModel, PretrainedConfig

from grace_fast.model.config import MODEL_TYPE, GraceConfig
from grace_fast.model.io import CONFIG_NAME

GRACE_FIELDS = frozenset(f.name for f in dataclasses.fields(GraceConfig))
# keyword arguments AutoModel.from_pretrained passes on (it resolves a revision even for a local folder); they
# concern the hub, and a GRACE folder is always local. Its private flags (_from_auto, _commit_hash, ...; more with
# each release: 5.25 added _from_auto) are left out by their leading underscore; subfolder is honoured.
AUTO_ARGUMENTS = frozenset(
    {"trust_remote_code", "adapter_kwargs", "code_revision", "revision", "cache_dir", "force_download"}
    | {"local_files_only", "proxies", "token", "subfolder"}
)


class GraceHFConfig(PretrainedConfig):
    """A GraceConfig as a transformers config (its fields as attributes); to_grace() converts back."""

    model_type = MODEL_TYPE

    def __init__(self, **values):
        grace = GraceConfig.from_dict({k: v for k, v in values.items() if k in GRACE_FIELDS or k == "model_type"})
        super().__init__(**{k: v for k, v in values.items() if k not in GRACE_FIELDS})
        for name, value in grace.to_dict().items():
            setattr(self, name, value)

    def to_grace(self) -> GraceConfig:
        return GraceConfig.from_dict({name: getattr(self, name) for name in GRACE_FIELDS})


class GraceAutoModel:
    """What AutoModel builds for a GraceHFConfig: from_pretrained and from_config return a GraceModel."""

    config_class = GraceHFConfig

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, *args, config: GraceHFConfig | None = None, **kwargs):
        """GraceModel.from_pretrained(folder) with the fields of config (when it differs from the folder's) and
        keyword arguments naming GraceConfig fields as overrides."""
        from grace_fast.model.model import GraceModel

        if args:
            raise TypeError(f"GRACE models take no positional model arguments, got {len(args)}")
        unknown = sorted(k for k in set(kwargs) - GRACE_FIELDS - AUTO_ARGUMENTS if not k.startswith("_"))
        if unknown:
            raise TypeError(f"unknown arguments {unknown} for a GRACE checkpoint; GraceConfig fields override")
        folder = Path(folder) / (kwargs.get("subfolder") or "")
        overrides = {k: v for k, v in kwargs.items() if k in GRACE_FIELDS}
        if config is not None:
            saved = GraceConfig.load(folder / CONFIG_NAME)
            changed = saved.diff(config.to_grace())
            overrides = {name: theirs for name, (_, theirs) in changed.items() if name != "tokenizer"} | overrides
        return GraceModel.from_pretrained(folder, **overrides)

    @classmethod
    def _from_config(cls, config: GraceHFConfig, **kwargs):
        """A new GraceModel of config (AutoModel.from_config); its backbones load their *_pretrained folders."""
        from grace_fast.model.model import GraceModel

        return GraceModel(config.to_grace())


def register() -> None:
    """Map model_type "grace" to GraceHFConfig and GraceAutoModel in AutoConfig and AutoModel (idempotent)."""
    AutoConfig.register(MODEL_TYPE, GraceHFConfig, exist_ok=True)
    AutoModel.register(GraceHFConfig, GraceAutoModel, exist_ok=True)
