"""Text-to-video alignment (GRACE.md section 4) and the paper's ablations of it.

Each alignment maps projected text tokens U [B, N, d] and selected visual tokens V [B, M, d] to one aligned text
feature per clip, pool(U_hat) [B, d]:
- "ot": token-level entropic OT (ops.cost_matrix + ops.sinkhorn), U_hat_i = sum_j P_ij V_j / a_i;
- "cross_attention": text tokens attend to the visual tokens (multi-head attention), U_hat = attention output;
- "cosine": sentence level, the pooled text attends to the visual tokens by cosine similarity (temperature eps);
- "none": no alignment, zeros.
"""

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from grace_fast import ops
from grace_fast.model.config import GraceConfig


class Aligned(NamedTuple):
    """pooled [B, d]: pool(U_hat); plan [B, N, M] (OT plan, attention weights; [B, 1, M] for cosine, None for none);
    cost [B]: the OT cost <P, C> (None unless alignment is "ot")."""

    pooled: torch.Tensor
    plan: torch.Tensor | None
    cost: torch.Tensor | None


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x [B, L, d] over its valid positions (mask [B, L] bool) -> [B, d]; zeros for a row with none."""
    weights = mask.to(x.dtype).unsqueeze(-1)
    return (x * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1)


def barycentric_projection(plan: torch.Tensor, values: torch.Tensor, marginal: torch.Tensor) -> torch.Tensor:
    """sum_j plan[b, i, j] values[b, j] / marginal[b, i] -> [B, N, d]; rows with marginal 0 (padding) are zero.

    plan: [B, N, M], values: [B, M, d], marginal: [B, N] (the plan's row marginal a). For the other side pass
    plan.transpose(1, 2) and b: V_hat_j = sum_i P_ij U_i / b_j.
    """
    valid = marginal > 0
    scale = torch.where(valid, 1 / torch.where(valid, marginal, 1), 0)
    return torch.bmm(plan, values.to(plan.dtype)).mul(scale.unsqueeze(-1)).to(values.dtype)


class OTAlignment(nn.Module):
    """a uniform over the valid text tokens; b uniform over the selected visual tokens or (visual_marginal="motion")
    their normalised motion weights; entropic OT with eps, max_iter, tol of the config."""

    def __init__(self, config: GraceConfig):
        super().__init__()
        self.eps, self.max_iter, self.tol = config.eps, config.max_iter, config.tol
        self.motion_marginal = config.visual_marginal == "motion"
        self.cost_backend, self.sinkhorn_backend = config.backend("cost_matrix"), config.backend("sinkhorn")

    def forward(self, U, mask_u, V, mask_v, weights) -> Aligned:
        C = ops.cost_matrix(U, V, mask_u, mask_v, backend=self.cost_backend)
        a = mask_u.float() / mask_u.sum(dim=1, keepdim=True)
        if self.motion_marginal:
            mass = weights.float() * mask_v
            b = mass / mass.sum(dim=1, keepdim=True)
        else:
            b = mask_v.float() / mask_v.sum(dim=1, keepdim=True)
        result = ops.sinkhorn(
            C, a, b, eps=self.eps, max_iter=self.max_iter, tol=self.tol, backend=self.sinkhorn_backend
        )
        U_hat = barycentric_projection(result.plan, V, a)
        return Aligned(masked_mean(U_hat, mask_u), result.plan, result.cost)


class CrossAttentionAlignment(nn.Module):
    """U_hat = MultiheadAttention(query=U, key=value=V) over the valid visual tokens; plan = head-averaged weights."""

    def __init__(self, config: GraceConfig):
        super().__init__()
        self.attention = nn.MultiheadAttention(config.dim, config.attention_heads, batch_first=True)

    def forward(self, U, mask_u, V, mask_v, weights) -> Aligned:
        U_hat, attention = self.attention(U, V, V, key_padding_mask=~mask_v, need_weights=True)
        plan = attention * mask_u.unsqueeze(-1)
        return Aligned(masked_mean(U_hat, mask_u), plan, None)


class CosineAlignment(nn.Module):
    """Sentence level: s = pool(U); alpha = softmax_j(cos(s, V_j) / eps) over valid j; aligned = sum_j alpha_j V_j."""

    def __init__(self, config: GraceConfig):
        super().__init__()
        self.temperature = config.eps

    def forward(self, U, mask_u, V, mask_v, weights) -> Aligned:
        sentence = F.normalize(masked_mean(U, mask_u), dim=-1)
        similarity = torch.einsum("bmd,bd->bm", F.normalize(V, dim=-1), sentence)
        alpha = (similarity / self.temperature).masked_fill(~mask_v, float("-inf")).softmax(dim=1)
        return Aligned(torch.einsum("bm,bmd->bd", alpha, V), alpha.unsqueeze(1), None)


class NoAlignment(nn.Module):
    """The ablation without alignment: the aligned-text slot of the fusion input is zero."""

    def forward(self, U, mask_u, V, mask_v, weights) -> Aligned:
        return Aligned(V.new_zeros(V.shape[0], V.shape[2]), None, None)


ALIGNMENT_MODULES = {
    "ot": OTAlignment,
    "cross_attention": CrossAttentionAlignment,
    "cosine": CosineAlignment,
    "none": lambda config: NoAlignment(),
}


def build_alignment(config: GraceConfig) -> nn.Module:
    return ALIGNMENT_MODULES[config.alignment](config)
