"""sinkhorn: batched entropic OT by log-domain Sinkhorn, with an implicit backward (docs/method.md section 4)."""

import math
import warnings
from typing import NamedTuple

import torch

from grace_fast.ops._autocast import no_autocast
from grace_fast.ops._backends import resolve
from grace_fast.ops._checks import check_float, check_mask
from grace_fast.ops.reference.sinkhorn import column_err, marginal_penalty, sinkhorn_reference

MARGINAL_TOL = 1e-5
MASS_TOL = 1e-3  # an exact marginal whose plan sums are off by more than this in L1 has lost mass
# the largest spread(C) / eps each computation dtype honours: 1 / its unit roundoff, where the exponent
# (f + g - C) / eps of a plan entry is still known to within about 1
MAX_SPREAD_OVER_EPS = {torch.float32: 2.0**24, torch.float64: 2.0**53}
GRAM_CHUNKS = 8  # the backward's scaled copy of the plan is at most 1/GRAM_CHUNKS of it


class SinkhornWarning(RuntimeWarning):
    """A sinkhorn solve that did not converge or lost mass (see SinkhornResult.converged)."""


class SinkhornResult(NamedTuple):
    """plan [B, N, M]; cost [B] = <plan, C>; f [B, N], g [B, M] dual potentials (plan = exp((f_i + g_j - C_ij) / eps)
    on valid entries; with both marginals exact they are shifted so that <a, f> = <b, g>); value [B] the objective
    <plan, C> + eps sum plan (log plan - 1) + tau_a KL(plan 1 || a) + tau_b KL(plan^T 1 || b) (no KL term for an
    exact marginal); n_iter [B] int64; err [B] the L1 change that one more g update would make to the returned
    plan's column sums (for an exact b: their L1 error), computed from that plan; converged [B] bool: the plan is
    finite, each exact row marginal holds to MASS_TOL in L1, and err < tol (unless tol = 0, a fixed number of
    iterations). row_mass [B, N] and col_mass [B, M] are the plan's marginals (differentiable)."""

    plan: torch.Tensor
    cost: torch.Tensor
    f: torch.Tensor
    g: torch.Tensor
    value: torch.Tensor
    n_iter: torch.Tensor
    err: torch.Tensor
    converged: torch.Tensor

    @property
    def row_mass(self) -> torch.Tensor:
        """plan 1: [B, N], equal to a when that marginal is exact."""
        return self.plan.sum(-1)

    @property
    def col_mass(self) -> torch.Tensor:
        """plan^T 1: [B, M]; with b relaxed, the text-conditioned mass of each column."""
        return self.plan.sum(-2)


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
    tau_a: float = math.inf,
    tau_b: float = math.inf,
    warn: bool = True,
    backend: str = "auto",
) -> SinkhornResult:
    """Entropic OT between a and b for the cost C, each marginal exact or KL-relaxed:
    min_P <P, C> - eps H(P) + tau_a KL(P 1 || a) + tau_b KL(P^T 1 || b), H(P) = -sum P (log P - 1).

    C: [B, N, M] (or [N, M], results then unbatched) float32, float16 or bfloat16, computed in float32
    (float64 stays float64). a: [B, N], b: [B, M] non-negative, each row summing to 1, zeros marking padding;
    None means uniform over mask_a / mask_b ([B, N] / [B, M] bool, True = valid) or over all entries.
    tau_a, tau_b > 0: math.inf (default) keeps that marginal exact (balanced OT when both are); tau_a = inf with a
    finite tau_b is the semi-relaxed problem, whose column masses plan^T 1 depend on C; tau_b -> 0 tends to
    per-row softmax attention a_i softmax_j(-C_ij / eps). This is POT's
    ot.unbalanced.sinkhorn_unbalanced(a, b, C, eps, reg_m=(tau_a, tau_b), reg_type="entropy"); POT's default
    reg_type="kl" regularises by KL(P || a b^T) instead, a different problem.
    Each batch element stops once err, the L1 change that the next g update makes to the plan's column sums, is
    below tol (tol=0: exactly max_iter); for an exact b that is the L1 error of the column sums, for a relaxed b
    it measures the change in the potentials, sum_j q_j |exp(dg_j / eps) - 1|. err is computed from the returned
    plan, whatever the backend. A problem whose err is still >= tol (tol > 0), whose plan is not finite, or whose
    exact row marginal is off by more than MASS_TOL has converged False, and the call warns (SinkhornWarning)
    unless warn=False (a caller that runs a fixed budget of iterations and reads converged itself).
    Range: spread(C) / eps, the spread max - min of each problem's valid costs over eps, must be at most 2^24 (about
    1.7e7) when computed in float32 and 2^53 in float64; beyond it the plan's exponents (f + g - C) / eps are not
    resolved by the dtype and the call is refused (pass float64 C, a larger eps, or rescale C). Within it the
    returned float32 potentials resolve (f + g - C) / eps to about spread(C) / eps * 2^-24.
    Gradients reach C, a and b through every output by implicit differentiation at the fixed point
    (memory O(B N M) whatever max_iter); value's gradient is the plan itself (envelope theorem).
    backend: "auto", "torch" (the reference, run without autograd: the backward stays implicit), "cpu" (grace_fast._C),
    "triton".

    >>> C = torch.rand(2, 77, 784)
    >>> result = sinkhorn(C, eps=0.05)
    >>> result.plan.sum(dim=(1, 2))
    tensor([1.0000, 1.0000])
    >>> relaxed = sinkhorn(C, eps=0.05, tau_b=0.1)  # the text decides how much mass each visual token gets
    >>> relaxed.col_mass.shape
    torch.Size([2, 784])
    """
    unbatched = isinstance(C, torch.Tensor) and C.dim() == 2
    if unbatched:
        C, a, b, mask_a, mask_b = (None if x is None else x.unsqueeze(0) for x in (C, a, b, mask_a, mask_b))
    check_float("C", C, 3, "[B, N, M] or [N, M]")
    _check_scalars(eps, max_iter, tol, tau_a, tau_b)
    dtype = torch.promote_types(C.dtype, torch.float32)
    B, N, M = C.shape
    a = _marginal("a", "mask_a", a, mask_a, (B, N), "[B, N]", C.device, dtype)
    b = _marginal("b", "mask_b", b, mask_b, (B, M), "[B, M]", C.device, dtype)
    if not torch.compiler.is_compiling():
        _check_values(C, a, b, eps)
    backend = resolve("sinkhorn", backend, C.device)
    args = (float(eps), int(max_iter), float(tol), float(tau_a), float(tau_b), backend)
    result = SinkhornResult(*torch.ops.grace_fast.sinkhorn(C.to(dtype).contiguous(), a, b, *args))
    if warn and not torch.compiler.is_compiling() and not bool(result.converged.all()):
        _warn_unconverged(result, tol, max_iter)
    return SinkhornResult(*(x.squeeze(0) for x in result)) if unbatched else result


