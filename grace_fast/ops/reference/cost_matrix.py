"""Reference cosine cost matrix (the spec of grace_fast.ops.cost_matrix)."""

import torch

from grace_fast.ops.reference.norm import row_scale


def _normalize(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit norm; a zero row stays zero (so its cosine is 0) and gets no gradient.

    The row is divided by its largest entry first, so that the squares neither overflow nor underflow.
    """
    x = x / row_scale(x)
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    inverse = torch.where(norm > 0, 1 / torch.where(norm > 0, norm, 1), 0)
    return x * inverse


def cost_matrix_reference(
    U: torch.Tensor, V: torch.Tensor, mask_u: torch.Tensor | None = None, mask_v: torch.Tensor | None = None
) -> torch.Tensor:
    """C[b, i, j] = 1 - cos(U[b, i], V[b, j]), 0 where mask_u[b, i] or mask_v[b, j] is False.

    U: [B, N, D], V: [B, M, D] any float dtype; mask_u: [B, N] bool, mask_v: [B, M] bool (True = valid).
    Returns C: [B, N, M] float32 (float64 for float64 inputs, so that gradcheck can use it).
    """
    dtype = torch.promote_types(torch.promote_types(U.dtype, V.dtype), torch.float32)
    C = 1 - _normalize(U.to(dtype)) @ _normalize(V.to(dtype)).transpose(1, 2)
    if mask_u is not None:
        C = torch.where(mask_u[:, :, None], C, 0)
    if mask_v is not None:
        C = torch.where(mask_v[:, None, :], C, 0)
    return C
