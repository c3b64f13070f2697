"""`python -m benchmarks --op NAME --base REV`: the same benchmark on this tree and on git revision REV.

REV is checked out in a temporary worktree and its extension built there. The benchmark's tests must pass on both
trees, or no ratio is reported. Both sides then run as fresh processes, in turn, for a few rounds (this, base;
base, this; ...), so that a drift of the shared machine falls on both; a row's ratio is the base's median over
rounds / this tree's, with the lowest and highest per-round ratio beside it and a verdict that takes a side only
when at least 3 rounds all agree by more than 10%. A baseline provider whose code is the same on both sides (POT,
an unchanged reference) shows the noise of the run: its ratio should be about 1.
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

from benchmarks.utils import describes, result_suffix

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = {  # name -> (module, the tests that must pass before its numbers count)
    "cost_matrix": ("bench_cost_matrix", ["tests/ops/test_cost_matrix.py"]),
    "sinkhorn": ("bench_sinkhorn", ["tests/ops/test_sinkhorn.py"]),
    "motion_weights": ("bench_motion_weights", ["tests/ops/test_motion_weights.py", "tests/ops/test_select_tokens.py"]),
    "scaling": ("bench_scaling", ["tests/ops/test_sinkhorn.py", "tests/ops/test_motion_weights.py"]),
    "model": ("bench_model", ["tests/model"]),
    "inference": ("bench_inference", ["tests/model"]),
}
FORMER_NAMES = {"cost_matrix": "cost", "motion_weights": "motion"}  # a revision before the rename runs bench_<former>


def build(tree: Path, what: str) -> None:
    """Builds the extension of the source tree in place (a no-op when it is up to date)."""
    print(f"building the extension of {what} in {tree}", flush=True)
    command = [sys.executable, "setup.py", "-q", "build_ext", "--inplace"]
    env = {**os.environ, "PYTHONPATH": str(tree), "MAX_JOBS": os.environ.get("MAX_JOBS", "2")}
    if subprocess.run(command, cwd=tree, env=env).returncode:
        raise SystemExit(f"the extension of {what} does not build; no comparison reported")


def link_kernels(tree: Path) -> None:
    """Makes `grace_fast.kernels` importable from a revision that kept it in a top-level kernels/ folder (mapped by
    its setup.py): otherwise an editable install's finder would serve this tree's Triton kernels to it."""
    link = tree / "grace_fast" / "kernels"
    if (tree / "kernels").is_dir() and not link.exists():
        link.symlink_to(Path("..") / "kernels", target_is_directory=True)


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
    """A temporary git worktree of revision `base` with its extension built in place and its own Triton kernels;
    removed on exit."""
    with tempfile.TemporaryDirectory(prefix="grace-fast-base-") as tmp:
        tree = Path(tmp) / "tree"
        if subprocess.run(["git", "worktree", "add", "--detach", "-q", str(tree), base], cwd=ROOT).returncode:
            raise SystemExit(f"--base {base}: git cannot check that revision out")
        try:
            link_kernels(tree)
            build(tree, base)
            yield tree
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)


def run_in(tree: Path, name: str, device: str, shapes: list[str] | None, out: Path | None) -> list[dict]:
    """Rows of benchmark `name` run as a fresh process in `tree`; written to `out` if given (a revision that
    predates --out writes into its own results/, one that predates the benchmark's rename under its FORMER_NAMES)."""
    module = BENCHMARKS[name][0]
    if not (tree / "benchmarks" / f"{module}.py").is_file() and name in FORMER_NAMES:
        name, module = FORMER_NAMES[name], f"bench_{FORMER_NAMES[name]}"
    command = [sys.executable, "-m", f"benchmarks.{module}", "--device", device]
    command += (["--shapes", *shapes] if shapes else []) + (["--out", str(out)] if out else [])
    written = (out or tree / "benchmarks" / "results") / f"{name}{result_suffix(device)}.json"
    written.unlink(missing_ok=True)  # a revision's committed results are no measurement of this run
    if subprocess.run(command, cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)}).returncode:
        raise SystemExit(f"{name}: the benchmark failed in {tree}; no comparison reported")
    if not written.is_file():
        raise SystemExit(f"{name}: the benchmark in {tree} wrote no {written}; no comparison reported")
    return json.loads(written.read_text())["rows"]


