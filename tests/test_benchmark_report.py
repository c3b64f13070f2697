"""The benchmark report's arithmetic: growth exponents, tables and the report file built from result JSON."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.bench_scaling import growth_exponents
from benchmarks.report import headline, table, write_report
from benchmarks.utils import add_ratio_vs


def _rows(time_power, memory_power):
    return [
        {
            "op": "sinkhorn",
            "series": "M (frames)",
            "size": m,
            "median_ms": 0.5 * m**time_power,
            "p20_ms": 0.4,
            "p80_ms": 0.6,
            "peak_mb": 3.0 * m**memory_power,
        }
        for m in (784, 1568, 2352, 3136)
    ]


@pytest.mark.parametrize("time_power, memory_power", [(1.0, 1.0), (2.0, 0.5), (1.3, 0.0)])
def test_growth_exponent_recovers_a_power_law(time_power, memory_power):
    slopes = growth_exponents(_rows(time_power, memory_power))[("sinkhorn", "M (frames)")]
    assert slopes["time"] == pytest.approx(time_power) and slopes["memory"] == pytest.approx(memory_power, abs=1e-9)


def test_table_shows_median_with_spread_and_ratios():
    rows = [{"op": "x", "provider": "cpu", "median_ms": 2.0, "p20_ms": 1.5, "p80_ms": 2.5, "speedup_vs_torch": 3.0}]
    lines = table(rows).splitlines()
    assert lines[0] == "| provider | median ms (p20-p80) | speedup_vs_torch |"
    assert lines[2] == "| cpu | 2 (1.5-2.5) | 3 |"


def test_report_collects_every_result_file(tmp_path):
    machine = {"cpu": "test cpu", "cores": 2}
    (tmp_path / "scaling.json").write_text(json.dumps({"machine": machine, "rows": _rows(1.0, 1.0)}))
    cost = [{"op": "cost", "provider": "cpu", "median_ms": 1.0, "p20_ms": 1.0, "p80_ms": 1.0}]
    (tmp_path / "cost_matrix.json").write_text(json.dumps({"machine": machine, "rows": cost}))
    text = write_report(tmp_path).read_text()
    assert "- cpu: test cpu" in text and "## cost_matrix" in text and "## scaling" in text
    assert "sinkhorn, M (frames): time ~ size^1.00, memory ~ size^1.00" in text
    assert (tmp_path / "scaling-M.png").stat().st_size > 0


def test_report_without_results_says_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m benchmarks --all"):
        write_report(tmp_path)


def test_headline_reads_the_worst_matching_row_against_each_target():
    rows = [
        {"provider": "cpu", "mode": "full", "speedup_vs_torch": 3.5, "peak_over_X": 1.9},
        {"provider": "cpu", "mode": "full", "speedup_vs_torch": 2.5, "peak_over_X": 2.2},
        {"provider": "torch", "mode": "full", "speedup_vs_torch": 1.0, "peak_over_X": 6.0},
    ]
    lines = headline({"motion_weights": {"rows": rows}}).splitlines()
    assert lines[2] == "| motion_weights | cpu vs torch, forward+backward: speedup_vs_torch >= 3 | 2.5 | NO |"
    assert lines[3] == "| motion_weights | cpu forward+backward peak over sizeof(X): peak_over_X <= 2 | 2.2 | NO |"
    assert len(lines) == 4  # benchmarks without results are left out


def test_unknown_shape_is_refused_before_anything_runs():
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--op", "cost_matrix", "--shapes", "no-such-shape"],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent,
    )  # fmt: skip
    assert result.returncode == 2 and "cost_matrix has no shape ['no-such-shape']" in result.stderr


@pytest.mark.parametrize(
    "machine, applies",
    [
        ({"native_bf16": False, "cpu_flags": ["avx2"]}, True),
        ({"native_bf16": True, "cpu_flags": ["avx512_bf16"]}, False),
    ],
    ids=["no-bf16-cpu", "bf16-cpu"],
)
def test_a_machines_target_reads_only_results_of_such_machines(machine, applies):
    rows = [{"provider": "auto", "variant": "compiled", "shape": "tiny-16f", "speedup_vs_fp32-eager": 1.1}]
    lines = headline({"inference": {"machine": machine, "rows": rows}}).splitlines()
    expected = "| inference | CPU without bf16 hardware: compiled p50 vs fp32 eager, every shape: "
    assert [line.startswith(expected) and line.endswith("| 1.1 | NO |") for line in lines[2:]] == [True] * applies


def test_ratio_against_a_baseline_row_of_the_same_shape():
    rows = [
        {"dtype": "fp32", "shape": "a", "median_ms": 10.0},
        {"dtype": "bf16", "shape": "a", "median_ms": 4.0},
        {"dtype": "bf16", "shape": "b", "median_ms": 4.0},
    ]
    add_ratio_vs(rows, "speedup_vs_fp32", {"dtype": "fp32"}, ("shape",))
    assert [r["speedup_vs_fp32"] for r in rows] == [1.0, 2.5, None]


@pytest.mark.parametrize("mode", ["forward", "full"])
def test_cost_roofline_counts_the_flops_of_the_references_products(mode):
    """bench_cost_matrix's gflops column divides by gemm_flops: the matmul FLOPs torch counts in the reference."""
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarks.bench_cost_matrix import gemm_flops
    from grace_fast.ops.reference import cost_matrix_reference

    shape = (3, 5, 7, 16)
    U, V = (torch.randn(3, n, 16, requires_grad=True) for n in shape[1:3])
    with FlopCounterMode(display=False) as counter:
        C = cost_matrix_reference(U, V)
        if mode == "full":
            C.backward(torch.ones_like(C))
    assert gemm_flops(shape, mode) == counter.get_total_flops()
