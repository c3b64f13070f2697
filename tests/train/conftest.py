"""One torch thread in the training tests (in process and in the subprocesses they start): on a machine whose
cores are shared, two OpenMP threads wait on each other far longer than they compute on tiny models."""

import os

import pytest

SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Every training test on one torch thread."""
