"""Face crops end to end on the synthetic set: `grace-fast train --face-crop` records the crop in its checkpoint,
whose Predictor then crops too and reproduces the trainer's test predictions; the run folder holds the curves and
a model card with the scores."""

import csv
import json

import pytest

from grace_fast.cli import main
from grace_fast.predict import Predictor
from tests.train.conftest import assert_reproduces_test_predictions

pytest.importorskip("cv2", reason="the faces extra (opencv-python-headless) is not installed")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from grace_fast.data.synthetic import make_synthetic

    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic(root, clips=21, seed=0, size=32, progress=False)
    return root


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    args = ["--data-root", str(data), "--out", str(run), "--epochs", "1", "--batch-size", "4", "--amp", "off"]
    assert main(["train", *args, "--val-fraction", "0.25", "--face-crop", "--no-progress"]) == 0
    return run


def test_the_checkpoint_records_the_face_crop_and_the_card_the_scores(run):
    assert json.loads((run / "best" / "preprocessor_config.json").read_text())["face_crop"] is True
    report = json.loads((run / "test" / "report.json").read_text())
    card = (run / "best" / "README.md").read_text()
    assert "cut to the tracked face" in card and f"| test | {report['uar']:.4f} | {report['war']:.4f} |" in card
    assert (run / "curves.png").stat().st_size > 0


def test_predictor_crops_like_the_trainer_and_reproduces_its_test_predictions(data, run):
    predictor = Predictor.from_pretrained(run / "best", device="cpu", dtype="float32")
    assert predictor.face_crop is not None
    assert_reproduces_test_predictions(predictor, data, run)
    uncropped = Predictor.from_pretrained(run / "best", device="cpu", dtype="float32", face_crop=False)
    clip = next(csv.DictReader((run / "test" / "predictions.csv").read_text().splitlines()))["clip"]
    path = str(data / "Clip" / "original" / f"{clip}.mp4")
    assert uncropped.load(path).ne(predictor.load(path)).any()
