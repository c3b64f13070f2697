"""Same seed, same bytes: the smallest demo, GRACE in caption and CATE mode for one epoch, run in two fresh processes
(with different string-hash seeds, so that no set or dict order can hide; one training in itself, jobs 1, the other
in a worker process, jobs 2), writes the same demo.json numbers, the same coarse labels and descriptions, and the
same best checkpoints, bit for bit."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from grace_fast.demo import DESCRIPTIONS
from grace_fast.text.jobs import LABELS_NAME

CLIPS = 35  # fold 1 tests 7 clips; 28 train, 3 of them validating
RUN = (
    "import sys; from grace_fast.demo import demo; "
    f"demo(sys.argv[1], clips={CLIPS}, epochs=1, seeds=[0], variants=['GRACE'], modes=['caption', 'cate'], "
    "jobs=int(sys.argv[2]), progress=False)"
)


def run_demo(out: Path, jobs: int, hash_seed: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    command = [sys.executable, "-c", RUN, str(out), str(jobs)]
    return subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)


def numbers(out: Path) -> dict:
    """demo.json without the timings and the jobs count, its paths relative to out."""
    summary = json.loads((out / "demo.json").read_text())
    del summary["seconds"], summary["jobs"]
    for row in summary["runs"]:
        del row["seconds"]
        row["run"] = str(Path(row["run"]).relative_to(out))
    return summary


def test_the_same_seed_gives_the_same_bytes_in_fresh_processes(tmp_path):
    outs = [tmp_path / "first", tmp_path / "second"]
    processes = [run_demo(out, jobs, str(jobs)) for out, jobs in zip(outs, (1, 2), strict=True)]
    for process in processes:
        _, stderr = process.communicate()
        assert process.returncode == 0, stderr
    first, second = outs
    assert numbers(first) == numbers(second)
    for path in (DESCRIPTIONS.with_name(LABELS_NAME), DESCRIPTIONS):
        assert (first / "seed-0" / path).read_bytes() == (second / "seed-0" / path).read_bytes(), path
    checkpoints = sorted(path.relative_to(first) for path in first.glob("seed-0/runs/*/best/model.safetensors"))
    assert len(checkpoints) == 2
    for path in checkpoints:
        weights, again = load_file(first / path), load_file(second / path)
        assert weights.keys() == again.keys()
        different = [key for key in weights if not torch.equal(weights[key], again[key])]
        assert not different, f"{path}: {different}"
