"""grace_fast.eval.mechanism: token footprints, moving and present regions, the motion mass, the pointing game."""

import numpy as np
import pytest
import torch

from grace_fast.data.synthetic import make_synthetic
from grace_fast.data.transforms import VideoTransform
from grace_fast.eval.mechanism import (
    WEIGHTS,
    event_tokens,
    model_mechanism,
    motion_mass,
    moving_regions,
    part_targets,
    part_word_rows,
    pixel_tokens,
    pointing_game,
    token_footprints,
    token_frames,
    weight_maps,
)
from grace_fast.model import GraceModel
from grace_fast.model.tiny import build_tiny_tokenizer, tiny_config
from grace_fast.predict import Predictor

FRAMES, TUBELET, PATCH, SIZE = 16, 2, 8, 64  # an 8 x 8 grid of 8 tubelets
GRID = (SIZE // PATCH, SIZE // PATCH)
MOUTH = [0.25, 0.625, 0.5, 0.75]  # image fractions: patch columns 2-3, rows 5 of the 8 x 8 grid
EYES = [0.5, 0.25, 0.75, 0.375]  # columns 4-5, row 2


def _record(frames: int, moving_level: np.ndarray, head_x: np.ndarray | None = None) -> dict:
    """A clip's region record: AU12 moves the mouth by moving_level [frames], a blink never happens, the head box
    shifts by head_x [frames] (still when None)."""
    head_x = np.zeros(frames) if head_x is None else head_x
    return {
        "boxes": {
            "mouth": [MOUTH] * frames,
            "eyes": [EYES] * frames,
            "head": [[0.2 + x, 0.1, 0.8 + x, 0.9] for x in head_x],
        },
        "levels": {"AU12": moving_level.tolist(), "blink": [0.0] * frames},
        "parts": {"AU12": ["mouth"], "blink": ["eyes"], "head": ["head"]},
    }


def _clip_moving_in(box: list[float], frames: int = FRAMES) -> np.ndarray:
    """[frames, SIZE, SIZE, 3] uint8: a grey frame with a bar inside box that brightens from frame to frame."""
    clip = np.full((frames, SIZE, SIZE, 3), 100, dtype=np.uint8)
    x0, y0, x1, y1 = (round(v * SIZE) for v in box)
    clip[:, y0 + 1 : y1 - 1, x0 + 1 : x1 - 1] = (100 + 8 * np.arange(frames))[:, None, None, None]
    return clip


def test_token_footprints_mark_every_patch_a_box_overlaps_and_no_other():
    marked = token_footprints(np.array([MOUTH]), GRID)
    expected = np.zeros(GRID, dtype=bool)
    expected[5, 2:4] = True
    np.testing.assert_array_equal(marked, expected)
    assert not token_footprints(np.array([[0.0, 0.0, 0.125, 0.125]]), GRID)[1:, 1:].any()  # edges do not overlap


def test_a_rising_action_unit_moves_its_tokens_and_a_still_one_does_not():
    level = np.linspace(0, 1, FRAMES)
    tubelets = token_frames(FRAMES, FRAMES, TUBELET)
    moving = event_tokens(_record(FRAMES, level), "AU12", tubelets, GRID, moving=True)
    assert moving[:, 5, 2:4].all() and moving.sum() == 8 * 2
    still = event_tokens(_record(FRAMES, np.full(FRAMES, 0.8)), "AU12", tubelets, GRID, moving=True)
    present = event_tokens(_record(FRAMES, np.full(FRAMES, 0.8)), "AU12", tubelets, GRID, moving=False)
    assert not still.any() and present.sum() == 8 * 2


def test_a_head_counts_as_moving_only_in_the_tubelets_where_its_box_moves():
    head_x = np.where(np.arange(FRAMES) >= 12, 0.05, 0.0)  # a step between tubelets 5 and 6
    regions = moving_regions(_record(FRAMES, np.zeros(FRAMES), head_x), token_frames(FRAMES, FRAMES, TUBELET), GRID)
    assert not regions["au"].any()
    assert [bool(regions["nuisance"][t].any()) for t in range(8)] == [False] * 6 + [True, False]


@pytest.mark.parametrize("weights", WEIGHTS)
def test_motion_only_in_the_action_unit_region_puts_the_mass_there(weights):
    record = _record(FRAMES, np.linspace(0, 1, FRAMES), head_x=np.linspace(0, 0.1, FRAMES))
    regions = moving_regions(record, token_frames(FRAMES, FRAMES, TUBELET), GRID)
    maps = weight_maps(pixel_tokens(_clip_moving_in(MOUTH), TUBELET, PATCH))
    shares = motion_mass({weights: maps[weights]}, regions)[weights]
    assert shares["au"] > 0.99 and shares["nuisance"] < 0.01
    assert shares["au_area"] == pytest.approx(2 / 64)
    elsewhere = motion_mass(weight_maps(pixel_tokens(_clip_moving_in(EYES), TUBELET, PATCH)), regions)[weights]
    assert elsewhere["au"] < 0.01 and elsewhere["nuisance"] > 0.99  # the eyes lie in the moving head


def test_pixel_tokens_hold_the_pixels_of_their_tubelet_and_patch():
    clip = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    X = pixel_tokens(clip, 2, 8)
    assert X.shape == (1, 2, 2, 2, 2 * 8 * 8 * 3)
    np.testing.assert_allclose(X[0, 1, 0, 1].view(2, 8, 8, 3).numpy(), clip[2:4, 0:8, 8:16] / 255)


def test_part_word_rows_find_every_piece_of_a_part_word_and_nothing_else():
    tokens = ["<|startoftext|>", "the</w>", "bro", "ws</w>", "lower</w>", ",</w>", "lips</w>", "<|endoftext|>"]
    assert part_word_rows(tokens) == [(2, "brows"), (3, "brows"), (6, "mouth")]
    assert part_word_rows(["<|startoftext|>", "eyebrows", "<|endoftext|>"]) == []  # a word cut by EOS is no word


def test_part_targets_are_the_tokens_where_a_present_unit_shows_the_part():
    tubelets = token_frames(FRAMES, FRAMES, TUBELET)
    level = np.where(np.arange(FRAMES) >= 8, 0.9, 0.0)  # present from tubelet 4
    target = part_targets(_record(FRAMES, level), "mouth", tubelets, GRID)
    assert target[4:, 5, 2:4].all() and target.sum() == 4 * 2
    assert part_targets(_record(FRAMES, level), "brows", tubelets, GRID) is None  # no unit moves the brows
    assert part_targets(_record(FRAMES, np.full(FRAMES, 0.05)), "mouth", tubelets, GRID) is None  # never present


def test_a_plan_concentrated_on_the_target_scores_a_hit_and_one_elsewhere_a_miss():
    target = np.zeros((8, *GRID), dtype=bool)
    target[3, 5, 2] = True
    kept_index, kept_mask = torch.tensor([0, 3 * 64 + 5 * 8 + 2, 100, 7]), torch.tensor([True, True, True, False])
    plan = torch.tensor([[0.1, 0.7, 0.2, 0.9], [0.8, 0.0, 0.2, 0.0]])  # row 0 on the target (the padded one ignored)
    result = pointing_game(plan, plan.sum(0), kept_index, kept_mask, [(0, target), (1, target)])
    assert result["rows"] == [1.0, 0.0] and result["q"] == [0.0]  # q peaks on token 0
    assert result["chance_rows"] == [pytest.approx(1 / 3)] * 2
    assert pointing_game(plan, plan.sum(0), kept_index, kept_mask, [])["rows"] == []
    uniform = torch.full((4,), 0.25)  # balanced OT's q = b: a tie over the kept tokens scores their share on target
    assert pointing_game(plan, uniform, kept_index, kept_mask, [(0, target)])["q"] == [pytest.approx(1 / 3)]


def test_a_models_pointing_game_scores_balanced_ot_at_chance_and_leaves_its_alignment_as_it_was(tmp_path):
    """Balanced OT's q is its uniform b, whatever the text: its q hits must equal their chance exactly."""
    make_synthetic(tmp_path / "set", 10, 0, size=32, progress=False)
    torch.manual_seed(0)
    model = GraceModel(tiny_config(build_tiny_tokenizer(tmp_path / "tokenizer")))
    predictor = Predictor(model, VideoTransform(32), dtype="float32")
    alignment = model.alignment
    result = model_mechanism(predictor, tmp_path / "set", split="train", limit=4)
    assert model.alignment is alignment and result["measured"] == 4
    assert sorted(result["pointing"]) == ["ot", "ot_balanced"]
    balanced = result["pointing"]["ot_balanced"]["class prompt"]
    assert balanced["texts"] > 0 and balanced["words"] >= balanced["texts"]
    assert balanced["q"] == pytest.approx(balanced["q_chance"])
    assert 0 <= result["pointing"]["ot"]["class prompt"]["rows"] <= 1
    assert result["motion"]["both"]["au_clips"] + result["motion"]["both"]["nuisance_clips"] > 0
