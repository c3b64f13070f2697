"""Reference motion-difference weighting (the spec of grace_fast.ops.motion_weights, docs/method.md section 1)."""

import torch
import torch.nn.functional as F

from grace_fast.ops.reference.norm import careful_norm

NORM_EPS = 1e-6  # added to each clip's mean score before dividing by it: a clip without motion gets w = 1


def window_mean(x: torch.Tensor, window: int) -> torch.Tensor:
    """Mean of x over the window x window neighbourhood of each (h, w), clipped at the border.

    x: [B, T, H, W, D] -> [B, T, H, W, D]; window odd.
    """
    B, T, H, W, D = x.shape
    channels = x.reshape(B * T, H, W, D).permute(0, 3, 1, 2)  # [B T, D, H, W] (channels-last memory)
    mean = F.avg_pool2d(channels, window, stride=1, padding=window // 2, count_include_pad=False)
    return mean.permute(0, 2, 3, 1).reshape(B, T, H, W, D)


def _normalise(score: torch.Tensor) -> torch.Tensor:
    """score [B, T, H, W] divided by its per-clip mean over (t, h, w) plus NORM_EPS."""
    return score / (score.mean(dim=(1, 2, 3), keepdim=True) + NORM_EPS)


def motion_weights_reference(
    X: torch.Tensor, *, alpha: float = 0.5, window: int = 3, temperature: float = 1.0, beta: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Motion weights w of the tokens X and the reweighted tokens X_out = X * (1 + beta (w - 1)).

    X: [B, T, H, W, D] any float dtype. Returns X_out [B, T, H, W, D] in X's dtype and w [B, T, H, W] float32
    (float64 for float64 X), computed in float32 (float64):
      Delta_t = X_t - X_{t-1} (t >= 1), Delta_0 = Delta_1;  tau = ||Delta||, sigma = ||Delta - window_mean(Delta)||
        (norms scaled before squaring: finite for any finite X)
      r = alpha tau / (mean tau + eps) + (1 - alpha) sigma / (mean sigma + eps)   (means per clip over (t, h, w))
      w = T H W softmax_(t, h, w)(r / temperature);  T = 1 gives w = 1.
    """
    dtype = torch.promote_types(X.dtype, torch.float32)
    x = X.to(dtype)
    B, T, H, W, _ = x.shape
    if T == 1:
        w = x.new_ones(B, T, H, W)
    else:
        delta = torch.diff(x, dim=1)
        delta = torch.cat([delta[:, :1], delta], dim=1)  # Delta_0 = Delta_1
        tau = careful_norm(delta)
        sigma = careful_norm(delta - window_mean(delta, window))
        r = alpha * _normalise(tau) + (1 - alpha) * _normalise(sigma)
        w = (T * H * W) * torch.softmax(r.reshape(B, -1) / temperature, dim=1).view(B, T, H, W)
    X_out = x * (1 + beta * (w - 1))[..., None]
    return X_out.to(X.dtype), w
