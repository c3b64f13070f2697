"""sinkhorn: batched entropic OT by log-domain Sinkhorn, with an implicit backward (GRACE.md section 4)."""

import math
from typing import NamedTuple

import torch

from grace_fast._backends import resolve
from grace_fast.ops._autocast import no_autocast
from grace_fast.ops._checks import check_float, check_mask
from grace_fast.ops.reference.sinkhorn import sinkhorn_reference

BACKENDS = {"cpu": ("cpu", "torch", "triton"), "cuda": ("triton", "torch")}
MARGINAL_TOL = 1e-5


class SinkhornResult(NamedTuple):
    """plan [B, N, M]; cost [B] = <plan, C>; f [B, N], g [B, M] dual potentials (plan = exp((f_i + g_j - C_ij) / eps)
    on valid entries, shifted so that <a, f> = <b, g>); value [B] = cost + eps * sum plan (log plan - 1);
    n_iter [B] int64; err [B] the final L1 error of the column sums."""

    plan: torch.Tensor
    cost: torch.Tensor
    f: torch.Tensor
    g: torch.Tensor
    value: torch.Tensor
    n_iter: torch.Tensor
    err: torch.Tensor


def sinkhorn(
    C: torch.Tensor,
    a: torch.Tensor | None = None,
    b: torch.Tensor | None = None,
    *,
    eps: float = 0.05,
    max_iter: int = 50,
    tol: float = 1e-4,
    mask_a: torch.Tensor | None = None,
    mask_b: torch.Tensor | None = None,
    backend: str = "auto",
) -> SinkhornResult:
    """Entropic OT plan between a and b for the cost C: min <P, C> - eps H(P) s.t. P 1 = a, P^T 1 = b.

    C: [B, N, M] (or [N, M], results then unbatched) float32, float16 or bfloat16, computed in float32
    (float64 stays float64). a: [B, N], b: [B, M] non-negative, each row summing to 1, zeros marking padding;
    None means uniform over mask_a / mask_b ([B, N] / [B, M] bool, True = valid) or over all entries.
    Each batch element stops once the L1 error of its column sums is below tol (tol=0: exactly max_iter).
    Gradients reach C, a and b through every output by implicit differentiation at the fixed point
    (memory O(B N M) whatever max_iter); value's gradient is the plan itself (envelope theorem).
    backend: "auto", "torch" (the reference, run without autograd: the backward stays implicit), "cpu" (grace_fast._C).

    >>> C = torch.rand(2, 77, 784)
    >>> result = sinkhorn(C, eps=0.05)
    >>> result.plan.sum(dim=(1, 2))
    tensor([1.0000, 1.0000])
    """
    unbatched = isinstance(C, torch.Tensor) and C.dim() == 2
    if unbatched:
        C, a, b, mask_a, mask_b = (None if x is None else x.unsqueeze(0) for x in (C, a, b, mask_a, mask_b))
    check_float("C", C, 3, "[B, N, M] or [N, M]")
    _check_scalars(eps, max_iter, tol)
    dtype = torch.promote_types(C.dtype, torch.float32)
    B, N, M = C.shape
    a = _marginal("a", "mask_a", a, mask_a, (B, N), "[B, N]", C.device, dtype)
    b = _marginal("b", "mask_b", b, mask_b, (B, M), "[B, M]", C.device, dtype)
    if not torch.compiler.is_compiling():
        _check_values(C, a, b)
    backend = resolve("sinkhorn", backend, C.device, BACKENDS)
    result = SinkhornResult(
        *torch.ops.grace_fast.sinkhorn(C.to(dtype).contiguous(), a, b, float(eps), int(max_iter), float(tol), backend)
    )
    return SinkhornResult(*(x.squeeze(0) for x in result)) if unbatched else result


def _check_scalars(eps, max_iter, tol) -> None:
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol}")


