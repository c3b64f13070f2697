"""save_pretrained / from_pretrained: identical outputs after a round trip, atomic files, named mismatches."""

import json

import pytest
import torch

from grace_fast.model import GraceModel
from tests.model.conftest import TEXTS, clips
from tests.model.test_config import DEFINITION_1


@pytest.fixture
def saved(make_model, tmp_path):
    model = make_model(alignment="cross_attention")
    model.save_pretrained(tmp_path / "ckpt")
    return model, tmp_path / "ckpt"


def test_round_trip_gives_identical_outputs(saved):
    model, folder = saved
    loaded = GraceModel.from_pretrained(folder).eval()
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]  # nothing temporary left behind
    assert loaded.config.diff(model.config).keys() == {"tokenizer"}
    for text in (TEXTS, None):  # descriptions, then the class-prompt mode
        a, b = model(clips(4), text), loaded(clips(4), text)
        for name in ("logits", "aux_logits", "class_logits", "video_embedding", "logit_scale"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name
        assert torch.equal(a.classes.plan, b.classes.plan)
        assert text is None or torch.equal(a.caption.plan, b.caption.plan)
    assert loaded.tokenizer("a face")["input_ids"] == model.tokenizer("a face")["input_ids"]


def test_saving_twice_overwrites_in_place(saved):
    model, folder = saved
    with torch.no_grad():
        model.head.classifier.bias.add_(1)
    model.save_pretrained(folder)
    assert torch.equal(GraceModel.from_pretrained(folder).head.classifier.bias, model.head.classifier.bias)


def test_overrides_change_the_clip_length(saved):
    _, folder = saved
    loaded = GraceModel.from_pretrained(folder, frames=64).eval()
    assert loaded(clips(1, frames=64), TEXTS[:1]).motion_weights.shape == (1, 32, 4, 4)


def test_mismatching_config_names_what_differs(saved):
    _, folder = saved
    with pytest.raises(
        ValueError, match=r"alignment: 'cross_attention' -> 'ot'\n(.|\n)*unexpected tensors:\n  alignment"
    ):
        GraceModel.from_pretrained(folder, alignment="ot")
    config = json.loads((folder / "config.json").read_text())
    config["dim"], config["video"]["hidden_size"] = 32, 64
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError) as error:
        GraceModel.from_pretrained(folder)
    message = str(error.value)
    assert "\n  dim: 16 -> 32\n" in message and "\n  video.hidden_size: 32 -> 64\n" in message
    assert (
        "shape mismatches (+" in message
        and "patch_embeddings.projection.bias: checkpoint (32,), model (64,)" in message
    )


def test_a_definition_1_checkpoint_is_refused_naming_the_change(saved):
    """The config.json that grace_fast wrote before definition 2 is refused, and so are weights that carry it (as
    save_pretrained stores the config in the weights' metadata), whatever config.json says."""
    from safetensors.torch import load_file, save_file

    _, folder = saved
    new = (folder / "config.json").read_text()
    (folder / "config.json").write_text(DEFINITION_1.read_text())
    with pytest.raises(ValueError, match=r"config.json: this config is of GRACE definition 1 .*retrain"):
        GraceModel.from_pretrained(folder)
    (folder / "config.json").write_text(new)
    weights = folder / "model.safetensors"
    save_file(load_file(weights), weights, metadata={"format": "pt", "grace_config": DEFINITION_1.read_text()})
    with pytest.raises(ValueError, match=r"the weights .*model.safetensors is of GRACE definition 1 .*retrain"):
        GraceModel.from_pretrained(folder)


def test_missing_files_are_named(saved, tmp_path):
    _, folder = saved
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="is not a GRACE checkpoint: model.safetensors is missing"):
        GraceModel.from_pretrained(folder)
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        GraceModel.from_pretrained(tmp_path / "empty")


def test_backbones_load_from_local_folders_at_any_clip_length(tokenizer_folder, tmp_path):
    from transformers import CLIPTextConfig, CLIPTextModel, VideoMAEConfig, VideoMAEForVideoClassification

    from grace_fast.model.tiny import tiny_config, tiny_text_config, tiny_video_config

    # a DFER-style checkpoint: a 16-frame VideoMAE classifier; GRACE takes its encoder ("videomae." prefix)
    video = VideoMAEForVideoClassification(VideoMAEConfig(**tiny_video_config(), image_size=32, num_labels=7))
    video.save_pretrained(tmp_path / "videomae")
    text = CLIPTextModel(CLIPTextConfig(**tiny_text_config(tokenizer_folder)))
    text.save_pretrained(tmp_path / "clip")
    config = tiny_config(
        tokenizer_folder,
        frames=64,
        video={},
        text={},
        video_pretrained=str(tmp_path / "videomae"),
        text_pretrained=str(tmp_path / "clip"),
    )
    model = GraceModel(config).eval()
    assert torch.equal(
        model.video.model.encoder.layer[1].output.dense.weight, video.videomae.encoder.layer[1].output.dense.weight
    )
    assert torch.equal(model.text.model.encoder.layers[1].mlp.fc1.weight, text.encoder.layers[1].mlp.fc1.weight)
    assert model.config.video["hidden_size"] == 32 and model.config.text["hidden_size"] == 24  # self-describing
    assert model(clips(1, frames=64), TEXTS[:1]).motion_weights.shape == (1, 32, 4, 4)
    model.save_pretrained(tmp_path / "grace")
    (tmp_path / "videomae" / "model.safetensors").unlink()  # a GRACE checkpoint no longer needs the backbone folders
    loaded = GraceModel.from_pretrained(tmp_path / "grace").eval()
    assert torch.equal(loaded(clips(1, frames=64), TEXTS[:1]).logits, model(clips(1, frames=64), TEXTS[:1]).logits)


def test_missing_backbone_folder_is_named(tokenizer_folder, tmp_path):
    from grace_fast.model.tiny import tiny_config

    with pytest.raises(FileNotFoundError, match="video_pretrained: .*nowhere is not a folder"):
        GraceModel(tiny_config(tokenizer_folder, video_pretrained=str(tmp_path / "nowhere")))
