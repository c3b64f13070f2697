"""Coarse labels: the top-2 classes of a small torch classifier over generated mp4 clips, cached, via the CLI."""

import json
import math
import sys

import numpy as np
import pytest
import torch

from grace_fast.cli import main
from grace_fast.data.video import write_mp4
from grace_fast.text.cache import Cache
from grace_fast.text.coarse_labels import label_clips, load_clip, top_k
from grace_fast.text.jobs import read_jsonl
from grace_fast.text.lexicon import Lexicon

DFEW = Lexicon.load().classes("dfew")  # happiness, sadness, neutral, anger, surprise, disgust, fear
LEVELS = {"dark": 20, "mid": 92, "bright": 200}  # grey levels of the clips
SHARPNESS = 50.0


class GreyLevelClassifier(torch.nn.Module):
    """The logit of class c falls with the distance of the clip's mean intensity to c / 6: known top-2."""

    def __init__(self):
        super().__init__()
        self.register_buffer("centres", torch.linspace(0, 1, len(DFEW)))
        self.calls = []

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        self.calls.append(tuple(frames.shape))
        mean = frames.mean(dim=(1, 2, 3, 4))
        return -SHARPNESS * (mean[:, None] - self.centres) ** 2


def make_classifier(checkpoint, device):
    """The --classifier factory of the CLI test."""
    assert checkpoint.endswith("ckpt.json") and device == "cpu"
    return GreyLevelClassifier()


def _expected(level: int) -> tuple[list[str], list[float]]:
    distance = (level / 255 - np.linspace(0, 1, len(DFEW))) ** 2
    probs = np.exp(-SHARPNESS * distance) / np.exp(-SHARPNESS * distance).sum()
    order = np.argsort(-probs)[:2]
    return [DFEW[i] for i in order], probs[order].tolist()


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("grey")
    for name, level in LEVELS.items():
        write_mp4(folder / f"{name}.mp4", np.full((10, 48, 80, 3), level, np.uint8), fps=10)
    return folder


def test_top_k_exact():
    logits = torch.tensor([[0.0, 2.0, 1.0, 0.0, 0.0, 0.0, 0.0], [4.0, 0.0, 0.0, 0.0, 0.0, 0.0, 5.0]])
    z1, z2 = math.e**2 + math.e + 5, math.exp(5) + math.exp(4) + 5
    assert top_k(logits, DFEW, 2) == [
        (["sadness", "neutral"], [round(math.e**2 / z1, 6), round(math.e / z1, 6)]),
        (["fear", "happiness"], [round(math.exp(5) / z2, 6), round(math.exp(4) / z2, 6)]),
    ]


def test_top_k_rejects_bad_shapes_and_k():
    with pytest.raises(ValueError, match=r"logits must be \[B, 7\] \(one per class\), got shape \(2, 11\)"):
        top_k(torch.zeros(2, 11), DFEW, 2)
    with pytest.raises(ValueError, match=r"k must be in \[1, 7\], got 0"):
        top_k(torch.zeros(2, 7), DFEW, 0)


def test_load_clip_is_resized_in_unit_range(videos):
    clip = load_clip(str(videos / "mid.mp4"), 16, 32)
    assert clip.shape == (16, 3, 32, 32) and clip.dtype == torch.float32
    assert abs(clip.mean().item() - 92 / 255) < 2 / 255 and 0 <= clip.min() and clip.max() <= 1


def test_label_clips_gives_the_classifier_top_2_and_caches_them(videos, tmp_path):
    clips = [(name, str(videos / f"{name}.mp4")) for name in LEVELS] + [("gone", str(tmp_path / "gone.mp4"))]
    classify = GreyLevelClassifier()
    with Cache(tmp_path / "c.sqlite") as cache:
        options = dict(num_frames=4, size=16, progress=False)
        records, summary = label_clips(clips, classify, DFEW, cache, batch_size=2, **options)
        assert classify.calls == [(2, 4, 3, 16, 16), (1, 4, 3, 16, 16)]
        assert (summary.done, summary.cached, list(summary.failed)) == (3, 0, ["gone"])
        assert "video file not found" in summary.failed["gone"]
        for name, level in LEVELS.items():
            labels, scores = _expected(level)
            assert records[name]["labels"] == labels, name
            np.testing.assert_allclose(records[name]["scores"], scores, atol=0.02)
        again, summary = label_clips(clips[:3], classify, DFEW, cache, **options)
        assert len(classify.calls) == 2 and (summary.done, summary.cached) == (0, 3) and again == records
        # other settings are other keys
        _, summary = label_clips(clips[:3], classify, DFEW, cache, k=3, **options)
        assert len(classify.calls) == 3 and summary.done == 3


def test_the_cli_writes_labels_beside_the_captions_and_redoes_them_for_a_new_checkpoint(videos, tmp_path, capsys):
    (tmp_path / "ckpt.json").write_text(json.dumps({"step": 1}))
    (tmp_path / "captions.jsonl").write_text("")
    args = ["coarse-labels", "--videos", str(videos), "--dataset", "dfew"]
    args += ["--captions", str(tmp_path / "captions.jsonl")]
    args += ["--classifier", f"{__name__}:make_classifier", "--checkpoint", str(tmp_path / "ckpt.json")]
    args += ["--frames", "4", "--size", "16", "--device", "cpu"]
    assert main(args) == 0
    records = read_jsonl(tmp_path / "coarse_labels.jsonl", "labels")
    assert [(r["clip"], r["labels"]) for r in records] == [(n, _expected(LEVELS[n])[0]) for n in sorted(LEVELS)]
    assert main(args) == 0
    (tmp_path / "ckpt.json").write_text(json.dumps({"step": 200}))
    assert main(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line for line in out if line.startswith("coarse-labels:")] == [
        "coarse-labels: 3 done, 0 cached, 0 failed",
        "coarse-labels: 0 done, 3 cached, 0 failed",
        "coarse-labels: 3 done, 0 cached, 0 failed",
    ]


@pytest.mark.parametrize(
    "spec, message",
    [
        ("nonsense", "--classifier must be MODULE:FACTORY, got 'nonsense'"),
        (f"{__name__}:missing", f"--classifier: module {__name__} has no 'missing'"),
        ("no_such_module_here:build", "--classifier: no module named 'no_such_module_here'"),
    ],
    ids=["not-module-factory", "no-factory", "no-module"],
)
def test_the_cli_names_a_bad_classifier_spec(videos, tmp_path, capsys, spec, message):
    args = ["coarse-labels", "--videos", str(videos), "--dataset", "dfew", "--out", str(tmp_path / "l.jsonl")]
    assert main([*args, "--classifier", spec]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"grace-fast coarse-labels: error: {message}")


def test_the_classifier_module_may_live_in_the_working_folder(videos, tmp_path, monkeypatch):
    (tmp_path / "cate_cwd_classifier.py").write_text(
        "from tests.text.test_coarse_labels import GreyLevelClassifier\n\n\n"
        "def build(checkpoint, device):\n    return GreyLevelClassifier()\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    args = ["coarse-labels", "--videos", str(videos), "--dataset", "dfew", "--out", str(tmp_path / "l.jsonl")]
    assert main([*args, "--classifier", "cate_cwd_classifier:build", "--frames", "4", "--size", "16"]) == 0
    assert len(read_jsonl(tmp_path / "l.jsonl", "labels")) == len(LEVELS)
