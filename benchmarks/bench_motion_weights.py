"""Benchmark of grace_fast.ops.motion_weights: each fast backend against the torch reference and against
torch.compile(reference) ("compiled-reference", inductor; compiled afresh per case, in the warm-up).

python -m benchmarks.bench_motion_weights   # X [32, 8, 14, 14, 768], [8, 32, 14, 14, 768]; fp32, bf16
                                            # -> results/motion_weights.json
pytest benchmarks/bench_motion_weights.py --benchmark-only

Modes: forward, and full (forward plus the backward of random upstream gradients of X_out and w, which are made
before the clock starts). peak_over_X is the peak memory the call allocates through torch (outputs, saved tensors
and the gradient dX included) divided by sizeof(X). gbs is the bandwidth the row achieves on the bytes the op must
move at the least (forward: read X, write X_out and w; full: that, then read X, dX_out and dw and write dX), and
copy_share its share of the copy bandwidth copy_gbs of X.clone(), measured in the same rounds.
"""

import functools

import pytest
import torch

from benchmarks.utils import COMPILED, add_ratios, benchmark_main, compiled, measure_together, peak_memory_mb
from grace_fast.ops import motion_weights
from grace_fast.ops._backends import fast_backends
from grace_fast.ops.reference import motion_weights_reference
from grace_fast.shapes import MOTION_TOKENS

SHAPES = MOTION_TOKENS  # VideoMAE tokens X [B, T', H', W', D]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def providers(device: str) -> list[str]:
    return ["torch", COMPILED, *fast_backends("motion_weights", device)]


def run_fn(provider, mode, X):
    if provider == COMPILED:  # the op's defaults (mode "both", window 3), spelled out for the reference
        op = functools.partial(compiled(motion_weights_reference), alpha=0.5, window=3, temperature=1.0, beta=1.0)
    else:
        op = functools.partial(motion_weights, backend=provider)
    if mode == "forward":
        return lambda: op(X)
    Xg = X.detach().requires_grad_()
    upstream = torch.randn_like(X), torch.randn(X.shape[:-1], device=X.device)

    def full():
        X_out, w = op(Xg)
        torch.autograd.grad((X_out, w), Xg, upstream)

    return full


def run(shapes=SHAPES, dtypes=DTYPES, device="cpu") -> list[dict]:
    rows = []
    for shape_name, shape in shapes.items():
        for dtype_name, dtype in dtypes.items():
            X = torch.randn(shape, device=device, dtype=dtype)
            size_x = X.numel() * X.element_size() / 2**20
            for mode in ("forward", "full"):
                fns = {provider: run_fn(provider, mode, X) for provider in providers(device)}
                # interleaved with the copy, so that the bandwidth share sees one state of a shared machine
                times = measure_together({**fns, "copy": X.clone}, device=device, reps=5, min_seconds=0.3)
                copy_gbs = 2 * X.numel() * X.element_size() / times["copy"]["median_ms"] / 1e6
                least = least_bytes(X, mode)
                for provider, fn in fns.items():
                    row = {"op": "motion_weights", "provider": provider, "mode": mode, "shape": shape_name}
                    row |= {"B,T,H,W,D": ",".join(map(str, shape)), "dtype": dtype_name} | times[provider]
                    row["peak_over_X"] = round(peak_memory_mb(fn, device=device) / size_x, 2)
                    row["gbs"] = round(least / row["median_ms"] / 1e6, 2)
                    row |= {"copy_gbs": round(copy_gbs, 2), "copy_share": round(row["gbs"] / copy_gbs, 3)}
                    rows.append(row)
    return add_ratios(rows, ["torch", COMPILED], ("mode", "shape", "dtype"))


def least_bytes(X: torch.Tensor, mode: str) -> int:
    """The bytes motion_weights must move at the least: X in and X_out out (w, float32, besides); the backward
    reads X and the gradients of X_out and w and writes dX."""
    x, w = X.numel() * X.element_size(), X[..., 0].numel() * 4
    forward = 2 * x + w
    return forward if mode == "forward" else forward + 3 * x + w


COLUMNS = ["provider", "mode", "shape", "dtype", "median_ms", "p20_ms", "p80_ms", "peak_over_X", "gbs", "copy_share"]
COLUMNS += ["speedup_vs_torch", f"speedup_vs_{COMPILED}"]


@pytest.mark.parametrize("provider", providers("cpu"))
@pytest.mark.parametrize("mode", ["forward", "full"])
def test_motion_weights(benchmark, provider, mode):
    benchmark(run_fn(provider, mode, torch.randn(SHAPES["16-frames"])))


if __name__ == "__main__":
    benchmark_main("motion_weights", __doc__, SHAPES, run, COLUMNS)
