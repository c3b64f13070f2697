"""Benchmark of grace_fast.ops.sinkhorn against the torch reference and POT's solvers, forward and forward+backward.

python -m benchmarks.bench_sinkhorn   # canonical shapes, 50 fixed iterations and tol 1e-4 -> results/sinkhorn.json
pytest benchmarks/bench_sinkhorn.py --benchmark-only

Providers: the fast backends (cpu; triton on CUDA), the torch reference (its forward is the unfused log-domain
loop; its backward is the same implicit one), POT's per-problem loop (`ot.sinkhorn(..., method="sinkhorn_log")`,
numpy and torch backends) and POT's batched solvers (`ot.batch.solve_batch`, log_sinkhorn and plain sinkhorn).
POT differentiates by unrolling the iterations (grad="autodiff"); the numpy loop has no backward.

Each problem is solved balanced and semi-relaxed (tau_a = inf, tau_b = 0.1, GRACE's alignment; the `marginals`
column). POT has no batched unbalanced solver: the semi-relaxed rows compare with its per-problem
`ot.unbalanced.sinkhorn_unbalanced(..., reg_type="entropy")` loop (numpy and torch) and with its batched balanced
log solver, the nearest batched peer.

The class-prompt shapes (B clips x C classes, N prompt tokens, M visual tokens) time GRACE's class scores from
features: C classes' prompt tokens U [C, N, 512] against each clip's tokens V [B, M, 512], B x C semi-relaxed
problems. "batched" is grace_fast.model.alignment.align_classes (the model's class-prompt path): one cost_matrix of
every class's tokens against V (no copy of V), viewed as B x C problems, and one sinkhorn call; "loop over classes"
calls cost_matrix and sinkhorn once per class; "repeat V" copies V C times into one batch; "pot-batch-log" solves
the B x C problems balanced with POT's batched solver from the same cost.

On CUDA with the `flash-sinkhorn` package installed, rows of mode "forward from features" compare GRACE's cost and
plan from features (cost_matrix + sinkhorn, 50 fixed iterations) with flash-sinkhorn's streaming solver, which
never forms C and returns potentials only. On unit vectors half the squared distance is the cosine cost 1 - cos,
so `half_cost=True` at the same eps solves the same problem; plan_err (the largest difference of the two plans
over the largest entry) shows that it does (both stop after 50 iterations in different update orders; against a
float64 stand-in of flash-sinkhorn's solver it is below 1e-4 at the low-latency shape). flash-sinkhorn refuses
CPU tensors, so these rows exist on a GPU only.
"""

import functools
import math
from collections.abc import Callable

import numpy as np
import ot
import ot.batch
import ot.unbalanced
import pytest
import torch

from benchmarks.utils import add_ratios, benchmark_main, measure, measure_together, peak_memory_mb
from grace_fast.model import GraceConfig
from grace_fast.model.alignment import OTAlignment, align_classes
from grace_fast.ops import cost_matrix, sinkhorn
from grace_fast.ops._backends import fast_backends
from grace_fast.shapes import CLASS_PROMPT_PROBLEMS, OT_PROBLEMS

OT_SHAPES = {name: (B, N, M) for name, (B, N, M, _) in OT_PROBLEMS.items()}
# (B clips, C classes, N prompt tokens, M visual tokens)
CLASS_PROMPT_SHAPES = {name: (B, C, N, M) for name, (B, C, N, M, _) in CLASS_PROMPT_PROBLEMS.items()}
SHAPES = OT_SHAPES | CLASS_PROMPT_SHAPES
EPS = 0.05
TAU_B = 0.1
MARGINALS = {"balanced": math.inf, "semi-relaxed": TAU_B}  # tau_b; tau_a is inf
ITERS = {"50 fixed": (50, 0.0), "tol 1e-4": (50, 1e-4)}
BASELINES = ["torch", "pot-loop-numpy", "pot-loop-torch", "pot-batch-log", "pot-batch-plain"]
CLASS_BASELINES = ["loop over classes", "repeat V", "pot-batch-log"]
FLASH = ["flash-sinkhorn", "flash-sinkhorn + plan"]  # baselines of the "forward from features" rows
FEATURES = 512  # D of the "forward from features" rows


