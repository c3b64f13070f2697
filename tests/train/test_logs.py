"""Training logs: TensorBoard scalars of every epoch when asked (a clear error without the package), the loss and
UAR curves drawn from metrics.jsonl, and the loop's messages through the logging module."""

import json
import logging
import sys

import pytest
from PIL import Image

from grace_fast.errors import UserError
from grace_fast.train.logs import TENSORBOARD_DIR, plot_curves
from grace_fast.train.loop import METRICS_NAME
from tests.train.standin import train


def test_tensorboard_gets_each_epochs_metrics(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(tmp_path, epochs=2, tensorboard=True)
    events = EventAccumulator(str(tmp_path / TENSORBOARD_DIR))
    events.Reload()
    records = [json.loads(line) for line in (tmp_path / METRICS_NAME).read_text().splitlines()]
    uar = [(event.step, event.value) for event in events.Scalars("val/uar")]
    assert uar == [(r["epoch"], pytest.approx(r["val_uar"])) for r in records]
    assert {"train/total", "lr", "val/war"} <= set(events.Tags()["scalars"])


def test_tensorboard_without_the_package_is_a_user_error_naming_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(UserError, match=r"grace_fast\[tensorboard\]"):
        train(tmp_path, epochs=1, tensorboard=True)
    assert not (tmp_path / METRICS_NAME).exists()  # refused before any work


def _metrics(path, validated: bool):
    rows = []
    for epoch in (1, 2, 3):
        row = {"epoch": epoch, "train_total": 2.0 / epoch, "train_focal": 1.0 / epoch, "best": epoch == 2}
        if validated:
            row |= {"val_uar": 0.2 * epoch, "val_war": 0.25 * epoch}
        rows.append(json.dumps(row))
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize("validated, panels", [(True, 2), (False, 1)])
def test_curves_draw_a_loss_panel_and_a_validation_panel_when_there_is_one(tmp_path, validated, panels):
    plot_curves(_metrics(tmp_path / METRICS_NAME, validated), tmp_path / "curves.png")
    with Image.open(tmp_path / "curves.png") as image:
        assert image.format == "PNG" and image.size == (500 * panels, 360)


def test_curves_of_an_empty_log_are_refused_naming_it(tmp_path):
    (tmp_path / METRICS_NAME).write_text("")
    with pytest.raises(ValueError, match=METRICS_NAME):
        plot_curves(tmp_path / METRICS_NAME, tmp_path / "curves.png")


def test_the_loop_logs_each_epoch_instead_of_printing(tmp_path, caplog, capsys):
    caplog.set_level(logging.INFO, logger="grace_fast")
    train(tmp_path, epochs=2)
    epochs = [r.getMessage() for r in caplog.records if r.name == "grace_fast.train.loop"]
    assert [line.split()[:2] for line in epochs] == [["epoch", "1"], ["epoch", "2"]]
    assert "epoch 1" not in capsys.readouterr().out