def _marginal(name, mask_name, w, mask, shape, shape_doc, device, dtype) -> torch.Tensor:
    """The weights w, or uniform weights over mask (or over everything), as a [B, L] tensor of dtype."""
    if w is not None and mask is not None:
        raise ValueError(f"give either {name} or {mask_name}, not both (zeros in {name} already mark padding)")
    if w is None:
        check_mask(mask_name, mask, shape, shape_doc, device)
        valid = torch.ones(shape, dtype=torch.bool, device=device) if mask is None else mask
        count = valid.sum(dim=1, keepdim=True)
        if not torch.compiler.is_compiling() and (count == 0).any():
            row = int((count[:, 0] == 0).nonzero()[0])
            raise ValueError(f"{mask_name} has no valid entry in batch element {row}")
        return valid.to(dtype) / count.clamp_min(1).to(dtype)
    check_float(name, w, 2, shape_doc)
    if tuple(w.shape) != tuple(shape):
        raise ValueError(f"{name} must be {shape_doc} = {tuple(shape)}, got shape {tuple(w.shape)}")
    if w.device != device:
        raise ValueError(f"{name} is on {w.device} but C is on {device}")
    return w.to(dtype)


def _check_values(C, a, b) -> None:
    """Value checks (skipped under torch.compile, where they would break the graph)."""
    if not torch.isfinite(C).all():
        raise ValueError(f"C must be finite, found {int((~torch.isfinite(C)).sum())} NaN/Inf entries")
    for name, w in (("a", a), ("b", b)):
        if not torch.isfinite(w).all() or (w < 0).any():
            raise ValueError(f"{name} must be finite and non-negative")
        deviation = (w.sum(dim=1) - 1).abs()
        if (deviation > MARGINAL_TOL).any():
            row = int(deviation.argmax())
            raise ValueError(
                f"each row of {name} must sum to 1 (within {MARGINAL_TOL}); row {row} sums to {float(w[row].sum()):.6g}"
            )


def _forward(C, a, b, eps, max_iter, tol, backend, tau_a=math.inf, tau_b=math.inf):
    """Backend dispatch: (plan, f, g, n_iter, err) with f, g gauge-shifted so that <a, f> = <b, g>."""
    if backend == "torch":
        with torch.no_grad():
            plan, _, f, g, _, n_iter, err = sinkhorn_reference(C, a, b, eps, max_iter, tol)
        return plan, f, g, n_iter, err
    if backend == "triton":
        from grace_fast.kernels.sinkhorn import sinkhorn_triton

        return sinkhorn_triton(C, a, b, eps, max_iter, tol, tau_a, tau_b)
    return torch.ops.grace_fast.sinkhorn_forward(C, a, b, eps, max_iter, tol, tau_a, tau_b)