def make_case(shape, device="cpu"):
    B, N, M = shape
    C = torch.rand(B, N, M, device=device) * 2  # cosine costs lie in [0, 2]
    return C, torch.full((B, N), 1 / N, device=device), torch.full((B, M), 1 / M, device=device)


def _pot_loop(C, a, b, max_iter, tol, tau_b=math.inf):
    """POT's log-domain solver problem by problem (numpy arrays or torch tensors in, the same out); for a finite
    tau_b its semi-relaxed solver (reg_type="entropy" is GRACE's problem, POT's default "kl" is another)."""
    if math.isinf(tau_b):
        solve = functools.partial(ot.sinkhorn, method="sinkhorn_log", warn=False)
    else:
        solve = functools.partial(ot.unbalanced.sinkhorn_unbalanced, reg_m=(math.inf, tau_b), reg_type="entropy")
    return [solve(a[k], b[k], C[k], EPS, numItermax=max_iter, stopThr=tol) for k in range(len(C))]


def _pot_batch(method):
    def solve(C, a, b, max_iter, tol, grad):
        return ot.batch.solve_batch(C, reg=EPS, a=a, b=b, max_iter=max_iter, tol=tol, method=method, grad=grad).plan

    return solve


def providers(device: str, tau_b: float = math.inf) -> list[str]:
    pot = ["pot-loop-numpy"] if device == "cpu" else []
    available = fast_backends("sinkhorn", device)
    if not math.isinf(tau_b):  # POT's batched solvers are balanced only: its log solver is the nearest peer
        return [*available, "torch", *pot, "pot-loop-torch", "pot-batch-log"]
    return [*available, "torch", *pot, "pot-loop-torch", "pot-batch-log", "pot-batch-plain"]


def run_fn(provider, mode, C, a, b, max_iter, tol, tau_b=math.inf):
    """A zero-argument callable: the forward solve, or forward plus the backward of a random loss on the plan.
    tau_b is the column marginal's relaxation; POT's batched solvers solve the balanced problem whatever it is."""
    if provider == "pot-loop-numpy":
        if mode != "forward":
            return None
        Cn, an, bn = (x.double().cpu().numpy() for x in (C, a, b))
        return lambda: _pot_loop(Cn, an, bn, max_iter, tol, tau_b)
    upstream = torch.randn_like(C)
    if provider.startswith("pot"):
        batch = {"pot-batch-log": _pot_batch("log_sinkhorn"), "pot-batch-plain": _pot_batch("sinkhorn")}.get(provider)
        if mode == "forward":
            if batch is None:
                return lambda: _pot_loop(C, a, b, max_iter, tol, tau_b)
            return lambda: batch(C, a, b, max_iter, tol, "detach")
        Cg = C.detach().requires_grad_()

        def pot_full():
            if batch is None:
                plan = torch.stack(_pot_loop(Cg, a, b, max_iter, tol, tau_b))
            else:
                plan = batch(Cg, a, b, max_iter, tol, "autodiff")
            torch.autograd.grad(plan, Cg, upstream)

        return pot_full
    kw = {"eps": EPS, "max_iter": max_iter, "tol": tol, "tau_b": tau_b, "backend": provider}
    if mode == "forward":
        return lambda: sinkhorn(C, a, b, **kw)
    Cg = C.detach().requires_grad_()

    def full():
        out = sinkhorn(Cg, a, b, **kw)
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


