"""Procedurally drawn faces for the synthetic data set: numpy drawing of a face whose parts move like action units.

A face is drawn in face-local coordinates (u right, v down, in units of the face's half-width) that the head pose
maps onto the image, so whole-head translation, rotation, yaw and scale move every part together while an action
unit (AU) moves one part: the brows (AU1 inner brow raiser, AU2 outer brow raiser, AU4 brow lowerer), the lids
(AU5 upper lid raiser, AU7 lid tightener), the cheeks (AU6 cheek raiser), the nose (AU9 nose wrinkler), the lips
(AU10 upper lip raiser, AU12 lip corner puller, AU15 lip corner depressor, AU20 lip stretcher, AU23 lip
tightener) and the jaw (AU26 jaw drop). Each edge is anti-aliased by its signed distance to the pixel grid.

>>> import numpy as np
>>> states = FrameStates.rest(2)
>>> states.au[1, ACTION_UNITS.index("AU12")] = 1.0  # the second frame smiles
>>> frames = render(Identity(), states, 64, 64)
>>> frames.shape, frames.dtype
((2, 64, 64, 3), dtype('float32'))
"""

from dataclasses import dataclass, fields

import numpy as np

ACTION_UNITS = ("AU1", "AU2", "AU4", "AU5", "AU6", "AU7", "AU9", "AU10", "AU12", "AU15", "AU20", "AU23", "AU26")
# the face parts (REGION_BOXES) whose pixels each AU changes
AU_REGIONS = {
    "AU1": ("brows",),
    "AU2": ("brows",),
    "AU4": ("brows",),
    "AU5": ("eyes",),
    "AU6": ("eyes",),
    "AU7": ("eyes",),
    "AU9": ("brows", "nose", "mouth"),
    "AU10": ("nose", "mouth"),
    "AU12": ("mouth",),
    "AU15": ("mouth",),
    "AU20": ("mouth",),
    "AU23": ("mouth",),
    "AU26": ("mouth", "jaw"),
}
# face-local boxes (u0, u1, v0, v1) of the parts, for `regions`; together they hold every AU's drawing
REGION_BOXES = {
    "brows": (-0.85, 0.85, -1.0, -0.2),
    "eyes": (-0.85, 0.85, -0.45, 0.5),
    "nose": (-0.3, 0.3, -0.25, 0.45),
    "mouth": (-0.85, 0.85, 0.15, 1.8),
    "jaw": (-1.4, 1.4, 0.0, 1.9),  # a dropping jaw lengthens the lower face outline
}
# the face-local box of the head with its hair and neck (wide, since the outline stays put as the features yaw);
# the shoulders below it move with the head too
HEAD_BOX = (-1.6, 1.6, -1.5, 1.9)


@dataclass
class Identity:
    """The rest shape and colours of one synthetic person and scene (colours RGB in [0, 1])."""

    skin: tuple[float, float, float] = (0.87, 0.70, 0.58)
    hair: tuple[float, float, float] = (0.18, 0.12, 0.08)
    iris: tuple[float, float, float] = (0.30, 0.20, 0.10)
    lips: tuple[float, float, float] = (0.72, 0.36, 0.36)
    shirt: tuple[float, float, float] = (0.20, 0.30, 0.60)
    wall_top: tuple[float, float, float] = (0.60, 0.62, 0.66)
    wall_bottom: tuple[float, float, float] = (0.40, 0.42, 0.46)
    accent: tuple[float, float, float] = (0.80, 0.78, 0.60)
    accent_box: tuple[float, float, float, float] = (0.70, 0.95, 0.05, 0.35)  # x0, x1, y0, y1 as image fractions
    long_hair: bool = False
    eye_size: float = 1.0
    eye_spacing: float = 1.0
    brow_height: float = 0.0
    brow_arch: float = 0.05
    mouth_width: float = 1.0
    mouth_curve: float = 0.0  # rest lip-corner height: < 0 turns the resting corners up, > 0 down
    jaw_width: float = 0.92


