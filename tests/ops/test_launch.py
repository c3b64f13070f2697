"""kernels.launch: the Triton launchers run with their tensors' CUDA device current (Triton launches on the current
device, not on the tensors'; stand-ins play cuda:1 on this machine without a GPU), and never get CPU tensors
outside the interpreter."""

import contextlib
import importlib

import pytest
import torch

from grace_fast.kernels.launch import on_device_of
from grace_fast.ops import sinkhorn


class _OnCuda1:
    device = torch.device("cuda", 1)


@pytest.fixture
def devices_made_current(monkeypatch):
    events = []

    @contextlib.contextmanager
    def device(d):
        events.append(("enter", d))
        yield
        events.append(("exit", d))

    monkeypatch.setattr(torch.cuda, "device", device)
    return events


def test_the_named_tensor_device_is_current_during_the_launch(devices_made_current):
    @on_device_of("X")
    def launcher(grad, X, scale=1.0):
        devices_made_current.append(("launch", scale))
        return scale

    assert launcher(None, _OnCuda1(), scale=2.0) == 2.0
    assert launcher(None, X=_OnCuda1()) == 1.0
    cuda1 = torch.device("cuda", 1)
    assert devices_made_current == [("enter", cuda1), ("launch", 2.0), ("exit", cuda1)] + [
        ("enter", cuda1),
        ("launch", 1.0),
        ("exit", cuda1),
    ]


def test_cpu_tensors_change_no_device(devices_made_current):
    @on_device_of("C")
    def launcher(C):
        return C.sum()

    assert launcher(torch.ones(3)) == 3
    assert devices_made_current == []


@pytest.mark.parametrize(
    ("module", "launcher"),
    [
        ("sinkhorn", "sinkhorn_triton"),
        ("motion_weights", "motion_weights_triton"),
        ("motion_weights", "motion_weights_triton_backward"),
    ],
)
def test_every_launcher_is_wrapped(module, launcher):
    pytest.importorskip("triton")
    fn = getattr(importlib.import_module(f"grace_fast.kernels.{module}"), launcher)
    assert fn.__wrapped__.__name__ == launcher  # on_device_of's wrapper


def test_triton_on_cpu_tensors_needs_the_interpreter(monkeypatch):
    """On a CUDA machine "triton" is available, but CPU tensors must not reach its kernels: a clear error instead."""
    from grace_fast.ops import _backends

    monkeypatch.setattr(_backends, "_INTERPRET", False)
    monkeypatch.setitem(_backends._AVAILABLE, "triton", True)
    with pytest.raises(ValueError, match=r"backend='triton' runs on CUDA tensors \(CPU tensors only under"):
        sinkhorn(torch.rand(2, 3, 4), backend="triton")
