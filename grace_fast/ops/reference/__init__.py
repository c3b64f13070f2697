"""Readable pure-torch references of the ops: the spec, and the fallback when the extension is not built."""

from grace_fast.ops.reference.cost_matrix import cost_matrix_reference
from grace_fast.ops.reference.motion_weights import motion_weights_reference
from grace_fast.ops.reference.select_tokens import select_tokens_reference
from grace_fast.ops.reference.sinkhorn import sinkhorn_reference

__all__ = ["cost_matrix_reference", "motion_weights_reference", "select_tokens_reference", "sinkhorn_reference"]