def key(row: dict) -> tuple:
    return tuple(sorted((k, str(v)) for k, v in row.items() if describes(k)))


VERDICT_ROUNDS, VERDICT_MARGIN = 3, 0.1  # fewer rounds, or a ratio within 10% of 1 in any round: "unclear"


def verdict(lowest: float, highest: float, rounds: int) -> str:
    """A row's verdict: "faster" or "slower" when every one of at least VERDICT_ROUNDS rounds says so by more than
    VERDICT_MARGIN, else "unclear". On symmetric noise, a row whose code did not change lands on one side of 1 in all
    of 3 rounds one time in 4; beyond a 10% margin each time, far more rarely (process-to-process noise is 10-25% on
    a shared 2-core machine)."""
    if rounds >= VERDICT_ROUNDS and lowest > 1 + VERDICT_MARGIN:
        return "faster"
    if rounds >= VERDICT_ROUNDS and highest < 1 - VERDICT_MARGIN:
        return "slower"
    return "unclear"


def join_rounds(this: list[list[dict]], base: list[list[dict]], label: str) -> list[dict]:
    """Timed rows measured in every round on both sides (memory-only rows are left out), with `<label>_ms` (the
    base's median over rounds), median_ms (this tree's), speedup_vs_base (their ratio), its lowest and highest
    value in one round, and its verdict (see verdict)."""
    rounds = list(zip(this, base, strict=True))
    medians = [tuple({key(r): r["median_ms"] for r in side if "median_ms" in r} for side in pair) for pair in rounds]
    out = []
    for row in this[0]:
        k = key(row)
        if "median_ms" not in row or not all(k in t and k in b for t, b in medians):
            continue
        this_ms = statistics.median(t[k] for t, _ in medians)
        base_ms = statistics.median(b[k] for _, b in medians)
        per_round = [b[k] / t[k] for t, b in medians]
        lowest, highest = min(per_round), max(per_round)
        described = {f: v for f, v in row.items() if describes(f)}
        out.append(
            {
                **described,
                f"{label}_ms": base_ms,
                "median_ms": this_ms,
                "speedup_vs_base": base_ms / this_ms,
                "lowest": lowest,
                "highest": highest,
                "verdict": verdict(lowest, highest, len(per_round)),
            }
        )
    return out


def check_tests(name: str, tree: Path, what: str, device: str) -> None:
    """Refuses (SystemExit) to compare when benchmark `name`'s tests fail on the tree."""
    if not tests_pass(name, tree, device):
        raise SystemExit(f"{name}: the tests fail on {what}; no comparison reported")


def compare(name: str, tree: Path, label: str, device: str, shapes: list[str] | None, rounds: int) -> list[dict]:
    """Benchmark `name` on this tree (its tests already passed: check_tests) and on `tree` (revision `label`),
    `rounds` times each in turn; see join_rounds. Refuses when the tests fail on `tree`."""
    check_tests(name, tree, label, device)
    this_rows, base_rows = [], []
    with tempfile.TemporaryDirectory(prefix="grace-fast-this-") as tmp:
        for i in range(rounds):
            order = [(ROOT, this_rows, "this tree"), (tree, base_rows, label)]
            for where, rows, what in order if i % 2 == 0 else order[::-1]:
                print(f"\n-- {name}, round {i + 1}/{rounds}: {what}", flush=True)
                rows.append(run_in(where, name, device, shapes, Path(tmp) if where == ROOT else None))
    return join_rounds(this_rows, base_rows, label)
