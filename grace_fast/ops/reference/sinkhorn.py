"""Reference log-domain Sinkhorn (the spec of grace_fast.ops.sinkhorn): plain torch, differentiable by unrolling."""

import math

import torch


def _masked_lse(x: torch.Tensor, valid: torch.Tensor, dim: int) -> torch.Tensor:
    """logsumexp of x over the valid entries along dim; 0 where a slice has no valid entry (finite gradients)."""
    any_valid = valid.any(dim=dim, keepdim=True)
    x = torch.where(valid, x, torch.where(any_valid, float("-inf"), 0.0))
    return torch.logsumexp(x, dim=dim)


def damping(tau: float, eps: float) -> float:
    """tau / (tau + eps), the factor of a KL-relaxed potential update; exactly 1 for an exact marginal (tau = inf)."""
    return 1.0 if math.isinf(tau) else tau / (tau + eps)


def marginal_penalty(mass: torch.Tensor, target: torch.Tensor, tau: float) -> torch.Tensor:
    """tau KL(mass || target) = tau sum (mass log(mass / target) - mass + target) over the last dim; 0 for tau = inf
    (an exact marginal, whose constraint the solver enforces instead). mass, target: [B, L] -> [B]."""
    if math.isinf(tau):
        return mass.new_zeros(mass.shape[:-1])
    valid = target > 0
    kl = torch.xlogy(mass, mass) - torch.xlogy(mass, torch.where(valid, target, 1)) - mass + target
    return tau * torch.where(valid, kl, 0).sum(-1)


def column_err(col_mass: torch.Tensor, b: torch.Tensor, g: torch.Tensor, eps: float, tau_b: float) -> torch.Tensor:
    """The L1 change that one more g update makes to the column sums q of a plan: with q_j = exp(g_j / eps + LSE_j),
    the update leaves exp(rho log b_j + (1 - rho) LSE_j), rho = tau_b / (tau_b + eps) (in the log domain: q_j and
    b_j / q_j may under- or overflow apart); for an exact b (rho = 1) this is the L1 error |q - b|. A valid column
    that holds no mass counts b_j for an exact b and 0 for a relaxed one. col_mass, b, g: [B, M] -> [B]."""
    rho = damping(tau_b, eps)
    if rho == 1:
        return (col_mass - b).abs().sum(-1)
    held = (col_mass > 0) & (b > 0)
    log_q = torch.where(held, col_mass, 1).log()
    after = torch.exp(rho * torch.where(held, b, 1).log() + (1 - rho) * (log_q - g / eps))
    return torch.where(held, (after - col_mass).abs(), 0).sum(-1)


def sinkhorn_reference(
    C: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    eps: float = 0.05,
    max_iter: int = 50,
    tol: float = 1e-4,
    tau_a: float = math.inf,
    tau_b: float = math.inf,
    compute_dtype: torch.dtype = torch.float64,
) -> tuple[torch.Tensor, ...]:
    """Entropic OT between a and b for the cost C by log-domain Sinkhorn, each batch element stopping on its own:
    min <P, C> - eps H(P) + tau_a KL(P 1 || a) + tau_b KL(P^T 1 || b), H(P) = -sum P (log P - 1).

    C: [B, N, M]; a: [B, N], b: [B, M] non-negative, zeros marking padding. tau = inf keeps that marginal exact.
    One iteration, with rho = tau / (tau + eps) (1 for tau = inf):
        g_j <- rho_b eps (log b_j - LSE_i((f_i - C_ij) / eps)),   f_i <- rho_a eps (log a_i - LSE_j((g_j - C_ij) / eps))
    err is the L1 change that the next g update makes to the plan's column sums: for an exact b, the L1 error of the
    column sums; for a relaxed b, zero exactly at the fixed point. An element stops before an iteration once its err
    is below tol. With both marginals exact the potentials are shifted so that <a, f> = <b, g> (they are unique
    otherwise). Returns plan [B, N, M], cost [B] = <plan, C>, f [B, N], g [B, M], value [B] (the objective above),
    n_iter [B] int64, err [B] (column_err of the returned plan), in float32 (float64 for float64 inputs).

    The iterations run in compute_dtype, float64 by default: potentials of magnitude |C| stored in float32 resolve
    (f + g - C) / eps only to |C| / eps * 2^-24, a whole unit at cost 1e4 and eps 1e-3, and the spec is meant to be
    at least as accurate as the kernels. compute_dtype=torch.float32 is plain float32 torch, the yardstick of the
    float32 kernels' error in the tests.
    """
    if not 0 < eps < math.inf:
        raise ValueError(f"eps must be > 0 and finite, got {eps}")
    dtype = torch.promote_types(C.dtype, torch.float32)
    C, a, b = C.to(compute_dtype), a.to(compute_dtype), b.to(compute_dtype)
    rho_a, rho_b = damping(tau_a, eps), damping(tau_b, eps)
    valid_a, valid_b = a > 0, b > 0
    valid = valid_a[:, :, None] & valid_b[:, None, :]
    log_a = torch.where(valid_a, a, 1).log()
    log_b = torch.where(valid_b, b, 1).log()
    f, g = torch.zeros_like(a), torch.zeros_like(b)
    n_iter = torch.zeros(C.shape[0], dtype=torch.int64, device=C.device)
    active = torch.ones(C.shape[0], dtype=torch.bool, device=C.device)

    def column_update(f, g):
        """The g update for f, and the L1 change it makes to the column sums of the plan of (f, g)."""
        lse = _masked_lse((f[:, :, None] - C) / eps, valid, dim=1)
        g_next = rho_b * eps * (log_b - lse)
        after = b if rho_b == 1 else torch.exp(torch.where(valid_b, g_next / eps + lse, 0))
        change = torch.where(valid_b, (after - torch.exp(torch.where(valid_b, g / eps + lse, 0))).abs(), 0)
        return g_next, change.sum(dim=1)

    for it in range(max_iter):
        g_next, err = column_update(f, g)
        if it > 0:
            active = active & (err >= tol)
            if not active.any():
                break
        g = torch.where(active[:, None] & valid_b, g_next, g)
        lse_row = _masked_lse((g[:, None, :] - C) / eps, valid, dim=2)
        f = torch.where(active[:, None] & valid_a, rho_a * eps * (log_a - lse_row), f)
        n_iter = n_iter + active.long()

    if rho_a == 1 and rho_b == 1:
        shift = ((a * f).sum(1) - (b * g).sum(1)) / 2
        f, g = f - shift[:, None], g + shift[:, None]
    f, g = torch.where(valid_a, f, 0), torch.where(valid_b, g, 0)
    log_plan = (f[:, :, None] + g[:, None, :] - C) / eps
    plan = torch.where(valid, torch.exp(torch.where(valid, log_plan, 0)), 0)
    cost = (plan * C).sum(dim=(1, 2))
    value = cost + eps * torch.where(valid, plan * (log_plan - 1), 0).sum(dim=(1, 2))
    value = value + marginal_penalty(plan.sum(2), a, tau_a) + marginal_penalty(plan.sum(1), b, tau_b)
    plan, cost, f, g, value = (x.to(dtype) for x in (plan, cost, f, g, value))
    return plan, cost, f, g, value, n_iter, column_err(plan.sum(1), b.to(dtype), g, eps, tau_b)
