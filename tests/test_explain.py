"""grace_fast.explain on a tiny saved checkpoint: the arrays against the model's own ops and outputs and the OT
constraints, the PNG's size, and `grace-fast explain` through a subprocess."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from grace_fast import ops
from grace_fast.cli import main
from grace_fast.data.synthetic import EXPRESSIONS, clip_spec, make_synthetic, region_record, render_clip, sample_specs
from grace_fast.data.transforms import Normalization
from grace_fast.data.video import write_mp4
from grace_fast.eval.mechanism import token_frames, tubelet_boxes
from grace_fast.explain import explain, plot, token_labels
from grace_fast.model import GraceModel
from grace_fast.model.tiny import build_tiny_tokenizer, tiny_config
from grace_fast.predict import Predictor
from grace_fast.train.task import GraceClassifier

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["happy", "sad", "surprise", "angry", "disgust", "fear", "neutral"]  # the order of tiny_config's prompts
CAPTION = "a man smiles"
TUBELETS, GRID, KEPT = 8, 4, 64  # the tiny model on 16 frames of 32 px: 8 x 4 x 4 tokens, rho 0.5 keeps 64


pytestmark = pytest.mark.usefixtures("one_thread")


def save_checkpoint(folder: Path, **fields) -> Path:
    """A tiny random GRACE model saved as training saves its best checkpoint, with a non-default normalisation."""
    torch.manual_seed(0)
    model = GraceModel(tiny_config(build_tiny_tokenizer(folder / "tokenizer"), class_names=CLASSES, **fields))
    GraceClassifier(model, normalization=Normalization((0.4, 0.5, 0.6), (0.2, 0.25, 0.3))).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("checkpoint"))


@pytest.fixture(scope="module")
def predictor(checkpoint) -> Predictor:
    return Predictor.from_pretrained(checkpoint, device="cpu", dtype="float32")  # compared with fp32 internals


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    spec = clip_spec(0, 1, 0)
    path = tmp_path_factory.mktemp("clips") / "face.mp4"
    write_mp4(path, render_clip(spec, 32), spec.fps)
    return path


def test_explanation_has_the_models_shapes_and_predicts_as_predict(predictor, clip):
    e = explain(predictor, clip)
    rows = e.plan.shape[0]
    assert e.frames.shape == (TUBELETS, 32, 32, 3) and e.motion_weights.shape == (TUBELETS, GRID, GRID)
    assert e.plan.shape == (rows, KEPT) and e.kept_index.shape == e.kept_mask.shape == (KEPT,)
    assert e.mass.shape == (TUBELETS, GRID, GRID)
    assert len(e.tokens) == e.rows_mask.shape[0] == rows
    assert e.top.shape == e.peak.shape == (3,) and e.token_maps.shape == (3, TUBELETS, GRID, GRID)
    assert e.class_logits.shape == (7,) and e.class_plans.shape[::2] == (7, KEPT)
    assert e.class_masses.shape == (7, TUBELETS, GRID, GRID) and e.shown_classes.shape == (3,)
    expected = predictor.predict(str(clip))
    assert e.prediction.label == expected.label
    assert e.prediction.probabilities == pytest.approx(expected.probabilities, abs=1e-6)


def test_frames_are_each_tubelets_first_frame_as_the_model_saw_it(predictor):
    frames = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)  # no resampling, no resize
    e = explain(predictor, frames)
    torch.testing.assert_close(e.frames, torch.from_numpy(frames[::2]).float() / 255, atol=1e-5, rtol=0)


def test_motion_weights_are_the_motion_ops_output(predictor, clip):
    model, config = predictor.model, predictor.model.config
    with torch.inference_mode():
        X = model.video(predictor.load(clip)[None])
        _, w = ops.motion_weights(
            X,
            mode=config.motion,
            alpha=config.motion_alpha,
            window=config.motion_window,
            temperature=config.motion_temperature,
            beta=config.motion_beta,
        )
    torch.testing.assert_close(explain(predictor, clip).motion_weights, w[0])
    assert (w[0] != 1).any()  # the weights are not the all-ones of motion "off"


@pytest.mark.parametrize("alignment", ["ot", "ot_balanced"])
@pytest.mark.parametrize("marginal", ["uniform", "motion"])
@pytest.mark.parametrize("caption", [None, CAPTION], ids=["class-prompts", "caption"])
def test_plan_marginals_meet_the_ot_constraints_and_mass_is_its_column_sums(
    checkpoint, clip, marginal, caption, alignment
):
    predictor = Predictor.from_pretrained(
        checkpoint, device="cpu", visual_marginal=marginal, alignment=alignment, max_iter=500
    )
    e = explain(predictor, clip, caption)
    a = e.rows_mask.float() / e.rows_mask.sum()
    torch.testing.assert_close(e.plan.sum(dim=1), a, atol=1e-6, rtol=0)  # the text's mass is exact
    kept = e.kept_index[e.kept_mask]
    torch.testing.assert_close(e.mass.flatten()[kept], e.plan.sum(dim=0)[e.kept_mask])
    assert e.mass.sum() == pytest.approx(1, abs=1e-5) and e.mass.flatten().count_nonzero() <= len(kept)
    if alignment == "ot_balanced":  # the visual mass is b, whatever the text
        if marginal == "uniform":
            b = e.kept_mask.float() / e.kept_mask.sum()
        else:
            mass = e.motion_weights.flatten()[e.kept_index] * e.kept_mask
            b = mass / mass.sum()
        assert (e.plan.sum(dim=0) - b).abs().sum() < predictor.model.config.tol  # Sinkhorn's stopping rule


def test_token_maps_spread_each_top_tokens_plan_row_over_the_kept_patches(predictor, clip):
    e = explain(predictor, clip, top_k=4)
    shares = e.plan / e.plan.sum(dim=1, keepdim=True)
    peaks = shares.amax(dim=1)
    assert e.rows_mask[e.top].all() and torch.equal(e.peak, peaks[e.top])
    assert e.peak[-1] >= peaks[e.rows_mask].sort(descending=True).values[3]  # the 4 most concentrated rows
    for token_map, row in zip(e.token_maps, e.top, strict=True):
        flat = token_map.flatten()
        kept = e.kept_index[e.kept_mask]
        torch.testing.assert_close(flat[kept], shares[row, e.kept_mask])
        assert flat.sum() == pytest.approx(1, abs=1e-5) and flat.count_nonzero() <= len(kept)


def test_caption_tokens_are_the_captions_words(predictor, clip):
    e = explain(predictor, clip, CAPTION)
    assert [e.tokens[i] for i in e.rows_mask.nonzero().flatten()] == CAPTION.split()
    assert e.text == CAPTION and e.class_plans is None and e.shown_classes is None
    expected = predictor.predict(str(clip), CAPTION)
    assert e.prediction.probabilities == pytest.approx(expected.probabilities, abs=1e-6)


def test_class_prompt_mode_shows_every_class_and_the_predicted_class_tokens(predictor, clip):
    e = explain(predictor, clip, top_k=2)
    with torch.inference_mode():
        out = predictor.model(predictor.load(clip)[None])
    label = CLASSES[int(out.aux_logits[0].argmax())]
    assert e.text is None and e.prediction.label == label
    torch.testing.assert_close(e.class_logits, out.class_logits[0])
    torch.testing.assert_close(e.class_plans, out.classes.plan[0])
    for c in range(7):  # each class's plan has a row per token of its own prompt, carrying mass a_i
        prompt = predictor.model.text.class_prompts().mask[c]
        torch.testing.assert_close(e.class_plans[c].sum(1), prompt / prompt.sum(), atol=1e-6, rtol=0)
    torch.testing.assert_close(e.class_masses[e.prediction.index], e.mass)
    assert (e.class_masses[0] - e.class_masses[1]).abs().sum() > 1e-3  # the prompt moves the mass
    assert [CLASSES[c] for c in e.shown_classes] == [name for name, _ in e.prediction.top(2)]
    assert [label for label, _ in e.mass_rows()] == [f"q of {name}'s prompt" for name, _ in e.prediction.top(2)]
    content = [e.tokens[i] for i in e.rows_mask.nonzero().flatten()]
    assert content[:3] == [f"a ({label})", f"face ({label})", f"showing ({label})"]


def test_cosine_alignment_has_one_pooled_row_and_none_has_no_token(checkpoint, clip, tmp_path):
    cosine = explain(Predictor.from_pretrained(checkpoint, device="cpu", alignment="cosine"), clip)
    assert cosine.tokens == ["(pooled text)"] and cosine.top.tolist() == [0]
    assert cosine.token_maps.sum().item() == pytest.approx(1, abs=1e-5)
    none = explain(Predictor.from_pretrained(save_checkpoint(tmp_path, alignment="none"), device="cpu"), clip)
    assert none.plan is None and none.mass is None and none.class_plans is None and none.tokens == []
    assert none.token_maps.shape == (0, TUBELETS, GRID, GRID) and none.mass_rows() == []


@pytest.mark.parametrize(
    "caption, top_k, size",
    [(None, 3, (1350, 1280)), (None, 1, (1350, 680)), (None, 0, (1350, 380)), (CAPTION, 3, (1350, 980))],
)
def test_plot_writes_a_png_of_a_panel_per_tubelet_and_row(predictor, clip, tmp_path, caption, top_k, size):
    path = plot(explain(predictor, clip, caption, top_k=top_k), tmp_path / "face.png", title="face.mp4")
    with Image.open(path) as image:
        # (1.5 + 8 x 1.5) x (0.8 + (2 + masses + k) x 1.5) inches at 100 dpi: k classes' masses, or the caption's
        assert (image.format, image.size) == ("PNG", size)
    assert os.listdir(tmp_path) == ["face.png"]  # written atomically, no temporary file left


def test_top_k_must_be_a_count(predictor, clip):
    with pytest.raises(ValueError, match="top_k must be an integer >= 0, got -1"):
        explain(predictor, clip, top_k=-1)


def test_explain_command_writes_the_png_beside_where_it_runs(checkpoint, clip, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "grace_fast", "explain", str(clip), "--checkpoint", str(checkpoint), "--top-k", "2"],
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    label = Predictor.from_pretrained(checkpoint, device="cpu").predict(str(clip)).label
    assert f"{clip}: {label}" in done.stdout and "wrote face.explain.png" in done.stdout
    assert "class logits (each class's prompt): happy " in done.stdout
    with Image.open(tmp_path / "face.explain.png") as image:
        assert image.size == (1350, 980)  # frames, motion, 2 classes' masses, 2 tokens


@pytest.mark.parametrize("bad", ["clip", "checkpoint"])
def test_explain_command_names_a_bad_path(checkpoint, clip, tmp_path, capsys, bad):
    missing = tmp_path / "missing"
    args = [
        str(missing if bad == "clip" else clip),
        "--checkpoint",
        str(missing if bad == "checkpoint" else checkpoint),
    ]
    assert main(["explain", *args, "--out", str(tmp_path / "out.png"), "--device", "cpu"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("grace-fast explain: error: ") and str(missing) in line
    assert not (tmp_path / "out.png").exists()


def test_token_labels_show_a_word_piece_in_its_word(predictor):
    tokenizer = predictor.model.tokenizer
    ids = tokenizer("brows frowning, déjà").input_ids
    labels = ["<|startoftext|>", "brows", "[frown]ing", "frown[ing]", ","] + [f"déjà ({n}/6)" for n in range(1, 7)]
    assert token_labels(tokenizer, ids) == [*labels, "<|endoftext|>"]


def test_a_clip_of_a_synthetic_set_shows_its_recorded_regions_on_every_picture(predictor, clip, tmp_path, monkeypatch):
    make_synthetic(tmp_path / "set", 3, 0, size=32, progress=False)
    spec = next(s for s in sample_specs(3, 0) if EXPRESSIONS[s.emotion])
    path = tmp_path / "set" / "Clip" / "original" / f"{spec.clip}.mp4"
    explanation = explain(predictor, path, top_k=1)
    tubelets = token_frames(spec.frames, 16, 2)
    assert explanation.regions == tubelet_boxes(region_record(spec), tubelets)
    shown = {event for boxes in explanation.regions for kind, event, _ in boxes if kind == "au"}
    assert shown and shown <= set(EXPRESSIONS[spec.emotion])
    assert explain(predictor, clip, top_k=1).regions is None  # a clip outside a synthetic set

    figures = []
    monkeypatch.setattr("grace_fast.explain.write_figure", lambda figure, path, dpi: figures.append(figure))
    plot(explanation, tmp_path / "x.png")
    axes = np.array(figures[0].axes).reshape(-1, TUBELETS)
    assert [[len(ax.patches) for ax in row] for row in axes] == [[len(b) for b in explanation.regions]] * len(axes)
