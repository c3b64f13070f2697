"""How sinkhorn's (and motion_weights') time and peak memory grow from 16 to 64 frames and from 16 to 77 text tokens.

python -m benchmarks.bench_scaling    # results/scaling.json; the report fits the growth exponent of each series

Sizes follow docs/method.md: 16 frames give T' = 8 and S = 196 tokens per frame; rho = 0.5 keeps M = 49 * frames tokens
(784 .. 3136). Each row is forward+backward on the fastest backend of the device.
"""

import math

import torch

import grace_fast.ops as ops
from benchmarks.utils import benchmark_main, measure, peak_memory_mb

FRAMES = (16, 32, 48, 64)
TEXT_TOKENS = (16, 32, 64, 77)
SHAPES = {"frames": FRAMES, "text-tokens": TEXT_TOKENS}
B, N, D = 8, 77, 768


def _sinkhorn_full(N, M, device):
    C = torch.rand(B, N, M, device=device, requires_grad=True)
    upstream = torch.randn(B, N, M, device=device)

    def full():
        out = ops.sinkhorn(C, eps=0.05, max_iter=50, tol=0.0)
        torch.autograd.grad((out.plan, out.cost), C, (upstream, torch.ones_like(out.cost)))

    return full, C.numel() * C.element_size()


def _motion_full(frames, device):
    X = torch.randn(1, frames // 2, 14, 14, D, device=device, requires_grad=True)
    upstream = torch.randn_like(X)

    def full():
        out, _ = ops.motion_weights(X)
        torch.autograd.grad(out, X, upstream)

    return full, X.numel() * X.element_size()


def cases(sweeps, device):
    """(op, series, size, fn, input bytes) for the requested sweeps."""
    for sweep in sweeps:
        if sweep == "frames":
            for frames in FRAMES:
                yield ("sinkhorn", "M (frames)", 49 * frames, *_sinkhorn_full(N, 49 * frames, device))
                yield ("motion_weights", "T' (frames)", frames // 2, *_motion_full(frames, device))
        else:
            for n in TEXT_TOKENS:
                yield ("sinkhorn", "N (text tokens)", n, *_sinkhorn_full(n, 784, device))


def run(shapes=SHAPES, device="cpu") -> list[dict]:
    rows = []
    for op, series, size, fn, nbytes in cases(shapes, device):
        row = {"op": op, "provider": "auto", "mode": "full", "series": series, "size": size}
        row |= measure(fn, device=device, reps=3, min_seconds=0.3)
        row["peak_mb"] = round(peak_memory_mb(fn, device=device), 2)
        row["input_mb"] = round(nbytes / 2**20, 2)
        rows.append(row)
    return rows


def growth_exponents(rows: list[dict]) -> dict[tuple[str, str], dict[str, float]]:
    """Least-squares slope of log(time) and log(peak memory) against log(size), per (op, series)."""
    series = {}
    for row in rows:
        series.setdefault((row["op"], row["series"]), []).append(row)
    out = {}
    for key, points in series.items():
        if len(points) < 2:
            continue
        x = [math.log(p["size"]) for p in points]
        out[key] = {
            name: _slope(x, [math.log(p[col]) for p in points])
            for name, col in (("time", "median_ms"), ("memory", "peak_mb"))
        }
    return out


def _slope(x, y):
    mx, my = sum(x) / len(x), sum(y) / len(y)
    return sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True)) / sum((a - mx) ** 2 for a in x)


COLUMNS = ["op", "series", "size", "median_ms", "p20_ms", "p80_ms", "peak_mb", "input_mb"]

if __name__ == "__main__":
    benchmark_main("scaling", __doc__, SHAPES, run, COLUMNS)
