"""TrainConfig: YAML/JSON files, command-line overrides and their precedence, and errors naming the field."""

import argparse
import dataclasses
import re

import pytest

from grace_fast.train.config import TrainConfig, add_config_arguments, config_from_args


def parse(*argv: str) -> TrainConfig:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    return config_from_args(parser.parse_args(list(argv)))


def test_flags_override_the_file_and_set_overrides_the_flags(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("epochs: 7\nlr: 0.001\nbatch_size: 4\nmodel_overrides:\n  motion: off\n  rho: 0.25\n")
    config = parse("--config", str(path), "--lr", "3e-4", "--set", "batch_size=2", "--set", "model_overrides.eps=0.1")
    assert (config.epochs, config.lr, config.batch_size) == (7, 3e-4, 2)
    assert config.model_overrides == {"motion": "off", "rho": 0.25, "eps": 0.1}  # YAML's `off` stays a string


def test_json_file_bool_flags_optional_fields_and_mappings(tmp_path):
    path = tmp_path / "run.json"
    path.write_text('{"resume": true, "warmup_steps": 5, "folds": "1-5"}')
    config = parse(
        "--config", str(path), "--no-resume", "--warmup-steps", "none", "--model-overrides", "{alignment: cosine}"
    )
    assert config.resume is False and config.warmup_steps is None and config.fold_list() == [1, 2, 3, 4, 5]
    assert config.model_overrides == {"alignment": "cosine"}
    assert parse("--betas", "[0.8, 0.9]").betas == (0.8, 0.9)


def test_saved_config_loads_back_equal(tmp_path):
    config = TrainConfig(epochs=3, folds="1,3", model_overrides={"motion": "off"}, classes=["a", "b"])
    config.save(tmp_path / "c.yaml")
    assert TrainConfig.load(tmp_path / "c.yaml") == config


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"amp": "fp8"}, "amp must be one of"),
        ({"dataset": "ck+"}, "dataset must be one of"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
        ({"val_fraction": 1.0}, r"val_fraction must be in \[0, 1\)"),
        ({"folds": "1-x"}, 'folds must look like "1-5"'),
        ({"folds": "0-2"}, "distinct folds >= 1"),
        ({"lr": 0}, "need lr > 0"),
        ({"cache_frames": True, "num_workers": 2}, "cache_frames needs num_workers 0"),
        ({"device": "gpu"}, "device must be auto .* cuda:N, got 'gpu'"),
    ],
    ids=["amp", "dataset", "batch-size", "val-fraction", "folds-syntax", "fold-zero", "lr", "cache-workers", "device"],
)
def test_bad_values_raise_naming_the_field(changes, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**changes)


BOOL_WORDS = {"yes": True, "no": False, "on": True, "off": False, "True": True, "FALSE": False}


@pytest.mark.parametrize("word", BOOL_WORDS)
def test_every_boolean_field_reads_yes_no_on_off(tmp_path, word):
    booleans = [f.name for f in dataclasses.fields(TrainConfig) if f.type is bool]
    path = tmp_path / "run.yaml"
    path.write_text("".join(f"{name}: {word}\n" for name in booleans))
    config = parse("--config", str(path))
    assert {name: getattr(config, name) for name in booleans} == dict.fromkeys(booleans, BOOL_WORDS[word])


def test_numbers_in_exponent_form_are_numbers_in_the_file_and_in_set(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("lr: 1e-3\nweight_decay: 5E-2\nbetas: [9e-1, '0.99']\nmodel_overrides:\n  eps: 2e-2\n")
    config = parse("--config", str(path), "--set", "model_overrides.tau=1e+2")
    assert (config.lr, config.weight_decay, config.betas) == (1e-3, 5e-2, (0.9, 0.99))
    assert config.model_overrides == {"eps": 2e-2, "tau": 100.0}


@pytest.mark.parametrize(
    "line, message",
    [
        ("skip_bad: maybe", "skip_bad must be true or false (or yes/no, on/off), got 'maybe'"),
        ("lr: fast", "lr must be a number, got 'fast'"),
        ("epochs: 2.5", "epochs must be an integer, got 2.5"),
        ("epochs: [1, 2]", "epochs must be an integer, got [1, 2]"),
        ("betas: [0.9]", "betas must be 2 numbers, got [0.9]"),
        ("model_overrides: cosine", "model_overrides must be a mapping, got 'cosine'"),
        ("classes: {a: 1}", "classes must be a list of names or one comma-separated string, got {'a': 1}"),
        ("seed: null", "seed must be an integer, got None"),
        ("amp: true", "amp must be a string, got True"),
    ],
    ids=["bool", "float", "int-float", "int-list", "betas", "mapping", "list", "null", "str-bool"],
)
def test_a_value_of_the_wrong_type_in_the_file_is_refused_naming_the_file_and_field(tmp_path, line, message):
    path = tmp_path / "run.yaml"
    path.write_text(line + "\n")
    with pytest.raises(ValueError, match=re.escape(f"--config {path}: {message}")):
        parse("--config", str(path))


def test_strings_of_the_fields_type_are_parsed(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("lr: '3e-4'\nepochs: '4'\nfolds: 3\nclasses: happy, sad\nwarmup_steps: null\n")
    config = parse("--config", str(path))
    assert (config.lr, config.epochs, config.folds, config.warmup_steps) == (3e-4, 4, "3", None)
    assert config.classes == ["happy", "sad"] and parse("--classes", "a,b").classes == ["a", "b"]


def test_every_field_flag_has_help_with_its_default():
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    helps = {action.dest: action.help for action in parser._actions}
    for f in dataclasses.fields(TrainConfig):
        assert helps[f.name] and helps[f.name].endswith(")") and "(default: " in helps[f.name], f.name
    assert helps["lr"].endswith("(default: 0.0001)") and helps["skip_bad"].endswith("(default: false)")


def test_unknown_fields_are_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epoch: 3\n")
    with pytest.raises(ValueError, match=rf"--config {re.escape(str(path))}: unknown TrainConfig fields \['epoch'\]"):
        parse("--config", str(path))
    with pytest.raises(ValueError, match="--set expects KEY=VALUE"):
        parse("--set", "lr")
