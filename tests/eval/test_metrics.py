"""UAR, WAR, per-class recall and the confusion matrix against hand-computed cases and a loop oracle; the report."""

import json

import numpy as np
import pytest
import torch

from grace_fast.eval import classification_metrics, confusion_matrix, score


def test_hand_computed_case_with_an_absent_class():
    # class 0: 2 of 3 right; class 1: 1 of 2; class 2: 1 of 1; class 3: no clip
    m = classification_metrics([0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 0, 2], num_classes=4)
    assert m.confusion == [[2, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    assert m.recall == pytest.approx([2 / 3, 1 / 2, 1.0, None])
    assert m.support == [3, 2, 1, 0]
    assert m.uar == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    assert m.war == pytest.approx(4 / 6)


def test_majority_guess_on_imbalanced_data_has_high_war_and_chance_uar():
    m = classification_metrics([0] * 8 + [1] * 2, [0] * 10, num_classes=2)
    assert (m.war, m.uar, m.recall) == (0.8, 0.5, [1.0, 0.0])


def test_class_predicted_but_never_present_does_not_enter_uar():
    m = classification_metrics([0, 0], [1, 1], num_classes=2)
    assert (m.uar, m.war, m.recall) == (0.0, 0.0, [0.0, None])


def test_metrics_match_a_loop_oracle_on_random_predictions():
    rng = np.random.default_rng(0)
    labels, predictions = rng.integers(0, 7, 500), rng.integers(0, 7, 500)
    m = classification_metrics(torch.from_numpy(labels), predictions.tolist(), num_classes=7)
    recalls = []
    for c in range(7):
        idx = [i for i in range(500) if labels[i] == c]
        recalls.append(sum(predictions[i] == c for i in idx) / len(idx))
        assert m.confusion[c] == [sum(predictions[i] == j for i in idx) for j in range(7)]
    assert m.recall == pytest.approx(recalls)
    assert m.uar == pytest.approx(sum(recalls) / 7)
    assert m.war == pytest.approx(float(np.mean(labels == predictions)))


@pytest.mark.parametrize(
    "labels, predictions, message",
    [
        ([0, 7], [0, 1], r"labels must lie in \[0, 7\)"),
        ([0, 1], [0, -1], r"predictions must lie in \[0, 7\)"),
        ([0, 1, 2], [0, 1], "same length"),
        ([0.0, 1.0], [0, 1], "integer class ids"),
    ],
    ids=["label-out-of-range", "negative-prediction", "length-mismatch", "float-labels"],
)
def test_bad_inputs_raise_naming_the_argument(labels, predictions, message):
    with pytest.raises(ValueError, match=message):
        confusion_matrix(labels, predictions, 7)


def test_no_clips_raises():
    with pytest.raises(ValueError, match="no clips"):
        classification_metrics([], [], 3)


def test_score_writes_the_json_report_and_a_png(tmp_path):
    report = score([0, 0, 1, 2], [0, 1, 1, 1], tmp_path, class_names=["happy", "sad", "angry"], fold=2)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved == report
    assert (saved["uar"], saved["war"], saved["num_samples"], saved["fold"]) == (0.5, 0.5, 4, 2)
    assert saved["per_class"][1] == {"class": 1, "name": "sad", "recall": 1.0, "support": 1, "predicted": 3}
    assert saved["per_class"][2]["recall"] == 0.0
    from matplotlib import image

    png = image.imread(tmp_path / "confusion.png")
    assert png.ndim == 3 and min(png.shape[:2]) > 100
