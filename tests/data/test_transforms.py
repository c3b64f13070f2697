"""grace_fast.data.transforms: centre crop and resize, random resized crop and flip, image processor statistics."""

import numpy as np
import pytest
import torch

from grace_fast.data.transforms import IMAGENET_MEAN, IMAGENET_STD, Normalization, VideoTransform


def _normalised(rgb) -> torch.Tensor:
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    return (torch.tensor(rgb, dtype=torch.float32) / 255 - mean) / std


def test_evaluation_keeps_the_centre_square_and_normalises():
    frames = np.full((3, 48, 80, 3), 90, np.uint8)
    frames[:, :, :16] = (255, 0, 0)  # outside the centre 48 x 48 square: cropped away
    frames[:, :, 64:] = (0, 0, 255)
    out = VideoTransform(24)(frames)
    assert out.shape == (3, 3, 24, 24) and out.dtype == torch.float32
    torch.testing.assert_close(out, _normalised([90, 90, 90]).view(1, 3, 1, 1).expand_as(out))


def test_evaluation_resizes_by_area_averaging():
    frames = np.zeros((1, 32, 32, 3), np.uint8)
    frames[0, :, 1::2] = 200  # stripes one pixel wide average out when halved
    out = VideoTransform(16, normalization=Normalization((0, 0, 0), (1, 1, 1)))(frames)
    inner = out[..., 1:-1]  # the filter is cut at the borders
    torch.testing.assert_close(inner, torch.full_like(inner, 100 / 255), atol=1e-6, rtol=0)


def test_a_full_crop_is_the_evaluation_output_flipped_with_probability_flip():
    frames = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    plain = VideoTransform(16)(frames)
    whole = {"scale": (1.0, 1.0), "ratio": (1.0, 1.0)}
    torch.testing.assert_close(
        VideoTransform(16, train=True, flip=1.0, **whole)(frames, np.random.default_rng(0)), plain.flip(-1)
    )
    torch.testing.assert_close(
        VideoTransform(16, train=True, flip=0.0, **whole)(frames, np.random.default_rng(0)), plain
    )


def test_random_resized_crops_stay_inside_the_frame_within_scale_and_ratio():
    transform, rng = VideoTransform(16, train=True, scale=(0.3, 0.8), ratio=(0.5, 2.0)), np.random.default_rng(1)
    boxes = np.array([transform.crop_box(60, 90, rng) for _ in range(500)])  # top, left, h, w
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 60).all() and (left + w <= 90).all()
    area = h * w / (60 * 90)
    assert area.min() > 0.28 and area.max() < 0.82 and (w / h).min() > 0.45 and (w / h).max() < 2.2
    assert len({tuple(b) for b in boxes}) > 400  # random, not one box
    assert transform.crop_box(60, 90) == (0, 15, 60, 60)  # no rng: the centre square


def test_the_crop_and_flip_are_shared_by_all_frames_of_a_clip():
    frame = np.random.default_rng(0).integers(0, 256, (1, 40, 40, 3), dtype=np.uint8)
    out = VideoTransform(20, train=True)(np.repeat(frame, 5, axis=0), np.random.default_rng(4))
    assert all(torch.equal(out[0], out[i]) for i in range(5))


def test_normalization_from_a_saved_videomae_image_processor(tmp_path):
    from transformers import VideoMAEImageProcessor

    VideoMAEImageProcessor(image_mean=[0.1, 0.2, 0.3], image_std=[0.4, 0.5, 0.6]).save_pretrained(tmp_path)
    assert Normalization.from_pretrained(tmp_path) == Normalization((0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    assert (
        Normalization()
        == Normalization(IMAGENET_MEAN, IMAGENET_STD)
        == Normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    )
    with pytest.raises(FileNotFoundError, match="image processor config not found: .*nowhere/preprocessor_config.json"):
        Normalization.from_pretrained(tmp_path / "nowhere")


@pytest.mark.parametrize(
    "kwargs, match",
    [({"size": 0}, "size must be an integer >= 1, got 0"), ({"scale": (0.9, 0.5)}, "scale must be"),
     ({"ratio": (0, 1)}, "ratio must be"), ({"flip": 2}, "flip must be a probability")],
    ids=["size", "scale", "ratio", "flip"],
)  # fmt: skip
def test_bad_transform_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VideoTransform(**kwargs)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match=r"frames must be uint8 \[T, H, W, 3\], got float32"):
        VideoTransform(8)(np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="needs rng"):
        VideoTransform(8, train=True)(np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="std must be > 0"):
        Normalization((0, 0, 0), (1, 0, 1))
