"""A GRACE training step under CPU bf16 autocast (what amp auto runs on a CPU with AMX or AVX512-BF16)."""

import pytest
import torch

from grace_fast.model import GraceLoss, GraceModel
from grace_fast.model.tiny import CORPUS, build_tiny_tokenizer, tiny_config

# bf16 keeps 8 mantissa bits: a relative rounding of 2^-9 per op, over a dozen layers of the tiny model
LOSS_RTOL = 0.05


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return build_tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def step(tokenizer, autocast: bool):
    """(loss terms, parameter gradients) of one forward+backward of a seeded tiny model on a seeded batch."""
    torch.manual_seed(0)
    model = GraceModel(tiny_config(tokenizer)).train()
    pixels = torch.randn(4, 16, 3, 32, 32)
    labels = torch.tensor([0, 3, 3, 6])
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        torch.manual_seed(1)  # the same dropout masks in both runs
        terms = GraceLoss(model.config)(model(pixels, CORPUS[:4]), labels)
    terms.total.backward()  # outside autocast, as torch.amp advises
    return terms, {name: p.grad for name, p in model.named_parameters() if p.requires_grad}


def test_bf16_training_step_on_cpu_is_finite_and_close_to_fp32(tokenizer):
    bf16, grads = step(tokenizer, autocast=True)
    fp32, grads32 = step(tokenizer, autocast=False)
    assert bf16.total.dtype == torch.float32
    torch.testing.assert_close(bf16.total, fp32.total, rtol=LOSS_RTOL, atol=0)
    assert grads.keys() == grads32.keys()
    for name, grad in grads.items():
        assert grad is not None and grad.dtype == torch.float32 and torch.isfinite(grad).all(), name
    flat = torch.cat([g.flatten() for g in grads.values()])
    flat32 = torch.cat([g.flatten() for g in grads32.values()])
    assert torch.nn.functional.cosine_similarity(flat, flat32, dim=0) > 0.95
