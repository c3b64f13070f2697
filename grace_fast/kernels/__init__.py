"""Triton kernels of grace_fast; the ops in grace_fast.ops dispatch to them."""
