"""Tolerances and comparisons shared by the op tests."""

import torch


def max_error(x: torch.Tensor, y: torch.Tensor) -> float:
    return (x.double() - y.double()).abs().max().item() if x.numel() else 0.0


def assert_error_bounded(
    out: torch.Tensor, ref: torch.Tensor, ref64: torch.Tensor, factor: float = 4.0, floor: float = 1e-6
) -> None:
    """out's error against the fp64 reference is at most factor x that of torch's reference run in out's
    dtype (ref), plus floor: a fixed tolerance would be arbitrary across dtypes and sizes."""
    kernel_error, torch_error = max_error(out, ref64), max_error(ref, ref64)
    assert kernel_error <= factor * torch_error + floor, f"error {kernel_error:.3g} vs torch's {torch_error:.3g}"


def random_mask(*shape: int, p_valid: float = 0.7) -> torch.Tensor:
    mask = torch.rand(*shape) < p_valid
    mask[..., 0] = True  # at least one valid token per row unless a test pads a row on purpose
    return mask
