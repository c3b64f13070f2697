"""select_tokens: keep each clip's heaviest tokens, by a fixed ratio or a weight mass (docs/method.md section 2)."""

import math

import torch

from grace_fast.ops._checks import FLOAT_DTYPES
from grace_fast.ops.reference.select_tokens import TokenSelection, select_tokens_reference


def select_tokens(
    X: torch.Tensor, w: torch.Tensor, *, ratio: float = 0.5, mass: float | None = None, max_tokens: int | None = None
) -> TokenSelection:
    """The top tokens of each clip by weight, in their original order, as a rectangular padded batch.

    X: [B, T, H, W, D] or [B, L, D] (L = T H W tokens per clip), any dtype; w: X.shape[:-1] float, e.g. the weights
    of grace_fast.ops.motion_weights. Fixed ratio (mass=None, the paper): keep the top ceil(ratio L) tokens.
    Adaptive (mass=q): keep the fewest tokens whose share of the clip's total weight reaches q (w non-negative).
    At most max_tokens are kept and the outputs are padded to K = max_tokens (default ceil(ratio L) for a fixed
    ratio, L for mass). Ties go to the earlier token.
    Returns TokenSelection(tokens [B, K, D], weights [B, K], index [B, K] int64 flat (t, h, w) position, -1 on
    padding, mask [B, K] bool True = kept). Gradients reach the kept tokens of X and their weights in w.

    >>> X, w = torch.randn(2, 8, 14, 14, 768), torch.rand(2, 8, 14, 14)
    >>> kept = select_tokens(X, w, ratio=0.5)
    >>> kept.tokens.shape, bool(kept.mask.all())
    (torch.Size([2, 784, 768]), True)
    """
    if not isinstance(X, torch.Tensor) or X.dim() not in (3, 5):
        got = tuple(X.shape) if isinstance(X, torch.Tensor) else type(X).__name__
        raise ValueError(f"X must be a tensor [B, T, H, W, D] or [B, L, D], got {got}")
    if not isinstance(w, torch.Tensor) or w.dtype not in FLOAT_DTYPES:
        got = w.dtype if isinstance(w, torch.Tensor) else type(w).__name__
        raise TypeError(f"w must be a floating point tensor, got {got}")
    if tuple(w.shape) != tuple(X.shape[:-1]):
        raise ValueError(f"w must have X's shape without D, {tuple(X.shape[:-1])}, got {tuple(w.shape)}")
    if w.device != X.device:
        raise ValueError(f"w is on {w.device} but X is on {X.device}")
    L = math.prod(X.shape[1:-1])
    if X.shape[0] == 0 or L == 0:
        raise ValueError(f"X must have at least one clip and one token, got shape {tuple(X.shape)}")
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:
        raise ValueError(f"ratio must be in (0, 1], got {ratio!r}")
    if mass is not None and (isinstance(mass, bool) or not isinstance(mass, (int, float)) or not 0 < mass <= 1):
        raise ValueError(f"mass must be None or in (0, 1], got {mass!r}")
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= L
    ):
        raise ValueError(f"max_tokens must be None or an integer in [1, L = {L}], got {max_tokens!r}")
    if mass is not None and not torch.compiler.is_compiling():
        if not torch.isfinite(w).all() or (w < 0).any():
            raise ValueError("w must be finite and non-negative for mass selection")
        if (w.reshape(w.shape[0], -1).sum(dim=1) == 0).any():
            raise ValueError("w sums to 0 in some clip: mass selection needs a positive total weight per clip")
    return select_tokens_reference(X, w, ratio=ratio, mass=mass, max_tokens=max_tokens)
