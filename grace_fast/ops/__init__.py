"""grace_fast ops: each dispatches to its fastest available backend and falls back to its torch reference."""

from grace_fast.ops.cost_matrix import cost_matrix

__all__ = ["cost_matrix"]
