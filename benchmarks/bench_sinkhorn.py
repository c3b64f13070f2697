"""Benchmark of grace_fast.ops.sinkhorn against the torch reference and POT's solvers, forward and forward+backward.

python -m benchmarks.bench_sinkhorn   # canonical shapes, 50 fixed iterations and tol 1e-4 -> results/sinkhorn.json
pytest benchmarks/bench_sinkhorn.py --benchmark-only

Providers: the fast backends (cpu; triton on CUDA), the torch reference (its forward is the unfused log-domain
loop; its backward is the same implicit one), POT's per-problem loop (`ot.sinkhorn(..., method="sinkhorn_log")`,
numpy and torch backends) and POT's batched solvers (`ot.batch.solve_batch`, log_sinkhorn and plain sinkhorn).
POT differentiates by unrolling the iterations (grad="autodiff"); the numpy loop has no backward.
"""

import numpy as np
import ot
import ot.batch
import pytest
import torch

import grace_fast
from benchmarks.utils import add_ratios, benchmark_main, measure, peak_memory_mb
from grace_fast.ops import sinkhorn

SHAPES = {  # GRACE.md canonical shapes: (B, N, M)
    "paper-rho0.5": (32, 77, 784),
    "paper-all-tokens": (32, 77, 1568),
    "long-clip-64f": (8, 77, 3136),
    "low-latency": (1, 77, 784),
}
EPS = 0.05
ITERS = {"50 fixed": (50, 0.0), "tol 1e-4": (50, 1e-4)}
BASELINES = ["torch", "pot-loop-numpy", "pot-loop-torch", "pot-batch-log", "pot-batch-plain"]


def make_case(shape, device="cpu"):
    B, N, M = shape
    C = torch.rand(B, N, M, device=device) * 2  # cosine costs lie in [0, 2]
    return C, torch.full((B, N), 1 / N, device=device), torch.full((B, M), 1 / M, device=device)


def _pot_loop(C, a, b, max_iter, tol):
    """POT's log-domain solver problem by problem (numpy arrays or torch tensors in, the same out)."""
    return [
        ot.sinkhorn(a[k], b[k], C[k], EPS, method="sinkhorn_log", numItermax=max_iter, stopThr=tol, warn=False)
        for k in range(len(C))
    ]


def _pot_batch(method):
    def solve(C, a, b, max_iter, tol, grad):
        return ot.batch.solve_batch(C, reg=EPS, a=a, b=b, max_iter=max_iter, tol=tol, method=method, grad=grad).plan

    return solve


def providers(device: str) -> list[str]:
    fast = [name for name in ("cpu",) if device == "cpu"] + [name for name in ("triton",) if device == "cuda"]
    pot = ["pot-loop-numpy"] if device == "cpu" else []
    available = [name for name in fast if grace_fast.backends()[name]]
    return [*available, "torch", *pot, "pot-loop-torch", "pot-batch-log", "pot-batch-plain"]


def run_fn(provider, mode, C, a, b, max_iter, tol):
    """A zero-argument callable: the forward solve, or forward plus the backward of a random loss on the plan."""
    if provider == "pot-loop-numpy":
        if mode != "forward":
            return None
        Cn, an, bn = (x.double().cpu().numpy() for x in (C, a, b))
        return lambda: _pot_loop(Cn, an, bn, max_iter, tol)
    upstream = torch.randn_like(C)
    if provider.startswith("pot"):
        batch = {"pot-batch-log": _pot_batch("log_sinkhorn"), "pot-batch-plain": _pot_batch("sinkhorn")}.get(provider)
        if mode == "forward":
            if batch is None:
                return lambda: _pot_loop(C, a, b, max_iter, tol)
            return lambda: batch(C, a, b, max_iter, tol, "detach")
        Cg = C.detach().requires_grad_()

        def pot_full():
            if batch is None:
                plan = torch.stack(_pot_loop(Cg, a, b, max_iter, tol))
            else:
                plan = batch(Cg, a, b, max_iter, tol, "autodiff")
            torch.autograd.grad(plan, Cg, upstream)

        return pot_full
    if mode == "forward":
        return lambda: sinkhorn(C, a, b, eps=EPS, max_iter=max_iter, tol=tol, backend=provider)
    Cg = C.detach().requires_grad_()

    def full():
        out = sinkhorn(Cg, a, b, eps=EPS, max_iter=max_iter, tol=tol, backend=provider)
        torch.autograd.grad((out.plan, out.cost), Cg, (upstream, torch.ones_like(out.cost)))

    return full


def run(shapes=SHAPES, device="cpu") -> list[dict]:
    rows = []
    for shape_name, shape in shapes.items():
        case = make_case(shape, device)
        size_c = case[0].numel() * case[0].element_size() / 2**20
        for iters, (max_iter, tol) in ITERS.items():
            for mode in ("forward", "full"):
                for provider in providers(device):
                    fn = run_fn(provider, mode, *case, max_iter, tol)
                    if fn is None:
                        continue
                    row = {"op": "sinkhorn", "provider": provider, "mode": mode, "shape": shape_name}
                    row |= {"B,N,M": ",".join(map(str, shape)), "iters": iters}
                    row |= measure(fn, device=device, reps=3, min_seconds=0.3)
                    row["peak_over_C"] = round(peak_memory_mb(fn, device=device) / size_c, 2)
                    rows.append(row)
        for provider in providers(device)[:1]:  # the backward's memory must not grow with the iteration count
            for max_iter in (50, 500):
                fn = run_fn(provider, "full", *case, max_iter, 0.0)
                row = {"op": "sinkhorn", "provider": provider, "mode": "full", "shape": shape_name}
                row |= {"B,N,M": ",".join(map(str, shape)), "iters": f"{max_iter} fixed (memory)"}
                row["peak_over_C"] = round(peak_memory_mb(fn, device=device) / size_c, 2)
                rows.append(row)
    timed = [r for r in rows if "median_ms" in r]
    add_ratios(timed, BASELINES, ("mode", "shape", "iters"))
    return rows


COLUMNS = ["provider", "mode", "shape", "iters", "median_ms", "p20_ms", "p80_ms", "peak_over_C"]
COLUMNS += [f"speedup_vs_{name}" for name in BASELINES]


@pytest.mark.parametrize("provider", [p for p in providers("cpu") if p != "pot-loop-numpy"])
@pytest.mark.parametrize("mode", ["forward", "full"])
def test_sinkhorn(benchmark, provider, mode):
    benchmark(run_fn(provider, mode, *make_case(SHAPES["paper-rho0.5"]), 50, 0.0))


if __name__ == "__main__":
    np.seterr(over="ignore")  # POT's plain Sinkhorn at eps 0.05 is expected to be unstable, not to warn
    benchmark_main("sinkhorn", __doc__, SHAPES, run, COLUMNS)
