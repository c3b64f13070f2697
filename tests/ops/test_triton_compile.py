"""The Triton kernels compile for the GPUs the device tool lends (sm_90), without one: tests/ops/triton_compile.py
records every launch of the canonical shapes and compiles it down to a cubin, and ptxas reports no register spill."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
ROOT = Path(__file__).resolve().parents[2]
KERNELS = {  # every kernel each launcher starts
    "_sinkhorn_solve_kernel",
    "_sinkhorn_plan_kernel",
    "_scores_kernel",
    "_softmax_kernel",
    "_scale_kernel",
    "_row_dot_kernel",
    "_clip_factors_kernel",
    "_grad_kernel",
}


def test_every_launch_compiles_for_sm90_without_spills(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env |= {"TRITON_CACHE_DIR": str(tmp_path), "TRITON_DUMP_PTXAS_LOG": "1", "TRITON_DEFAULT_FP_FUSION": "1"}
    command = [sys.executable, "-m", "tests.ops.triton_compile", "--arch", "90"]
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-4000:]
    compiled = re.findall(r"^sm_90 (\w+) ", out, flags=re.M)
    assert set(compiled) == KERNELS, out[-4000:]
    assert re.search(rf"^compiled {len(compiled)} launches for sm_90$", out, flags=re.M)
    spills = re.findall(r"(\d+) bytes spill stores", out)
    assert len(spills) == len(compiled), out[-4000:]  # ptxas ran for each launch: nothing came from a cache
    assert set(spills) == {"0"}, "\n".join(line for line in out.splitlines() if "spill" in line or "sm_90" in line)