@dataclass
class FrameStates:
    """What changes from frame to frame, one entry per frame: [T] arrays, and au [T, len(ACTION_UNITS)] in [0, 1].

    x, y: the head centre as image fractions; angle (roll) and yaw in radians; scale: face size (1 = 0.3 of the
    image side per half-width); blink: lid closure in [0, 1]; talk: extra jaw opening of speech; shake_x,
    shake_y: camera shake as image fractions; gain: light level; light_x, light_y: light direction; warmth:
    colour temperature shift.
    """

    au: np.ndarray
    blink: np.ndarray
    talk: np.ndarray
    x: np.ndarray
    y: np.ndarray
    angle: np.ndarray
    yaw: np.ndarray
    scale: np.ndarray
    shake_x: np.ndarray
    shake_y: np.ndarray
    gain: np.ndarray
    light_x: np.ndarray
    light_y: np.ndarray
    warmth: np.ndarray

    @classmethod
    def rest(cls, frames: int) -> "FrameStates":
        """A still, neutral, centred head in even light for `frames` frames."""
        zeros, ones = np.zeros(frames), np.ones(frames)
        values = {f.name: zeros.copy() for f in fields(cls)}
        values.update(au=np.zeros((frames, len(ACTION_UNITS))), x=0.5 * ones, y=0.5 * ones, scale=ones, gain=ones)
        return cls(**values)

    def __len__(self) -> int:
        return len(self.blink)


def render(identity: Identity, states: FrameStates, height: int, width: int) -> np.ndarray:
    """Draw the frames of `states`: [T, height, width, 3] float32 RGB in [0, 1] (no sensor noise)."""
    p = _frame_params(states)
    X, Y, u, v, uf, px = _coordinates(p, height, width)
    au = {name: p["au"][..., i] for i, name in enumerate(ACTION_UNITS)}

    image = _background(identity, X / width, Y / height)
    _over(image, identity.shirt, _soft(_ellipse(u, v, 0.0, 2.55, 1.9, 1.2), px))
    _over(image, np.multiply(identity.skin, 0.85), _soft(np.maximum(np.abs(u) - 0.38, np.abs(v - 1.3) - 0.5), px))
    hair_d = _ellipse(u, v, 0.0, 0.25 if identity.long_hair else -0.12, 1.16, 1.55 if identity.long_hair else 1.28)
    _over(image, identity.hair, _soft(hair_d, px))

    jaw = np.clip(au["AU26"] + p["talk"], 0, 1.5)
    lower = v > 0
    face_d = _ellipse(u, v, 0.0, 0.0, np.where(lower, identity.jaw_width, 1.0), 1.3 * (1 + lower * 0.14 * jaw))
    face = _soft(face_d, px)
    shade = 1.0 - 0.12 * (uf * p["light_x"] + v * p["light_y"])
    _over(image, np.asarray(identity.skin) * shade[..., None], face)
    fringe = np.maximum(hair_d, v + 0.92 - 0.18 * u**2)
    _over(image, identity.hair, _soft(fringe, px))

    _cheeks(image, identity, uf, v, au, px, face)
    _brows(image, identity, uf, v, au, px)
    _eyes(image, identity, uf, v, au, p["blink"], px)
    _nose(image, identity, uf, v, au, px)
    _mouth(image, identity, uf, v, au, jaw, px)

    image *= p["gain"][..., None] * (1 + 0.25 * (p["light_x"] * (X / width - 0.5)))[..., None]
    image *= 1 + np.stack([p["warmth"], np.zeros_like(p["warmth"]), -p["warmth"]], -1)
    return np.clip(image, 0, 1).astype(np.float32)


def regions(states: FrameStates, height: int, width: int, boxes=None) -> dict[str, np.ndarray]:
    """The pixels of face parts in each frame, {name: [T, H, W] bool}, following the head and the camera. boxes
    maps a name to a face-local box (u0, u1, v0, v1); the default REGION_BOXES holds every AU's drawing."""
    _, _, _, v, uf, _ = _coordinates(_frame_params(states), height, width)
    boxes = REGION_BOXES if boxes is None else boxes
    return {name: (uf >= u0) & (uf <= u1) & (v >= v0) & (v <= v1) for name, (u0, u1, v0, v1) in boxes.items()}


