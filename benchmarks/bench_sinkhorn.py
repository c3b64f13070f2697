"""Benchmark of grace_fast.ops.sinkhorn against the torch reference and POT's solvers, forward and forward+backward.

python -m benchmarks.bench_sinkhorn   # canonical shapes, 50 fixed iterations and tol 1e-4 -> results/sinkhorn.json
pytest benchmarks/bench_sinkhorn.py --benchmark-only

Providers: the fast backends (cpu; triton on CUDA), the torch reference (its forward is the unfused log-domain
loop; its backward is the same implicit one), POT's per-problem loop (`ot.sinkhorn(..., method="sinkhorn_log")`,
numpy and torch backends) and POT's batched solvers (`ot.batch.solve_batch`, log_sinkhorn and plain sinkhorn).
POT differentiates by unrolling the iterations (grad="autodiff"); the numpy loop has no backward.

On CUDA with the `flash-sinkhorn` package installed, rows of mode "forward from features" compare GRACE's cost and
plan from features (cost_matrix + sinkhorn, 50 fixed iterations) with flash-sinkhorn's streaming solver, which
never forms C and returns potentials only. On unit vectors half the squared distance is the cosine cost 1 - cos,
so `half_cost=True` at the same eps solves the same problem; plan_err (the largest difference of the two plans
over the largest entry) shows that it does (both stop after 50 iterations in different update orders; against a
float64 stand-in of flash-sinkhorn's solver it is below 1e-4 at the low-latency shape). flash-sinkhorn refuses
CPU tensors, so these rows exist on a GPU only.
"""

import numpy as np
import ot
import ot.batch
import pytest
import torch

import grace_fast
from benchmarks.utils import add_ratios, benchmark_main, measure, peak_memory_mb
from grace_fast.ops import cost_matrix, sinkhorn

SHAPES = {  # docs/method.md canonical shapes: (B, N, M)
    "paper-rho0.5": (32, 77, 784),
    "paper-all-tokens": (32, 77, 1568),
    "long-clip-64f": (8, 77, 3136),
    "low-latency": (1, 77, 784),
}
EPS = 0.05
ITERS = {"50 fixed": (50, 0.0), "tol 1e-4": (50, 1e-4)}
BASELINES = ["torch", "pot-loop-numpy", "pot-loop-torch", "pot-batch-log", "pot-batch-plain"]
FLASH = ["flash-sinkhorn", "flash-sinkhorn + plan"]  # baselines of the "forward from features" rows
FEATURES = 512  # D of the "forward from features" rows


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


def unit_features(B, n, device, seed):
    """[B, n, FEATURES] unit vectors near a few shared directions, so that their cosines spread over [-1, 1]."""
    basis = torch.randn(8, FEATURES, device=device, generator=torch.Generator(device).manual_seed(0))
    noise = torch.Generator(device).manual_seed(seed)
    x = torch.randn(B, n, 8, device=device, generator=noise) @ basis
    x += 0.3 * torch.randn(B, n, FEATURES, device=device, generator=noise)
    return torch.nn.functional.normalize(x, dim=-1)


def flash_plan(f, g, C):
    """The plan of flash-sinkhorn's (GeomLoss-convention) potentials under uniform weights: a_i b_j exp((f_i + g_j
    - C_ij) / eps). f: [B, N], g: [B, M], C: [B, N, M]."""
    N, M = C.shape[-2:]
    return torch.exp((f[:, :, None] + g[:, None, :] - C) / EPS) / (N * M)


def flash_rows(shapes, device) -> list[dict]:
    """GRACE's cost_matrix + sinkhorn (the fast backends of `device`, named in the provider) against
    flash-sinkhorn from the same features, where flash-sinkhorn runs: its potentials alone, and its potentials
    turned into the plan GRACE needs. Its batched API solves the batch elements one after another, so B = 1
    (low-latency) is the kernel against kernel row."""
    try:
        from flash_sinkhorn import SamplesLoss
    except ImportError:
        return []
    flash = SamplesLoss(
        "sinkhorn", backend="alternating", eps=EPS, n_iters=50, half_cost=True, potentials=True,
        use_epsilon_scaling=False, allow_tf32=False,
    )  # fmt: skip
    cost_backend, ot_backend = ("cuda", "triton") if device == "cuda" else ("cpu", "cpu")
    ours = f"cost_matrix {cost_backend} + sinkhorn {ot_backend}"
    rows = []
    for shape_name, (B, N, M) in shapes.items():
        U, V = unit_features(B, N, device, seed=1), unit_features(B, M, device, seed=2)

        def cost(U=U, V=V):
            return cost_matrix(U, V, backend=cost_backend)

        fns = {
            ours: lambda cost=cost: sinkhorn(cost(), eps=EPS, max_iter=50, tol=0.0, backend=ot_backend).plan,
            "flash-sinkhorn": lambda U=U, V=V: flash(U, V),
            "flash-sinkhorn + plan": lambda U=U, V=V, cost=cost: flash_plan(*flash(U, V), cost()),
        }
        plan = fns[ours]()
        plan_err = float((fns["flash-sinkhorn + plan"]() - plan).abs().max() / plan.max())
        for provider, fn in fns.items():
            row = {"op": "sinkhorn", "provider": provider, "mode": "forward from features", "shape": shape_name}
            row |= {"B,N,M": f"{B},{N},{M}", "iters": "50 fixed"} | measure(fn, device=device, reps=3, min_seconds=0.3)
            row["peak_over_C"] = round(peak_memory_mb(fn, device=device) / (B * N * M * 4 / 2**20), 2)
            row["plan_err"] = None if provider == ours else plan_err
            rows.append(row)
    return rows


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
    flash = flash_rows(shapes, device) if device == "cuda" else []
    timed = [r for r in rows if "median_ms" in r]
    add_ratios(timed, BASELINES, ("mode", "shape", "iters"))
    rows += add_ratios(flash, FLASH, ("mode", "shape", "iters"))
    return rows


COLUMNS = ["provider", "mode", "shape", "iters", "median_ms", "p20_ms", "p80_ms", "peak_over_C", "plan_err"]
COLUMNS += [f"speedup_vs_{name}" for name in BASELINES + FLASH]


@pytest.mark.parametrize("provider", [p for p in providers("cpu") if p != "pot-loop-numpy"])
@pytest.mark.parametrize("mode", ["forward", "full"])
def test_sinkhorn(benchmark, provider, mode):
    benchmark(run_fn(provider, mode, *make_case(SHAPES["paper-rho0.5"]), 50, 0.0))


if __name__ == "__main__":
    np.seterr(over="ignore")  # POT's plain Sinkhorn at eps 0.05 is expected to be unstable, not to warn
    benchmark_main("sinkhorn", __doc__, SHAPES, run, COLUMNS)
