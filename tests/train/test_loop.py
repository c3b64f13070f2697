"""The training loop on a stand-in model: a short run's outputs, exact resumption after a crash, a SIGINT and a
real SIGKILL, and DistributedDataParallel on 2 gloo processes against one process."""

import json
import logging
import os
import re
import signal
import sys
from pathlib import Path

import pytest
import torch

from grace_fast.errors import CheckpointError
from grace_fast.train.checkpoint import checkpoints
from grace_fast.train.loop import BEST, METRICS_NAME
from tests.train.conftest import kill_at, run_ok
from tests.train.standin import train


class Crash(Exception):
    pass


def crash_at(step: int):
    def on_step(info):
        if info["global_step"] == step:
            raise Crash

    return on_step


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs by {(a[name] - b[name]).abs().max().item():.3g}"


def without_times(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in record.items() if k != "seconds"} for record in history]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The reference: 3 epochs of 10 steps, never stopped."""
    run = tmp_path_factory.mktemp("uninterrupted")
    result, model = train(run)
    return result, weights(model), run


def test_run_writes_metrics_checkpoints_and_the_selected_model(uninterrupted):
    result, _, run = uninterrupted
    lines = [json.loads(line) for line in (run / METRICS_NAME).read_text().splitlines()]
    assert without_times(lines) == without_times(result.history)
    assert [r["epoch"] for r in lines] == [1, 2, 3] and [r["global_step"] for r in lines] == [10, 20, 30]
    best = max(lines, key=lambda r: (r["val_uar"], -r["epoch"]))  # the first epoch with the highest val UAR
    assert result.best_epoch == best["epoch"] and [r["best"] for r in lines].count(True) >= 1
    selection = json.loads((run / BEST / "selection.json").read_text())
    assert selection["epoch"] == best["epoch"] and selection["val_uar"] == best["val_uar"]
    assert lines[-1]["lr"] == 0.0  # the cosine reaches its floor at the last step
    assert [p.name for p in checkpoints(run)] == ["step-00000028", "step-00000030"]  # keep_checkpoints = 2


def test_selected_model_scores_its_validation_metrics(uninterrupted):
    from safetensors.torch import load_file

    from grace_fast.eval.metrics import classification_metrics
    from tests.train.standin import Clips, Net

    result, _, run = uninterrupted
    model = Net().eval()
    model.load_state_dict(load_file(run / BEST / "model.safetensors"))
    val = Clips(9, seed=1)
    with torch.no_grad():
        logits = model({"features": val.x}).logits  # no augmentation at evaluation... except the item noise
    metrics = classification_metrics(val.labels, logits.argmax(1), 3)
    assert abs(metrics.war - result.best["val_war"]) <= 1 / 9  # one clip may flip under the 0.1 augmentation noise


def test_resume_after_a_crash_mid_epoch_gives_the_same_weights_bit_for_bit(uninterrupted, tmp_path):
    _, reference, ref_run = uninterrupted
    with pytest.raises(Crash):
        train(tmp_path, on_step=crash_at(15))  # mid epoch 2; the newest checkpoint is step 14
    assert checkpoints(tmp_path)[-1].name == "step-00000014"
    result, model = train(tmp_path, resume=True)
    assert_same_weights(weights(model), reference)
    reference_lines = [json.loads(x) for x in (ref_run / METRICS_NAME).read_text().splitlines()]
    assert without_times(result.history) == without_times(reference_lines)


def test_resume_from_an_epoch_end_checkpoint_with_loader_workers(uninterrupted, tmp_path):
    _, reference, _ = uninterrupted
    with pytest.raises(Crash):
        train(tmp_path, on_step=crash_at(11), checkpoint_every=0)  # only epoch ends: step 10 is the newest
    assert [p.name for p in checkpoints(tmp_path)] == ["step-00000010"]
    _, model = train(tmp_path, resume=True, checkpoint_every=0, num_workers=2)  # items are seeded, not the workers
    assert_same_weights(weights(model), reference)


@pytest.mark.parametrize("step", [17, 14], ids=["between-checkpoints", "right-after-a-checkpoint"])
def test_sigint_checkpoints_the_finished_step_and_resume_continues_exactly(uninterrupted, tmp_path, step):
    _, reference, _ = uninterrupted

    def interrupt(info):
        if info["global_step"] == step:
            os.kill(os.getpid(), signal.SIGINT)

    result, _ = train(tmp_path, on_step=interrupt)
    assert result.interrupted and result.global_step == step
    assert checkpoints(tmp_path)[-1].name == f"step-{step:08d}"
    _, model = train(tmp_path, resume=True)
    assert_same_weights(weights(model), reference)


def test_existing_run_needs_resume_and_an_unchanged_config(uninterrupted, tmp_path):
    with pytest.raises(Crash):
        train(tmp_path, on_step=crash_at(3))
    with pytest.raises(FileExistsError, match="--resume"):
        train(tmp_path)
    with pytest.raises(ValueError, match=r"config changed \(lr: 0.05 -> 0.1\)"):
        train(tmp_path, resume=True, lr=0.1)


CORRUPTIONS = {  # file of the newest checkpoint -> what is done to it
    "model.safetensors": lambda data: data[: len(data) // 2],  # truncated
    "trainer.pt": lambda data: b"not a checkpoint" * 64,  # garbage
    "rank-0.pt": lambda data: b"",  # empty
}


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_resume_falls_back_to_the_previous_checkpoint_when_the_newest_is_corrupt(uninterrupted, tmp_path, caplog, name):
    caplog.set_level(logging.INFO, logger="grace_fast")
    _, reference, _ = uninterrupted
    with pytest.raises(Crash):
        train(tmp_path, on_step=crash_at(15))  # checkpoints of steps 12 and 14
    bad = tmp_path / "checkpoints" / "step-00000014"
    (bad / name).write_bytes(CORRUPTIONS[name]((bad / name).read_bytes()))
    _, model = train(tmp_path, resume=True)
    assert_same_weights(weights(model), reference)  # step 12 continued exactly
    logged = caplog.text
    assert f"checkpoint file {bad / name} cannot be read" in logged and "set aside as step-00000014.corrupt" in logged
    assert "from step-00000012" in logged and "weights_only" not in logged
    assert (tmp_path / "checkpoints" / "step-00000014.corrupt" / name).is_file()


def test_resume_with_every_checkpoint_corrupt_names_the_newest_file(tmp_path):
    with pytest.raises(Crash):
        train(tmp_path, on_step=crash_at(5))  # checkpoints of steps 2 and 4
    for folder in checkpoints(tmp_path):
        (folder / "trainer.pt").write_bytes(b"garbage")
    newest = tmp_path / "checkpoints" / "step-00000004" / "trainer.pt"
    with pytest.raises(CheckpointError, match=re.escape(f"checkpoint file {newest} cannot be read")) as error:
        train(tmp_path, resume=True)
    assert "no earlier checkpoint of" in str(error.value) and "weights_only" not in str(error.value)
    assert [p.name for p in checkpoints(tmp_path)] == ["step-00000002", "step-00000004"]  # left as they were


def test_split_smaller_than_one_step_is_refused(tmp_path):
    with pytest.raises(
        ValueError, match="40 clips, fewer than one optimiser step takes: batch_size 32 x accumulation 2"
    ):
        train(tmp_path, batch_size=32, accumulation=2)


def _standin(run: Path, *args: str, torchrun: bool = False) -> list[str]:
    if torchrun:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    else:
        launcher = [sys.executable]
    return [*launcher, "-m", "tests.train.standin", str(run), *args]


def test_sigkill_mid_epoch_then_resume_gives_the_same_weights(uninterrupted, tmp_path):
    _, reference, _ = uninterrupted
    kill_at(_standin(tmp_path, "--sleep", "0.05"), "step 15")  # mid epoch 2, a step after step 14's checkpoint
    assert checkpoints(tmp_path)[-1].name in ("step-00000014", "step-00000016")
    run_ok(_standin(tmp_path, "--resume"), timeout=120)
    assert_same_weights(torch.load(tmp_path / "final.pt"), reference)


def test_ddp_on_two_gloo_processes_matches_one_process_with_accumulation(tmp_path):
    # 2 processes x 2 clips per step see the micro-batches 1 process x 2 clips x accumulation 2 sees
    single, model = train(tmp_path / "single", batch_size=2, accumulation=2, dropout=0.0)
    run_ok(_standin(tmp_path / "ddp", "--batch-size", "2", "--dropout", "0", torchrun=True), timeout=180)
    ddp = torch.load(tmp_path / "ddp" / "final.pt")
    for name, value in weights(model).items():
        torch.testing.assert_close(ddp[name], value, atol=1e-5, rtol=1e-5)
    lines = [json.loads(x) for x in (tmp_path / "ddp" / METRICS_NAME).read_text().splitlines()]
    assert [r["val_war"] for r in lines] == [r["val_war"] for r in single.history]
    for ours, theirs in zip(lines, single.history, strict=True):
        assert ours["train_total"] == pytest.approx(theirs["train_total"], rel=1e-5)
