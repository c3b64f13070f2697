"""python -m benchmarks --base: the test gate, the interleaved rounds and the ratios (on stand-in trees)."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from benchmarks import compare as cmp


def tree_with_tests(root, passing: bool):
    """A stand-in source tree whose cost_matrix tests pass or fail."""
    test = root / "tests" / "ops" / "test_cost_matrix.py"
    test.parent.mkdir(parents=True)
    test.write_text(f"def test_cost():\n    assert {passing}\n")
    return root


def row(shape, provider, median_ms):
    return {"op": "cost", "provider": provider, "shape": shape, "median_ms": median_ms, "speedup_vs_torch": 9.0}


def test_no_ratio_is_reported_when_this_tree_fails_its_tests(tmp_path):
    this = tree_with_tests(tmp_path / "this", passing=False)
    with pytest.raises(SystemExit, match="cost_matrix: the tests fail on this tree; no comparison reported"):
        cmp.check_tests("cost_matrix", this, "this tree", "cpu")
    cmp.check_tests("cost_matrix", tree_with_tests(tmp_path / "fixed", passing=True), "this tree", "cpu")


def test_nothing_is_timed_when_the_base_fails_its_tests(tmp_path, monkeypatch):
    base = tree_with_tests(tmp_path / "base", passing=False)
    runs = []
    monkeypatch.setattr(cmp, "run_in", lambda *args: runs.append(args) or [])
    with pytest.raises(SystemExit, match="cost_matrix: the tests fail on REV; no comparison reported"):
        cmp.compare("cost_matrix", base, "REV", "cpu", None, rounds=2)
    assert runs == []


def test_sides_run_in_turn_and_the_ratio_is_of_medians_over_rounds(tmp_path, monkeypatch):
    this = tree_with_tests(tmp_path / "this", passing=True)
    base = tree_with_tests(tmp_path / "base", passing=True)
    base_ms = iter([10.0, 14.0, 12.0])
    this_ms = iter([5.0, 4.0, 8.0])
    calls = []

    def fake_run_in(tree, name, device, shapes, out):
        calls.append(("this" if tree == this else "base", out is not None))
        return [row("paper", "cpu", next(this_ms if tree == this else base_ms))]

    monkeypatch.setattr(cmp, "ROOT", this)
    monkeypatch.setattr(cmp, "run_in", fake_run_in)
    (out,) = cmp.compare("cost_matrix", base, "REV", "cpu", ["paper"], rounds=3)
    # ABBA order, so that a drift of the machine falls on both sides; only this tree's JSON is redirected
    assert calls == [("this", True), ("base", False), ("base", False), ("this", True), ("this", True), ("base", False)]
    assert out["REV_ms"] == 12.0 and out["median_ms"] == 5.0 and out["speedup_vs_base"] == pytest.approx(12 / 5)
    assert out["lowest"] == pytest.approx(1.5) and out["highest"] == pytest.approx(3.5)  # 12/8 and 14/4
    assert out["verdict"] == "faster"
    assert "speedup_vs_torch" not in out  # the trees' own ratios are not carried over


@pytest.mark.parametrize(
    ("base_ms", "verdict"),
    [
        ([2.0, 2.5, 1.2], "faster"),
        ([0.5, 0.8, 0.85], "slower"),
        ([0.9, 1.5, 1.3], "unclear"),  # the rounds disagree
        ([1.05, 1.2, 1.3], "unclear"),  # one round within 10% of 1: noise on this machine
        ([2.0, 2.5], "unclear"),  # too few rounds to take a side
    ],
)
def test_the_verdict_takes_a_side_only_when_every_round_does_by_a_margin(base_ms, verdict):
    this = [[row("a", "cpu", 1.0)] for _ in base_ms]
    (out,) = cmp.join_rounds(this, [[row("a", "cpu", ms)] for ms in base_ms], "REV")
    assert out["verdict"] == verdict


def test_rows_missing_from_a_round_of_either_side_and_memory_rows_are_left_out():
    memory = {"op": "sinkhorn", "provider": "cpu", "shape": "a", "iters": "500 (memory)", "peak_over_C": 2.7}
    this = [[row("a", "cpu", 1.0), row("b", "cpu", 1.0), memory], [row("a", "cpu", 2.0), row("b", "cpu", 1.0), memory]]
    base = [[row("a", "cpu", 2.0), row("b", "cpu", 3.0), memory], [row("a", "cpu", 2.0), memory]]  # b renamed
    out = cmp.join_rounds(this, base, "REV")
    assert [r["shape"] for r in out] == ["a"] and out[0]["speedup_vs_base"] == pytest.approx(2.0 / 1.5)


def test_rows_are_matched_on_what_they_describe_not_on_what_they_measured():
    def latency(median_ms, p99_ms, reps):
        return {"provider": "auto", "shape": "tiny", "median_ms": median_ms, "p99_ms": p99_ms, "reps": reps}

    (out,) = cmp.join_rounds([[latency(2.0, 5.0, 100)]], [[latency(3.0, 9.0, 120)]], "REV")
    assert out["speedup_vs_base"] == pytest.approx(1.5) and "p99_ms" not in out and "reps" not in out


def test_a_revision_without_out_is_read_from_its_own_results(tmp_path):
    """run_in really runs the benchmark in the tree; a revision from before bench_cost.py became bench_cost_matrix.py
    and --out existed runs it under its former name and is read from its own results/cost.json."""
    script = tmp_path / "benchmarks" / "bench_cost.py"
    script.parent.mkdir()
    (script.parent / "__init__.py").write_text("")
    script.write_text(
        textwrap.dedent(f"""
        import json, pathlib, sys
        assert sys.argv[1:] == ["--device", "cpu", "--shapes", "paper"], sys.argv
        out = pathlib.Path("benchmarks/results/cost.json")
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps({{"rows": [{json.dumps(row("paper", "cpu", 3.0))}]}}))
        """)
    )
    assert cmp.run_in(tmp_path, "cost_matrix", "cpu", ["paper"], None) == [row("paper", "cpu", 3.0)]
    script.write_text("pass")  # the committed results of the revision are still there, but were not written now
    with pytest.raises(SystemExit, match="wrote no .*cost.json"):
        cmp.run_in(tmp_path, "cost_matrix", "cpu", ["paper"], None)
    script.write_text("raise SystemExit(3)")
    with pytest.raises(SystemExit, match="the benchmark failed"):
        cmp.run_in(tmp_path, "cost_matrix", "cpu", ["paper"], None)


def test_bench_main_writes_its_json_where_out_says(tmp_path, monkeypatch):
    from benchmarks import bench_cost_matrix, utils

    monkeypatch.setattr(bench_cost_matrix, "run", lambda shapes, device: [row(s, "torch", 1.0) for s in shapes])
    monkeypatch.setattr("sys.argv", ["bench_cost_matrix", "--shapes", "low-latency", "--out", str(tmp_path)])
    bench = bench_cost_matrix
    utils.benchmark_main("cost_matrix", "", bench.SHAPES, bench.run, ["provider", "median_ms"])
    assert json.loads((tmp_path / "cost_matrix.json").read_text())["rows"] == [row("low-latency", "torch", 1.0)]


def test_the_base_tree_imports_its_own_triton_kernels(tmp_path):
    """Revisions before the move of kernels/ into the package need the link; later ones have it in the tree."""
    tree = tmp_path / "tree"
    subprocess.run(["git", "worktree", "add", "--detach", "-q", str(tree), "HEAD"], cwd=cmp.ROOT, check=True)
    try:
        cmp.link_kernels(tree)
        where = subprocess.run(
            [sys.executable, "-c", "import grace_fast.kernels as k; print(k.__path__[0])"],
            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        assert Path(where).resolve().is_relative_to(tree.resolve())
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=cmp.ROOT, check=False)
