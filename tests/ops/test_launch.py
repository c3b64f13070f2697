"""kernels.launch: the Triton launchers run with their tensors' CUDA device current (Triton launches on the current
device, not on the tensors'); stand-ins play cuda:1 on this machine without a GPU."""

import contextlib
import importlib

import pytest
import torch

from grace_fast.kernels.launch import on_device_of


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
    assert fn.__wrapped__.__name__ == launcher and fn.__code__ is not fn.__wrapped__.__code__
