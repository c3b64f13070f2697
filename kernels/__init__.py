"""Triton kernels of grace_fast, installed as grace_fast.kernels; ops in grace_fast.ops dispatch to them."""
