"""Hugging Face conventions of a checkpoint folder: model_type "grace" for AutoConfig/AutoModel, a
preprocessor_config.json that Predictor and transformers read, and a model card."""

import json

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModel, VideoMAEImageProcessor

from grace_fast.data.transforms import PROCESSOR_CONFIG, Normalization
from grace_fast.errors import UserError
from grace_fast.model import GraceConfig
from grace_fast.model.hf import GraceAutoModel, GraceHFConfig, register
from grace_fast.model.io import CARD_NAME, write_model_card
from grace_fast.predict import Predictor
from tests.model.conftest import clips

STATISTICS = Normalization((0.5, 0.4, 0.3), (0.2, 0.25, 0.3))


@pytest.fixture
def saved(make_model, tmp_path):
    model = make_model()
    model.save_pretrained(tmp_path / "ckpt", normalization=STATISTICS)
    return model, tmp_path / "ckpt"


def test_config_json_names_the_model_type_and_reads_back(saved):
    model, folder = saved
    values = json.loads((folder / "config.json").read_text())
    assert values["model_type"] == GraceConfig.model_type == "grace"
    assert GraceConfig.from_dict(values) == model.config
    with pytest.raises(ValueError, match="model_type"):
        GraceConfig.from_dict({**values, "model_type": "bert"})


def test_auto_classes_load_a_grace_folder_once_registered(saved):
    model, folder = saved
    register()
    register()  # idempotent
    config = AutoConfig.from_pretrained(folder)
    assert isinstance(config, GraceHFConfig) and config.to_grace() == model.config
    loaded = AutoModel.from_pretrained(folder)
    assert type(loaded) is type(model)
    x = clips()
    torch.testing.assert_close(loaded(x).logits, model(x).logits)
    assert AutoModel.from_pretrained(folder, frames=8).config.frames == 8
    with pytest.raises(TypeError, match="unknown arguments"):
        AutoModel.from_pretrained(folder, not_a_field=1)
    # what transformers' auto factory passes on (5.25: _from_auto and subfolder), as a direct call
    direct = GraceAutoModel.from_pretrained(folder.parent, subfolder=folder.name, _from_auto=True, _commit_hash=None)
    torch.testing.assert_close(direct(x).logits, model(x).logits)


def test_auto_model_from_config_builds_a_new_model(saved):
    model, folder = saved
    register()
    built = AutoModel.from_config(AutoConfig.from_pretrained(folder))
    assert built.config.dim == model.config.dim and sum(p.numel() for p in built.parameters()) == sum(
        p.numel() for p in model.parameters()
    )


def test_the_preprocessor_config_carries_the_statistics_to_predictor_and_transformers(saved):
    _, folder = saved
    predictor = Predictor.from_pretrained(folder, device="cpu")
    assert predictor.transform.normalization == STATISTICS and predictor.face_crop is None
    processor = VideoMAEImageProcessor.from_pretrained(folder)
    assert tuple(processor.image_mean) == STATISTICS.mean and processor.crop_size["height"] == 32
    frames = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    pixels = processor(list(frames), return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(pixels, predictor.load(frames), atol=1e-5, rtol=1e-5)


def test_default_statistics_are_the_backbones(make_model, tmp_path):
    make_model().save_pretrained(tmp_path)
    assert Normalization.from_pretrained(tmp_path) == Normalization()


def test_a_folder_without_preprocessor_config_is_refused_naming_it(saved):
    _, folder = saved
    (folder / PROCESSOR_CONFIG).unlink()
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json.*normalisation is unknown"):
        Predictor.from_pretrained(folder, device="cpu")


def test_a_checkpoint_trained_on_face_crops_makes_predictor_crop(make_model, tmp_path):
    pytest.importorskip("cv2")
    make_model().save_pretrained(tmp_path, face_crop=True)
    assert Predictor.from_pretrained(tmp_path, device="cpu").face_crop is not None
    assert Predictor.from_pretrained(tmp_path, device="cpu", face_crop=False).face_crop is None


def test_face_crop_without_opencv_names_the_extra(monkeypatch):
    import grace_fast.data.face_crop as face_crop

    def missing():
        raise UserError(f"face crops need OpenCV: {face_crop.FACES_EXTRA}")

    monkeypatch.setattr(face_crop, "_cv2", missing)
    with pytest.raises(UserError, match=r"grace_fast\[faces\]"):
        face_crop.face_crop_of(True)


def test_the_model_card_states_config_data_and_metrics(saved, tmp_path):
    model, folder = saved
    card = (folder / CARD_NAME).read_text()
    assert card.startswith("---\nlibrary_name: grace_fast") and "Not recorded" in card
    assert json.loads(card.split("```json\n")[1].split("```")[0]) == json.loads(model.config.to_json())
    write_model_card(tmp_path, model.config, data="synthetic, fold 1", metrics={"test": {"uar": 0.5, "war": 0.625}})
    card = (tmp_path / CARD_NAME).read_text()
    assert "synthetic, fold 1" in card and "| test | 0.5000 | 0.6250 |" in card and "| split | uar | war |" in card