def _warn_unconverged(result: SinkhornResult, tol: float, max_iter: int) -> None:
    bad = (~result.converged).nonzero()[:, 0]
    worst = int(bad[result.err[bad].nan_to_num(math.inf).argmax()])
    warnings.warn(
        f"sinkhorn: {len(bad)} of {len(result.converged)} problems did not converge or lost mass (converged=False), "
        f"e.g. batch element {worst}: err {float(result.err[worst]):.3g} (tol {tol}) after "
        f"{int(result.n_iter[worst])} of max_iter {max_iter} iterations, plan mass "
        f"{float(result.plan[worst].sum()):.6g}; raise max_iter or eps",
        SinkhornWarning,
        stacklevel=3,
    )


def _check_scalars(eps, max_iter, tol, tau_a, tau_b) -> None:
    if not 0 < eps < math.inf:
        raise ValueError(f"eps must be > 0 and finite, got {eps}")
    for name, tau in (("tau_a", tau_a), ("tau_b", tau_b)):
        if not tau > 0:
            raise ValueError(f"{name} must be > 0 (math.inf keeps the marginal exact), got {tau}")
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


def _check_values(C, a, b, eps) -> None:
    """Value checks (skipped under torch.compile, where they would break the graph); one pass over C."""
    low, high = C.flatten(1).aminmax(dim=1)  # NaN propagates
    if not (torch.isfinite(low).all() and torch.isfinite(high).all()):
        raise ValueError(f"C must be finite, found {int((~torch.isfinite(C)).sum())} NaN/Inf entries")
    for name, w in (("a", a), ("b", b)):
        total = w.sum(dim=1)  # non-negative entries with a finite sum are all finite: two passes, not four
        if not (torch.isfinite(total).all() and (w.amin(dim=1) >= 0).all()):
            raise ValueError(f"{name} must be finite and non-negative")
        deviation = (total - 1).abs()
        if (deviation > MARGINAL_TOL).any():
            row = int(deviation.argmax())
            raise ValueError(
                f"each row of {name} must sum to 1 (within {MARGINAL_TOL}); row {row} sums to {float(w[row].sum()):.6g}"
            )
    limit = MAX_SPREAD_OVER_EPS[torch.promote_types(C.dtype, torch.float32)]
    if ((high - low) / eps > limit).any():  # padded entries widen this bound: check the valid ones only now
        valid = (a > 0)[:, :, None] & (b > 0)[:, None, :]
        spread = (C.masked_fill(~valid, -math.inf).amax((1, 2)) - C.masked_fill(~valid, math.inf).amin((1, 2))) / eps
        if (spread > limit).any():
            row = int(spread.argmax())
            raise ValueError(
                f"spread(C) / eps = {float(spread[row]):.3g} in batch element {row} is beyond what {C.dtype} "
                f"resolves: at most {limit:.3g} (2^24 in float32, 2^53 in float64); raise eps, rescale C or pass "
                "float64 C"
            )


