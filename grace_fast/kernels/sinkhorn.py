"""Triton log-domain Sinkhorn: one program per batch element runs the whole iteration loop, streaming C in tiles."""

import math
import os

import torch
import triton
import triton.language as tl

from grace_fast.kernels.launch import on_device_of

_DTYPES = {torch.float32: tl.float32, torch.float64: tl.float64}
_TILE = 16384 if os.environ.get("TRITON_INTERPRET") == "1" else 2048


@triton.jit
def _column_pass(
    C_ptr,
    a_ptr,
    b_ptr,
    f_ptr,
    g_ptr,
    g_next_ptr,
    scale,
    rho_b,
    exact_b,
    N,
    M,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    DTYPE: tl.constexpr,
):
    """Column log-sum-exp of (f_i - C_ij) / eps over valid i; writes the g update rho_b eps (log b_j - LSE) to
    g_next_ptr and returns the L1 change of the plan's column sums that it makes (b_j after it when exact_b: the L1
    error of the column sums of the current (f, g)). Works in base 2: scale = log2(e) / eps."""
    err = tl.full([BLOCK_M], 0, DTYPE)
    for m0 in range(0, M, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        in_m = offs_m < M
        b = tl.load(b_ptr + offs_m, mask=in_m, other=0)
        valid_m = b > 0
        run_max = tl.full([BLOCK_M], float("-inf"), DTYPE)
        run_sum = tl.full([BLOCK_M], 0, DTYPE)
        for n0 in range(0, N, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            in_n = offs_n < N
            valid_n = tl.load(a_ptr + offs_n, mask=in_n, other=0) > 0
            f = tl.load(f_ptr + offs_n, mask=in_n, other=0)
            c = tl.load(C_ptr + offs_n[:, None] * M + offs_m[None, :], mask=in_n[:, None] & in_m[None, :], other=0)
            x = tl.where(valid_n[:, None], (f[:, None] - c) * scale, float("-inf"))  # [BLOCK_N, BLOCK_M]
            new_max = tl.maximum(run_max, tl.max(x, 0))  # [BLOCK_M]
            safe_max = tl.where(new_max == float("-inf"), 0, new_max)
            run_sum = run_sum * tl.exp2(run_max - safe_max) + tl.sum(tl.exp2(x - safe_max[None, :]), 0)
            run_max = new_max
        lse = run_max + tl.log2(run_sum)  # [BLOCK_M]
        log2_b = tl.log2(tl.where(valid_m, b, 1))
        g = tl.load(g_ptr + offs_m, mask=in_m, other=0)
        # column sums exp2(g_next * scale + lse) after the update and exp2(g * scale + lse) before it
        after = tl.where(exact_b, b, tl.exp2(tl.where(valid_m, rho_b * log2_b + (1 - rho_b) * lse, 0)))
        err += tl.where(valid_m, tl.abs(tl.exp2(tl.where(valid_m, g * scale + lse, 0)) - after), 0)
        tl.store(g_next_ptr + offs_m, tl.where(valid_m, rho_b * (log2_b - lse) / scale, 0), mask=in_m)
    return tl.sum(err)


@triton.jit
def _row_pass(
    C_ptr,
    a_ptr,
    b_ptr,
    f_ptr,
    g_ptr,
    scale,
    rho_a,
    N,
    M,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    DTYPE: tl.constexpr,
):
    """f_i = rho_a eps (log a_i - LSE_j (g_j - C_ij) / eps) over valid j, written to f_ptr; 0 on padded rows."""
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        in_n = offs_n < N
        a = tl.load(a_ptr + offs_n, mask=in_n, other=0)
        run_max = tl.full([BLOCK_N], float("-inf"), DTYPE)
        run_sum = tl.full([BLOCK_N], 0, DTYPE)
        for m0 in range(0, M, BLOCK_M):
            offs_m = m0 + tl.arange(0, BLOCK_M)
            in_m = offs_m < M
            valid_m = tl.load(b_ptr + offs_m, mask=in_m, other=0) > 0
            g = tl.load(g_ptr + offs_m, mask=in_m, other=0)
            c = tl.load(C_ptr + offs_n[:, None] * M + offs_m[None, :], mask=in_n[:, None] & in_m[None, :], other=0)
            x = tl.where(valid_m[None, :], (g[None, :] - c) * scale, float("-inf"))  # [BLOCK_N, BLOCK_M]
            new_max = tl.maximum(run_max, tl.max(x, 1))  # [BLOCK_N]
            safe_max = tl.where(new_max == float("-inf"), 0, new_max)
            run_sum = run_sum * tl.exp2(run_max - safe_max) + tl.sum(tl.exp2(x - safe_max[:, None]), 1)
            run_max = new_max
        lse = run_max + tl.log2(run_sum)  # [BLOCK_N]
        tl.store(f_ptr + offs_n, tl.where(a > 0, rho_a * (tl.log2(tl.where(a > 0, a, 1)) - lse) / scale, 0), mask=in_n)


@triton.jit(do_not_specialize=["max_iter"])
def _sinkhorn_solve_kernel(
    C_ptr,
    a_ptr,
    b_ptr,
    f_ptr,
    g_ptr,
    g_scratch_ptr,
    n_iter_ptr,
    err_ptr,
    log2e_over_eps: tl.float64,
    tol: tl.float64,
    rho_a: tl.float64,
    rho_b: tl.float64,
    max_iter,
    N,
    M,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    DTYPE: tl.constexpr,
):
    """One program per batch element: Sinkhorn iterations until err < tol or max_iter, then the gauge shift if
    both marginals are exact (rho = tau / (tau + eps) = 1; with a relaxed one the potentials are unique).

    C: [B, N, M]; a, f: [B, N]; b, g: [B, M]; g_scratch: [B, 2, M] zeros, the committed g and the candidate g of
    the next iteration (committed only if the element goes on); f: [B, N] zeros, updated in place.
    The barriers order the global writes of one pass before the reads of the next within the program.
    """
    batch = tl.program_id(0).to(tl.int64)
    C_ptr += batch * N * M
    a_ptr += batch * N
    f_ptr += batch * N
    b_ptr += batch * M
    g_ptr += batch * M
    g_scratch_ptr += batch * 2 * M
    scale = tl.full([], log2e_over_eps, DTYPE)
    err_tol = tl.full([], tol, DTYPE)
    exact_a, exact_b = rho_a == 1, rho_b == 1
    damp_a, damp_b = tl.full([], rho_a, DTYPE), tl.full([], rho_b, DTYPE)

    cur = tl.full([], 0, tl.int32)
    n_iter = tl.full([], 0, tl.int32)
    err = tl.full([], 0, DTYPE)
    go = tl.full([], 1, tl.int1)
    while go:
        g_cur, g_next = g_scratch_ptr + cur * M, g_scratch_ptr + (1 - cur) * M
        err = _column_pass(
            C_ptr, a_ptr, b_ptr, f_ptr, g_cur, g_next, scale, damp_b, exact_b, N, M, BLOCK_N, BLOCK_M, DTYPE
        )
        tl.debug_barrier()
        go = (n_iter < max_iter) & ((n_iter == 0) | (err >= err_tol))
        if go:
            cur = 1 - cur
            _row_pass(C_ptr, a_ptr, b_ptr, f_ptr, g_next, scale, damp_a, N, M, BLOCK_N, BLOCK_M, DTYPE)
            tl.debug_barrier()
            n_iter += 1

    g_final_ptr = g_scratch_ptr + cur * M
    af = tl.full([BLOCK_N], 0, DTYPE)
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        in_n = offs_n < N
        af += tl.load(a_ptr + offs_n, mask=in_n, other=0) * tl.load(f_ptr + offs_n, mask=in_n, other=0)
    bg = tl.full([BLOCK_M], 0, DTYPE)
    for m0 in range(0, M, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        in_m = offs_m < M
        bg += tl.load(b_ptr + offs_m, mask=in_m, other=0) * tl.load(g_final_ptr + offs_m, mask=in_m, other=0)
    shift = tl.where(exact_a & exact_b, (tl.sum(af) - tl.sum(bg)) / 2, 0)
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        in_n = offs_n < N
        a = tl.load(a_ptr + offs_n, mask=in_n, other=0)
        f = tl.load(f_ptr + offs_n, mask=in_n, other=0)
        tl.store(f_ptr + offs_n, tl.where(a > 0, f - shift, 0), mask=in_n)
    for m0 in range(0, M, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        in_m = offs_m < M
        b = tl.load(b_ptr + offs_m, mask=in_m, other=0)
        g = tl.load(g_final_ptr + offs_m, mask=in_m, other=0)
        tl.store(g_ptr + offs_m, tl.where(b > 0, g + shift, 0), mask=in_m)
    tl.store(n_iter_ptr + batch, n_iter.to(tl.int64))
    tl.store(err_ptr + batch, err)


@triton.jit
def _sinkhorn_plan_kernel(
    C_ptr,
    a_ptr,
    b_ptr,
    f_ptr,
    g_ptr,
    plan_ptr,
    log2e_over_eps: tl.float64,
    N,
    M,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    DTYPE: tl.constexpr,
):
    """plan = exp((f_i + g_j - C_ij) / eps) on valid entries, 0 elsewhere; one [BLOCK_N, BLOCK_M] tile a program."""
    batch = tl.program_id(2).to(tl.int64)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    in_n = offs_n < N
    in_m = offs_m < M
    scale = tl.full([], log2e_over_eps, DTYPE)
    valid_n = tl.load(a_ptr + batch * N + offs_n, mask=in_n, other=0) > 0
    valid_m = tl.load(b_ptr + batch * M + offs_m, mask=in_m, other=0) > 0
    f = tl.load(f_ptr + batch * N + offs_n, mask=in_n, other=0)
    g = tl.load(g_ptr + batch * M + offs_m, mask=in_m, other=0)
    offs = batch * N * M + offs_n[:, None] * M + offs_m[None, :]  # [BLOCK_N, BLOCK_M]
    in_tile = in_n[:, None] & in_m[None, :]
    c = tl.load(C_ptr + offs, mask=in_tile, other=0)
    valid = valid_n[:, None] & valid_m[None, :]
    plan = tl.where(valid, tl.exp2(tl.where(valid, (f[:, None] + g[None, :] - c) * scale, 0)), 0)
    tl.store(plan_ptr + offs, plan, mask=in_tile)


def _block_sizes(N: int, M: int) -> tuple[int, int, int]:
    """The [BLOCK_N, BLOCK_M] tile of _TILE elements (fewer for small problems) that pads N x M the least, and its
    num_warps. _TILE keeps the solve kernel free of register spills on sm_90 (8 warps, fp32 and fp64); the
    interpreter pays per tile, not per element, so it gets larger tiles."""
    tile = min(_TILE, triton.next_power_of_2(max(N, 16)) * triton.next_power_of_2(max(M, 16)))
    shapes = [(2**k, tile // 2**k) for k in range(4, tile.bit_length() - 4)]
    block_n, block_m = min(shapes, key=lambda s: (triton.cdiv(N, s[0]) * s[0] * triton.cdiv(M, s[1]) * s[1], s[0]))
    return block_n, block_m, min(max(tile // 256, 1), 8)


@on_device_of("C")
def sinkhorn_triton(
    C: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    eps: float,
    max_iter: int,
    tol: float,
    tau_a: float = math.inf,
    tau_b: float = math.inf,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batched log-domain Sinkhorn with the semantics of sinkhorn_reference, in C's dtype (float32 or float64).

    C: [B, N, M] float32 or float64, contiguous; a: [B, N], b: [B, M] in C's dtype, non-negative, zeros marking
    padding. tau_a, tau_b in (0, inf]: weights of tau_a KL(P 1 || a) and tau_b KL(P^T 1 || b) (inf: that marginal
    is exact). Returns plan [B, N, M], f [B, N], g [B, M] (0 on padding; shifted so that <a, f> = <b, g> when both
    marginals are exact), n_iter [B] int64 and err [B] (the L1 change of the plan's column sums that the next g
    update would make: the L1 error of the column sums when tau_b = inf), all but n_iter in C's dtype.

    >>> C = torch.rand(2, 77, 784, device="cuda")
    >>> a, b = torch.full((2, 77), 1 / 77, device="cuda"), torch.full((2, 784), 1 / 784, device="cuda")
    >>> plan, f, g, n_iter, err = sinkhorn_triton(C, a, b, eps=0.05, max_iter=50, tol=1e-4)
    >>> plan.sum(dim=(1, 2))
    tensor([1.0000, 1.0000], device='cuda:0')
    """
    assert C.dim() == 3 and C.is_contiguous() and C.dtype in _DTYPES, f"C: [B, N, M] float32/64, got {C.shape}"
    B, N, M = C.shape
    assert a.shape == (B, N) and b.shape == (B, M) and a.dtype == b.dtype == C.dtype, "a: [B, N], b: [B, M]"
    assert 0 < eps < math.inf and max_iter >= 1 and tol >= 0, f"eps={eps}, max_iter={max_iter}, tol={tol}"
    assert tau_a > 0 and tau_b > 0, f"tau_a={tau_a}, tau_b={tau_b}: expected values in (0, inf]"
    a, b = a.contiguous(), b.contiguous()
    f = torch.zeros(B, N, dtype=C.dtype, device=C.device)
    g = torch.empty(B, M, dtype=C.dtype, device=C.device)
    g_scratch = torch.zeros(B, 2, M, dtype=C.dtype, device=C.device)
    n_iter = torch.empty(B, dtype=torch.int64, device=C.device)
    err = torch.empty(B, dtype=C.dtype, device=C.device)
    plan = torch.empty_like(C)
    log2e_over_eps = math.log2(math.e) / float(eps)
    block_n, block_m, num_warps = _block_sizes(N, M)
    meta = dict(BLOCK_N=block_n, BLOCK_M=block_m, DTYPE=_DTYPES[C.dtype], num_warps=num_warps)
    rho_a, rho_b = (1.0 if math.isinf(tau) else tau / (tau + eps) for tau in (float(tau_a), float(tau_b)))
    solve_args = (C, a, b, f, g, g_scratch, n_iter, err, log2e_over_eps, float(tol), rho_a, rho_b, int(max_iter), N, M)
    _sinkhorn_solve_kernel[(B,)](*solve_args, **meta)
    grid = (triton.cdiv(M, block_m), triton.cdiv(N, block_n), B)
    _sinkhorn_plan_kernel[grid](C, a, b, f, g, plan, log2e_over_eps, N, M, **meta)
    return plan, f, g, n_iter, err