def ot_rows(shapes, device) -> list[dict]:
    """Every provider on each (B, N, M) problem, balanced and semi-relaxed, forward and forward+backward, with
    ratios against the baselines of the same marginals, mode, shape and iterations; the first provider's
    forward+backward peak memory at 50 and 500 iterations."""
    rows = []
    for shape_name, shape in shapes.items():
        case = make_case(shape, device)
        size_c = case[0].numel() * case[0].element_size() / 2**20
        for marginals, tau_b in MARGINALS.items():
            describe = {"op": "sinkhorn", "marginals": marginals}
            for iters, (max_iter, tol) in ITERS.items():
                for mode in ("forward", "full"):
                    for provider in providers(device, tau_b):
                        fn = run_fn(provider, mode, *case, max_iter, tol, tau_b)
                        if fn is None:
                            continue
                        row = describe | {"provider": provider, "mode": mode, "shape": shape_name}
                        row |= {"B,N,M": ",".join(map(str, shape)), "iters": iters}
                        row |= measure(fn, device=device, reps=3, min_seconds=0.3)
                        row["peak_over_C"] = round(peak_memory_mb(fn, device=device) / size_c, 2)
                        rows.append(row)
            for provider in providers(device, tau_b)[:1]:  # the backward's memory must not grow with the iterations
                for max_iter in (50, 500):
                    fn = run_fn(provider, "full", *case, max_iter, 0.0, tau_b)
                    row = describe | {"provider": provider, "mode": "full", "shape": shape_name}
                    row |= {"B,N,M": ",".join(map(str, shape)), "iters": f"{max_iter} fixed (memory)"}
                    row["peak_over_C"] = round(peak_memory_mb(fn, device=device) / size_c, 2)
                    rows.append(row)
    timed = [r for r in rows if "median_ms" in r]
    add_ratios(timed, BASELINES, ("marginals", "mode", "shape", "iters"))
    return rows


def class_prompt_case(B, C, N, M, device, seed=0):
    """Prompt tokens U [C, N, 512] with a mask of 12..N valid tokens per class, clip tokens V [B, M, 512]."""
    gen = torch.Generator(device).manual_seed(seed)
    U = torch.randn(C, N, FEATURES, device=device, generator=gen)
    lengths = torch.randint(12, N + 1, (C,), device=device, generator=gen)
    mask_u = torch.arange(N, device=device)[None, :] < lengths[:, None]
    return U, mask_u, torch.randn(B, M, FEATURES, device=device, generator=gen)


def class_prompt_fns(mask_u, backend: str) -> dict[str, Callable]:
    """Each provider's class scores s_ot [B, C] = <P, 1 - C> from prompt tokens U [C, N, D] and clip tokens
    V [B, M, D], as functions of (U, V)."""
    kw = {"eps": EPS, "max_iter": 50, "tol": 0.0, "tau_b": TAU_B, "backend": backend}

    def score(cost, mask):
        out = sinkhorn(cost, mask_a=mask, **kw)
        return out.plan.sum(dim=(1, 2)) - out.cost

    config = GraceConfig(dim=FEATURES, eps=EPS, tau_b=TAU_B, max_iter=50, tol=0.0, op_backends={"sinkhorn": backend})
    alignment = OTAlignment(config)

    def batched(U, V):
        mask_v = torch.ones(V.shape[:2], dtype=torch.bool, device=V.device)
        return align_classes(alignment, U, mask_u, V, mask_v, mask_v.float()).similarity

    def loop(U, V):
        B, C = V.shape[0], U.shape[0]
        return torch.stack(
            [score(cost_matrix(U[c].expand(B, -1, -1), V), mask_u[c].expand(B, -1)) for c in range(C)], 1
        )

    def repeat_v(U, V):
        B, C = V.shape[0], U.shape[0]
        return score(cost_matrix(U.repeat(B, 1, 1), V.repeat_interleave(C, 0)), mask_u.repeat(B, 1)).view(B, C)

    def pot(U, V):
        B, C = V.shape[0], U.shape[0]
        cost = cost_matrix(U.repeat(B, 1, 1), V.repeat_interleave(C, 0))
        a = mask_u.repeat(B, 1).float()
        a = a / a.sum(1, keepdim=True)
        b = torch.full((B * C, cost.shape[2]), 1 / cost.shape[2], device=cost.device)
        plan = _pot_batch("log_sinkhorn")(cost, a, b, 50, 0.0, "autodiff")
        return (plan * (1 - cost)).sum(dim=(1, 2)).view(B, C)

    return {f"batched {backend}": batched, "loop over classes": loop, "repeat V": repeat_v, "pot-batch-log": pot}


