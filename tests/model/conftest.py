"""Tiny random GRACE models for the model tests: one tokenizer folder per session, fresh models per test."""

import pytest
import torch

from grace_fast.model import GraceModel
from grace_fast.model.tiny import build_tiny_tokenizer, tiny_config

TEXTS = ["a man smiles and raises his cheeks", "a woman frowns", "", "the jaw drops in surprise"]


@pytest.fixture(scope="session")
def tokenizer_folder(tmp_path_factory):
    return build_tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture
def make_model(tokenizer_folder):
    """make_model(**config fields) -> a tiny GraceModel in eval mode, seeded so equal fields give equal weights."""

    def make(**overrides) -> GraceModel:
        torch.manual_seed(0)
        return GraceModel(tiny_config(tokenizer_folder, **overrides)).eval()

    return make


def clips(batch: int = 2, frames: int = 16, size: int = 32, seed: int = 1) -> torch.Tensor:
    """[batch, frames, 3, size, size] random clips."""
    return torch.randn(batch, frames, 3, size, size, generator=torch.Generator().manual_seed(seed))