def _forward_torch(C, a, b, eps, max_iter, tol, tau_a, tau_b):
    with torch.no_grad():  # the backward is implicit, not the reference's autograd
        plan, _, f, g, _, n_iter, _ = sinkhorn_reference(C, a, b, eps, max_iter, tol, tau_a, tau_b)
    return plan, f, g, n_iter


def _forward_cpu(C, a, b, eps, max_iter, tol, tau_a, tau_b):
    return torch.ops.grace_fast.sinkhorn_forward(C, a, b, eps, max_iter, tol, tau_a, tau_b)[:4]


def _forward_triton(C, a, b, eps, max_iter, tol, tau_a, tau_b):
    from grace_fast.kernels.sinkhorn import sinkhorn_triton

    return sinkhorn_triton(C, a, b, eps, max_iter, tol, tau_a, tau_b)[:4]


# per backend: forward (C, a, b, eps, max_iter, tol, tau_a, tau_b) -> (plan, f, g, n_iter), f and g gauge-shifted
# so that <a, f> = <b, g> when both marginals are exact. A backend's own err decides when it stops; the op
# recomputes err from the plan it returns. The backward is one for all (implicit), so "torch" runs through the op too.
KERNELS = {"torch": _forward_torch, "cpu": _forward_cpu, "triton": _forward_triton}


@torch.library.custom_op("grace_fast::sinkhorn", mutates_args=())
def _sinkhorn_op(
    C: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    eps: float,
    max_iter: int,
    tol: float,
    tau_a: float,
    tau_b: float,
    backend: str,
) -> tuple[
    torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor
]:
    with no_autocast(C.device):  # autocast would run the bmm below in bf16
        plan, f, g, n_iter = KERNELS[backend](C, a, b, eps, max_iter, tol, tau_a, tau_b)
        B, N, M = C.shape
        # <P, C> row by row (short dot products keep float32 accurate) without materialising P * C
        cost = torch.bmm(plan.reshape(B * N, 1, M), C.reshape(B * N, M, 1)).view(B, N).sum(1)
        # value = <P, C> + eps sum P (log P - 1) + penalties, with log P = (f_i + g_j - C_ij) / eps on the support
        rows, cols = plan.sum(2), plan.sum(1)
        value = (f * rows).sum(1) + (g * cols).sum(1) - eps * rows.sum(1)
        value = value + marginal_penalty(rows, a, tau_a) + marginal_penalty(cols, b, tau_b)
        err = column_err(cols, b, g, eps, tau_b)
        converged = torch.isfinite(value) & ((err < tol) | (tol == 0))
        if math.isinf(tau_a):
            converged &= (rows - a).abs().sum(1) <= MASS_TOL
    return plan, cost, f, g, value, n_iter, err, converged


@_sinkhorn_op.register_fake
def _(C, a, b, eps, max_iter, tol, tau_a, tau_b, backend):
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
        C.new_empty(B, dtype=torch.bool),
    )


def _setup_context(ctx, inputs, output):
    C, a, b, eps, _, _, tau_a, tau_b, _ = inputs
    plan, _, f, g, _, n_iter, err, converged = output
    ctx.mark_non_differentiable(n_iter, err, converged)
    ctx.eps, ctx.tau_a, ctx.tau_b = eps, tau_a, tau_b
    ctx.save_for_backward(C, a, b, plan, f, g)