def part_boxes(states: FrameStates, height: int, width: int, boxes=None) -> dict[str, np.ndarray]:
    """The image box of each face part in each frame, {name: [T, 4] float64 (x0, y0, x1, y1) as fractions of the
    width and height}: the bounding box of the face-local box (u0, u1, v0, v1) mapped through the head pose and the
    camera, cut to the image, so that it holds every pixel centre `regions` gives the part. boxes: as `regions`."""
    pose = ("x", "y", "scale", "angle", "yaw", "shake_x", "shake_y")
    p = {name: np.asarray(getattr(states, name), dtype=np.float64)[:, None] for name in pose}  # [T, 1] each
    half = 0.3 * min(height, width) * p["scale"]  # face half-width in pixels
    cos, sin = np.cos(p["angle"]), np.sin(p["angle"])
    out = {}
    for name, (u0, u1, v0, v1) in (REGION_BOXES if boxes is None else boxes).items():
        uf, v = np.array([u0, u1, u0, u1]), np.array([v0, v0, v1, v1])  # the corners, [4]
        u = uf * np.cos(p["yaw"]) + 0.35 * np.sin(p["yaw"])  # [T, 4]
        x = p["x"] + half * (cos * u - sin * v) / width - p["shake_x"]
        y = p["y"] + half * (sin * u + cos * v) / height - p["shake_y"]
        out[name] = np.clip(np.stack([x.min(1), y.min(1), x.max(1), y.max(1)], axis=1), 0, 1)
    return out


def _coordinates(p: dict[str, np.ndarray], height: int, width: int):
    """Pixel centres seen through the shaking camera (X, Y) and in face units (u, v; uf for the inner features,
    which slide sideways and narrow as the head yaws while the outline stays), all [T, H, W], and the pixel size
    in face units (px, [T, 1, 1])."""
    T = p["blink"].shape[0]
    X = np.broadcast_to(np.arange(width)[None, None, :] + 0.5 + p["shake_x"] * width, (T, height, width))
    Y = np.broadcast_to(np.arange(height)[None, :, None] + 0.5 + p["shake_y"] * height, (T, height, width))
    half = 0.3 * min(height, width) * p["scale"]  # face half-width in pixels
    dx, dy = X - p["x"] * width, Y - p["y"] * height
    cos, sin = np.cos(p["angle"]), np.sin(p["angle"])
    u, v = (cos * dx + sin * dy) / half, (-sin * dx + cos * dy) / half
    uf = (u - 0.35 * np.sin(p["yaw"])) / np.cos(p["yaw"])
    return X, Y, u.astype(np.float32), v.astype(np.float32), uf.astype(np.float32), (1.0 / half).astype(np.float32)


def _frame_params(states: FrameStates) -> dict[str, np.ndarray]:
    """The per-frame values shaped to broadcast against [T, H, W] pixel grids."""
    out = {f.name: np.asarray(getattr(states, f.name), dtype=np.float64) for f in fields(states)}
    for name, value in out.items():
        out[name] = value[:, None, None, :] if name == "au" else value[:, None, None]
    return out


def _soft(distance: np.ndarray, px) -> np.ndarray:
    """Coverage of a shape from its signed distance (< 0 inside), anti-aliased over one pixel."""
    return np.clip(0.5 - distance / px, 0.0, 1.0)


