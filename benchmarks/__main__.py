"""Run grace_fast's benchmarks: one table per benchmark, JSON per benchmark, and results/REPORT.md.

python -m benchmarks --all                        # every op benchmark, the scaling sweep and the end-to-end ones
python -m benchmarks --op sinkhorn cost_matrix    # some of them (the report keeps the others' last results)
python -m benchmarks --op sinkhorn --base HEAD~3  # compare with another revision (printed, not recorded)
python -m benchmarks --op cost_matrix --shapes low-latency --base HEAD~3  # some shapes only (printed, not recorded)

A comparison runs the op's tests on both revisions first and refuses to report a speed-up when either fails; then
it runs both sides in turn, --rounds times, and prints each row's ratio with its lowest and highest round and a verdict.
"""

import argparse
import importlib

import torch

from benchmarks.compare import BENCHMARKS, ROOT, base_tree, build, check_tests, compare
from benchmarks.report import write_report
from benchmarks.utils import RESULTS, print_table, result_suffix, write_results


def available() -> list[str]:
    return [name for name, (module, _) in BENCHMARKS.items() if (ROOT / "benchmarks" / f"{module}.py").exists()]


def run_benchmark(name: str, device: str, shapes: list[str] | None) -> None:
    """Benchmark `name` on every shape, written to results/, or on `shapes` only, printed (a subset is no record)."""
    module = importlib.import_module(f"benchmarks.{BENCHMARKS[name][0]}")
    print(f"\n== {name} ({device}) ==", flush=True)
    rows = module.run({k: v for k, v in module.SHAPES.items() if shapes is None or k in shapes}, device=device)
    print_table(rows, module.COLUMNS)
    if shapes is None:
        print(f"written to {write_results(name + result_suffix(device), rows)}")


def unknown_shapes(name: str, shapes: list[str]) -> list[str]:
    return [s for s in shapes if s not in importlib.import_module(f"benchmarks.{BENCHMARKS[name][0]}").SHAPES]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--all", action="store_true", help="every benchmark")
    parser.add_argument("--op", nargs="+", choices=list(BENCHMARKS), default=[])
    parser.add_argument("--base", help="a git revision to compare with (printed, not recorded)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each side in a comparison (default 3)")
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
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.base:
        build(ROOT, "this tree")  # what is timed is what is tested: no stale extension
        for name in names:
            check_tests(name, ROOT, "this tree", args.device)
        with base_tree(args.base) as tree:
            for name in names:
                rows = compare(name, tree, args.base, args.device, args.shapes, args.rounds)
                print(f"\n== {name}: this tree against {args.base}, {args.rounds} rounds ==")
                if rows:
                    print_table(rows, [c for c in rows[0] if c != "op"])
                else:
                    print(f"no row of this tree was measured on {args.base} (shapes or providers renamed?)")
        return
    for name in names:
        run_benchmark(name, args.device, args.shapes)
    if not args.shapes:
        print(f"\nreport: {write_report(RESULTS, result_suffix(args.device))}")


if __name__ == "__main__":
    main()
