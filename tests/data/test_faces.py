"""grace_fast.data.faces: each action unit moves only its face part; pose moves the whole face."""

import numpy as np
import pytest

from grace_fast.data.faces import (
    ACTION_UNITS,
    AU_REGIONS,
    HEAD_BOX,
    REGION_BOXES,
    FrameStates,
    Identity,
    part_boxes,
    regions,
    render,
)

SIZE = 64


def _posed(frames: int) -> FrameStates:
    """A head off centre, rolled, turned and shaken, in uneven light."""
    states = FrameStates.rest(frames)
    states.x[:], states.y[:], states.angle[:], states.yaw[:] = 0.46, 0.53, 0.15, -0.3
    states.shake_x[:], states.light_x[:], states.gain[:] = 0.01, 0.4, 0.9
    return states


@pytest.mark.parametrize("unit", ACTION_UNITS)
def test_an_action_unit_changes_only_the_pixels_of_its_face_parts(unit):
    states = _posed(2)
    states.au[1, ACTION_UNITS.index(unit)] = 1.0
    frames = render(Identity(), states, SIZE, SIZE)
    changed = np.any(frames[1] != frames[0], axis=-1)
    parts = np.any([regions(states, SIZE, SIZE)[name][1] for name in AU_REGIONS[unit]], axis=0)
    assert changed.sum() >= 15, f"{unit} barely shows"
    assert not changed[~parts].any()


def test_blinks_and_speech_move_only_the_eyes_and_the_lower_face():
    states = _posed(3)
    states.blink[1], states.talk[2] = 1.0, 0.3
    frames = render(Identity(), states, SIZE, SIZE)
    parts = regions(states, SIZE, SIZE)
    blink, talk = (np.any(frames[i] != frames[0], axis=-1) for i in (1, 2))
    assert blink.sum() > 10 and not blink[~parts["eyes"][1]].any()
    assert talk.sum() > 10 and not talk[~parts["jaw"][2]].any()


def test_head_translation_moves_the_whole_face_with_it():
    states = FrameStates.rest(2)
    states.x[1] = 0.5 + 4 / SIZE  # four pixels to the right
    background = Identity(wall_top=(0.5, 0.5, 0.5), wall_bottom=(0.5, 0.5, 0.5), accent_box=(0, 0, 0, 0))
    frames = render(background, states, SIZE, SIZE)
    np.testing.assert_allclose(frames[1][:, 8:56], frames[0][:, 4:52], atol=1e-5)


def test_frames_are_rgb_in_the_unit_interval():
    states = _posed(2)
    states.au[:] = 1.0
    states.gain[:] = 1.5
    frames = render(Identity(), states, 40, 56)
    assert frames.shape == (2, 40, 56, 3) and frames.dtype == np.float32
    assert frames.min() >= 0 and frames.max() <= 1


@pytest.mark.parametrize("angle", [0.0, 0.15, -0.4])
def test_part_boxes_are_the_tight_bounding_boxes_of_the_part_pixels(angle):
    states = _posed(1)
    states.angle[:] = angle  # the head leaves the frame at -0.4: its box is cut to the image
    boxes = {**REGION_BOXES, "head": HEAD_BOX}
    masks, frame_boxes = regions(states, SIZE, SIZE, boxes), part_boxes(states, SIZE, SIZE, boxes)
    centres = (np.arange(SIZE) + 0.5) / SIZE
    for name in boxes:
        rows, cols = np.nonzero(masks[name][0])
        x0, y0, x1, y1 = frame_boxes[name][0]
        inside = (centres[cols] >= x0) & (centres[cols] <= x1) & (centres[rows] >= y0) & (centres[rows] <= y1)
        assert inside.all(), name
        found = np.array([centres[cols].min(), centres[rows].min(), centres[cols].max(), centres[rows].max()])
        # a rotated box's corner is a point: the nearest pixel centre inside it can be a pixel's diagonal away
        np.testing.assert_allclose(found, frame_boxes[name][0], atol=1.5 / SIZE, err_msg=name)
