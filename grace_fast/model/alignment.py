"""Text-to-video alignment (docs/method.md section 4) and its ablations; ALIGNMENTS is the one registry of their names.

An alignment takes G texts per clip, U [B, G, N, d] with its token mask [B, G, N], and the clip's selected visual
tokens V [B, M, d] (mask [B, M], motion weights [B, M]), and aligns each text with its clip on its own: G = 1 for a
caption, G = C for the class prompts (B x C problems in one call, `align_classes`). Per (clip, text) it gives:
- plan P [R, M]: how the text's mass, a_i = 1 / n on each of its n valid tokens, is spread over the visual tokens;
- mass q = P^T 1 [M]: the text-conditioned visual mass (it sums to 1);
- v_txt [d]: the aligned visual feature;
- similarity s = <P, 1 - C>, C_ij = 1 - cos(U_i, V_j) (ops.cost_matrix; for "cosine" the row of the pooled text):
  the plan-weighted cosine similarity; for "ot" it is s_ot, the similarity that scores a class by its prompt.

| alignment | plan P | v_txt |
| --- | --- | --- |
| "ot" | semi-relaxed entropic OT: a exact, b relaxed by tau_b KL(q || b) | sum_j q_j V_j |
| "ot_balanced" | balanced entropic OT (tau_b = inf): q = b whatever the text | sum_j b_j V_j, the visual mean |
| "cross_attention" | a_i A_ij, A the text tokens' head-averaged attention on V | pool of the attention outputs |
| "cosine" | one row, the pooled sentence: softmax_j(cos(pool(U), V_j) / cosine_temperature) | sum_j q_j V_j |
| "none" | none (and no class logits) | pool(V'); s = 0 |
"""

import math
from functools import partial
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from grace_fast import ops

if TYPE_CHECKING:
    from grace_fast.model.config import GraceConfig


class Aligned(NamedTuple):
    """G texts aligned with each of B clips (M visual tokens, R plan rows: N text tokens, 1 for "cosine").

    v_txt [B, G, d]; similarity [B, G] float32; plan [B, G, R, M] float32 (None for "none"); mass [B, G, M] float32,
    the plan's column sums q (None for "none"). `first()` drops the G axis of a single text per clip.
    """

    v_txt: torch.Tensor
    similarity: torch.Tensor
    plan: torch.Tensor | None
    mass: torch.Tensor | None

    def first(self) -> "Aligned":
        """The first text of each clip without the G axis: v_txt [B, d], similarity [B], plan [B, R, M], mass [B, M]."""
        return Aligned(*(None if x is None else x[:, 0] for x in self))


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x [..., L, d] over its valid positions (mask [..., L] bool) -> [..., d]; zeros where none is valid."""
    weights = mask.to(x.dtype).unsqueeze(-1)
    return (x * weights).sum(dim=-2) / weights.sum(dim=-2).clamp_min(1)


def text_marginal(mask_u: torch.Tensor) -> torch.Tensor:
    """a: uniform over each text's valid tokens, mask [B, G, N] bool -> [B, G, N] float32."""
    return mask_u.float() / mask_u.sum(dim=-1, keepdim=True)


class OTAlignment(nn.Module):
    """Entropic OT from the text tokens (a uniform over the valid tokens, kept exact) to the visual tokens (b uniform
    over the selected tokens, or with visual_marginal="motion" their normalised motion weights), b relaxed by
    tau_b KL(P^T 1 || b) (semi-relaxed, "ot") or exact (balanced, "ot_balanced"); eps, max_iter, tol of the config.

    The B x G problems share one cost matrix [B, G N, M] (one ops.cost_matrix call), viewed as [B G, N, M]: V is not
    copied per text.
    """

    def __init__(self, config: "GraceConfig", balanced: bool = False):
        super().__init__()
        self.eps, self.max_iter, self.tol = config.eps, config.max_iter, config.tol
        self.tau_b = math.inf if balanced else config.tau_b
        self.motion_marginal = config.visual_marginal == "motion"
        self.cost_backend, self.sinkhorn_backend = config.backend("cost_matrix"), config.backend("sinkhorn")

    def forward(self, U, mask_u, V, mask_v, weights) -> Aligned:
        B, G, N, d = U.shape
        M = V.shape[1]
        C = ops.cost_matrix(U.reshape(B, G * N, d), V, mask_u.reshape(B, G * N), mask_v, backend=self.cost_backend)
        b = (weights.float() * mask_v) if self.motion_marginal else mask_v.float()
        b = b / b.sum(dim=1, keepdim=True)
        result = ops.sinkhorn(
            C.view(B * G, N, M),
            text_marginal(mask_u).reshape(B * G, N),
            b.repeat_interleave(G, dim=0),
            eps=self.eps,
            max_iter=self.max_iter,
            tol=self.tol,
            tau_b=self.tau_b,
            warn=False,  # a fixed budget of max_iter iterations per step, as in the paper; no warning per step
            backend=self.sinkhorn_backend,
        )
        mass = result.col_mass.view(B, G, M)
        # <P, 1 - C> = sum_j q_j - <P, C>: q is summed already, and one path from the plan keeps its gradient a view
        similarity = mass.sum(-1) - result.cost.view(B, G)
        return Aligned(torch.bmm(mass.to(V.dtype), V), similarity, result.plan.view(B, G, N, M), mass)


