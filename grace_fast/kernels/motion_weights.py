"""Triton motion-difference weighting (docs/method.md section 1), forward and backward.

The spatial score and its gradient are stencils over the frame difference Delta = X_t - X_{t-1}: each tap of the
clipped window is a masked load of a neighbouring token, so Delta, its window mean and E = Delta - mean are never
stored. The backward needs the window sum of Y = c E / count (a second stencil); each (clip, feature block)
program walks its clip backwards in time and keeps Y, G_t and G_{t+1} of one frame in a workspace of
[B, 3, H W, D] (1/T of X's size in float32), so every dX element is written once.
"""

import os

import torch
import triton
import triton.language as tl

from grace_fast.kernels.launch import on_device_of

_DTYPES = {torch.float32: tl.float32, torch.float64: tl.float64}
_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
# the interpreter pays per block, not per element: larger blocks there
BLOCK_S = 64 if _INTERPRETED else 32
BLOCK_D = 128 if _INTERPRETED else 64


@triton.jit
def _window(offs_s, H, W, R: tl.constexpr, DTYPE: tl.constexpr):
    """(h, w) of each token and 1 / the size of its window clipped at the border."""
    h = offs_s // W
    w = offs_s % W
    rows = tl.minimum(h + R, H - 1) - tl.maximum(h - R, 0) + 1
    cols = tl.minimum(w + R, W - 1) - tl.maximum(w - R, 0) + 1
    return h, w, 1.0 / tl.maximum(rows * cols, 1).to(DTYPE)  # padding tokens past H W get 1


