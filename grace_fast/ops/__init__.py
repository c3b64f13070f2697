"""grace_fast ops: each dispatches to its fastest available backend and falls back to its torch reference."""

from grace_fast.ops.cost_matrix import cost_matrix
from grace_fast.ops.sinkhorn import SinkhornResult, sinkhorn

__all__ = ["SinkhornResult", "cost_matrix", "sinkhorn"]
