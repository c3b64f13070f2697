"""GRACE end to end on generated mp4 clips: `grace-fast train` for 2 steps, then the checkpoint it selected through
`grace-fast evaluate`, `Predictor` and `grace-fast predict`."""

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from grace_fast.cli import main
from grace_fast.data.layouts import synthetic
from grace_fast.data.video import VideoReadError, read_video
from grace_fast.predict import Predictor
from grace_fast.train.checkpoint import checkpoints
from grace_fast.train.config import TrainConfig
from grace_fast.train.run import train
from grace_fast.train.task import build_model, split_clips
from tests.train.conftest import REPO, SUBPROCESS_ENV, assert_reproduces_test_predictions


def grace_fast(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", "grace_fast", *args],
        cwd=REPO,
        env=SUBPROCESS_ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from grace_fast.data.synthetic import make_synthetic

    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic(root, clips=35, seed=0, size=32, progress=False)
    return root


@pytest.fixture(scope="module")
def corrupt(data) -> str:
    """A training clip (not a validation one) whose file is overwritten with garbage."""
    train, _ = synthetic(data, fold=1, split="train").holdout(0.2, seed=0)
    Path(train[0].path).write_bytes(b"not an mp4" * 100)
    return train[0].id


@pytest.fixture(scope="module")
def trained(data, corrupt, tmp_path_factory):
    """A 2-step run: fold 1 has 28 training clips, 7 of them held out for validation; 21 // 8 = 2 steps; one
    training clip is unreadable and skipped. In fp32 (amp off), as the predictions compared with it below: amp auto
    would be bf16 on a CPU with bf16 hardware only."""
    run = tmp_path_factory.mktemp("run")
    args = ["--data-root", str(data), "--out", str(run), "--epochs", "1", "--batch-size", "8", "--lr", "1e-3"]
    args += ["--amp", "off"]
    done = grace_fast("train", *args, "--val-fraction", "0.2", "--checkpoint-every", "1", "--skip-bad", "--no-progress")
    return run, done.stdout


def test_two_step_run_trains_selects_and_tests(data, trained):
    run, stdout = trained
    (record,) = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train, val = synthetic(data, fold=1, split="train").holdout(0.2, seed=0)
    assert (len(train) // 8, len(val)) == (2, 7)
    assert record["global_step"] == 2 and record["best"] and record["val_clips"] == 7
    assert [p.name for p in checkpoints(run)] == ["step-00000001", "step-00000002"]
    assert {p.name for p in (run / "best").iterdir()} >= {
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    }
    report = json.loads((run / "test" / "report.json").read_text())
    test_clips = synthetic(data, fold=1, split="test")
    assert report["num_samples"] == len(test_clips) and sum(report["per_class"][c]["support"] for c in range(7)) == 7
    assert f"fold 1: best epoch 1, test UAR {100 * report['uar']:.2f}" in stdout


def test_unreadable_clip_is_skipped_and_reported(data, corrupt, trained, tmp_path):
    run, _ = trained
    (record,) = [json.loads(line) for line in (run / "skipped.jsonl").read_text().splitlines()]
    assert record["id"] == corrupt and "cannot decode" in record["error"] and record["path"].endswith(f"{corrupt}.mp4")
    config = TrainConfig.load(run / "config.yaml").replace(skip_bad=False, out=str(tmp_path), epochs=1)
    with pytest.raises(VideoReadError, match=f"{corrupt}.mp4"):
        train(config)


def test_skip_bad_reports_the_clips_missing_on_disk_of_every_split(data, corrupt, tmp_path, capsys):
    root = tmp_path / "data"
    shutil.copytree(data, root)
    train_part, val = synthetic(root, fold=1, split="train").holdout(0.2, seed=0)
    test = synthetic(root, fold=1, split="test")
    gone = [train_part[1], val[0], test[0]]  # train_part[0] is the corrupt clip
    for clip in gone:
        Path(clip.path).unlink()
    run = tmp_path / "run"
    args = ["--data-root", str(root), "--out", str(run), "--epochs", "1", "--batch-size", "8", "--val-fraction", "0.2"]
    assert main(["train", *args, "--skip-bad", "--no-progress"]) == 0
    skipped = {r["id"]: r for r in map(json.loads, (run / "skipped.jsonl").read_text().splitlines())}
    assert skipped.keys() == {clip.id for clip in gone} | {corrupt}
    assert all("not found" in skipped[clip.id]["error"] for clip in gone)
    report = json.loads((run / "test" / "report.json").read_text())
    assert report["skipped"] == [test[0].id] and report["num_samples"] == len(test) - 1
    (record,) = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert record["val_clips"] == len(val) - 1
    out, err = capsys.readouterr()
    assert f"fold 1: 4 clips skipped as unreadable, listed in {run}/skipped.jsonl" in out
    named = [f"{clip.id} ({Path(clip.path).with_suffix('')}" in err for clip in gone]  # a missing file has no suffix
    assert named == [True] * 3 and err.count("missing on disk and left out") == 3

    evaluated = tmp_path / "evaluated"
    args = ["--checkpoint", str(run / "best"), "--data-root", str(root), "--out", str(evaluated), "--skip-bad"]
    assert main(["evaluate", *args]) == 0
    assert json.loads((evaluated / "report.json").read_text())["skipped"] == [test[0].id]
    out, err = capsys.readouterr()
    assert f"on {len(test) - 1} clips (1 skipped as unreadable)" in out and f"test: 1 of {len(test)} clips" in err


def test_training_changes_the_seeded_initial_weights(trained):
    from safetensors.torch import load_file

    run, _ = trained
    config = TrainConfig.load(run / "config.yaml")
    torch.manual_seed(config.seed)
    model = build_model(config, synthetic(config.data_root, 1).classes, run)
    best = load_file(run / "best" / "model.safetensors")
    assert best.keys() == model.state_dict().keys()
    unmoved = [name for name, p in model.named_parameters() if torch.equal(best[name], p.detach())]
    assert unmoved == []  # every parameter took part in the loss and was updated


def test_predictor_reproduces_the_trainers_test_predictions(data, trained):
    run, _ = trained
    assert_reproduces_test_predictions(
        Predictor.from_pretrained(run / "best", device="cpu", dtype="float32"), data, run
    )


# The accuracy guard of Predictor's dtype and compile options (README, Inference): against fp32 eager on the test
# fold, the argmax agrees on at least AGREEMENT of the clips and the logits stay within the tolerance, a share of
# the largest logit. bf16 keeps 8 mantissa bits (a rounding of 2^-9 per op, over a dozen layers); the compiled
# graphs only reorder fp32 sums. Measured on the tiny run: bf16 0.005, compiled 6e-8 of logits up to 0.36.
AGREEMENT = 0.99
LOGIT_TOLERANCE = {"bfloat16": 0.02, "compiled": 1e-4}


@pytest.mark.parametrize("text", ["class-prompts", "captions"])
def test_bf16_and_compiled_predictions_agree_with_fp32(data, trained, text, guard_predictors):
    """Compiles the tiny model once for the module (about 35 s on one core of a shared 2-core machine)."""
    clips = synthetic(data, fold=1, split="test")
    captions = None if text == "class-prompts" else [clip.caption or "" for clip in clips]
    reference, *others = guard_predictors
    frames = torch.stack(reference.load_all([clip.path for clip in clips]))
    with torch.inference_mode():
        expected = reference.forward(frames, captions).logits.float()
        for name, predictor in zip(LOGIT_TOLERANCE, others, strict=True):
            logits = predictor.forward(frames, captions).logits.float()
            agreement = (logits.argmax(1) == expected.argmax(1)).float().mean().item()
            assert agreement >= AGREEMENT, name
            scale = max(1.0, expected.abs().max().item())
            torch.testing.assert_close(logits, expected, atol=LOGIT_TOLERANCE[name] * scale, rtol=0, msg=name)


@pytest.fixture(scope="module")
def guard_predictors(trained):
    """fp32 eager, bf16 eager and fp32 compiled predictors of the trained run."""
    run, _ = trained
    return [
        Predictor.from_pretrained(run / "best", device="cpu", dtype="float32"),
        Predictor.from_pretrained(run / "best", device="cpu", dtype="bfloat16"),
        Predictor.from_pretrained(run / "best", device="cpu", dtype="float32", compile=True),
    ]


def test_predictor_takes_paths_frames_and_model_ready_tensors(data, trained):
    run, _ = trained
    predictor = Predictor.from_pretrained(run / "best", device="cpu", batch_size=2)
    path = synthetic(data, fold=1, split="test")[0].path
    by_path = predictor.predict(path)  # class prompts
    frames = read_video(path, 16)  # uniform sampling of 16 frames: the same frames the path gives
    by_frames = predictor.predict(frames)
    by_tensor = predictor.predict(predictor.load(path))
    assert by_path.label in predictor.classes and sum(by_path.probabilities.values()) == pytest.approx(1.0)
    for other in (by_frames, by_tensor):
        assert other.probabilities == pytest.approx(by_path.probabilities, abs=1e-6)
    batch = predictor.predict([path, frames, path])
    assert [b.probabilities == pytest.approx(by_path.probabilities, abs=1e-6) for b in batch] == [True] * 3
    with pytest.raises(ValueError, match=r"model-ready \[T, 3, S, S\]"):
        predictor.predict(torch.zeros(16, 3, 8, 8))
    with pytest.raises(ValueError, match="uint8 frames"):
        predictor.predict(np.zeros((4, 8, 8), np.uint8))


def test_evaluate_command_scores_the_checkpoint_like_the_trainer(data, trained, tmp_path, capsys):
    run, _ = trained
    args = ["evaluate", "--checkpoint", str(run / "best"), "--data-root", str(data), "--out", str(tmp_path)]
    assert (
        main([*args, "--amp", "off"]) == 0
    )  # in process: the subprocess start-up is tested by the train and predict commands
    ours, trainers = (json.loads((p / "report.json").read_text()) for p in (tmp_path, run / "test"))
    assert (ours["uar"], ours["war"], ours["confusion"]) == (trainers["uar"], trainers["war"], trainers["confusion"])
    assert (tmp_path / "confusion.png").is_file() and f"UAR {100 * ours['uar']:.2f}" in capsys.readouterr().out
    with open(tmp_path / "predictions.csv", newline="") as a, open(run / "test" / "predictions.csv", newline="") as b:
        assert list(csv.DictReader(a)) == list(csv.DictReader(b))


def test_predict_cli_prints_each_clip_and_names_a_bad_one(data, trained):
    run, _ = trained
    clips = [clip.path for clip in synthetic(data, fold=1, split="test")[:2]]
    done = grace_fast(
        "predict",
        *clips,
        str(data / "missing.mp4"),
        "--checkpoint",
        str(run / "best"),
        "--json",
        "--dtype",
        "float32",
        check=False,
    )
    assert done.returncode == 1, done.stderr[-2000:]
    assert f"grace-fast predict: video file not found: {data / 'missing.mp4'}\n" in done.stderr
    lines = done.stdout.strip().splitlines()  # JSON only
    expected = Predictor.from_pretrained(run / "best", device="cpu", dtype="float32").predict(clips)
    for line, prediction in zip(lines, expected, strict=True):
        printed = json.loads(line)
        assert printed["label"] == prediction.label
        assert printed["probabilities"] == pytest.approx(prediction.probabilities, abs=1e-6)


def test_dtype_and_compile_flags_reach_the_predictor(data, trained, tmp_path, capsys, monkeypatch):
    run, _ = trained
    made = []
    original = Predictor.from_pretrained.__func__
    monkeypatch.setattr(
        Predictor, "from_pretrained", classmethod(lambda cls, *a, **k: made.append(k) or original(cls, *a, **k))
    )
    clip = synthetic(data, fold=1, split="test")[0].path
    assert main(["predict", clip, "--checkpoint", str(run / "best"), "--dtype", "bfloat16", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = Predictor.from_pretrained(run / "best", device="cpu", dtype="bfloat16").predict(clip)
    assert printed["probabilities"] == pytest.approx(expected.probabilities, abs=1e-6)
    assert made[0]["dtype"] == "bfloat16" and made[0]["compile"] is False
    args = [
        "--checkpoint",
        str(run / "best"),
        "--out",
        str(tmp_path / "explained.png"),
        "--dtype",
        "float32",
        "--compile",
    ]
    monkeypatch.setattr("grace_fast.predict.compile_parts", lambda model: None)  # compiling is tested above
    assert main(["explain", clip, *args]) == 0
    assert made[-1]["dtype"] == "float32" and made[-1]["compile"] is True


def test_evaluate_takes_either_dtype_or_amp(data, trained, tmp_path, capsys):
    run, _ = trained
    args = ["evaluate", "--checkpoint", str(run / "best"), "--data-root", str(data), "--out", str(tmp_path)]
    assert main([*args, "--dtype", "float32", "--amp", "bf16"]) == 2
    assert "--amp bf16 and --dtype float32 both set the autocast; give one" in capsys.readouterr().err


def test_a_batchs_clips_are_decoded_in_parallel_with_their_errors_in_place(data, trained):
    run, _ = trained
    predictor = Predictor.from_pretrained(run / "best", device="cpu")
    paths = [clip.path for clip in synthetic(data, fold=1, split="test")[:3]]
    loaded = predictor.load_all([paths[0], str(data / "missing.mp4"), *paths[1:]], (VideoReadError,))
    assert isinstance(loaded[1], VideoReadError)
    for path, frames in zip(paths, loaded[:1] + loaded[2:], strict=True):
        torch.testing.assert_close(frames, predictor.load(path), rtol=0, atol=0)


def test_train_command_names_what_to_fix(data, trained, capsys):
    run, _ = trained
    assert main(["train", "--data-root", str(data), "--out", str(run), "--epochs", "1", "--batch-size", "8"]) == 2
    assert "already holds checkpoints: pass --resume" in capsys.readouterr().err
    assert main(["train", "--data-root", str(data), "--out", str(run), "--resume", "--epochs", "2"]) == 2
    assert "the config changed (" in (err := capsys.readouterr().err) and "epochs: 1 -> 2" in err
    assert main(["train", "--data-root", str(data), "--batch-size", "0"]) == 2
    assert "batch_size must be an integer >= 1, got 0" in capsys.readouterr().err


def test_folds_the_data_set_lacks_are_refused_before_any_fold_trains(data, tmp_path, capsys):
    args = ["--data-root", str(data), "--out", str(tmp_path / "run"), "--folds", "1-9", "--epochs", "1"]
    assert main(["train", *args]) == 2
    assert capsys.readouterr().err == "grace-fast train: error: fold must be one of [1, 2, 3, 4, 5], got 6\n"
    assert not (tmp_path / "run").exists()


def test_descriptions_replace_the_captions_of_the_clips_they_name(data, tmp_path):
    clips = synthetic(data, fold=1, split="test")
    path = tmp_path / "refined.jsonl"
    path.write_text(json.dumps({"clip": clips[0].id, "description": "The brows rise (AU1)."}) + "\n")
    described = split_clips("synthetic", data, "test", fold=1, descriptions=path)
    assert described[0].caption == "The brows rise (AU1)." and described[1:] == clips[1:]
    path.write_text(json.dumps({"clip": "Clip/original/1", "description": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"names none of the 7 test clips \(ids like '\d+'"):
        split_clips("synthetic", data, "test", fold=1, descriptions=path)


class Crash(Exception):
    pass


def test_resumed_grace_run_matches_the_uninterrupted_one_bit_for_bit(trained, tmp_path):
    from safetensors.torch import load_file

    run, _ = trained
    config = TrainConfig.load(run / "config.yaml").replace(out=str(tmp_path), progress=False)
    shutil.copytree(run / "tokenizer", tmp_path / "tokenizer")  # the very tokenizer of the run it must match

    def crash(info):
        if info["global_step"] == 1:  # after the checkpoint of step 1 (checkpoint_every = 1)
            raise Crash

    with pytest.raises(Crash):
        train(config, on_step=crash)
    train(config.replace(resume=True))
    resumed, reference = (load_file(folder / "best" / "model.safetensors") for folder in (tmp_path, run))
    assert resumed.keys() == reference.keys()
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)


def test_folds_report_mean_and_std_and_resume_keeps_finished_folds(data, corrupt, tmp_path, monkeypatch):
    config = TrainConfig(
        data_root=str(data), out=str(tmp_path), folds="1-2", epochs=1, batch_size=8, skip_bad=True, progress=False
    )
    summary = train(config)
    reports = [json.loads((tmp_path / f"fold-{k}" / "test" / "report.json").read_text()) for k in (1, 2)]
    for metric in ("uar", "war"):
        values = [r[metric] for r in reports]
        assert summary["mean"][metric] == pytest.approx(np.mean(values))
        assert summary["std"][metric] == pytest.approx(np.std(values))
    assert [f["fold"] for f in summary["folds"]] == [1, 2] and not summary["interrupted"]
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert summary["best_checkpoint"] == str(tmp_path / "fold-1" / "best")

    def no_training(*args, **kwargs):
        raise AssertionError("a finished fold was trained again")

    monkeypatch.setattr("grace_fast.train.run.fit", no_training)
    assert train(config.replace(resume=True)) == summary


def test_auxiliary_head_labels_clips_for_cate(data, trained, tmp_path):
    from grace_fast.predict import coarse_classifier
    from grace_fast.text.coarse_labels import load_clip

    run, _ = trained
    clips = synthetic(data, fold=1, split="test")[:3]
    predictor = Predictor.from_pretrained(run / "best", device="cpu")
    with torch.inference_mode():
        expected = predictor.model(torch.stack([predictor.load(c.path) for c in clips]), None).aux_logits
    classify = coarse_classifier(run / "best")
    torch.testing.assert_close(classify(torch.stack([load_clip(c.path, 16, 32) for c in clips])), expected)
    with pytest.raises(ValueError, match="--frames 16 --size 32"):
        classify(torch.zeros(1, 8, 3, 32, 32))
    (tmp_path / "videos.txt").write_text("\n".join(c.path for c in clips))
    args = ["--videos", str(tmp_path / "videos.txt"), "--classifier", "grace_fast.predict:coarse_classifier"]
    args += ["--checkpoint", str(run / "best"), "--dataset", "dfew", "--frames", "16", "--size", "32"]
    assert main(["coarse-labels", *args, "--device", "cpu", "--out", str(tmp_path / "labels.jsonl")]) == 0
    records = {r["clip"]: r for r in map(json.loads, (tmp_path / "labels.jsonl").read_text().splitlines())}
    dfew = ("happiness", "sadness", "neutral", "anger", "surprise", "disgust", "fear")  # the lexicon's DFEW order
    assert [records[c.id]["labels"][0] for c in clips] == [dfew[i] for i in expected.argmax(1).tolist()]
