"""`python -m benchmarks --op NAME --base REV`: the same benchmark on this tree and on git revision REV.

REV is checked out in a temporary worktree and its extension built there. The benchmark's tests must pass on both
trees, or no ratio is reported. Both sides then run as fresh processes, in turn, for a few rounds (this, base;
base, this; ...), so that a drift of the shared machine falls on both; a row's ratio is the base's median over
rounds / this tree's, with the lowest and highest per-round ratio beside it. A baseline provider whose code is the
same on both sides (POT, an unchanged reference) shows the noise of the run: its ratio should be about 1.
"""

import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from benchmarks.utils import result_suffix

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = {  # name -> (module, the tests that must pass before its numbers count)
    "cost": ("bench_cost", ["tests/ops/test_cost_matrix.py"]),
    "sinkhorn": ("bench_sinkhorn", ["tests/ops/test_sinkhorn.py"]),
    "motion": ("bench_motion", ["tests/ops/test_motion_weights.py", "tests/ops/test_select_tokens.py"]),
    "scaling": ("bench_scaling", ["tests/ops/test_sinkhorn.py", "tests/ops/test_motion_weights.py"]),
    "model": ("bench_model", ["tests/model"]),
    "inference": ("bench_inference", ["tests/model"]),
}
MEASURED = ("reps", "plan_err")  # besides every *_ms, speedup_* and peak* field


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


@contextlib.contextmanager
def base_tree(base: str) -> Iterator[Path]:
    """A temporary git worktree of revision `base` with its extension built in place; removed on exit."""
    with tempfile.TemporaryDirectory(prefix="grace-fast-base-") as tmp:
        tree = Path(tmp) / "tree"
        if subprocess.run(["git", "worktree", "add", "--detach", "-q", str(tree), base], cwd=ROOT).returncode:
            raise SystemExit(f"--base {base}: git cannot check that revision out")
        try:
            print(f"building the extension of {base} in {tree}", flush=True)
            build = [sys.executable, "setup.py", "-q", "build_ext", "--inplace"]
            env = {**os.environ, "PYTHONPATH": str(tree), "MAX_JOBS": os.environ.get("MAX_JOBS", "2")}
            if subprocess.run(build, cwd=tree, env=env).returncode:
                raise SystemExit(f"--base {base}: its extension does not build; no comparison reported")
            yield tree
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)


def run_in(tree: Path, name: str, device: str, shapes: list[str] | None, out: Path | None) -> list[dict]:
    """Rows of benchmark `name` run as a fresh process in `tree`; written to `out` if given (a revision that
    predates --out writes into its own results/)."""
    module = f"benchmarks.{BENCHMARKS[name][0]}"
    command = [sys.executable, "-m", module, "--device", device, *(["--shapes", *shapes] if shapes else [])]
    command += ["--out", str(out)] if out else []
    if subprocess.run(command, cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)}).returncode:
        raise SystemExit(f"{name}: the benchmark failed in {tree}; no comparison reported")
    written = (out or tree / "benchmarks" / "results") / f"{name}{result_suffix(device)}.json"
    return json.loads(written.read_text())["rows"]


def describes(field: str) -> bool:
    """A row's field that names what was measured, not a measurement."""
    return field not in MEASURED and not field.endswith("_ms") and not field.startswith(("speedup", "peak"))


def key(row: dict) -> tuple:
    return tuple(sorted((k, str(v)) for k, v in row.items() if describes(k)))


def join_rounds(this: list[list[dict]], base: list[list[dict]], label: str) -> list[dict]:
    """Rows measured in every round on both sides, with `<label>_ms` (base median over rounds), median_ms (this
    tree's), speedup_vs_base (their ratio) and its lowest and highest value in one round."""
    rounds = list(zip(this, base, strict=True))
    medians = [({key(r): r["median_ms"] for r in t}, {key(r): r["median_ms"] for r in b}) for t, b in rounds]
    out = []
    for row in this[0]:
        k = key(row)
        if not all(k in t and k in b for t, b in medians):
            continue
        this_ms = statistics.median(t[k] for t, _ in medians)
        base_ms = statistics.median(b[k] for _, b in medians)
        per_round = [b[k] / t[k] for t, b in medians]
        described = {f: v for f, v in row.items() if describes(f)}
        out.append(
            {
                **described,
                f"{label}_ms": base_ms,
                "median_ms": this_ms,
                "speedup_vs_base": base_ms / this_ms,
                "lowest": min(per_round),
                "highest": max(per_round),
            }
        )
    return out


def compare(name: str, tree: Path, label: str, device: str, shapes: list[str] | None, rounds: int) -> list[dict]:
    """Benchmark `name` on this tree and on `tree` (revision `label`), `rounds` times each in turn; see join_rounds.
    Refuses (SystemExit) when the benchmark's tests fail on either tree."""
    for where, what in ((ROOT, "this tree"), (tree, label)):
        if not tests_pass(name, where, device):
            raise SystemExit(f"{name}: the tests fail on {what}; no comparison reported")
    this_rows, base_rows = [], []
    with tempfile.TemporaryDirectory(prefix="grace-fast-this-") as tmp:
        for i in range(rounds):
            order = [(ROOT, this_rows, "this tree"), (tree, base_rows, label)]
            for where, rows, what in order if i % 2 == 0 else order[::-1]:
                print(f"\n-- {name}, round {i + 1}/{rounds}: {what}", flush=True)
                rows.append(run_in(where, name, device, shapes, Path(tmp) if where == ROOT else None))
    return join_rounds(this_rows, base_rows, label)
