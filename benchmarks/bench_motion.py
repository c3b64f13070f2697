"""Benchmark of grace_fast.ops.motion_weights: each fast backend against the torch reference.

python -m benchmarks.bench_motion   # X [32, 8, 14, 14, 768], [8, 32, 14, 14, 768]; fp32, bf16 -> results/motion.json
pytest benchmarks/bench_motion.py --benchmark-only

Modes: forward, and full (forward plus the backward of random upstream gradients of X_out and w, which are made
before the clock starts). peak_over_X is the peak memory the call allocates through torch (outputs, saved tensors
and the gradient dX included) divided by sizeof(X).
"""

import pytest
import torch

import grace_fast
from benchmarks.utils import add_ratios, benchmark_main, measure, peak_memory_mb
from grace_fast.ops import motion_weights

SHAPES = {  # docs/method.md: VideoMAE tokens X [B, T', H', W', D]
    "16-frames": (32, 8, 14, 14, 768),
    "64-frames": (8, 32, 14, 14, 768),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def providers(device: str) -> list[str]:
    fast = "triton" if device == "cuda" else "cpu"
    return ["torch"] + ([fast] if grace_fast.backends()[fast] else [])


def run_fn(provider, mode, X):
    if mode == "forward":
        return lambda: motion_weights(X, backend=provider)
    Xg = X.detach().requires_grad_()
    upstream = torch.randn_like(X), torch.randn(X.shape[:-1], device=X.device)

    def full():
        X_out, w = motion_weights(Xg, backend=provider)
        torch.autograd.grad((X_out, w), Xg, upstream)

    return full


def run(shapes=SHAPES, dtypes=DTYPES, device="cpu") -> list[dict]:
    rows = []
    for shape_name, shape in shapes.items():
        for dtype_name, dtype in dtypes.items():
            X = torch.randn(shape, device=device, dtype=dtype)
            size_x = X.numel() * X.element_size() / 2**20
            for mode in ("forward", "full"):
                for provider in providers(device):
                    fn = run_fn(provider, mode, X)
                    row = {"op": "motion_weights", "provider": provider, "mode": mode, "shape": shape_name}
                    row |= {"B,T,H,W,D": ",".join(map(str, shape)), "dtype": dtype_name}
                    row |= measure(fn, device=device, reps=5, min_seconds=0.3)
                    row["peak_over_X"] = round(peak_memory_mb(fn, device=device) / size_x, 2)
                    rows.append(row)
    return add_ratios(rows, ["torch"], ("mode", "shape", "dtype"))


COLUMNS = ["provider", "mode", "shape", "dtype", "median_ms", "p20_ms", "p80_ms", "peak_over_X", "speedup_vs_torch"]


@pytest.mark.parametrize("provider", providers("cpu"))
@pytest.mark.parametrize("mode", ["forward", "full"])
def test_motion_weights(benchmark, provider, mode):
    benchmark(run_fn(provider, mode, torch.randn(SHAPES["16-frames"])))


if __name__ == "__main__":
    benchmark_main("motion", __doc__, SHAPES, run, COLUMNS)