@torch.library.custom_op("grace_fast::sinkhorn", mutates_args=())
def _sinkhorn_op(
    C: torch.Tensor, a: torch.Tensor, b: torch.Tensor, eps: float, max_iter: int, tol: float, backend: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    with no_autocast(C.device):  # autocast would run the bmm below in bf16
        plan, f, g, n_iter, err = _forward(C, a, b, eps, max_iter, tol, backend)
        B, N, M = C.shape
        # <P, C> row by row (short dot products keep float32 accurate) without materialising P * C
        cost = torch.bmm(plan.reshape(B * N, 1, M), C.reshape(B * N, M, 1)).view(B, N).sum(1)
        # value = <P, C> + eps sum P (log P - 1) with log P = (f_i + g_j - C_ij) / eps on the support
        value = (f * plan.sum(2)).sum(1) + (g * plan.sum(1)).sum(1) - eps * plan.sum(dim=(1, 2))
    return plan, cost, f, g, value, n_iter, err


@_sinkhorn_op.register_fake
def _(C, a, b, eps, max_iter, tol, backend):
    B, N, M = C.shape
    batch = C.new_empty(B)
    return (
        C.new_empty(B, N, M),
        batch,
        C.new_empty(B, N),
        C.new_empty(B, M),
        C.new_empty(B),
        C.new_empty(B, dtype=torch.int64),
        C.new_empty(B),
    )


def _setup_context(ctx, inputs, output):
    C, a, b, eps, _, _, _ = inputs
    plan, _, f, g, _, n_iter, err = output
    ctx.mark_non_differentiable(n_iter, err)
    ctx.eps = eps
    ctx.save_for_backward(C, a, b, plan, f, g)


def _solve_dual(P: torch.Tensor, p: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Solves [[diag(P 1), P], [P^T, diag(P^T 1)]] [x; y] = [p; q] on the support, in the gauge sum(x) = 0.

    P: [B, N, M], p: [B, N], q: [B, M] with sum(p) = sum(q). The system is singular along (1, -1); y is
    eliminated by its Schur complement on the smaller side (N x N if N <= M), fixed by adding 1 1^T there.
    """
    if P.shape[1] > P.shape[2]:
        y, x = _solve_dual(P.transpose(1, 2), q, p)
        return x, y
    rows, cols = P.sum(2), P.sum(1)
    valid_r = rows > 0
    inv_cols = torch.where(cols > 0, 1 / torch.where(cols > 0, cols, 1), 0)
    # P diag(1 / cols) P^T one batch element at a time: the scaled copy of P stays 1/B of its size
    scaled_gram = torch.stack([(Pk * ck) @ Pk.T for Pk, ck in zip(P, inv_cols, strict=True)])
    S = torch.diag_embed(torch.where(valid_r, rows, 1)) - scaled_gram
    ones = valid_r.to(P.dtype)
    S = S + ones[:, :, None] * ones[:, None, :]
    rhs = p - (P @ (q * inv_cols)[:, :, None])[..., 0]
    x = torch.linalg.solve(S.double(), rhs.double()).to(P.dtype)
    y = (q - (P.transpose(1, 2) @ x[:, :, None])[..., 0]) * inv_cols
    return x, y


def _backward(ctx, grad_plan, grad_cost, grad_f, grad_g, grad_value, _grad_n_iter, _grad_err):
    """Adjoint of the fixed point F(f, g) = (P 1 - a, P^T 1 - b) = 0, P = exp((f + g - C) / eps)."""
    C, a, b, P, f, g = ctx.saved_tensors
    eps = ctx.eps
    with no_autocast(C.device):  # the dual solve is near singular: no bf16 matmuls
        W = torch.addcmul(grad_plan, C, grad_cost[:, None, None]).mul_(P)  # [B, N, M]: dL/dP * P
        h_f = W.sum(2) / eps + torch.where(a > 0, grad_f, 0)  # padded potentials are constant 0
        h_g = W.sum(1) / eps + torch.where(b > 0, grad_g, 0)
        # the outputs are shifted to <a, f> = <b, g>: project h onto the loads that this gauge sees
        delta = h_f.sum(1, keepdim=True) - h_g.sum(1, keepdim=True)
        h_f = h_f - delta / 2 * a
        h_g = h_g + delta / 2 * b
        lam_f, lam_g = _solve_dual(P, eps * h_f, eps * h_g)
        # grad_C = (P * (lam_f + lam_g) - W) / eps + (grad_cost + grad_value) P, written into W: no other [B, N, M]
        grad_C = W.mul_(-1 / eps)
        grad_C.addcmul_(P, lam_f[:, :, None] / eps + (grad_cost + grad_value)[:, None, None])
        grad_C.addcmul_(P, lam_g[:, None, :] / eps)
        grad_a = lam_f + (grad_value[:, None] - delta / 2) * f
        grad_b = lam_g + (grad_value[:, None] + delta / 2) * g
        return grad_C, grad_a, grad_b, None, None, None, None


_sinkhorn_op.register_autograd(_backward, setup_context=_setup_context)
