"""Files the package writes are shared artefacts: their permissions follow the umask, as open() would give them."""

import os
import pickle
import stat

import numpy as np
import pytest

from grace_fast.data.video import write_mp4
from grace_fast.files import write_atomic


@pytest.fixture(params=[0o022, 0o077, 0o002], ids=["umask-022", "umask-077", "umask-002"])
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_write_atomic_gives_the_mode_open_would(tmp_path, umask):
    write_atomic(tmp_path / "report.json", b"{}")
    assert mode(tmp_path / "report.json") == 0o666 & ~umask


def test_write_mp4_gives_the_mode_open_would(tmp_path, umask):
    write_mp4(tmp_path / "clip.mp4", np.zeros((2, 32, 32, 3), np.uint8), fps=10)
    assert mode(tmp_path / "clip.mp4") == 0o666 & ~umask


def test_every_file_of_a_saved_model_gives_the_mode_open_would(tmp_path, umask):
    from grace_fast.model import GraceModel
    from grace_fast.model.tiny import build_tiny_tokenizer, tiny_config

    model = GraceModel(tiny_config(build_tiny_tokenizer(tmp_path / "tokenizer")))
    model.save_pretrained(tmp_path / "model")
    modes = {path.name: mode(path) for path in (tmp_path / "model").iterdir()}
    assert "model.safetensors" in modes and modes == dict.fromkeys(modes, 0o666 & ~umask)


def test_every_file_of_a_training_checkpoint_and_export_gives_the_mode_open_would(tmp_path, umask):
    from torch import nn

    from grace_fast.train.checkpoint import export_model, save_checkpoint
    from grace_fast.train.distributed import start

    model = nn.Linear(2, 2)
    folder = save_checkpoint(tmp_path, 1, start("cpu"), model, {"step": 1}, {"sums": {}}, keep=1)
    export_model(model, tmp_path / "best")
    files = [*folder.iterdir(), *(tmp_path / "best").iterdir()]
    assert len(files) == 4 and {path.name: mode(path) for path in files} == {p.name: 0o666 & ~umask for p in files}


DAMAGE = {  # name -> how a good file is damaged
    "truncated": lambda data: data[: len(data) // 2],
    "garbage": lambda data: b"garbage" * 50,
    "empty": lambda data: b"",
    "pickled-code": lambda data: pickle.dumps(print),  # a whole pickle, but of code, not of values
}
CASES = [("safetensors", d) for d in ("truncated", "garbage", "empty")] + [("torch", d) for d in DAMAGE]


@pytest.mark.parametrize("kind, damage", CASES, ids=[f"{k}-{d}" for k, d in CASES])
def test_a_damaged_checkpoint_file_raises_naming_it_and_never_suggests_weights_only_false(tmp_path, kind, damage):
    import torch

    from grace_fast.errors import CheckpointError
    from grace_fast.files import read_safetensors, read_torch, save_safetensors

    path = tmp_path / f"state.{kind}"
    if kind == "safetensors":
        save_safetensors({"w": torch.zeros(64)}, path)
    else:
        torch.save({"w": torch.zeros(64), "step": 3}, path)
    path.write_bytes(DAMAGE[damage](path.read_bytes()))
    read = read_safetensors if kind == "safetensors" else read_torch
    with pytest.raises(CheckpointError, match=f"checkpoint file {path} cannot be read") as error:
        read(path)
    assert "weights_only" not in str(error.value) and error.value.__cause__ is None
