"""A small synthetic set made once for the data tests (tiny frames: the tests check files, not faces)."""

import pytest

from grace_fast.data.synthetic import make_synthetic

CLIPS, SEED, SIZE = 8, 0, 32


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    make_synthetic(out, CLIPS, SEED, size=SIZE, progress=False)
    return out
