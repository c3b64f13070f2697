"""motion_weights: motion-difference weighting of video tokens (docs/method.md section 1)."""

import math

import torch

from grace_fast.ops._backends import resolve
from grace_fast.ops._checks import check_float, refuse_double_backward
from grace_fast.ops.reference.motion_weights import NORM_EPS, motion_weights_reference

MODES = {"both": 0.5, "temporal": 1.0, "spatial": 0.0}


def motion_weights(
    X: torch.Tensor,
    *,
    mode: str = "both",
    alpha: float | None = None,
    window: int = 3,
    temperature: float = 1.0,
    beta: float = 1.0,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights of the video tokens X by their motion, and X reweighted by them: (X_out, w).

    X: [B, T, H, W, D] float32, float16 or bfloat16 (float64 for gradcheck), T frames of H x W patch tokens.
    Returns X_out [B, T, H, W, D] in X's dtype and w [B, T, H, W] float32 (float64 for float64 X), mean 1 per clip:
      Delta_t = X_t - X_{t-1}, Delta_0 = Delta_1; temporal score tau = ||Delta||; spatial score
      sigma = ||Delta - mean of Delta over the window x window neighbourhood|| (clipped at the border);
      r = alpha tau / mean(tau) + (1 - alpha) sigma / mean(sigma) (means per clip); w = T H W softmax(r / temperature)
      over (t, h, w); X_out = X * (1 + beta (w - 1)). T = 1 gives w = 1.
    mode: "both" (alpha 0.5), "temporal" (alpha 1) or "spatial" (alpha 0); alpha in [0, 1] overrides it.
    Gradients reach X through X_out and w.
    backend: "auto" (fastest available), "torch" (the reference), "cpu" (grace_fast._C) or "triton" (fused kernels;
    CUDA tensors, or CPU ones under TRITON_INTERPRET=1), each with its own fused backward.

    >>> X = torch.randn(2, 8, 14, 14, 768)
    >>> X_out, w = motion_weights(X)
    >>> X_out.shape, w.shape, w.mean(dim=(1, 2, 3))
    (torch.Size([2, 8, 14, 14, 768]), torch.Size([2, 8, 14, 14]), tensor([1.0000, 1.0000]))
    """
    check_float("X", X, 5, "[B, T, H, W, D]")
    if X.numel() == 0:
        raise ValueError(f"X [B, T, H, W, D] must have no empty dimension, got shape {tuple(X.shape)}")
    alpha = _alpha(mode, alpha)
    if isinstance(window, bool) or not isinstance(window, int) or window < 1 or window % 2 == 0:
        raise ValueError(f"window must be an odd integer >= 1, got {window!r}")
    if not (isinstance(temperature, (int, float)) and 0 < temperature < math.inf):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if not (isinstance(beta, (int, float)) and math.isfinite(beta)):
        raise ValueError(f"beta must be a finite number, got {beta!r}")
    backend = resolve("motion_weights", backend, X.device)
    temperature, beta = float(temperature), float(beta)
    if backend == "torch":
        return motion_weights_reference(X, alpha=alpha, window=window, temperature=temperature, beta=beta)
    X_out, w, _ = _motion_weights_op(X, alpha, window, temperature, beta, NORM_EPS, backend)
    return X_out, w


def _alpha(mode: str, alpha: float | None) -> float:
    """The mix of temporal and spatial score: alpha if given, else the mode's."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
    if alpha is None:
        return MODES[mode]
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be None or a number in [0, 1], got {alpha!r}")
    return float(alpha)


def _forward_cpu(X, alpha, window, temperature, beta, eps):
    X_out, w = torch.ops.grace_fast.motion_weights_forward(X, alpha, window, temperature, beta, eps)
    return X_out, w, w.new_empty(0)  # no scores: the cpu backward recomputes them


def _forward_triton(X, alpha, window, temperature, beta, eps):
    from grace_fast.kernels.motion_weights import motion_weights_triton

    return motion_weights_triton(X.contiguous(), alpha, window, temperature, beta, eps)


def _backward_cpu(grad_out, grad_w, X, w, scores, *params):
    return torch.ops.grace_fast.motion_weights_backward(grad_out, grad_w, X, w, *params)


def _backward_triton(grad_out, grad_w, X, w, scores, *params):
    from grace_fast.kernels.motion_weights import motion_weights_triton_backward

    return motion_weights_triton_backward(grad_out, grad_w, X.contiguous(), w, scores, *params)


# per backend: forward (X, *params) -> (X_out, w, scores) and backward (grad_out, grad_w, X, w, scores, *params) -> dX
KERNELS = {"cpu": (_forward_cpu, _backward_cpu), "triton": (_forward_triton, _backward_triton)}


@torch.library.custom_op("grace_fast::motion_weights", mutates_args=())
def _motion_weights_op(
    X: torch.Tensor, alpha: float, window: int, temperature: float, beta: float, eps: float, backend: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return KERNELS[backend][0](X, alpha, window, temperature, beta, eps)


@_motion_weights_op.register_fake
def _(X, alpha, window, temperature, beta, eps, backend):
    acc = torch.float64 if X.dtype == torch.float64 else torch.float32
    w = X.new_empty(X.shape[:-1], dtype=acc)
    scores = w.new_empty(2, *w.shape) if backend == "triton" else w.new_empty(0)
    return torch.empty_like(X, memory_format=torch.contiguous_format), w, scores


@torch.library.custom_op("grace_fast::motion_weights_grad", mutates_args=())
def _motion_weights_grad(
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
    backend: str,
) -> torch.Tensor:
    return KERNELS[backend][1](grad_out, grad_w, X, w, scores, alpha, window, temperature, beta, eps)


@_motion_weights_grad.register_fake
def _(grad_out, grad_w, X, *scores_params_and_backend):
    return torch.empty_like(X, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    X, *ctx.params = inputs
    _, w, scores = output  # the Triton kernels return and save their scores; the cpu ones return none
    ctx.mark_non_differentiable(scores)
    ctx.set_materialize_grads(False)  # an unused output costs no zero [B, T, H, W, D] gradient
    ctx.save_for_backward(X, w, scores)


def _backward(ctx, grad_out, grad_w, _grad_scores):
    refuse_double_backward("motion_weights", grad_out, grad_w, *ctx.saved_tensors)
    return _motion_weights_grad(grad_out, grad_w, *ctx.saved_tensors, *ctx.params), None, None, None, None, None, None


_motion_weights_op.register_autograd(_backward, setup_context=_setup_context)