@triton.jit
def _window_sum(
    ptr, other_ptr, h, w, in_s, offs_d, in_d, H, W, D, DIFF: tl.constexpr, WINDOW: tl.constexpr, DTYPE: tl.constexpr
):
    """Sum over the clipped window around each token of ptr[token, offs_d], minus other_ptr[token, offs_d] if DIFF."""
    R: tl.constexpr = WINDOW // 2
    total = tl.zeros([h.shape[0], offs_d.shape[0]], DTYPE)
    # a loop, not tl.static_range: unrolled, the compiler hoists all WINDOW^2 loads and spills registers
    for tap in range(WINDOW * WINDOW):
        hh = h + (tap // WINDOW - R)
        ww = w + (tap % WINDOW - R)
        ok = in_s & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
        offs = (hh * W + ww)[:, None] * D + offs_d[None, :]  # [BLOCK_S, BLOCK_D]
        mask = ok[:, None] & in_d[None, :]
        value = tl.load(ptr + offs, mask=mask, other=0).to(DTYPE)
        if DIFF:
            value -= tl.load(other_ptr + offs, mask=mask, other=0).to(DTYPE)
        total += value
    return total


@triton.jit
def _add_squares(top, sq, v):
    """The running (max |v|, sum of (v / max |v|)^2) of each row, [BLOCK_S] each, updated with a block v [BLOCK_S,
    BLOCK_D]: the squares are taken over the largest entry so far, so that they neither overflow nor underflow (the
    norm is top sqrt(sq))."""
    new_top = tl.maximum(top, tl.max(tl.abs(v), 1))
    safe = tl.where(new_top > 0, new_top, 1)
    ratio = top / safe
    v = v / safe[:, None]
    return new_top, sq * ratio * ratio + tl.sum(v * v, 1)


@triton.jit
def _scores_kernel(
    X_ptr,
    tau_ptr,
    sigma_ptr,
    T,
    H,
    W,
    D,
    SPATIAL: tl.constexpr,
    WINDOW: tl.constexpr,
    SCALE_SQUARES: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DTYPE: tl.constexpr,
):
    """tau = ||Delta_t||, sigma = ||Delta_t - window mean|| of BLOCK_S tokens of a frame t >= 1 (also written to
    frame 0 for t = 1: Delta_0 = Delta_1), scaled before squaring if SCALE_SQUARES (float32: float64's squares of
    float32 inputs cannot overflow). X: [B, T, H W, D]; tau, sigma: [B, T, H W]."""
    frame = tl.program_id(0).to(tl.int64)  # over B (T - 1) frames
    b = frame // (T - 1)
    t = frame % (T - 1) + 1
    S = H * W
    offs_s = tl.program_id(1) * BLOCK_S + tl.arange(0, BLOCK_S)
    in_s = offs_s < S
    h, w, inv_count = _window(offs_s, H, W, WINDOW // 2, DTYPE)
    x_t = X_ptr + (b * T + t) * S * D
    x_prev = x_t - S * D
    tau_top = tl.zeros([BLOCK_S], DTYPE)
    tau2 = tl.zeros([BLOCK_S], DTYPE)
    sigma_top = tl.zeros([BLOCK_S], DTYPE)
    sigma2 = tl.zeros([BLOCK_S], DTYPE)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        in_d = offs_d < D
        offs = offs_s[:, None] * D + offs_d[None, :]  # [BLOCK_S, BLOCK_D]
        mask = in_s[:, None] & in_d[None, :]
        delta = tl.load(x_t + offs, mask=mask, other=0).to(DTYPE) - tl.load(x_prev + offs, mask=mask, other=0).to(DTYPE)
        if SCALE_SQUARES:
            tau_top, tau2 = _add_squares(tau_top, tau2, delta)
        else:
            tau2 += tl.sum(delta * delta, 1)
        if SPATIAL:
            e = (
                delta
                - _window_sum(x_t, x_prev, h, w, in_s, offs_d, in_d, H, W, D, True, WINDOW, DTYPE) * inv_count[:, None]
            )
            if SCALE_SQUARES:
                sigma_top, sigma2 = _add_squares(sigma_top, sigma2, e)
            else:
                sigma2 += tl.sum(e * e, 1)
    out = (b * T + t) * S + offs_s
    tau = tl.sqrt(tau2)
    sigma = tl.sqrt(sigma2)
    if SCALE_SQUARES:
        tau *= tau_top
        sigma *= sigma_top
    tl.store(tau_ptr + out, tau, mask=in_s)
    tl.store(sigma_ptr + out, sigma, mask=in_s)
    if t == 1:
        tl.store(tau_ptr + out - S, tau, mask=in_s)
        tl.store(sigma_ptr + out - S, sigma, mask=in_s)


@triton.jit
def _softmax_kernel(
    tau_ptr,
    sigma_ptr,
    w_ptr,
    N,
    alpha: tl.float64,
    inv_temperature: tl.float64,
    eps: tl.float64,
    BLOCK: tl.constexpr,
    DTYPE: tl.constexpr,
):
    """w = N softmax(r / temperature) over one clip, r = alpha tau / (mean tau + eps) + (1 - alpha) sigma / (...)."""
    base = tl.program_id(0).to(tl.int64) * N
    alpha = tl.full([], alpha, DTYPE)
    inv_temperature = tl.full([], inv_temperature, DTYPE)
    eps = tl.full([], eps, DTYPE)
    sum_tau = tl.zeros([BLOCK], DTYPE)
    sum_sigma = tl.zeros([BLOCK], DTYPE)
    for i0 in range(0, N, BLOCK):
        offs = i0 + tl.arange(0, BLOCK)
        sum_tau += tl.load(tau_ptr + base + offs, mask=offs < N, other=0)
        sum_sigma += tl.load(sigma_ptr + base + offs, mask=offs < N, other=0)
    k_tau = alpha / (tl.sum(sum_tau) / N + eps) * inv_temperature
    k_sigma = (1 - alpha) / (tl.sum(sum_sigma) / N + eps) * inv_temperature
    top = tl.full([BLOCK], float("-inf"), DTYPE)
    for i0 in range(0, N, BLOCK):
        offs = i0 + tl.arange(0, BLOCK)
        r = k_tau * tl.load(tau_ptr + base + offs, mask=offs < N, other=0) + k_sigma * tl.load(
            sigma_ptr + base + offs, mask=offs < N, other=0
        )
        top = tl.maximum(top, tl.where(offs < N, r, float("-inf")))
    top_all = tl.max(top)
    total = tl.zeros([BLOCK], DTYPE)
    for i0 in range(0, N, BLOCK):
        offs = i0 + tl.arange(0, BLOCK)
        r = k_tau * tl.load(tau_ptr + base + offs, mask=offs < N, other=0) + k_sigma * tl.load(
            sigma_ptr + base + offs, mask=offs < N, other=0
        )
        total += tl.where(offs < N, tl.exp(r - top_all), 0)
    scale = N / tl.sum(total)
    for i0 in range(0, N, BLOCK):
        offs = i0 + tl.arange(0, BLOCK)
        r = k_tau * tl.load(tau_ptr + base + offs, mask=offs < N, other=0) + k_sigma * tl.load(
            sigma_ptr + base + offs, mask=offs < N, other=0
        )
        tl.store(w_ptr + base + offs, tl.exp(r - top_all) * scale, mask=offs < N)


@triton.jit
def _scale_kernel(
    X_ptr, w_ptr, out_ptr, rows, D, beta: tl.float64, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, DTYPE: tl.constexpr
):
    """out = X * (1 + beta (w - 1)) for a [BLOCK_S, BLOCK_D] tile of X [rows, D]."""
    beta = tl.full([], beta, DTYPE)
    offs_r = tl.program_id(0).to(tl.int64) * BLOCK_S + tl.arange(0, BLOCK_S)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    in_r = offs_r < rows
    m = 1 + beta * (tl.load(w_ptr + offs_r, mask=in_r, other=1).to(DTYPE) - 1)
    offs = offs_r[:, None] * D + offs_d[None, :]  # [BLOCK_S, BLOCK_D]
    mask = in_r[:, None] & (offs_d < D)[None, :]
    x = tl.load(X_ptr + offs, mask=mask, other=0).to(DTYPE)
    tl.store(out_ptr + offs, (x * m[:, None]).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _row_dot_kernel(
    grad_out_ptr,
    X_ptr,
    grad_w_ptr,
    gw_ptr,
    rows,
    D,
    beta: tl.float64,
    HAS_GRAD_OUT: tl.constexpr,
    HAS_GRAD_W: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DTYPE: tl.constexpr,
):
    """gw = dL/dw = grad_w + beta <grad_out, X> per token; X, grad_out: [rows, D]."""
    beta = tl.full([], beta, DTYPE)
    offs_r = tl.program_id(0).to(tl.int64) * BLOCK_S + tl.arange(0, BLOCK_S)
    in_r = offs_r < rows
    g = tl.zeros([BLOCK_S], DTYPE)
    if HAS_GRAD_W:
        g += tl.load(grad_w_ptr + offs_r, mask=in_r, other=0).to(DTYPE)
    if HAS_GRAD_OUT:
        acc = tl.zeros([BLOCK_S, BLOCK_D], DTYPE)
        for d0 in range(0, D, BLOCK_D):
            offs_d = d0 + tl.arange(0, BLOCK_D)
            offs = offs_r[:, None] * D + offs_d[None, :]  # [BLOCK_S, BLOCK_D]
            mask = in_r[:, None] & (offs_d < D)[None, :]
            acc += tl.load(grad_out_ptr + offs, mask=mask, other=0).to(DTYPE) * tl.load(
                X_ptr + offs, mask=mask, other=0
            ).to(DTYPE)
        g += beta * tl.sum(acc, 1)
    tl.store(gw_ptr + offs_r, g, mask=in_r)


@triton.jit
def _factor(score_ptr, w_ptr, gw_ptr, offs, valid, mix, mean_g, inv_temperature, shift, inv_denom, k):
    """dL/dscore / score / k of the tokens offs of one clip (0 where the score is 0), from the scores times the clip's
    scale k and inv_denom = 1 / (k denom): each factor in range."""
    score = tl.load(score_ptr + offs, mask=valid, other=0) * k
    gr = tl.load(w_ptr + offs, mask=valid, other=0) * (tl.load(gw_ptr + offs, mask=valid, other=0) - mean_g)
    g = (mix * gr * inv_temperature - shift) * inv_denom
    return tl.where(valid & (score > 0), g / tl.where(score > 0, score, 1) * k, 0)


@triton.jit
def _clip_factors_kernel(
    w_ptr,
    tau_ptr,
    sigma_ptr,
    gw_ptr,
    a_ptr,
    c_ptr,
    k_ptr,
    N,
    S,
    alpha: tl.float64,
    inv_temperature: tl.float64,
    eps: tl.float64,
    BLOCK: tl.constexpr,
    DTYPE: tl.constexpr,
):
    """Through the softmax and the per-clip normalisation: a = dL/dtau / tau / k, c = dL/dsigma / sigma / k of one
    clip, frame 0's share folded into frame 1 (Delta_0 = Delta_1), and the clip's scale k, a power of two near
    1 / max score: G = a (k Delta) + ... keeps each factor in range (dL/dtau / tau is about 1 / |X|^2, beyond float32
    for entries around 1e19). w, tau, sigma, gw (= dL/dw), a, c: [B, N]; k: [B]."""
    alpha = tl.full([], alpha, DTYPE)
    inv_temperature = tl.full([], inv_temperature, DTYPE)
    eps = tl.full([], eps, DTYPE)
    base = tl.program_id(0).to(tl.int64) * N
    w_ptr += base
    tau_ptr += base
    sigma_ptr += base
    gw_ptr += base
    weighted = tl.zeros([BLOCK], DTYPE)
    sum_tau = tl.zeros([BLOCK], DTYPE)
    sum_sigma = tl.zeros([BLOCK], DTYPE)
    top = tl.zeros([BLOCK], DTYPE)
    for i0 in range(0, N, BLOCK):
        offs = i0 + tl.arange(0, BLOCK)
        valid = offs < N
        weighted += tl.load(w_ptr + offs, mask=valid, other=0) * tl.load(gw_ptr + offs, mask=valid, other=0)
        tau = tl.load(tau_ptr + offs, mask=valid, other=0)
        sigma = tl.load(sigma_ptr + offs, mask=valid, other=0)
        sum_tau += tau
        sum_sigma += sigma
        top = tl.maximum(top, tl.maximum(tau, sigma))
    top_all = tl.max(top)
    k = tl.where((top_all > 0) & (top_all < float("inf")), tl.exp2(-tl.floor(tl.log2(top_all))), 1).to(DTYPE)
    tl.store(k_ptr + tl.program_id(0), k)
    mean_g = tl.sum(weighted) / N
    denom_tau = (tl.sum(sum_tau) / N + eps) * k
    denom_sigma = (tl.sum(sum_sigma) / N + eps) * k
    # d r / d tau_i = alpha / denom - sum_j alpha tau_j / denom^2 / N: the shift is <dL/dr, tau_hat> alpha / N
    dot_tau = tl.zeros([BLOCK], DTYPE)
    dot_sigma = tl.zeros([BLOCK], DTYPE)
    for i0 in range(0, N, BLOCK):
        offs = i0 + tl.arange(0, BLOCK)
        valid = offs < N
        gr = tl.load(w_ptr + offs, mask=valid, other=0) * (tl.load(gw_ptr + offs, mask=valid, other=0) - mean_g)
        dot_tau += gr * (tl.load(tau_ptr + offs, mask=valid, other=0) * k)
        dot_sigma += gr * (tl.load(sigma_ptr + offs, mask=valid, other=0) * k)
    shift_tau = alpha * inv_temperature * tl.sum(dot_tau) / denom_tau / N
    shift_sigma = (1 - alpha) * inv_temperature * tl.sum(dot_sigma) / denom_sigma / N
    for i0 in range(0, N, BLOCK):
        offs = i0 + tl.arange(0, BLOCK)
        valid = offs < N
        fold = valid & (offs >= S) & (offs < 2 * S)
        a = _factor(tau_ptr, w_ptr, gw_ptr, offs, valid, alpha, mean_g, inv_temperature, shift_tau, 1 / denom_tau, k)
        a += _factor(
            tau_ptr, w_ptr, gw_ptr, offs - S, fold, alpha, mean_g, inv_temperature, shift_tau, 1 / denom_tau, k
        )
        c = _factor(
            sigma_ptr, w_ptr, gw_ptr, offs, valid, 1 - alpha, mean_g, inv_temperature, shift_sigma, 1 / denom_sigma, k
        )
        c += _factor(
            sigma_ptr,
            w_ptr,
            gw_ptr,
            offs - S,
            fold,
            1 - alpha,
            mean_g,
            inv_temperature,
            shift_sigma,
            1 / denom_sigma,
            k,
        )
        tl.store(a_ptr + base + offs, a, mask=valid)
        tl.store(c_ptr + base + offs, c, mask=valid)


@triton.jit
def _local_terms(
    x_t,
    a_ptr,
    c_ptr,
    k,
    frame_s,
    offs_s,
    offs_d,
    H,
    W,
    D,
    SPATIAL: tl.constexpr,
    WINDOW: tl.constexpr,
    DTYPE: tl.constexpr,
):
    """For a [BLOCK_S, BLOCK_D] block of frame t >= 1 (x_t its [H W, D] tokens, frame_s its offset in a, c; k the
    clip's scale, a and c divided by it): the terms a (k Delta) + c (k E) of G_t, and Y = c (k E) / count, whose window
    sums G_t subtracts (zero unless SPATIAL)."""
    S = H * W
    in_s = offs_s < S
    in_d = offs_d < D
    offs = offs_s[:, None] * D + offs_d[None, :]  # [BLOCK_S, BLOCK_D]
    mask = in_s[:, None] & in_d[None, :]
    delta = tl.load(x_t + offs, mask=mask, other=0).to(DTYPE) - tl.load(x_t - S * D + offs, mask=mask, other=0).to(
        DTYPE
    )
    a = tl.load(a_ptr + frame_s + offs_s, mask=in_s, other=0)
    G = a[:, None] * (delta * k)
    y = tl.zeros_like(delta)
    if SPATIAL:
        h, w, inv_count = _window(offs_s, H, W, WINDOW // 2, DTYPE)
        c = tl.load(c_ptr + frame_s + offs_s, mask=in_s, other=0)
        e = (
            delta
            - _window_sum(x_t, x_t - S * D, h, w, in_s, offs_d, in_d, H, W, D, True, WINDOW, DTYPE) * inv_count[:, None]
        ) * k
        G += c[:, None] * e
        y = (c * inv_count)[:, None] * e
    return G, y


@triton.jit
def _grad_kernel(
    grad_out_ptr,
    X_ptr,
    w_ptr,
    a_ptr,
    c_ptr,
    k_ptr,
    work_ptr,
    dX_ptr,
    T,
    H,
    W,
    D,
    beta: tl.float64,
    HAS_GRAD_OUT: tl.constexpr,
    SPATIAL: tl.constexpr,
    WINDOW: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DTYPE: tl.constexpr,
):
    """dX_t = grad_out_t m_t + G_t - G_{t+1} for a BLOCK_D slice of the features of one clip, t = T - 1 down to 0,
    with G_t = a Delta_t + c E_t - window sum of Y_t, Y_t = c E_t / count (G_0 = 0: frame 0 is folded into frame 1).
    X, grad_out, dX: [B, T, H W, D]; w, a, c: [B, T, H W]; k: [B]; work: [B, 3, H W, D], of which this program uses its
    columns: Y_t, then G_{t+1} and G_t alternating between two buffers, so that no thread overwrites what another may
    still read. The barriers order one phase's workspace writes before the next phase's reads."""
    b = tl.program_id(0).to(tl.int64)
    beta = tl.full([], beta, DTYPE)
    k = tl.load(k_ptr + b)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    in_d = offs_d < D
    S = H * W
    Y_ptr = work_ptr + b * 3 * S * D
    for i in range(0, T):
        t = T - 1 - i
        frame = b * T + t
        x_t = X_ptr + frame * S * D
        G_next_ptr = Y_ptr + (1 + i % 2) * S * D  # G_{t+1}, written by the previous iteration
        G_ptr = Y_ptr + (2 - i % 2) * S * D
        if SPATIAL and t > 0:
            for s0 in range(0, S, BLOCK_S):
                offs_s = s0 + tl.arange(0, BLOCK_S)
                mask = (offs_s < S)[:, None] & in_d[None, :]
                _, y = _local_terms(x_t, a_ptr, c_ptr, k, frame * S, offs_s, offs_d, H, W, D, SPATIAL, WINDOW, DTYPE)
                tl.store(Y_ptr + offs_s[:, None] * D + offs_d[None, :], y, mask=mask)
            tl.debug_barrier()
        for s0 in range(0, S, BLOCK_S):
            offs_s = s0 + tl.arange(0, BLOCK_S)
            in_s = offs_s < S
            offs = offs_s[:, None] * D + offs_d[None, :]  # [BLOCK_S, BLOCK_D]
            mask = in_s[:, None] & in_d[None, :]
            G = tl.zeros([BLOCK_S, BLOCK_D], DTYPE)
            if t > 0:
                G, _ = _local_terms(x_t, a_ptr, c_ptr, k, frame * S, offs_s, offs_d, H, W, D, SPATIAL, WINDOW, DTYPE)
                if SPATIAL:
                    h, w, _ = _window(offs_s, H, W, WINDOW // 2, DTYPE)
                    G -= _window_sum(Y_ptr, Y_ptr, h, w, in_s, offs_d, in_d, H, W, D, False, WINDOW, DTYPE)
            dX = G
            if t < T - 1:
                dX -= tl.load(G_next_ptr + offs, mask=mask, other=0)
            if HAS_GRAD_OUT:
                m = 1 + beta * (tl.load(w_ptr + frame * S + offs_s, mask=in_s, other=1) - 1)
                dX += tl.load(grad_out_ptr + frame * S * D + offs, mask=mask, other=0).to(DTYPE) * m[:, None]
            tl.store(dX_ptr + frame * S * D + offs, dX.to(dX_ptr.dtype.element_ty), mask=mask)
            tl.store(G_ptr + offs, G, mask=mask)
        tl.debug_barrier()


def _acc(X: torch.Tensor) -> torch.dtype:
    return torch.float64 if X.dtype == torch.float64 else torch.float32


@on_device_of("X")
def motion_weights_triton(
    X: torch.Tensor, alpha: float, window: int, temperature: float, beta: float, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """X_out, w and scores [2, B, T, H, W] (tau, sigma) with the semantics of motion_weights_reference.

    X: [B, T, H, W, D] float32, float16, bfloat16 or float64, contiguous. X_out in X's dtype; w, scores in float32
    (float64 for float64 X).

    >>> X = torch.randn(2, 8, 14, 14, 768, device="cuda")
    >>> X_out, w, scores = motion_weights_triton(X, 0.5, 3, 1.0, 1.0, 1e-6)
    >>> w.mean(dim=(1, 2, 3))
    tensor([1.0000, 1.0000], device='cuda:0')
    """
    assert X.dim() == 5 and X.is_contiguous(), f"X: contiguous [B, T, H, W, D], got {tuple(X.shape)}"
    B, T, H, W, D = X.shape
    S, acc = H * W, _acc(X)
    dtype = _DTYPES[acc]
    scores = torch.zeros(2, B, T, H, W, dtype=acc, device=X.device)
    if T == 1:
        return X.clone(), torch.ones(B, T, H, W, dtype=acc, device=X.device), scores
    tau, sigma = scores[0], scores[1]
    w = torch.empty(B, T, H, W, dtype=acc, device=X.device)
    X_out = torch.empty_like(X)
    meta = dict(BLOCK_S=BLOCK_S, BLOCK_D=BLOCK_D, DTYPE=dtype)
    _scores_kernel[(B * (T - 1), triton.cdiv(S, BLOCK_S))](
        X, tau, sigma, T, H, W, D, SPATIAL=alpha != 1, WINDOW=window, SCALE_SQUARES=acc == torch.float32, **meta
    )
    _softmax_kernel[(B,)](tau, sigma, w, T * S, alpha, 1 / temperature, eps, BLOCK=1024, DTYPE=dtype)
    rows = B * T * S
    _scale_kernel[(triton.cdiv(rows, BLOCK_S), triton.cdiv(D, BLOCK_D))](X, w, X_out, rows, D, beta, **meta)
    return X_out, w, scores


@on_device_of("X")
def motion_weights_triton_backward(
    grad_out: torch.Tensor | None,
    grad_w: torch.Tensor | None,
    X: torch.Tensor,
    w: torch.Tensor,
    scores: torch.Tensor,
    alpha: float,
    window: int,
    temperature: float,
    beta: float,
    eps: float,
) -> torch.Tensor:
    """dX [B, T, H, W, D] in X's dtype from the upstream gradients of X_out and w (None = zero); w and scores as
    motion_weights_triton returned them."""
    assert X.dim() == 5 and X.is_contiguous(), f"X: contiguous [B, T, H, W, D], got {tuple(X.shape)}"
    B, T, H, W, D = X.shape
    S, acc = H * W, _acc(X)
    meta = dict(BLOCK_S=BLOCK_S, BLOCK_D=BLOCK_D, DTYPE=_DTYPES[acc])
    grad_out = None if grad_out is None else grad_out.to(X.dtype).contiguous()
    grad_w = None if grad_w is None else grad_w.to(acc).contiguous()
    rows = B * T * S
    factors = torch.empty(3, rows, dtype=acc, device=X.device)
    gw, a, c = factors
    k = torch.ones(B, dtype=acc, device=X.device)
    if T > 1:
        _row_dot_kernel[(triton.cdiv(rows, BLOCK_S),)](
            grad_out if grad_out is not None else X,
            X,
            grad_w if grad_w is not None else w,
            gw,
            rows,
            D,
            beta,
            HAS_GRAD_OUT=grad_out is not None and beta != 0,
            HAS_GRAD_W=grad_w is not None,
            **meta,
        )
        _clip_factors_kernel[(B,)](
            w, scores[0], scores[1], gw, a, c, k, T * S, S, alpha, 1 / temperature, eps, BLOCK=1024, DTYPE=_DTYPES[acc]
        )
    work = torch.empty(B, 3, S, D, dtype=acc, device=X.device)
    dX = torch.empty_like(X)
    _grad_kernel[(B, triton.cdiv(D, BLOCK_D))](
        grad_out if grad_out is not None else X,
        X,
        w,
        a,
        c,
        k,
        work,
        dX,
        T,
        H,
        W,
        D,
        beta,
        HAS_GRAD_OUT=grad_out is not None,
        SPATIAL=alpha != 1,
        WINDOW=window,
        **meta,
    )
    return dX
