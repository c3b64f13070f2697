"""GraceConfig: every hyper-parameter of the GRACE model (docs/method.md sections 1, 2, 4 and 5), with a JSON
round-trip and the version of the method's definition that the model implements."""

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from grace_fast.files import write_atomic
from grace_fast.model.alignment import ALIGNMENTS

MODEL_TYPE = "grace"  # config.json's "model_type", the key of transformers' Auto classes (model.hf)
DEFINITION = 2  # docs/method.md, "Definition versions"
DEFINITION_CHANGES = {  # what changed in each definition, for the message that refuses an older one
    2: "the OT alignment became semi-relaxed (tau_b) and feeds v_txt = sum_j q_j V_j and s_ot to the fusion head "
    "(input 3d -> 3d + 1), the auxiliary head adds class_logits (every class scored by its own prompt, tau_cls "
    "learnable), and prompt_top_k is gone",
}
REMOVED_FIELDS = {"prompt_top_k": "removed in definition 2: every class is scored by its own prompt"}
MOTION_MODES = ("off", "temporal", "spatial", "both")
VISUAL_MARGINALS = ("uniform", "motion")
OP_NAMES = ("cost_matrix", "sinkhorn", "motion_weights")


@dataclass
class GraceConfig:
    """The GRACE model's hyper-parameters; the defaults are the paper's set-up (docs/method.md).

    Backbones: `video` holds VideoMAEConfig fields (default ViT-B/16, tubelet 2) and `text` CLIPTextConfig fields
    (default CLIP's text tower); `frames` and `image_size` override the video config's `num_frames`/`image_size`.
    `video_pretrained` / `text_pretrained` name local folders whose weights initialise the backbones when a new
    model is built (never a hub download); `tokenizer` names the CLIP tokenizer folder (default: text_pretrained).
    `op_backends` maps an op ("cost_matrix", "sinkhorn", "motion_weights") to its backend (default "auto").
    `definition` is the version of the method's definition (DEFINITION); a config of another one is refused, since
    its weights belong to a different model (docs/method.md, "Definition versions"). `tau_b` relaxes the visual
    marginal of alignment "ot" ("ot_balanced" is tau_b = inf); `cosine_temperature` is alignment "cosine"'s softmax
    temperature; `class_temperature_init` the initial tau_cls of the class logits (learnt, like `temperature_init`,
    InfoNCE's). `model_type` ("grace", a class constant) is written to config.json so that transformers'
    AutoConfig/AutoModel find the model once `grace_fast.model.hf.register()` has run.

    >>> config = GraceConfig(num_classes=11, alignment="cosine")
    >>> GraceConfig.from_json(config.to_json()) == config
    True
    """

    model_type: ClassVar[str] = MODEL_TYPE
    num_classes: int = 7
    class_names: list[str] | None = None
    class_prompts: list[str] | None = None
    frames: int = 16
    image_size: int = 224
    video: dict[str, Any] = field(default_factory=dict)
    video_pretrained: str | None = None
    text: dict[str, Any] = field(default_factory=dict)
    text_pretrained: str | None = None
    tokenizer: str | None = None
    max_text_tokens: int = 77
    gradient_checkpointing: bool = False
    motion: str = "both"
    motion_alpha: float | None = None
    motion_window: int = 3
    motion_temperature: float = 1.0
    motion_beta: float = 1.0
    rho: float = 0.5
    mass: float | None = None
    max_tokens: int | None = None
    alignment: str = "ot"
    dim: int = 512
    eps: float = 0.05
    tau_b: float = 0.1
    max_iter: int = 50
    tol: float = 1e-4
    visual_marginal: str = "uniform"
    attention_heads: int = 8
    cosine_temperature: float = 0.05
    dropout: float = 0.1
    lambdas: tuple[float, float, float] = (1.0, 0.5, 0.5)
    focal_gamma: float = 2.0
    temperature_init: float = 0.07
    class_temperature_init: float = 0.07
    op_backends: dict[str, str] = field(default_factory=dict)
    definition: int = DEFINITION

    def __post_init__(self):
        check_definition(self.definition, "GraceConfig")
        self.lambdas = tuple(float(x) for x in self.lambdas)
        _choice("motion", self.motion, MOTION_MODES)
        _choice("alignment", self.alignment, tuple(ALIGNMENTS))
        _choice("visual_marginal", self.visual_marginal, VISUAL_MARGINALS)
        for name in ("num_classes", "frames", "image_size", "dim", "max_iter", "max_text_tokens"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        for name in ("eps", "motion_temperature", "temperature_init", "class_temperature_init", "cosine_temperature"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if not 0 < self.tau_b < math.inf:
            raise ValueError(f'tau_b must be > 0 and finite (alignment "ot_balanced" is tau_b = inf), got {self.tau_b}')
        if not 0 < self.rho <= 1:
            raise ValueError(f"rho must be in (0, 1], got {self.rho!r}")
        if self.mass is not None and not 0 < self.mass <= 1:
            raise ValueError(f"mass must be None or in (0, 1], got {self.mass!r}")
        if self.motion_alpha is not None and not 0 <= self.motion_alpha <= 1:
            raise ValueError(f"motion_alpha must be None or in [0, 1], got {self.motion_alpha!r}")
        if self.motion_window < 1 or self.motion_window % 2 == 0:
            raise ValueError(f"motion_window must be an odd integer >= 1, got {self.motion_window!r}")
        if self.tol < 0 or self.focal_gamma < 0 or not 0 <= self.dropout < 1:
            raise ValueError(
                f"need tol >= 0, focal_gamma >= 0, 0 <= dropout < 1; got {self.tol}, {self.focal_gamma}, {self.dropout}"
            )
        if len(self.lambdas) != 3 or min(self.lambdas) < 0:
            raise ValueError(f"lambdas must be 3 non-negative weights (focal, InfoNCE, auxiliary), got {self.lambdas}")
        if self.dim % self.attention_heads:
            raise ValueError(f"dim ({self.dim}) must be a multiple of attention_heads ({self.attention_heads})")
        for name in ("class_names", "class_prompts"):
            values = getattr(self, name)
            if values is not None and len(values) != self.num_classes:
                raise ValueError(f"{name} must have num_classes = {self.num_classes} entries, got {len(values)}")
        unknown = sorted(set(self.op_backends) - set(OP_NAMES))
        if unknown:
            raise ValueError(f"op_backends has unknown ops {unknown}; known: {list(OP_NAMES)}")

    def backend(self, op: str) -> str:
        """The backend the model passes to `op` ("auto" unless op_backends names one)."""
        return self.op_backends.get(op, "auto")

    def to_dict(self) -> dict[str, Any]:
        out = {"model_type": self.model_type, **dataclasses.asdict(self)}
        out["lambdas"] = list(self.lambdas)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "GraceConfig":
        """The config of a JSON object; one without a "definition" field is of definition 1 and refused, one whose
        "model_type" is not "grace" (absent is fine: configs written before it) too."""
        values = dict(values)
        model_type = values.pop("model_type", MODEL_TYPE)
        if model_type != MODEL_TYPE:
            raise ValueError(f'model_type must be "{MODEL_TYPE}" for a GRACE config, got {model_type!r}')
        check_definition(values.get("definition", 1), "this config")
        _check_names(values)
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "GraceConfig":
        return cls.from_dict(json.loads(text))

    def save(self, path: str | os.PathLike) -> None:
        """Write the JSON to path atomically (a temporary file in the same folder, then os.replace)."""
        write_atomic(Path(path), self.to_json().encode())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "GraceConfig":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no GRACE config at {path}")
        try:
            return cls.from_json(path.read_text())
        except (json.JSONDecodeError, TypeError, ValueError) as error:
            raise ValueError(f"invalid GRACE config {path}: {error}") from error

    def replace(self, **changes: Any) -> "GraceConfig":
        """A copy with the named fields changed (checked like a new config)."""
        _check_names(changes)
        return dataclasses.replace(self, **changes)

    def diff(self, other: "GraceConfig") -> dict[str, tuple[Any, Any]]:
        """{field: (self's value, other's value)} for every field that differs."""
        mine, theirs = self.to_dict(), other.to_dict()
        return {name: (mine[name], theirs[name]) for name in mine if mine[name] != theirs[name]}


def check_definition(definition: Any, source: str) -> None:
    """Refuse a definition other than DEFINITION, naming what changed since it (source: what carried it)."""
    if definition == DEFINITION:
        return
    changes = "; ".join(
        f"definition {n}: {DEFINITION_CHANGES[n]}"
        for n in sorted(DEFINITION_CHANGES)
        if isinstance(definition, int) and definition < n <= DEFINITION
    )
    raise ValueError(
        f'{source} is of GRACE definition {definition!r} (a config without a "definition" field is definition 1), '
        f'but grace_fast implements definition {DEFINITION} (docs/method.md, "Definition versions")'
        + (f". Since then {changes}" if changes else "")
        + ". Weights trained under another definition belong to a different model: retrain. A config written by "
        f'hand needs "definition": {DEFINITION} and fields that mean what docs/method.md says.'
    )


def _check_names(values: dict[str, Any]) -> None:
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(GraceConfig)})
    if unknown:
        notes = "".join(f"; {name}: {REMOVED_FIELDS[name]}" for name in unknown if name in REMOVED_FIELDS)
        raise ValueError(f"unknown GraceConfig fields {unknown}{notes}")


def check_folder(name: str, folder: str | os.PathLike) -> None:
    """The config field `name` must name an existing local folder (models are never fetched from the hub)."""
    if not Path(folder).is_dir():
        raise FileNotFoundError(f"{name}: {folder} is not a folder (a local checkpoint folder is needed)")


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