def _solve_dual(
    P: torch.Tensor, p: torch.Tensor, q: torch.Tensor, kappa_p: float, kappa_q: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Solves [[diag(P 1) (1 + kappa_p), P], [P^T, diag(P^T 1) (1 + kappa_q)]] [x; y] = [p; q] on the support.

    P: [B, N, M], p: [B, N], q: [B, M]; kappa = eps / tau >= 0 (0 for an exact marginal). y is eliminated by its
    Schur complement on the smaller side (N x N if N <= M). With both kappas 0 the system is singular along
    (1, -1) (needs sum(p) = sum(q)); adding 1 1^T to the complement picks the solution with sum(x) = 0. A positive
    kappa makes the complement strictly diagonally dominant.
    """
    if P.shape[1] > P.shape[2]:
        y, x = _solve_dual(P.transpose(1, 2), q, p, kappa_q, kappa_p)
        return x, y
    rows, cols = P.sum(2), P.sum(1)
    valid_r = rows > 0
    inv_cols = torch.where(cols > 0, 1 / torch.where(cols > 0, cols * (1 + kappa_q), 1), 0)
    S = torch.diag_embed(torch.where(valid_r, rows * (1 + kappa_p), 1)) - _scaled_gram(P, inv_cols)
    if kappa_p == 0 and kappa_q == 0:
        ones = valid_r.to(P.dtype)
        S = S + ones[:, :, None] * ones[:, None, :]
    rhs = p - (P @ (q * inv_cols)[:, :, None])[..., 0]
    x = torch.linalg.solve(S.double(), rhs.double()).to(P.dtype)
    y = (q - (P.transpose(1, 2) @ x[:, :, None])[..., 0]) * inv_cols
    return x, y


def _scaled_gram(P: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """P diag(c) P^T: P [B, N, M], c [B, M] -> [B, N, N], one bmm per chunk of the batch (GRAM_CHUNKS chunks), so that
    the scaled copy of P stays a fraction of it and many small problems cost a few calls, not one each."""
    step = -(-P.shape[0] // GRAM_CHUNKS)
    chunks = zip(P.split(step), c.split(step), strict=True)
    return torch.cat([torch.bmm(Pk * ck[:, None, :], Pk.transpose(1, 2)) for Pk, ck in chunks])


def _value_slope(potential: torch.Tensor, tau: float) -> torch.Tensor:
    """d value / d a for a relaxed marginal, tau (1 - exp(-f / tau)) = tau (1 - (P 1) / a); f for an exact one."""
    return potential if math.isinf(tau) else -tau * torch.expm1(-potential / tau)


def _backward(ctx, grad_plan, grad_cost, grad_f, grad_g, grad_value, _grad_n_iter, _grad_err, _grad_converged):
    """Adjoint of the fixed point F(f, g) = (P 1 - a exp(-f / tau_a), P^T 1 - b exp(-g / tau_b)) = 0 with
    P = exp((f + g - C) / eps) (exp(-f / tau) = 1 for an exact marginal)."""
    C, a, b, P, f, g = ctx.saved_tensors
    eps, tau_a, tau_b = ctx.eps, ctx.tau_a, ctx.tau_b
    kappa_a, kappa_b = eps / tau_a, eps / tau_b  # 0 for an exact marginal
    balanced = kappa_a == 0 and kappa_b == 0
    with no_autocast(C.device):  # the dual solve is near singular: no bf16 matmuls
        W = torch.addcmul(grad_plan, C, grad_cost[:, None, None]).mul_(P)  # [B, N, M]: dL/dP * P
        h_f = W.sum(2) / eps + torch.where(a > 0, grad_f, 0)  # padded potentials are constant 0
        h_g = W.sum(1) / eps + torch.where(b > 0, grad_g, 0)
        delta = torch.zeros_like(grad_value[:, None])
        if balanced:  # the outputs are shifted to <a, f> = <b, g>: project h onto the loads that this gauge sees
            delta = h_f.sum(1, keepdim=True) - h_g.sum(1, keepdim=True)
            h_f = h_f - delta / 2 * a
            h_g = h_g + delta / 2 * b
        lam_f, lam_g = _solve_dual(P, eps * h_f, eps * h_g, kappa_a, kappa_b)
        # grad_C = (P * (lam_f + lam_g) - W) / eps + (grad_cost + grad_value) P, written into W: no other [B, N, M]
        grad_C = W.mul_(-1 / eps)
        grad_C.addcmul_(P, lam_f[:, :, None] / eps + (grad_cost + grad_value)[:, None, None])
        grad_C.addcmul_(P, lam_g[:, None, :] / eps)
        # dF/da = -exp(-f / tau_a): the multiplier's load on a, 1 for an exact marginal
        load_a = lam_f if math.isinf(tau_a) else lam_f * torch.exp(-f / tau_a)
        load_b = lam_g if math.isinf(tau_b) else lam_g * torch.exp(-g / tau_b)
        grad_a = load_a + grad_value[:, None] * _value_slope(f, tau_a) - delta / 2 * f
        grad_b = load_b + grad_value[:, None] * _value_slope(g, tau_b) + delta / 2 * g
        return grad_C, grad_a, grad_b, None, None, None, None, None, None


_sinkhorn_op.register_autograd(_backward, setup_context=_setup_context)
