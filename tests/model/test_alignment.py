"""The alignments against explicit formulas: OT (semi-relaxed and balanced), cross-attention, cosine, none, and the
batched class-prompt call against one problem at a time."""

import math

import pytest
import torch
import torch.nn.functional as F

from grace_fast import ops
from grace_fast.model import GraceConfig
from grace_fast.model.alignment import ALIGNMENTS, align_classes, build_alignment, masked_mean
from tests.utils import random_mask


def _inputs(B=3, G=2, N=6, M=10, d=8):
    U, V = torch.randn(B, G, N, d), torch.randn(B, M, d)
    mask_u, mask_v = random_mask(B * G, N).view(B, G, N), random_mask(B, M)
    return U, mask_u, V, mask_v, torch.rand(B, M) + 0.5


def _config(**fields) -> GraceConfig:
    return GraceConfig(dim=8, attention_heads=2, **fields)


def test_masked_mean_averages_valid_positions_only():
    x = torch.tensor([[[1.0], [3.0], [100.0]], [[5.0], [7.0], [9.0]]])
    mask = torch.tensor([[True, True, False], [False, False, False]])
    assert masked_mean(x, mask).tolist() == [[2.0], [0.0]]
    assert masked_mean(x[None], mask[None]).tolist() == [[[2.0], [0.0]]]  # any leading axes


@pytest.mark.parametrize("marginal", ["uniform", "motion"])
@pytest.mark.parametrize("alignment", ["ot", "ot_balanced"])
def test_ot_alignment_is_the_sinkhorn_plan_its_mass_and_similarity(alignment, marginal):
    U, mask_u, V, mask_v, weights = _inputs()
    config = _config(alignment=alignment, visual_marginal=marginal, eps=0.1, tau_b=0.2, max_iter=300, tol=1e-7)
    out = build_alignment(config)(U, mask_u, V, mask_v, weights)
    b = weights * mask_v if marginal == "motion" else mask_v.float()
    b = b / b.sum(1, keepdim=True)
    tau_b = math.inf if alignment == "ot_balanced" else 0.2
    for g in range(2):
        a = mask_u[:, g] / mask_u[:, g].sum(1, keepdim=True)
        C = ops.cost_matrix(U[:, g], V, mask_u[:, g], mask_v)
        expected = ops.sinkhorn(C, a, b, eps=0.1, max_iter=300, tol=1e-7, tau_b=tau_b)
        torch.testing.assert_close(out.plan[:, g], expected.plan)
        torch.testing.assert_close(out.plan[:, g].sum(2), a, atol=1e-6, rtol=0)  # the text's mass stays exact
        q = expected.plan.sum(1)
        torch.testing.assert_close(out.mass[:, g], q)
        torch.testing.assert_close(out.v_txt[:, g], torch.einsum("bm,bmd->bd", q, V))
        torch.testing.assert_close(out.similarity[:, g], (expected.plan * (1 - C)).sum((1, 2)))
        if alignment == "ot_balanced":  # q = b: the visual mean (weighted by b) whatever the text
            torch.testing.assert_close(q, b, atol=1e-6, rtol=0)
        else:
            assert (q - b).abs().sum(1).min() > 0.05


def test_semi_relaxed_tau_b_is_the_config_field():
    U, mask_u, V, mask_v, weights = _inputs()
    masses = [build_alignment(_config(tau_b=tau))(U, mask_u, V, mask_v, weights).mass for tau in (0.1, 10.0)]
    assert (masses[0] - masses[1]).abs().sum() > 0.1


@pytest.mark.parametrize("alignment", [name for name in ALIGNMENTS if name != "none"])
def test_ot_and_attention_send_gradients_to_both_sides(alignment):
    U, mask_u, V, mask_v, weights = _inputs()
    U.requires_grad_(), V.requires_grad_()
    out = build_alignment(_config(alignment=alignment))(U, mask_u, V, mask_v, weights)
    upstream = (torch.randn_like(out.v_txt), torch.randn_like(out.similarity))
    torch.autograd.backward((out.v_txt, out.similarity), upstream)
    assert U.grad[mask_u].abs().sum() > 0 and V.grad[mask_v].abs().sum() > 0
    assert U.grad[~mask_u].abs().sum() == 0 and V.grad[~mask_v].abs().sum() == 0


