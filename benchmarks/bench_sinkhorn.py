"""Benchmark of grace_fast.ops.sinkhorn against the torch reference and POT's solvers, forward only.

python -m benchmarks.bench_sinkhorn    # GRACE's canonical shapes, 50 iterations and tol 1e-4; results/sinkhorn.json
"""

import argparse

import ot
import ot.batch
import torch

import grace_fast
from benchmarks.utils import add_ratios, measure, print_table, write_results
from grace_fast.ops import sinkhorn

SHAPES = {  # GRACE.md canonical shapes: (B, N, M)
    "paper-rho0.5": (32, 77, 784),
    "paper-all-tokens": (32, 77, 1568),
    "long-clip-64f": (8, 77, 3136),
    "low-latency": (1, 77, 784),
}
EPS = 0.05


def providers(C, a, b, max_iter, tol):
    """name -> zero-argument callable solving the batch."""
    found = {
        "pot-batch-log": lambda: ot.batch.solve_batch(
            C, reg=EPS, a=a, b=b, max_iter=max_iter, tol=tol, method="log_sinkhorn", grad="detach"
        ),
        "pot-batch-plain": lambda: ot.batch.solve_batch(
            C, reg=EPS, a=a, b=b, max_iter=max_iter, tol=tol, method="sinkhorn", grad="detach"
        ),
        "torch": lambda: sinkhorn(C, a, b, eps=EPS, max_iter=max_iter, tol=tol, backend="torch"),
    }
    if grace_fast.backends()["cpu"]:
        found["cpu"] = lambda: sinkhorn(C, a, b, eps=EPS, max_iter=max_iter, tol=tol, backend="cpu")
    return found


def run(shapes) -> list[dict]:
    rows = []
    for shape_name, (B, N, M) in shapes.items():
        C = torch.rand(B, N, M) * 2  # cosine costs lie in [0, 2]
        a, b = torch.full((B, N), 1 / N), torch.full((B, M), 1 / M)
        for max_iter, tol in ((50, 0.0), (50, 1e-4)):
            for name, fn in providers(C, a, b, max_iter, tol).items():
                row = {
                    "op": "sinkhorn",
                    "provider": name,
                    "mode": "forward",
                    "shape": shape_name,
                    "B,N,M": f"{B},{N},{M}",
                    "iters": "50 fixed" if tol == 0 else "tol 1e-4",
                }
                row.update(measure(fn, reps=3, min_seconds=0.3))
                rows.append(row)
    return add_ratios(rows, ["torch", "pot-batch-log", "pot-batch-plain"], ("mode", "shape", "iters"))


COLUMNS = [
    "provider",
    "shape",
    "iters",
    "median_ms",
    "p20_ms",
    "p80_ms",
    "speedup_vs_pot-batch-log",
    "speedup_vs_pot-batch-plain",
    "speedup_vs_torch",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    args = parser.parse_args()
    rows = run({k: SHAPES[k] for k in args.shapes})
    print_table(rows, COLUMNS)
    print(f"written to {write_results('sinkhorn', rows)}")


if __name__ == "__main__":
    main()
