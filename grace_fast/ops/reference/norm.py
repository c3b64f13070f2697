"""Euclidean norms that neither overflow nor underflow: the rows are scaled by their largest entry before squaring."""

import torch


def row_scale(x: torch.Tensor) -> torch.Tensor:
    """max |x| over the last axis (1 for an all-zero row), without gradient: x / row_scale(x) has entries in [-1, 1].

    x: [..., D] -> [..., 1]. A quantity that is invariant to the scale of a row (a direction, a ratio of norms)
    computed from x / row_scale(x) has the gradient of its exact value, so the scale needs none.
    """
    scale = x.detach().abs().amax(dim=-1, keepdim=True)
    return torch.where(scale > 0, scale, 1)


def careful_norm(x: torch.Tensor) -> torch.Tensor:
    """||x|| over the last axis, exact for any finite x: x [..., D] -> [...].

    Plain vector_norm squares first, so in float32 a row of entries around 1e19 gives inf and one around 1e-22
    loses its digits to underflow; here the squares are of x / max |x|, which lie in [0, 1].
    """
    scale = row_scale(x)
    return scale.squeeze(-1) * torch.linalg.vector_norm(x / scale, dim=-1)
