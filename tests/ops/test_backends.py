"""The backend registry (grace_fast/ops/_backends.py) agrees with each op's table of kernels."""

import importlib

import pytest

from grace_fast.ops._backends import SUPPORTED, kernels


@pytest.mark.parametrize("op", SUPPORTED)
def test_every_registered_backend_has_a_kernel_and_every_kernel_is_registered(op):
    table = importlib.import_module(f"grace_fast.ops.{op}").KERNELS
    assert sorted(set(table) - {"torch"}) == sorted(kernels(op))
    assert all("torch" in names for names in SUPPORTED[op].values())  # the reference runs on every device