class CrossAttentionAlignment(nn.Module):
    """Each text token attends to the valid visual tokens (nn.MultiheadAttention, query U, key = value = V); the plan
    is a_i times the head-averaged attention weights and v_txt the pool of the attention outputs."""

    def __init__(self, config: "GraceConfig"):
        super().__init__()
        self.attention = nn.MultiheadAttention(config.dim, config.attention_heads, batch_first=True)
        self.cost_backend = config.backend("cost_matrix")

    def forward(self, U, mask_u, V, mask_v, weights) -> Aligned:
        B, G, N, d = U.shape
        M = V.shape[1]
        queries, query_mask = U.reshape(B, G * N, d), mask_u.reshape(B, G * N)
        out, attention = self.attention(queries, V, V, key_padding_mask=~mask_v, need_weights=True)
        plan = attention.view(B, G, N, M) * text_marginal(mask_u).unsqueeze(-1)
        C = ops.cost_matrix(queries, V, query_mask, mask_v, backend=self.cost_backend).view(B, G, N, M)
        v_txt = masked_mean(out.view(B, G, N, d), mask_u)
        return Aligned(v_txt, (plan * (1 - C)).sum(dim=(2, 3)), plan, plan.sum(dim=2))


class CosineAlignment(nn.Module):
    """Sentence level: the pooled text s = pool(U) weights the visual tokens by q_j = softmax_j(cos(s, V_j) / T) over
    the valid j, T = config.cosine_temperature; the plan is that one row."""

    def __init__(self, config: "GraceConfig"):
        super().__init__()
        self.temperature = config.cosine_temperature

    def forward(self, U, mask_u, V, mask_v, weights) -> Aligned:
        sentence = F.normalize(masked_mean(U, mask_u), dim=-1)  # [B, G, d]
        cosine = torch.einsum("bmd,bgd->bgm", F.normalize(V, dim=-1), sentence)
        mass = (cosine / self.temperature).masked_fill(~mask_v.unsqueeze(1), -math.inf).softmax(dim=-1)
        return Aligned(torch.bmm(mass, V), (mass * cosine).sum(-1), mass.unsqueeze(2), mass)


class NoAlignment(nn.Module):
    """The ablation without alignment: v_txt is pool(V') whatever the text, s = 0, no plan (and no class logits)."""

    def __init__(self, config: "GraceConfig"):
        super().__init__()

    def forward(self, U, mask_u, V, mask_v, weights) -> Aligned:
        B, G = U.shape[:2]
        return Aligned(masked_mean(V, mask_v).unsqueeze(1).expand(B, G, -1), V.new_zeros(B, G), None, None)


ALIGNMENTS = {
    "ot": OTAlignment,
    "ot_balanced": partial(OTAlignment, balanced=True),
    "cross_attention": CrossAttentionAlignment,
    "cosine": CosineAlignment,
    "none": NoAlignment,
}


def build_alignment(config: "GraceConfig") -> nn.Module:
    return ALIGNMENTS[config.alignment](config)


def align_classes(alignment: nn.Module, U, mask_u, V, mask_v, weights) -> Aligned:
    """Each of C texts shared by all clips (the class prompts) aligned with each of B clips: B x C problems in one
    alignment call. U: [C, N, d], mask_u: [C, N] bool; V: [B, M, d], mask_v: [B, M] bool, weights: [B, M] (the motion
    weights of the kept tokens). Returns Aligned over [B, C]. The texts enter as expanded views, V as it is.

    >>> from grace_fast.model import GraceConfig
    >>> alignment = build_alignment(GraceConfig(dim=8, attention_heads=2))
    >>> U, V = torch.randn(7, 5, 8), torch.randn(2, 30, 8)
    >>> scored = align_classes(alignment, U, torch.ones(7, 5, dtype=torch.bool), V, torch.ones(2, 30, dtype=torch.bool),
    ...                        torch.ones(2, 30))
    >>> scored.similarity.shape, scored.plan.shape, scored.mass.shape
    (torch.Size([2, 7]), torch.Size([2, 7, 5, 30]), torch.Size([2, 7, 30]))
    """
    B = V.shape[0]
    return alignment(U.expand(B, *U.shape), mask_u.expand(B, *mask_u.shape), V, mask_v, weights)
