"""Reference log-domain Sinkhorn (the spec of grace_fast.ops.sinkhorn): plain torch, differentiable by unrolling."""

import torch


def _masked_lse(x: torch.Tensor, valid: torch.Tensor, dim: int) -> torch.Tensor:
    """logsumexp of x over the valid entries along dim; 0 where a slice has no valid entry (finite gradients)."""
    any_valid = valid.any(dim=dim, keepdim=True)
    x = torch.where(valid, x, torch.where(any_valid, float("-inf"), 0.0))
    return torch.logsumexp(x, dim=dim)


def sinkhorn_reference(
    C: torch.Tensor, a: torch.Tensor, b: torch.Tensor, eps: float = 0.05, max_iter: int = 50, tol: float = 1e-4
) -> tuple[torch.Tensor, ...]:
    """Entropic OT between a and b for the cost C by log-domain Sinkhorn, each batch element stopping on its own.

    C: [B, N, M]; a: [B, N], b: [B, M] non-negative, each row summing to 1, zeros marking padding.
    One iteration updates g then f (so rows are exact); an element stops before an iteration once the L1 error
    of its column sums is below tol. The potentials are shifted so that <a, f> = <b, g>.
    Returns plan [B, N, M], cost [B], f [B, N], g [B, M], value [B], n_iter [B] int64, err [B], computed in
    float32 (float64 for float64 inputs).
    """
    dtype = torch.promote_types(C.dtype, torch.float32)
    C, a, b = C.to(dtype), a.to(dtype), b.to(dtype)
    valid_a, valid_b = a > 0, b > 0
    valid = valid_a[:, :, None] & valid_b[:, None, :]
    log_a = torch.where(valid_a, a, 1).log()
    log_b = torch.where(valid_b, b, 1).log()
    f, g = torch.zeros_like(a), torch.zeros_like(b)
    n_iter = torch.zeros(C.shape[0], dtype=torch.int64, device=C.device)
    active = torch.ones(C.shape[0], dtype=torch.bool, device=C.device)

    def column_error(f, g):
        lse = _masked_lse((f[:, :, None] - C) / eps, valid, dim=1)
        column_sums = torch.where(valid_b, torch.exp(g / eps + lse), 0)
        return (column_sums - b).abs().sum(dim=1), lse

    for it in range(max_iter):
        err, lse_col = column_error(f, g)
        if it > 0:
            active = active & (err >= tol)
            if not active.any():
                break
        g = torch.where(active[:, None] & valid_b, eps * (log_b - lse_col), g)
        lse_row = _masked_lse((g[:, None, :] - C) / eps, valid, dim=2)
        f = torch.where(active[:, None] & valid_a, eps * (log_a - lse_row), f)
        n_iter = n_iter + active.long()

    shift = ((a * f).sum(1) - (b * g).sum(1)) / 2
    f = torch.where(valid_a, f - shift[:, None], 0)
    g = torch.where(valid_b, g + shift[:, None], 0)
    log_plan = (f[:, :, None] + g[:, None, :] - C) / eps
    plan = torch.where(valid, torch.exp(torch.where(valid, log_plan, 0)), 0)
    cost = (plan * C).sum(dim=(1, 2))
    value = cost + eps * torch.where(valid, plan * (log_plan - 1), 0).sum(dim=(1, 2))
    err, _ = column_error(f, g)
    return plan, cost, f, g, value, n_iter, err
