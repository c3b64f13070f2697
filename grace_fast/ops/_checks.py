"""Input checks shared by the ops: each error names the argument, what it got and what is expected."""

from collections.abc import Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def check_float(name: str, x, ndim: int, shape_doc: str) -> None:
    """x must be a floating tensor of rank ndim (shape_doc, e.g. "[B, N, D]", is quoted in the error)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {shape_doc}, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be floating point (float32, float16, bfloat16 or float64), got {x.dtype}")
    if x.dim() != ndim:
        raise ValueError(f"{name} must be {shape_doc}, got shape {tuple(x.shape)}")


def check_mask(name: str, mask, shape: Sequence[int], shape_doc: str, device: torch.device) -> None:
    """mask must be None or a bool tensor of `shape` on `device`."""
    if mask is None:
        return
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise TypeError(f"{name} must be a bool tensor {shape_doc} (True = valid), got {got}")
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{name} must be {shape_doc} = {tuple(shape)}, got shape {tuple(mask.shape)}")
    if mask.device != device:
        raise ValueError(f"{name} is on {mask.device} but the inputs are on {device}")


def check_same(what: str, **sizes: int) -> None:
    """All the named sizes must be equal, e.g. check_same("B", U=U.shape[0], V=V.shape[0])."""
    if len(set(sizes.values())) > 1:
        got = ", ".join(f"{k}: {v}" for k, v in sizes.items())
        raise ValueError(f"{what} must match ({got})")


def check_devices(**tensors: torch.Tensor) -> None:
    """All the named tensors must be on one device."""
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        raise ValueError(f"inputs must be on one device, got {devices}")


def refuse_double_backward(op: str, *tensors: torch.Tensor | None) -> None:
    """Called in a backward whose fused kernel has no autograd of its own: a graph built through it
    (create_graph=True) would give wrong second derivatives, so say so instead."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        raise RuntimeError(
            f"{op}: the fused kernels have no double backward (create_graph=True); use backend='torch' for it"
        )
