"""Token selection by weight (the spec of grace_fast.ops.select_tokens, docs/method.md section 2)."""

import math
from typing import NamedTuple

import torch


class TokenSelection(NamedTuple):
    """tokens [B, K, D] in X's dtype, weights [B, K] in w's dtype, index [B, K] int64 (the flat (t, h, w) position
    of each token in its clip), mask [B, K] bool (True = kept). Kept tokens come first, in their original order;
    padded slots hold zero tokens, zero weights and index -1."""

    tokens: torch.Tensor
    weights: torch.Tensor
    index: torch.Tensor
    mask: torch.Tensor


def ratio_count(ratio: float, L: int) -> int:
    """ceil(ratio L), robust to the rounding of ratio L (0.3 * 10 is 3, not 4)."""
    return max(1, math.ceil(round(ratio * L, 6)))


def select_tokens_reference(
    X: torch.Tensor, w: torch.Tensor, *, ratio: float = 0.5, mass: float | None = None, max_tokens: int | None = None
) -> TokenSelection:
    """The top tokens of each clip by w: a fixed count ceil(ratio L), or (mass=q) the fewest whose share of the
    clip's total weight reaches q; at most max_tokens, padded to max_tokens.

    X: [B, ..., D] with L tokens per clip, w: X.shape[:-1] non-negative for mass. K = max_tokens, by default
    ceil(ratio L) (fixed) or L (mass). Ties go to the earlier token.
    """
    B, D = X.shape[0], X.shape[-1]
    x, weight = X.reshape(B, -1, D), w.reshape(B, -1)
    L = x.shape[1]
    order = torch.sort(weight, dim=1, descending=True, stable=True).indices  # [B, L]
    if mass is None:
        K = ratio_count(ratio, L) if max_tokens is None else max_tokens
        count = torch.full((B, 1), min(ratio_count(ratio, L), K), device=x.device)
    else:
        K = L if max_tokens is None else max_tokens
        # token j (by descending w) is kept while the heavier ones hold less than mass, i.e. while j and the
        # lighter ones hold more than 1 - mass: summed from the light end, that mass is exact for tiny tails
        rest = torch.cumsum(torch.gather(weight, 1, order).double().flip(1), dim=1).flip(1)  # [B, L]
        count = (rest > (1 - mass) * rest[:, :1]).sum(dim=1, keepdim=True).clamp(max=K)
    rank = torch.arange(K, device=x.device)
    mask = rank < count  # [B, K]
    position = torch.where(mask, order[:, :K], L)  # padded slots sort last
    position = torch.sort(position, dim=1).values
    safe = torch.where(mask, position, 0)
    tokens = torch.gather(x, 1, safe[:, :, None].expand(B, K, D))
    tokens = torch.where(mask[:, :, None], tokens, 0)
    weights = torch.where(mask, torch.gather(weight, 1, safe), 0)
    return TokenSelection(tokens, weights, torch.where(mask, position, -1), mask)
