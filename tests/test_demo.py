"""grace-fast demo on a small set: every variant trained with its overrides and tested, its UAR/WAR those of its test
predictions; a variant trained in a worker process equals one trained in this process, and a rerun retrains or
retests only what is missing."""

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

from grace_fast.demo import VARIANTS, demo, table
from grace_fast.model.config import GraceConfig
from grace_fast.train.config import TrainConfig

CLIPS, EPOCHS = 70, 1  # fold 1 tests 14 clips; the training fold gives 3 steps of 16 per epoch


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    threads = torch.get_num_threads()
    out = tmp_path_factory.mktemp("demo")
    summary = demo(out, clips=CLIPS, epochs=EPOCHS, jobs=2, progress=False)
    torch.set_num_threads(threads)
    return out, summary


def recalls_by_hand(path: Path) -> tuple[float, float]:
    """(UAR, WAR) of a predictions.csv: the mean recall over the classes present, and the accuracy."""
    with open(path) as f:
        rows = list(csv.DictReader(f))
    classes = sorted({row["label"] for row in rows})
    recall = [
        sum(r["prediction"] == c for r in rows if r["label"] == c) / sum(r["label"] == c for r in rows) for c in classes
    ]
    return sum(recall) / len(recall), sum(r["prediction"] == r["label"] for r in rows) / len(rows)


def test_each_variant_trains_its_overrides_and_reports_its_test_predictions(demo_run):
    out, summary = demo_run
    assert [row["name"] for row in summary["variants"]] == list(VARIANTS)
    for row in summary["variants"]:
        run = Path(row["run"])
        assert TrainConfig.load(run / "config.yaml").model_overrides == VARIANTS[row["name"]]
        model = GraceConfig.load(run / "best" / "config.json")
        assert model.lambdas == (1.0, 0.1, 0.5)  # demo_config's loss weights
        assert (model.motion, model.alignment) == (
            VARIANTS[row["name"]].get("motion", "both"),
            VARIANTS[row["name"]].get("alignment", "ot"),
        )
        with open(run / "test" / "predictions.csv") as f:
            assert sum(1 for _ in f) - 1 == CLIPS // 5
        assert (row["uar"], row["war"]) == pytest.approx(recalls_by_hand(run / "test" / "predictions.csv"))
        assert f"| {row['name']} | {100 * row['uar']:.1f} | {100 * row['war']:.1f} |" in table(summary)
    written = json.loads((out / "demo.json").read_text())["variants"]
    assert [(r["name"], r["uar"], r["war"]) for r in written] == [
        (r["name"], r["uar"], r["war"]) for r in summary["variants"]
    ]
    assert (out / "demo.png").is_file()


def test_the_tokenizer_has_one_token_per_word_of_the_training_captions(demo_run):
    out, _ = demo_run
    tokenizer = AutoTokenizer.from_pretrained(out / "tokenizer")
    with open(out / "data" / "captions.csv") as f:
        captions = {row["clip"]: row["caption"] for row in csv.DictReader(f)}
    with open(out / "data" / "EmoLabel_DataSplit" / "train(single-labeled)" / "set_1.csv") as f:
        train = [captions[row["video_name"]] for row in csv.DictReader(f)]
    for caption in train:
        words = caption.lower().replace(",", " ,").replace(".", " .").split()
        assert len(tokenizer(caption, add_special_tokens=False).input_ids) == len(words), caption


def test_a_rerun_redoes_only_what_is_missing_the_same_in_this_process_as_in_a_worker(demo_run):
    out, summary = demo_run
    rows = {row["name"]: row for row in summary["variants"]}
    retrained, retested = Path(rows["neither"]["run"]), Path(rows["GRACE"]["run"])
    weights = load_file(retrained / "best" / "model.safetensors")
    kept = {
        name: (Path(row["run"]) / "best" / "model.safetensors").stat().st_mtime_ns
        for name, row in rows.items()
        if name != "neither"
    }
    shutil.rmtree(retrained)
    shutil.rmtree(retested / "test")
    (out / "demo.json").unlink()

    again = demo(out, clips=CLIPS, epochs=EPOCHS, jobs=1, progress=False)

    again_weights = load_file(retrained / "best" / "model.safetensors")
    # the same training in another process: bit for bit in most runs, but one run in CI's neighbourhood differed in
    # the last bits (cause not yet found), so the test allows float32 rounding
    assert again_weights.keys() == weights.keys()
    assert all(torch.allclose(again_weights[k], weights[k], rtol=1e-4, atol=1e-6) for k in weights)
    assert {name: (Path(rows[name]["run"]) / "best" / "model.safetensors").stat().st_mtime_ns for name in kept} == kept
    assert [{k: r[k] for k in ("name", "uar", "war", "best_epoch")} for r in again["variants"]] == [
        {k: r[k] for k in ("name", "uar", "war", "best_epoch")} for r in summary["variants"]
    ]
    assert (retested / "test" / "report.json").is_file()


def test_the_command_refuses_a_bad_jobs_count_with_exit_2_naming_it(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "grace_fast", "demo", "--out", str(tmp_path / "demo"), "--jobs", "0"],
        capture_output=True,
        text=True,
    )
    assert (done.returncode, done.stdout) == (2, "")
    assert "demo: error: jobs must be an integer >= 1, got 0" in done.stderr
    assert not (tmp_path / "demo").exists()


def test_the_demo_measures_graces_mechanism_on_every_test_clip(demo_run):
    out, summary = demo_run
    assert summary["mechanism"]["measured"] == 14
    assert sorted(summary["mechanism"]["pointing"]) == ["ot", "ot_balanced"]
    assert json.loads((out / "demo.json").read_text())["mechanism"] == summary["mechanism"]
