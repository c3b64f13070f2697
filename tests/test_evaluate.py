"""`grace-fast evaluate` on a predictions CSV: class names or ids, the report it writes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from grace_fast.evaluate import read_predictions

REPO = Path(__file__).resolve().parents[1]


def test_predictions_csv_takes_names_or_ids(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("clip,label,prediction\na,happy,1\nb,sad,sad\n")
    assert read_predictions(path, ["happy", "sad"]) == ([0, 1], [1, 1])
    with pytest.raises(ValueError, match=r"line 2: class 'happy' is not an integer"):
        read_predictions(path, None)


def test_evaluate_cli_scores_a_predictions_file(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("label,prediction\n0,0\n0,0\n0,1\n1,1\n")
    result = subprocess.run(
        [sys.executable, "-m", "grace_fast", "evaluate", "--predictions", str(path), "--num-classes", "3"]
        + ["--out", str(tmp_path / "out")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "UAR 83.33  WAR 75.00" in result.stdout
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["confusion"] == [[2, 1, 0], [0, 1, 0], [0, 0, 0]]
