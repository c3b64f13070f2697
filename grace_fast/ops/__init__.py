"""grace_fast ops: each dispatches to its fastest available backend and falls back to its torch reference."""

from grace_fast.ops.cost_matrix import cost_matrix
from grace_fast.ops.motion_weights import motion_weights
from grace_fast.ops.select_tokens import TokenSelection, select_tokens
from grace_fast.ops.sinkhorn import SinkhornResult, SinkhornWarning, sinkhorn

__all__ = [
    "SinkhornResult",
    "SinkhornWarning",
    "TokenSelection",
    "cost_matrix",
    "motion_weights",
    "select_tokens",
    "sinkhorn",
]
