"""cost_matrix: the cosine cost between text tokens and visual tokens (docs/method.md section 4)."""

import torch

from grace_fast.ops._autocast import no_autocast
from grace_fast.ops._backends import resolve
from grace_fast.ops._checks import check_devices, check_float, check_mask, check_same, refuse_double_backward
from grace_fast.ops.reference.cost_matrix import cost_matrix_reference


def cost_matrix(
    U: torch.Tensor,
    V: torch.Tensor,
    mask_u: torch.Tensor | None = None,
    mask_v: torch.Tensor | None = None,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """C[b, i, j] = 1 - cos(U[b, i], V[b, j]); 0 (and no gradient) on padded rows and columns.

    U: [B, N, D], V: [B, M, D] float32, float16 or bfloat16 (float64 for gradcheck);
    mask_u: [B, N] bool, mask_v: [B, M] bool (True = valid token; None = all valid).
    Returns C: [B, N, M] float32 (float64 for float64 inputs). A zero vector has cosine 0, so C = 1.
    backend: "auto" (fastest available), "torch" (the reference), "cpu" or "cuda" (grace_fast._C).

    >>> U, V = torch.randn(2, 77, 512), torch.randn(2, 784, 512)
    >>> cost_matrix(U, V).shape
    torch.Size([2, 77, 784])
    """
    check_float("U", U, 3, "[B, N, D]")
    check_float("V", V, 3, "[B, M, D]")
    check_devices(U=U, V=V)
    check_same("batch size B", U=U.shape[0], V=V.shape[0])
    check_same("feature size D", U=U.shape[2], V=V.shape[2])
    if U.shape[2] == 0:
        raise ValueError(f"feature size D must be at least 1, got U {tuple(U.shape)}")
    check_mask("mask_u", mask_u, U.shape[:2], "[B, N]", U.device)
    check_mask("mask_v", mask_v, V.shape[:2], "[B, M]", V.device)
    backend = resolve("cost_matrix", backend, U.device)
    if backend == "torch":
        with no_autocast(U.device):  # C is float32 on every backend
            return cost_matrix_reference(U, V, mask_u, mask_v)
    dtype = torch.promote_types(U.dtype, V.dtype)
    C, _, _ = _cost_matrix_op(U.to(dtype), V.to(dtype), mask_u, mask_v, backend)
    return C


def _forward_extension(U, V, mask_u, mask_v):
    return torch.ops.grace_fast.cost_matrix_forward(U, V, mask_u, mask_v)


def _backward_extension(grad_C, U, V, ru, rv):
    return torch.ops.grace_fast.cost_matrix_backward(grad_C, U, V, ru, rv)


# per backend: forward (U, V, mask_u, mask_v) -> (C, ru, rv) and backward (grad_C, U, V, ru, rv) -> (dU, dV);
# grace_fast._C registers its cpu and cuda kernels under one schema
KERNELS = {"cpu": (_forward_extension, _backward_extension), "cuda": (_forward_extension, _backward_extension)}


@torch.library.custom_op("grace_fast::cost_matrix", mutates_args=())
def _cost_matrix_op(
    U: torch.Tensor, V: torch.Tensor, mask_u: torch.Tensor | None, mask_v: torch.Tensor | None, backend: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return KERNELS[backend][0](U, V, mask_u, mask_v)


@_cost_matrix_op.register_fake
def _(U, V, mask_u, mask_v, backend):
    acc = torch.float64 if U.dtype == torch.float64 else torch.float32
    B, N, _ = U.shape
    M = V.shape[1]
    return U.new_empty(B, N, M, dtype=acc), U.new_empty(B, N, dtype=acc), V.new_empty(B, M, dtype=acc)


@torch.library.custom_op("grace_fast::cost_matrix_grad", mutates_args=())
def _cost_matrix_grad(
    grad_C: torch.Tensor, U: torch.Tensor, V: torch.Tensor, ru: torch.Tensor, rv: torch.Tensor, backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    return KERNELS[backend][1](grad_C, U, V, ru, rv)


@_cost_matrix_grad.register_fake
def _(grad_C, U, V, ru, rv, backend):  # the kernels write contiguous gradients, whatever U's strides
    return (
        torch.empty_like(U, memory_format=torch.contiguous_format),
        torch.empty_like(V, memory_format=torch.contiguous_format),
    )


def _setup_context(ctx, inputs, output):
    U, V, _, _, ctx.backend = inputs
    _, ru, rv = output
    ctx.mark_non_differentiable(ru, rv)
    ctx.save_for_backward(U, V, ru, rv)


def _backward(ctx, grad_C, _grad_ru, _grad_rv):
    U, V, ru, rv = ctx.saved_tensors
    refuse_double_backward("cost_matrix", grad_C, U, V)
    dU, dV = _cost_matrix_grad(grad_C, U, V, ru, rv, ctx.backend)
    return dU, dV, None, None, None


_cost_matrix_op.register_autograd(_backward, setup_context=_setup_context)
