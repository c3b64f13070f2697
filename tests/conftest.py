"""Shared fixtures: the backends this machine runs, and fresh buffers that fail loudly if left unwritten."""

import os

import pytest
import torch

if not torch.cuda.is_available():  # run the Triton kernels in the interpreter; must precede any triton import
    os.environ.setdefault("TRITON_INTERPRET", "1")
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"

import grace_fast  # noqa: E402


@pytest.fixture(autouse=True)
def _nan_filled_empty():
    """torch.empty (and at::empty in the extension) returns NaN-filled memory during tests."""
    previous = torch.are_deterministic_algorithms_enabled(), torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    yield
    torch.use_deterministic_algorithms(previous[0], warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = previous[1]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def available(names: tuple[str, ...]) -> list:
    """pytest params for the named backends, skipped where this machine lacks them."""
    have = grace_fast.backends()
    return [pytest.param(n, marks=pytest.mark.skipif(not have[n], reason=f"{n} backend not available")) for n in names]


def device_of(backend: str) -> str:
    return "cuda" if backend in ("cuda", "triton") and torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="module")
def one_thread():
    """The module's tests on one torch thread (tiny models run fastest there), restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
