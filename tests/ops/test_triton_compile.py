"""The Triton kernels compile for the GPUs the device tool lends (sm_90), without one: tests/ops/triton_compile.py
records every launch of the canonical shapes, has Triton's runtime specialise it and compiles it down to a cubin;
ptxas must report no register spill."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
ROOT = Path(__file__).resolve().parents[2]
KERNELS = {  # every kernel that the launchers start
    "_sinkhorn_solve_kernel",
    "_sinkhorn_plan_kernel",
    "_scores_kernel",
    "_softmax_kernel",
    "_scale_kernel",
    "_row_dot_kernel",
    "_clip_factors_kernel",
    "_grad_kernel",
}


def test_every_launch_compiles_for_sm90_without_spills():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | {"TRITON_DEFAULT_FP_FUSION": "1"}
    command = [sys.executable, "-m", "tests.ops.triton_compile", "--arch", "90"]
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-6000:]
    compiled = re.findall(r"^sm_90 (\w+) .*: (\d+) registers, (\d+) B spilled", run.stdout, flags=re.M)
    assert {name for name, _, _ in compiled} == KERNELS, out[-6000:]
    assert all(spilled == "0" for _, _, spilled in compiled)
    assert f"compiled {len(compiled)} launches for sm_90, 0 with register spills" in run.stdout
