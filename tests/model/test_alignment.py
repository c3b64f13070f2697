"""The alignments against explicit formulas: barycentric projections, pools, OT, cosine, cross-attention."""

import pytest
import torch
import torch.nn.functional as F

from grace_fast import ops
from grace_fast.model import GraceConfig
from grace_fast.model.alignment import barycentric_projection, build_alignment, masked_mean
from tests.utils import random_mask


def _inputs(B=3, N=6, M=10, d=8):
    U, V = torch.randn(B, N, d), torch.randn(B, M, d)
    mask_u, mask_v = random_mask(B, N), random_mask(B, M)
    return U, mask_u, V, mask_v, torch.rand(B, M) + 0.5


def test_masked_mean_averages_valid_positions_only():
    x = torch.tensor([[[1.0], [3.0], [100.0]], [[5.0], [7.0], [9.0]]])
    mask = torch.tensor([[True, True, False], [False, False, False]])
    assert masked_mean(x, mask).tolist() == [[2.0], [0.0]]


def test_barycentric_projection_by_loops_with_padding_zero():
    plan, values = torch.rand(2, 3, 4), torch.randn(2, 4, 5)
    marginal = torch.tensor([[0.5, 0.0, 0.5], [0.2, 0.3, 0.5]])
    expected = torch.zeros(2, 3, 5)
    for b in range(2):
        for i in range(3):
            if marginal[b, i] > 0:
                expected[b, i] = sum(plan[b, i, j] * values[b, j] for j in range(4)) / marginal[b, i]
    torch.testing.assert_close(barycentric_projection(plan, values, marginal), expected)


@pytest.mark.parametrize("marginal", ["uniform", "motion"])
def test_ot_alignment_is_the_barycentric_pool_of_the_sinkhorn_plan(marginal):
    U, mask_u, V, mask_v, weights = _inputs()
    config = GraceConfig(dim=8, attention_heads=2, visual_marginal=marginal, eps=0.1, max_iter=200, tol=1e-6)
    out = build_alignment(config)(U, mask_u, V, mask_v, weights)
    a = mask_u / mask_u.sum(1, keepdim=True)
    b = weights * mask_v if marginal == "motion" else mask_v.float()
    b = b / b.sum(1, keepdim=True)
    result = ops.sinkhorn(ops.cost_matrix(U, V, mask_u, mask_v), a, b, eps=0.1, max_iter=200, tol=1e-6)
    torch.testing.assert_close(out.plan, result.plan)
    torch.testing.assert_close(out.cost, result.cost)
    torch.testing.assert_close(out.plan.sum(1), b, atol=1e-5, rtol=0)  # the visual marginal the option asks for
    U_hat = torch.einsum("bnm,bmd->bnd", result.plan, V) / a.clamp_min(1e-30).unsqueeze(-1)
    expected = torch.stack([U_hat[i][mask_u[i]].mean(0) for i in range(3)])
    torch.testing.assert_close(out.pooled, expected)


def test_ot_alignment_sends_gradients_to_both_sides():
    U, mask_u, V, mask_v, weights = _inputs()
    U.requires_grad_(), V.requires_grad_()
    out = build_alignment(GraceConfig(dim=8, attention_heads=2))(U, mask_u, V, mask_v, weights)
    (out.pooled * torch.randn_like(out.pooled)).sum().backward()
    assert U.grad[mask_u].abs().sum() > 0 and V.grad[mask_v].abs().sum() > 0
    assert U.grad[~mask_u].abs().sum() == 0 and V.grad[~mask_v].abs().sum() == 0


def test_cosine_alignment_is_sentence_level_attention():
    U, mask_u, V, mask_v, weights = _inputs()
    out = build_alignment(GraceConfig(dim=8, attention_heads=2, alignment="cosine", eps=0.2))(
        U, mask_u, V, mask_v, weights
    )
    for b in range(3):
        sentence = U[b][mask_u[b]].mean(0)
        similarity = F.cosine_similarity(V[b][mask_v[b]], sentence.unsqueeze(0), dim=1)
        alpha = (similarity / 0.2).softmax(0)
        torch.testing.assert_close(out.pooled[b], alpha @ V[b][mask_v[b]])
        torch.testing.assert_close(out.plan[b, 0][mask_v[b]], alpha)
    assert out.cost is None and out.plan[:, 0][~mask_v].abs().sum() == 0


def test_cross_attention_ignores_padded_visual_tokens():
    U, mask_u, V, mask_v, weights = _inputs()
    align = build_alignment(GraceConfig(dim=8, attention_heads=2, alignment="cross_attention"))
    out = align(U, mask_u, V, mask_v, weights)
    assert out.plan.shape == (3, 6, 10) and out.cost is None
    assert out.plan.transpose(1, 2)[~mask_v].abs().sum() == 0
    torch.testing.assert_close(out.plan.sum(2), mask_u.float())
    garbage = torch.where(mask_v.unsqueeze(-1), V, torch.randn_like(V) * 100)
    torch.testing.assert_close(align(U, mask_u, garbage, mask_v, weights).pooled, out.pooled)


def test_no_alignment_gives_zeros():
    U, mask_u, V, mask_v, weights = _inputs()
    out = build_alignment(GraceConfig(dim=8, attention_heads=2, alignment="none"))(U, mask_u, V, mask_v, weights)
    assert out.pooled.shape == (3, 8) and out.pooled.abs().sum() == 0 and out.plan is None and out.cost is None