def _backward_of(scores, U, V, upstream):
    return lambda: torch.autograd.grad(scores(U, V), (U, V), upstream)


def class_prompt_rows(shapes, device) -> list[dict]:
    """B x C class-prompt problems from features, forward and forward+backward (a random loss on the scores, back to
    U and V): the batched call against a loop over classes, a copy of V per class and POT's batched solver, timed in
    alternating rounds (measure_together) so that each ratio sees one state of a shared machine."""
    backend = providers(device, TAU_B)[0]
    rows = []
    for shape_name, (B, C, N, M) in shapes.items():
        U, mask_u, V = class_prompt_case(B, C, N, M, device)
        Ug, Vg = U.clone().requires_grad_(), V.clone().requires_grad_()
        upstream = torch.randn(B, C, device=device)
        size_c = B * C * N * M * 4 / 2**20
        for mode in ("forward", "full"):
            scored = class_prompt_fns(mask_u, backend).items()
            if mode == "forward":
                fns = {provider: functools.partial(scores, U, V) for provider, scores in scored}
            else:
                fns = {provider: _backward_of(scores, Ug, Vg, upstream) for provider, scores in scored}
            for provider, timing in measure_together(fns, device=device, reps=3, min_seconds=0.3).items():
                row = {"op": "sinkhorn", "marginals": "semi-relaxed", "provider": provider, "mode": mode}
                row |= {"shape": shape_name, "B,N,M": f"{B}x{C},{N},{M}", "iters": "50 fixed"} | timing
                row["peak_over_C"] = round(peak_memory_mb(fns[provider], device=device) / size_c, 2)
                rows.append(row)
    return add_ratios(rows, CLASS_BASELINES, ("mode", "shape"))


def run(shapes=SHAPES, device="cpu") -> list[dict]:
    ot_shapes = {k: v for k, v in shapes.items() if k in OT_SHAPES}
    rows = ot_rows(ot_shapes, device) + class_prompt_rows({k: shapes[k] for k in shapes if k not in ot_shapes}, device)
    if device == "cuda":
        rows += add_ratios(flash_rows(ot_shapes, device), FLASH, ("mode", "shape", "iters"))
    return rows


COLUMNS = [
    "marginals",
    "provider",
    "mode",
    "shape",
    "iters",
    "median_ms",
    "p20_ms",
    "p80_ms",
    "peak_over_C",
    "plan_err",
]
COLUMNS += [f"speedup_vs_{name}" for name in dict.fromkeys(BASELINES + CLASS_BASELINES + FLASH)]


@pytest.mark.parametrize("marginals", MARGINALS)
@pytest.mark.parametrize("provider", [p for p in providers("cpu") if p != "pot-loop-numpy"])
@pytest.mark.parametrize("mode", ["forward", "full"])
def test_sinkhorn(benchmark, marginals, provider, mode):
    if provider not in providers("cpu", MARGINALS[marginals]):
        pytest.skip(f"{provider} solves balanced problems only")
    benchmark(run_fn(provider, mode, *make_case(SHAPES["paper-rho0.5"]), 50, 0.0, MARGINALS[marginals]))


if __name__ == "__main__":
    np.seterr(over="ignore")  # POT's plain Sinkhorn at eps 0.05 is expected to be unstable, not to warn
    benchmark_main("sinkhorn", __doc__, SHAPES, run, COLUMNS)