@pytest.mark.parametrize("alignment", list(ALIGNMENTS))
def test_class_prompts_in_one_call_equal_each_problem_alone(alignment):
    """align_classes solves B x C problems at once: each equals that (clip, class) problem solved on its own."""
    torch.manual_seed(0)
    C, N, B, M = 5, 4, 3, 9
    prompts, prompt_mask = torch.randn(C, N, 8), random_mask(C, N)
    V, mask_v, weights = torch.randn(B, M, 8), random_mask(B, M), torch.rand(B, M) + 0.5
    module = build_alignment(_config(alignment=alignment, max_iter=200, tol=1e-7)).eval()
    out = align_classes(module, prompts, prompt_mask, V, mask_v, weights)
    assert out.similarity.shape == (B, C) and out.v_txt.shape == (B, C, 8)
    for b in range(B):
        for c in range(C):
            alone = module(prompts[c][None, None], prompt_mask[c][None, None], V[b : b + 1], mask_v[b : b + 1], weights)
            alone = alone.first()
            torch.testing.assert_close(out.similarity[b, c], alone.similarity[0], atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(out.v_txt[b, c], alone.v_txt[0], atol=1e-6, rtol=1e-5)
            if out.plan is not None:
                torch.testing.assert_close(out.plan[b, c], alone.plan[0], atol=1e-6, rtol=1e-5)


def test_cosine_alignment_is_sentence_level_attention_at_its_own_temperature():
    U, mask_u, V, mask_v, weights = _inputs()
    out = build_alignment(_config(alignment="cosine", cosine_temperature=0.2))(U, mask_u, V, mask_v, weights)
    other_eps = build_alignment(_config(alignment="cosine", cosine_temperature=0.2, eps=0.5))
    torch.testing.assert_close(other_eps(U, mask_u, V, mask_v, weights).v_txt, out.v_txt)  # eps is OT's alone
    for b in range(3):
        for g in range(2):
            sentence = U[b, g][mask_u[b, g]].mean(0)
            cosine = F.cosine_similarity(V[b][mask_v[b]], sentence.unsqueeze(0), dim=1)
            q = (cosine / 0.2).softmax(0)
            torch.testing.assert_close(out.v_txt[b, g], q @ V[b][mask_v[b]])
            torch.testing.assert_close(out.mass[b, g][mask_v[b]], q)
            torch.testing.assert_close(out.similarity[b, g], q @ cosine)
    assert out.plan.shape == (3, 2, 1, 10) and out.mass[~mask_v.unsqueeze(1).expand(3, 2, 10)].abs().sum() == 0


def test_cross_attention_plan_is_a_times_the_attention_over_valid_visual_tokens():
    U, mask_u, V, mask_v, weights = _inputs()
    align = build_alignment(_config(alignment="cross_attention"))
    out = align(U, mask_u, V, mask_v, weights)
    assert out.plan.shape == (3, 2, 6, 10)
    assert out.plan.permute(0, 1, 3, 2)[~mask_v.unsqueeze(1).expand(3, 2, 10)].abs().sum() == 0
    a = mask_u / mask_u.sum(-1, keepdim=True)
    torch.testing.assert_close(out.plan.sum(3), a)
    torch.testing.assert_close(out.mass, out.plan.sum(2))
    C = ops.cost_matrix(U.flatten(1, 2), V, mask_u.flatten(1, 2), mask_v).view(3, 2, 6, 10)
    torch.testing.assert_close(out.similarity, (out.plan * (1 - C)).sum((2, 3)))
    garbage = torch.where(mask_v.unsqueeze(-1), V, torch.randn_like(V) * 100)
    torch.testing.assert_close(align(U, mask_u, garbage, mask_v, weights).v_txt, out.v_txt)


def test_no_alignment_gives_the_visual_pool_and_no_plan():
    U, mask_u, V, mask_v, weights = _inputs()
    out = build_alignment(_config(alignment="none"))(U, mask_u, V, mask_v, weights)
    torch.testing.assert_close(out.v_txt, masked_mean(V, mask_v).unsqueeze(1).expand(3, 2, 8))
    assert (out.similarity == 0).all() and out.plan is None and out.mass is None
