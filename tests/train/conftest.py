"""One torch thread in the training tests (in process and in the subprocesses they start): on a machine whose
cores are shared, two OpenMP threads wait on each other far longer than they compute on tiny models."""

import csv
import os
import signal
import subprocess
from pathlib import Path

import pytest

from grace_fast.data.layouts import read_captions

REPO = Path(__file__).resolve().parents[2]
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run_ok(command: list[str], timeout: float) -> subprocess.CompletedProcess:
    """command run in the repository on one torch thread; it must exit 0."""
    done = subprocess.run(command, cwd=REPO, env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def kill_at(command: list[str], line: str) -> None:
    """Starts command in the repository and SIGKILLs it as soon as it prints line (on stdout)."""
    process = subprocess.Popen(
        command, cwd=REPO, env=SUBPROCESS_ENV, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    for printed in process.stdout:
        if printed.strip() == line:
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, f"{command} ended ({process.returncode}) before printing {line!r}"


def assert_reproduces_test_predictions(predictor, data: Path, run: Path) -> None:
    """predictor, given the synthetic set's test clips and captions, predicts what the trainer wrote to
    run/test/predictions.csv: the same labels and probabilities to 2e-6."""
    captions = read_captions(data / "captions.csv")
    with open(run / "test" / "predictions.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    paths = [str(data / "Clip" / "original" / f"{row['clip']}.mp4") for row in rows]
    predictions = predictor.predict(paths, [captions[row["clip"]] for row in rows])
    for row, prediction in zip(rows, predictions, strict=True):
        assert prediction.label == row["prediction"]
        for name, p in prediction.probabilities.items():
            assert p == pytest.approx(float(row[f"p_{name}"]), abs=2e-6)


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Every training test on one torch thread."""
