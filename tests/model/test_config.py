"""GraceConfig: the defaults of docs/method.md, the JSON round-trip, the definition version, and errors that name
the bad field."""

import json
import math
import re
from pathlib import Path

import pytest

from grace_fast.model import GraceConfig
from grace_fast.model.alignment import ALIGNMENTS
from grace_fast.model.config import DEFINITION

DEFINITION_1 = Path(__file__).parent / "data" / "definition-1-config.json"  # written by grace_fast at ea05f0b


def test_defaults_are_the_papers():
    config = GraceConfig()
    assert (config.frames, config.image_size, config.rho, config.eps, config.max_iter, config.tol) == (
        16,
        224,
        0.5,
        0.05,
        50,
        1e-4,
    )
    assert (config.motion, config.alignment, config.lambdas, config.focal_gamma) == ("both", "ot", (1.0, 0.5, 0.5), 2.0)
    assert (config.tau_b, config.definition) == (0.1, 2)


def test_json_round_trip_keeps_every_field(tmp_path):
    config = GraceConfig(
        num_classes=11,
        class_names=[f"c{i}" for i in range(11)],
        frames=64,
        video={"hidden_size": 64},
        motion="spatial",
        motion_alpha=0.25,
        mass=0.8,
        max_tokens=100,
        alignment="cross_attention",
        tau_b=0.5,
        cosine_temperature=0.1,
        class_temperature_init=0.5,
        lambdas=(1.0, 0.0, 0.25),
        op_backends={"sinkhorn": "torch"},
    )
    assert GraceConfig.from_json(config.to_json()) == config
    config.save(tmp_path / "config.json")
    assert GraceConfig.load(tmp_path / "config.json") == config
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]  # no temporary file left behind
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["lambdas"] == [1.0, 0.0, 0.25] and written["definition"] == DEFINITION


def test_alignment_choices_are_the_registry():
    for name in ALIGNMENTS:
        assert GraceConfig(alignment=name).alignment == name
    with pytest.raises(ValueError, match=re.escape(f"alignment must be one of {list(ALIGNMENTS)}")):
        GraceConfig(alignment="attention")


def test_a_definition_1_config_is_refused_naming_the_change():
    """A config.json written before definition 2 (no "definition" field, prompt_top_k) is refused: its weights
    belong to a different model. So is a config that says definition 1."""
    values = json.loads(DEFINITION_1.read_text())
    assert "definition" not in values and values["prompt_top_k"] == 2  # the old format indeed
    message = r"GRACE definition 1 .*implements definition 2 .*semi-relaxed .*class_logits.*retrain"
    with pytest.raises(ValueError, match=message):
        GraceConfig.from_dict(values)
    with pytest.raises(ValueError, match=rf"invalid GRACE config .*-1-config.json: this config is of {message}"):
        GraceConfig.load(DEFINITION_1)
    with pytest.raises(ValueError, match="GraceConfig is of GRACE definition 1"):
        GraceConfig(definition=1)
    values.pop("prompt_top_k")
    with pytest.raises(ValueError, match="GRACE definition 1 "):
        GraceConfig.from_dict({**values, "definition": 1})


def test_diff_names_the_fields_that_differ():
    assert GraceConfig().diff(GraceConfig(eps=0.1, motion="off")) == {"eps": (0.05, 0.1), "motion": ("both", "off")}


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"motion": "fast"}, "motion must be one of"),
        ({"alignment": "attention"}, "alignment must be one of"),
        ({"rho": 0.0}, "rho must be in"),
        ({"mass": 1.5}, "mass must be None or in"),
        ({"eps": 0}, "eps must be > 0"),
        ({"tau_b": math.inf}, 'tau_b must be > 0 and finite (alignment "ot_balanced" is tau_b = inf), got inf'),
        ({"tau_b": 0.0}, "tau_b must be > 0 and finite"),
        ({"cosine_temperature": 0.0}, "cosine_temperature must be > 0"),
        ({"class_temperature_init": -1.0}, "class_temperature_init must be > 0"),
        ({"motion_window": 2}, "motion_window must be an odd integer"),
        ({"frames": 0}, "frames must be an integer >= 1"),
        ({"lambdas": (1.0, 0.5)}, "lambdas must be 3"),
        ({"dim": 30, "attention_heads": 4}, "dim (30) must be a multiple of attention_heads (4)"),
        ({"class_names": ["a", "b"]}, "class_names must have num_classes = 7 entries, got 2"),
        ({"op_backends": {"softmax": "cpu"}}, "op_backends has unknown ops ['softmax']"),
    ],
    ids=lambda x: x if isinstance(x, str) else None,
)
def test_bad_field_is_named(fields, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        GraceConfig(**fields)


def test_unknown_fields_and_bad_files_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"unknown GraceConfig fields \['epsilon'\]"):
        GraceConfig.from_dict({"epsilon": 0.1, "definition": DEFINITION})
    with pytest.raises(ValueError, match=r"\['prompt_top_k'\]; prompt_top_k: removed in definition 2: every class"):
        GraceConfig.from_dict({"prompt_top_k": 2, "definition": DEFINITION})
    with pytest.raises(ValueError, match=r"unknown GraceConfig fields \['epsilon'\]"):
        GraceConfig().replace(epsilon=0.1)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="invalid GRACE config .*bad.json"):
        GraceConfig.load(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError, match="no GRACE config at .*missing.json"):
        GraceConfig.load(tmp_path / "missing.json")