def _ellipse(u, v, cu, cv, ru, rv) -> np.ndarray:
    """Approximate signed distance to an ellipse (exact on a circle), in face units."""
    return (np.sqrt(((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2) - 1.0) * np.minimum(ru, rv)


def _segment(u, v, a, b, width) -> np.ndarray:
    """Signed distance to a line segment from a to b, `width` thick."""
    au_, av_ = u - a[0], v - a[1]
    bu, bv = b[0] - a[0], b[1] - a[1]
    t = np.clip((au_ * bu + av_ * bv) / (bu * bu + bv * bv), 0.0, 1.0)
    return np.hypot(au_ - t * bu, av_ - t * bv) - width / 2


def _crease(identity: Identity, depth: float = 0.6) -> np.ndarray:
    """The colour of a skin fold or shadow: the skin darkened, so that it shows on every skin tone."""
    return np.multiply(identity.skin, depth)


def _line(image, colour, u, v, a, b, width, px, strength) -> None:
    """Paint a segment from a to b, `width` thick, at opacity strength (a number or [T, 1, 1]); skipped at 0."""
    if np.any(strength):
        _over(image, colour, _soft(_segment(u, v, a, b, width), px) * strength)


def _over(image: np.ndarray, colour, alpha: np.ndarray) -> None:
    """Paint colour ([3] or [T, H, W, 3]) over image with coverage alpha [T, H, W], in place."""
    covered = alpha > 0
    rows, cols = np.flatnonzero(covered.any(axis=(0, 2))), np.flatnonzero(covered.any(axis=(0, 1)))
    if not len(rows):
        return
    box = (slice(None), slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))  # most parts are small
    alpha = alpha[box][..., None]
    colour = np.asarray(colour)
    image[box] += alpha * ((colour[box] if colour.ndim == 4 else colour) - image[box])


def _background(identity: Identity, x, y) -> np.ndarray:
    top, bottom = np.asarray(identity.wall_top), np.asarray(identity.wall_bottom)
    image = top + (bottom - top) * y[..., None]
    x0, x1, y0, y1 = identity.accent_box
    box = np.clip(np.minimum.reduce([x - x0, x1 - x, y - y0, y1 - y]) * 40 + 0.5, 0, 1)
    _over(image, identity.accent, box)
    return image


def _cheeks(image, identity, u, v, au, px, face):
    for s in (-1.0, 1.0):
        blob = _soft(_ellipse(u, v, s * 0.5, 0.25 - 0.12 * au["AU6"], 0.2, 0.13), 0.15)
        _over(image, np.multiply(identity.skin, (1.05, 0.8, 0.8)), blob * face * (0.15 + 0.45 * au["AU6"]))
        for k in (-1, 0, 1):  # crow's feet at the outer eye corner
            _line(
                image,
                _crease(identity),
                u,
                v,
                (s * 0.62, -0.12 + 0.05 * k),
                (s * 0.74, -0.12 + 0.1 * k),
                0.025,
                px,
                0.8 * au["AU6"],
            )


def _brows(image, identity, u, v, au, px):
    colour = 0.5 * np.asarray(identity.hair) + 0.175 * np.asarray(identity.skin)  # darker than hair and skin alike
    inner_lift, outer_lift, lower = 0.28 * au["AU1"], 0.25 * au["AU2"], 0.16 * au["AU4"] + 0.05 * au["AU9"]
    for s in (-1.0, 1.0):
        inner, outer = s * (0.12 - 0.07 * au["AU4"]), s * 0.66
        length = np.abs(outer - inner)
        t = (u - inner) / (outer - inner)
        tc = np.clip(t, 0, 1)
        centre = -0.45 + identity.brow_height - identity.brow_arch * 4 * tc * (1 - tc)
        centre = centre - inner_lift * (1 - tc) ** 1.5 - outer_lift * tc + lower * (1 - 0.5 * tc)
        band = np.maximum.reduce([np.abs(v - centre) - 0.03, -t * length, (t - 1) * length])
        _over(image, colour, _soft(band, px))
    for s in (-1.0, 1.0):  # frown lines between the brows
        _line(image, _crease(identity), u, v, (s * 0.05, -0.42), (s * 0.04, -0.27), 0.03, px, au["AU4"])
    lift = np.maximum(au["AU1"], au["AU2"])
    for row in (-0.78, -0.68):  # forehead lines of raised brows
        _line(image, _crease(identity), u, v, (-0.35, row), (0.35, row), 0.025, px, 0.8 * lift)


def _eyes(image, identity, u, v, au, blink, px):
    size, closed = identity.eye_size, 1.0 - np.clip(blink, 0, 1)
    upper = np.clip(1 + 0.8 * au["AU5"] - 0.5 * au["AU7"] - 0.15 * au["AU6"], 0.05, 2.0) * closed
    lower = np.clip(1 - 0.55 * au["AU7"] - 0.6 * au["AU6"], 0.05, 1.5) * closed
    for s in (-1.0, 1.0):
        cu, cv, ew, eh = s * 0.38 * identity.eye_spacing, -0.1, 0.18 * size, 0.09 * size
        du = np.clip((u - cu) / ew, -1, 1)
        profile = np.sqrt(1 - du**2)
        top, bottom = cv - eh * upper * profile, cv + eh * lower * profile
        aperture = _soft(np.maximum.reduce([top - v, v - bottom, np.abs(u - cu) - ew]), px)
        _over(image, (0.95, 0.95, 0.93), aperture)
        _over(image, identity.iris, _soft(_ellipse(u, v, cu, cv, 0.075 * size, 0.075 * size), px) * aperture)
        _over(image, (0.05, 0.05, 0.05), _soft(_ellipse(u, v, cu, cv, 0.03 * size, 0.03 * size), px) * aperture)
        lid = np.maximum(np.abs(v - top) - 0.02, np.abs(u - cu) - 1.05 * ew)
        _over(image, (0.12, 0.08, 0.06), _soft(lid, px))


def _nose(image, identity, u, v, au, px):
    rise = 0.06 * au["AU9"] + 0.03 * au["AU10"]
    _line(image, _crease(identity), u, v, (0.05, -0.2), (0.07, 0.16 - rise), 0.03, px, 0.35)
    for s in (-1.0, 1.0):
        nostril = _ellipse(u, v, s * 0.08 * (1 + 0.3 * au["AU9"]), 0.22 - rise, 0.05, 0.028)
        _over(image, _crease(identity, 0.4), _soft(nostril, px) * 0.8)
    for row in (-0.14, -0.07, 0.0):  # wrinkles across the bridge
        _line(image, _crease(identity), u, v, (-0.12, row), (0.12, row), 0.025, px, au["AU9"])
    for s in (-1.0, 1.0):  # nasolabial folds deepen with a smile, a sneer or a raised upper lip
        depth = 0.15 + 0.6 * np.maximum.reduce([au["AU12"], au["AU10"], au["AU9"]])
        _line(image, _crease(identity), u, v, (s * 0.16, 0.28 - rise), (s * 0.36, 0.62), 0.03, px, depth)


def _mouth(image, identity, u, v, au, jaw, px):
    width = 0.27 * identity.mouth_width * (1 + 0.3 * au["AU12"] + 0.35 * au["AU20"] - 0.2 * au["AU23"])
    corner = identity.mouth_curve - 0.18 * au["AU12"] + 0.2 * au["AU15"] - 0.02 * au["AU20"]
    centre = 0.58
    s = np.clip(u / width, -1, 1)
    curve = 1 - s**2
    upper_inner = centre + corner * s**2 - 0.08 * au["AU10"] * curve
    lower_inner = upper_inner + 0.32 * jaw * curve
    thin = 1 - 0.65 * au["AU23"]
    upper_outer = upper_inner - 0.05 * thin * (0.3 + 0.7 * curve)
    lower_outer = lower_inner + 0.07 * thin * (0.3 + 0.7 * curve)
    across = np.abs(u) - width
    _over(image, identity.lips, _soft(np.maximum.reduce([upper_outer - v, v - lower_outer, across]), px))
    _over(image, (0.25, 0.05, 0.07), _soft(np.maximum.reduce([upper_inner - v, v - lower_inner, across]), px))
    teeth = np.maximum.reduce([upper_inner - v, v - np.minimum(lower_inner, upper_inner + 0.05), across + 0.05])
    _over(image, (0.92, 0.9, 0.85), _soft(teeth, px))
    seam = np.maximum(np.abs(v - (upper_inner + lower_inner) / 2) - 0.012, across)
    _over(image, (0.3, 0.1, 0.1), _soft(seam, px))
