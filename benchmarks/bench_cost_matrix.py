"""Benchmark of grace_fast.ops.cost_matrix: each fast backend against the torch reference and against
torch.compile(reference) ("compiled-reference", inductor; compiled afresh per case, in the warm-up).

python -m benchmarks.bench_cost_matrix   # canonical GRACE shapes, fp32 and bf16 -> results/cost_matrix.json
pytest benchmarks/bench_cost_matrix.py --benchmark-only

Modes: forward, and full (forward plus the backward of an upstream gradient of ones). peak_mb is the peak memory the
call allocates through torch. gflops is the rate the row achieves on the GEMM FLOPs the op must do at the least
(2 B N M D forward, three times that for full: C = U V^T, then dU = dC V and dV = dC^T U), and flop_share its share
of peak_gflops, the rate of one square [1024, 1024] torch.mm in the row's dtype, measured in the same rounds: how far
the row is from the machine's GEMM roofline.
"""

import functools

import pytest
import torch

from benchmarks.utils import COMPILED, add_ratios, benchmark_main, compiled, measure_together, peak_memory_mb
from grace_fast.ops import cost_matrix
from grace_fast.ops._backends import fast_backends
from grace_fast.ops.reference import cost_matrix_reference
from grace_fast.shapes import OT_PROBLEMS

SHAPES = OT_PROBLEMS  # (B, N, M, D)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
SQUARE = 1024  # side of the square GEMM whose rate is the roofline


def providers(device: str) -> list[str]:
    return ["torch", COMPILED, *fast_backends("cost_matrix", device)]


def make_case(shape, dtype, device, masked):
    B, N, M, D = shape
    U = torch.randn(B, N, D, device=device, dtype=dtype)
    V = torch.randn(B, M, D, device=device, dtype=dtype)
    mask_u = (torch.arange(N, device=device) < N - 10).expand(B, N) if masked else None  # padded text
    mask_v = (torch.rand(B, M, device=device) < 0.9) if masked else None
    return U, V, mask_u, mask_v


def run_fn(provider, mode, U, V, mask_u, mask_v):
    op = compiled(cost_matrix_reference) if provider == COMPILED else functools.partial(cost_matrix, backend=provider)
    if mode == "forward":
        return lambda: op(U, V, mask_u, mask_v)
    Ug, Vg = U.detach().requires_grad_(), V.detach().requires_grad_()

    def full():
        C = op(Ug, Vg, mask_u, mask_v)
        torch.autograd.grad(C, (Ug, Vg), torch.ones_like(C))

    return full


def run(shapes=SHAPES, dtypes=DTYPES, device="cpu") -> list[dict]:
    rows = []
    for shape_name, shape in shapes.items():
        for dtype_name, dtype in dtypes.items():
            square = functools.partial(torch.mm, *torch.randn(2, SQUARE, SQUARE, device=device, dtype=dtype))
            for masked in (False, True):
                case = make_case(shape, dtype, device, masked)
                for mode in ("forward", "full"):
                    fns = {provider: run_fn(provider, mode, *case) for provider in providers(device)}
                    # interleaved: one machine state for the ratios and the share of the square GEMM's rate
                    times = measure_together({**fns, "peak": square}, device=device)
                    peak_gflops = 2 * SQUARE**3 / times["peak"]["median_ms"] / 1e6
                    flops = gemm_flops(shape, mode)
                    for provider, fn in fns.items():
                        row = {
                            "op": "cost_matrix",
                            "provider": provider,
                            "mode": mode,
                            "shape": shape_name,
                            "B,N,M,D": ",".join(map(str, shape)),
                            "dtype": dtype_name,
                            "masked": masked,
                        }
                        row.update(times[provider])
                        row["peak_mb"] = peak_memory_mb(fn, device=device)
                        gflops = flops / row["median_ms"] / 1e6
                        row |= {"gflops": round(gflops, 1), "peak_gflops": round(peak_gflops, 1)}
                        row["flop_share"] = round(gflops / peak_gflops, 3)
                        rows.append(row)
    return add_ratios(rows, ["torch", COMPILED], ("mode", "shape", "dtype", "masked"))


def gemm_flops(shape, mode: str) -> int:
    """The FLOPs of the GEMMs cost_matrix must do at the least: C = U V^T, and for full also dU and dV."""
    B, N, M, D = shape
    return 2 * B * N * M * D * (1 if mode == "forward" else 3)


COLUMNS = [
    "provider",
    "mode",
    "shape",
    "dtype",
    "masked",
    "median_ms",
    "p20_ms",
    "p80_ms",
    "peak_mb",
    "gflops",
    "flop_share",
    "speedup_vs_torch",
    f"speedup_vs_{COMPILED}",
]


@pytest.mark.parametrize("provider", providers("cpu"))
@pytest.mark.parametrize("mode", ["forward", "full"])
def test_cost_matrix(benchmark, provider, mode):
    benchmark(run_fn(provider, mode, *make_case(SHAPES["paper-rho0.5"], torch.float32, "cpu", masked=True)))


if __name__ == "__main__":
    benchmark_main("cost_matrix", __doc__, SHAPES, run, COLUMNS)
