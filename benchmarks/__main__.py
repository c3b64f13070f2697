"""Run grace_fast's benchmarks: one table per benchmark, JSON per benchmark, and results/REPORT.md.

python -m benchmarks --all                        # every op benchmark, the scaling sweep and the end-to-end ones
python -m benchmarks --op sinkhorn cost           # some of them (the report keeps the others' last results)
python -m benchmarks --op sinkhorn --base HEAD~3  # also run it on another revision and print the ratio
python -m benchmarks --op cost --shapes low-latency --base HEAD~3  # some shapes only (printed, not recorded)

A comparison runs the op's tests on both revisions first and refuses to report a speed-up when either fails.
"""

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks.report import write_report
from benchmarks.utils import RESULTS, print_table, result_suffix, write_results

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = {  # name -> (module, the tests that must pass before its numbers count)
    "cost": ("bench_cost", ["tests/ops/test_cost_matrix.py"]),
    "sinkhorn": ("bench_sinkhorn", ["tests/ops/test_sinkhorn.py"]),
    "motion": ("bench_motion", ["tests/ops/test_motion_weights.py", "tests/ops/test_select_tokens.py"]),
    "scaling": ("bench_scaling", ["tests/ops/test_sinkhorn.py", "tests/ops/test_motion_weights.py"]),
    "model": ("bench_model", ["tests/model"]),
    "inference": ("bench_inference", ["tests/model"]),
}
MEASURED = ("median_ms", "p20_ms", "p80_ms", "reps")


def available() -> list[str]:
    return [name for name, (module, _) in BENCHMARKS.items() if (ROOT / "benchmarks" / f"{module}.py").exists()]


def run_benchmark(name: str, device: str, shapes: list[str] | None) -> list[dict]:
    """Benchmark `name` on every shape, written to results/, or on `shapes` only, printed (a subset is no record)."""
    module = importlib.import_module(f"benchmarks.{BENCHMARKS[name][0]}")
    print(f"\n== {name} ({device}) ==", flush=True)
    rows = module.run({k: v for k, v in module.SHAPES.items() if shapes is None or k in shapes}, device=device)
    print_table(rows, module.COLUMNS)
    if shapes is None:
        print(f"written to {write_results(name + result_suffix(device), rows)}")
    return rows


def unknown_shapes(name: str, shapes: list[str]) -> list[str]:
    return [s for s in shapes if s not in importlib.import_module(f"benchmarks.{BENCHMARKS[name][0]}").SHAPES]


def tests_pass(name: str, root: Path, device: str) -> bool:
    """The benchmark's tests on the tree at root (the Triton interpreter cases are left out on a CPU)."""
    tests = [t for t in BENCHMARKS[name][1] if (root / t).exists()]
    if not tests:
        print(f"{root}: none of {BENCHMARKS[name][1]} exists there", file=sys.stderr)
        return False
    command = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
    if device == "cpu":
        command += ["-k", "not triton"]
    result = subprocess.run(command, cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
    return result.returncode == 0


def _describes(field: str) -> bool:
    """A row's field that names what was measured, not a measurement."""
    return field not in MEASURED and not field.startswith(("speedup", "peak"))


def _key(row: dict) -> tuple:
    return tuple(sorted((k, str(v)) for k, v in row.items() if _describes(k)))


def compare(name: str, base: str, device: str, shapes: list[str] | None, rows: list[dict]) -> None:
    """Runs benchmark `name` on revision `base` in a temporary worktree and prints base median / this median."""
    with tempfile.TemporaryDirectory(prefix="grace-fast-base-") as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(tree), base], cwd=ROOT, check=True)
        try:
            env = {**os.environ, "PYTHONPATH": str(tree), "MAX_JOBS": os.environ.get("MAX_JOBS", "2")}
            print(f"building the extension of {base} in {tree}", flush=True)
            subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=tree, env=env, check=True)
            if not tests_pass(name, tree, device):
                raise SystemExit(f"{name}: the tests fail on {base}; no comparison reported")
            module = f"benchmarks.{BENCHMARKS[name][0]}"
            command = [sys.executable, "-m", module, "--device", device, *(["--shapes", *shapes] if shapes else [])]
            subprocess.run(command, cwd=tree, env=env, check=True)
            base_rows = json.loads(
                (tree / "benchmarks" / "results" / f"{name}{result_suffix(device)}.json").read_text()
            )
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)
    base_medians = {_key(r): r["median_ms"] for r in base_rows["rows"] if "median_ms" in r}
    out = []
    for row in rows:
        if "median_ms" in row and _key(row) in base_medians:
            out.append(
                {
                    **row,
                    f"{base}_ms": base_medians[_key(row)],
                    "speedup_vs_base": base_medians[_key(row)] / row["median_ms"],
                }
            )
    print(f"\n== {name}: this tree against {base} ==")
    describe = [k for k in rows[0] if _describes(k) and k != "op"]
    print_table(out, [*describe, f"{base}_ms", "median_ms", "speedup_vs_base"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--all", action="store_true", help="every benchmark")
    parser.add_argument("--op", nargs="+", choices=list(BENCHMARKS), default=[])
    parser.add_argument("--base", help="a git revision to compare with (needs --op)")
    parser.add_argument("--shapes", nargs="+", help="only these shapes of each op (printed, not written to results/)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    names = available() if args.all else args.op
    if not names:
        parser.error("give --all or --op NAME ...")
    missing = [n for n in names if n not in available()]
    if missing:
        parser.error(f"no benchmark script for {missing} in this tree yet (have {available()})")
    for name in names if args.shapes else []:
        if unknown := unknown_shapes(name, args.shapes):
            parser.error(f"{name} has no shape {unknown}")
    if args.base and not all(tests_pass(name, ROOT, args.device) for name in names):
        raise SystemExit("the tests fail on this tree; no comparison reported")
    for name in names:
        rows = run_benchmark(name, args.device, args.shapes)
        if args.base:
            compare(name, args.base, args.device, args.shapes, rows)
    if not args.shapes:
        print(f"\nreport: {write_report(RESULTS, result_suffix(args.device))}")


if __name__ == "__main__":
    main()
