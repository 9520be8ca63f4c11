"""Synthetic "city street" scenes written in the official Cityscapes layout and labelIds.

A stand-in for Cityscapes (Cordts et al. 2016) with a *known* appearance distribution: every
colour, size and count the generator draws from is an explicit field of ``SceneStyle``, and the
resolved style is written to ``synthetic_spec.json`` so that realism metrics can later be scored
against the distribution that produced the photos. The files follow the real folder layout
(``leftImg8bit/`` + ``gtFine/`` with ``*_gtFine_labelIds.png`` and ``*_gtFine_color.png``), so one
loader serves both this data and real Cityscapes.

Each scene is a dashcam view of a street drawn with a pinhole camera over a flat ground plane:
sky above a random horizon, a road converging to the vanishing point, sidewalks, facades with
window grids on both sides, trees, cars, people, poles and traffic signs, and the ego-vehicle hood
at the bottom. Image and label map are drawn by the same shape calls, so the labels are exact; the
image adds per-instance colour jitter, a global illumination factor and per-pixel noise, so one
layout maps to many photos (the one-to-many setting of CRN, Sec. 3.4).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

from crn_repro.labels import LABELS, NAME_TO_ID

RGB = tuple[int, int, int]
Range = tuple[float, float]  # uniform [low, high)
CountRange = tuple[int, int]  # integer [low, high], both inclusive

ROAD = NAME_TO_ID["road"]
SIDEWALK = NAME_TO_ID["sidewalk"]
BUILDING = NAME_TO_ID["building"]
POLE = NAME_TO_ID["pole"]
TRAFFIC_SIGN = NAME_TO_ID["traffic sign"]
VEGETATION = NAME_TO_ID["vegetation"]
TERRAIN = NAME_TO_ID["terrain"]
SKY = NAME_TO_ID["sky"]
PERSON = NAME_TO_ID["person"]
CAR = NAME_TO_ID["car"]
EGO_VEHICLE = NAME_TO_ID["ego vehicle"]

TRAIN_CITIES = ("aachen", "bonn", "bremen", "cologne", "darmstadt", "dusseldorf", "erfurt", "hamburg")
VAL_CITIES = ("frankfurt", "lindau", "munster", "mainz", "koblenz", "trier")
CITY_PREFIX = "synth"
SPLITS = ("train", "val")  # the split index seeds the per-image RNG
ANNOTATED_FRAME = 19  # real gtFine annotates frame 19 of every 30-frame snippet
SPEC_FILENAME = "synthetic_spec.json"

_ID_TO_COLOR = np.zeros((256, 3), dtype=np.uint8)
for _label in LABELS:
    _ID_TO_COLOR[_label.id] = _label.color


@dataclass(frozen=True)
class SkyMode:
    """One weather mode of the sky: a vertical gradient from zenith to horizon colour."""

    name: str
    zenith: RGB
    horizon: RGB
    weight: float  # relative probability of the mode
    max_clouds: int  # clouds are drawn as pale blobs (still labelled sky)


@dataclass(frozen=True)
class FacadeStyle:
    """One facade material: wall colour plus a grid of darker windows (windows stay `building`)."""

    name: str
    wall: RGB
    window: RGB
    bay_width_m: float  # horizontal spacing of window columns
    window_width_frac: float  # window width / bay width
    window_height_frac: float  # window height / floor height


@dataclass(frozen=True)
class NamedColor:
    """A palette entry; the name makes the mode identifiable in the spec and in tests."""

    name: str
    rgb: RGB


@dataclass(frozen=True)
class SceneStyle:
    """The generator's explicit appearance and layout distribution (the "known distribution").

    Lengths are metres in the world, fractions are of the image size; ranges are uniform.
    """

    # Camera: pinhole over a flat ground plane, looking along the street.
    focal_length_frac: float = 1.0  # focal length / image width (Cityscapes: 2262 / 2048)
    camera_height_m: float = 1.5
    horizon_frac: Range = (0.40, 0.55)  # horizon row / image height
    vanishing_x_frac: Range = (0.42, 0.58)  # vanishing-point column / image width

    # Sky: at least two weather modes.
    sky_modes: tuple[SkyMode, ...] = (
        SkyMode("clear", zenith=(62, 112, 188), horizon=(172, 198, 226), weight=0.45, max_clouds=3),
        SkyMode("overcast", zenith=(148, 153, 162), horizon=(208, 210, 214), weight=0.40, max_clouds=0),
        SkyMode("hazy", zenith=(118, 138, 170), horizon=(222, 200, 176), weight=0.15, max_clouds=2),
    )
    cloud_color: RGB = (238, 240, 244)
    cloud_opacity: Range = (0.4, 0.8)
    cloud_size_frac: Range = (0.06, 0.16)  # cloud half-width / image width

    # Ground: road (camera in the right-hand lane), curbs, sidewalks and optional grass strips.
    road_color: RGB = (88, 84, 92)
    lane_marking_color: RGB = (212, 212, 204)
    lane_width_m: float = 3.4
    lane_marking_width_m: float = 0.14
    lane_dash_length_m: float = 3.0
    lane_dash_period_m: float = 9.0
    road_half_width_left_m: Range = (3.6, 7.0)
    road_half_width_right_m: Range = (1.9, 4.0)
    curb_color: RGB = (178, 174, 170)
    curb_width_m: float = 0.2
    sidewalk_color: RGB = (146, 138, 140)
    sidewalk_width_m: Range = (2.5, 4.5)
    terrain_color: RGB = (112, 138, 72)
    terrain_strip_prob: float = 0.35  # per side: outer part of the sidewalk is a grass strip
    terrain_strip_width_m: Range = (0.8, 1.4)

    # Buildings: a row of facades on each side, receding to the vanishing point.
    facade_styles: tuple[FacadeStyle, ...] = (
        FacadeStyle("red_brick", wall=(148, 72, 56), window=(52, 40, 40), bay_width_m=2.6,
                    window_width_frac=0.5, window_height_frac=0.5),
        FacadeStyle("beige_stucco", wall=(206, 190, 156), window=(74, 72, 80), bay_width_m=3.0,
                    window_width_frac=0.45, window_height_frac=0.55),
        FacadeStyle("grey_concrete", wall=(128, 128, 124), window=(56, 60, 66), bay_width_m=2.2,
                    window_width_frac=0.7, window_height_frac=0.45),
        FacadeStyle("blue_glass", wall=(84, 112, 142), window=(36, 54, 80), bay_width_m=1.8,
                    window_width_frac=0.85, window_height_frac=0.8),
        FacadeStyle("white_plaster", wall=(226, 222, 214), window=(66, 68, 78), bay_width_m=2.8,
                    window_width_frac=0.4, window_height_frac=0.55),
    )
    building_length_m: Range = (7.0, 22.0)
    building_height_m: Range = (7.0, 24.0)
    floor_height_m: float = 3.2
    building_gap_prob: float = 0.15  # a gap in the row shows grass and trees
    gap_setback_m: Range = (12.0, 30.0)  # the building behind a gap stands this far back
    gap_tree_spacing_m: float = 5.0
    facade_shade: Range = (0.72, 1.0)  # per side: one side of the street is in shadow
    row_end_depth_m: float = 120.0  # beyond this the row is one far block
    skyline_color: RGB = (150, 154, 164)  # hazy distant buildings around the vanishing point
    skyline_height_frac: Range = (0.02, 0.12)
    skyline_block_frac: Range = (0.03, 0.10)  # block width / image width

    # Vegetation: street trees on the outer sidewalk, more trees in building gaps.
    foliage_colors: tuple[RGB, ...] = ((64, 104, 44), (86, 124, 52), (48, 84, 38), (104, 130, 60))
    trunk_color: RGB = (78, 62, 48)
    trees_per_scene: CountRange = (0, 4)
    tree_height_m: Range = (4.5, 8.5)
    canopy_radius_m: Range = (1.3, 2.6)
    tree_depth_m: Range = (5.0, 70.0)
    tree_sidewalk_pos: Range = (0.75, 0.85)
    blobs_per_canopy: CountRange = (3, 6)
    foliage_shade: Range = (0.85, 1.15)  # brightness of each canopy blob

    # Cars: body from a palette, darker glass and tyres, red tail lights, a shadow on the road.
    car_paints: tuple[NamedColor, ...] = (
        NamedColor("red", (170, 32, 30)),
        NamedColor("blue", (36, 62, 150)),
        NamedColor("white", (226, 226, 224)),
        NamedColor("black", (28, 28, 32)),
        NamedColor("silver", (160, 164, 170)),
        NamedColor("yellow", (214, 176, 40)),
    )
    car_glass_color: RGB = (44, 52, 64)
    car_tyre_color: RGB = (18, 18, 18)
    car_light_color: RGB = (196, 24, 24)
    car_shadow_color: RGB = (42, 40, 46)
    cars_per_scene: CountRange = (1, 6)
    car_width_m: Range = (1.7, 1.95)
    car_length_m: Range = (3.9, 4.8)
    car_height_m: Range = (1.4, 1.6)
    car_depth_m: Range = (6.0, 70.0)
    min_car_spacing_m: float = 7.0
    parking_offset_m: float = 1.1  # parked cars' centre line, from the curb

    # People on the sidewalks.
    shirt_colors: tuple[RGB, ...] = (
        (200, 40, 40), (40, 80, 170), (230, 230, 225), (30, 30, 34), (60, 130, 70),
        (220, 170, 40), (140, 80, 150), (120, 120, 124),
    )
    trouser_colors: tuple[RGB, ...] = ((40, 56, 96), (28, 28, 30), (110, 110, 112), (170, 150, 110))
    skin_colors: tuple[RGB, ...] = ((236, 196, 166), (200, 150, 110), (140, 96, 66), (96, 64, 44))
    people_per_scene: CountRange = (1, 5)
    person_height_m: Range = (1.55, 1.95)
    person_depth_m: Range = (5.0, 45.0)
    person_sidewalk_pos: Range = (0.35, 0.75)  # across the sidewalk: 0 = curb, 1 = building line

    # Poles with traffic signs on top.
    pole_color: RGB = (112, 112, 108)
    poles_per_scene: CountRange = (1, 4)
    pole_height_m: Range = (3.2, 5.5)
    pole_width_m: float = 0.14
    pole_depth_m: Range = (5.0, 60.0)
    pole_sidewalk_pos: Range = (0.08, 0.12)
    sign_prob: float = 0.75
    sign_size_m: Range = (0.6, 0.9)
    sign_colors: tuple[NamedColor, ...] = (
        NamedColor("red", (200, 30, 34)),
        NamedColor("blue", (30, 76, 170)),
        NamedColor("yellow", (232, 196, 30)),
    )
    sign_rim_color: RGB = (232, 232, 232)
    round_sign_prob: float = 0.5  # round or square

    # Ego-vehicle hood (labelled `ego vehicle`, a void class) along the bottom edge.
    ego_hood_frac: Range = (0.03, 0.06)
    ego_hood_color: RGB = (34, 36, 42)

    # Appearance randomness that makes layout -> image one-to-many.
    instance_color_std: float = 10.0  # per object, per channel
    illumination: Range = (0.85, 1.1)  # global brightness factor per scene
    pixel_noise_std: float = 4.0


DEFAULT_STYLE = SceneStyle()


@dataclass(frozen=True)
class _Camera:
    """Pinhole camera at height `height_m` above the ground, optical axis along the street (+z)."""

    focal_px: float
    height_m: float
    vx: float  # vanishing point (principal point) column
    hy: float  # horizon row
    width: int
    height: int

    def x(self, X: float, z: float) -> float:
        return self.vx + self.focal_px * X / z

    def y(self, Y: float, z: float) -> float:
        return self.hy + self.focal_px * (self.height_m - Y) / z

    def project(self, points: list[tuple[float, float, float]]) -> list[tuple[float, float]]:
        return [(self.x(X, z), self.y(Y, z)) for X, Y, z in points]

    def px(self, length_m: float, z: float) -> float:
        """Image length of `length_m` metres seen at depth z."""
        return self.focal_px * length_m / z

    @property
    def bottom_depth(self) -> float:
        """Depth at which the ground meets the bottom image row."""
        return self.focal_px * self.height_m / max(self.height - self.hy, 1.0)

    def visible_depth(self, X: float) -> float:
        """Smallest depth at which a point at lateral offset X is inside the image."""
        room = self.vx if X < 0 else self.width - self.vx
        return self.focal_px * abs(X) / max(room, 1.0)


@dataclass(frozen=True)
class _Street:
    """Cross-section of the street, metres from the camera's lateral position (X = 0)."""

    left_m: float  # road edge to the left of the camera
    right_m: float  # road edge to the right
    walk_left_m: float  # sidewalk widths
    walk_right_m: float

    def facade_x(self, side: int) -> float:
        """Lateral position of the building row on side -1 (left) or +1 (right)."""
        return -(self.left_m + self.walk_left_m) if side < 0 else self.right_m + self.walk_right_m


class _Canvas:
    """The photo and the label map, drawn by the same shape calls so the labels are exact."""

    def __init__(self, sky: np.ndarray):
        height, width = sky.shape[:2]
        self.image = Image.fromarray(sky)
        self.label = Image.new("L", (width, height), SKY)
        self._image_draw = ImageDraw.Draw(self.image)
        self._label_draw = ImageDraw.Draw(self.label)

    def polygon(self, points: list[tuple[float, float]], rgb: RGB, label_id: int) -> None:
        self._image_draw.polygon(points, fill=rgb)
        self._label_draw.polygon(points, fill=label_id)

    def ellipse(self, box: tuple[float, float, float, float], rgb: RGB, label_id: int) -> None:
        self._image_draw.ellipse(box, fill=rgb)
        self._label_draw.ellipse(box, fill=label_id)

    def rectangle(self, box: tuple[float, float, float, float], rgb: RGB, label_id: int) -> None:
        self._image_draw.rectangle(_ordered(box), fill=rgb)
        self._label_draw.rectangle(_ordered(box), fill=label_id)

    def paint(self, points: list[tuple[float, float]], rgb: RGB) -> None:
        """Image-only detail inside an already-labelled region (windows, lane marks, shadows)."""
        self._image_draw.polygon(points, fill=rgb)

    def paint_ellipse(self, box: tuple[float, float, float, float], rgb: RGB) -> None:
        self._image_draw.ellipse(box, fill=rgb)


def _ordered(box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = box
    return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)


def _uniform(rng: np.random.Generator, bounds: Range) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def _count(rng: np.random.Generator, bounds: CountRange) -> int:
    return int(rng.integers(bounds[0], bounds[1] + 1))


def _pick(rng: np.random.Generator, options: tuple):
    return options[int(rng.integers(len(options)))]


def _jitter(rng: np.random.Generator, rgb: RGB, std: float) -> RGB:
    """Per-instance colour: the class colour plus a Gaussian shift per channel."""
    shifted = np.clip(np.asarray(rgb, dtype=np.float64) + rng.normal(0.0, std, size=3), 0, 255)
    return tuple(int(round(c)) for c in shifted)


def _scale(rgb: RGB, factor: float) -> RGB:
    return tuple(int(min(255, round(c * factor))) for c in rgb)


def _mix(a: RGB, b: RGB, t: float) -> RGB:
    return tuple(int(round((1 - t) * ca + t * cb)) for ca, cb in zip(a, b))


def _face_x(X: float, Y0: float, Y1: float, z0: float, z1: float) -> list[tuple[float, float, float]]:
    """Corners of a vertical face in the plane X = const (facades, car sides)."""
    return [(X, Y0, z0), (X, Y0, z1), (X, Y1, z1), (X, Y1, z0)]


def _face_z(X0: float, X1: float, Y0: float, Y1: float, z: float) -> list[tuple[float, float, float]]:
    """Corners of a vertical face in the plane z = const, facing the camera (car rear, sign)."""
    return [(X0, Y0, z), (X1, Y0, z), (X1, Y1, z), (X0, Y1, z)]


def _ground(X0: float, X1: float, z0: float, z1: float, Y: float = 0.0) -> list[tuple[float, float, float]]:
    """Corners of a horizontal patch at height Y (ground strips, car roofs)."""
    return [(X0, Y, z0), (X1, Y, z0), (X1, Y, z1), (X0, Y, z1)]


def _draw_sky(rng: np.random.Generator, height: int, width: int, hy: float,
              style: SceneStyle) -> tuple[np.ndarray, SkyMode]:
    """Sky gradient (zenith to horizon colour) of a weather mode drawn by its weight."""
    weights = np.array([mode.weight for mode in style.sky_modes], dtype=np.float64)
    mode = style.sky_modes[int(rng.choice(len(style.sky_modes), p=weights / weights.sum()))]
    zenith = np.asarray(_jitter(rng, mode.zenith, style.instance_color_std), dtype=np.float64)
    horizon = np.asarray(_jitter(rng, mode.horizon, style.instance_color_std), dtype=np.float64)
    t = np.clip(np.arange(height, dtype=np.float64) / max(hy, 1.0), 0.0, 1.0)[:, None]
    rows = (1 - t) * zenith + t * horizon
    sky = np.broadcast_to(rows[:, None, :], (height, width, 3))
    return np.ascontiguousarray(np.round(sky).astype(np.uint8)), mode


def _draw_clouds(rng: np.random.Generator, canvas: _Canvas, cam: _Camera, mode: SkyMode,
                 style: SceneStyle) -> None:
    """A few pale blobs in the upper sky; they change the image only (still sky)."""
    for _ in range(int(rng.integers(0, mode.max_clouds + 1))):
        cx = rng.uniform(0, cam.width)
        cy = rng.uniform(0.05, 0.6) * cam.hy
        size = _uniform(rng, style.cloud_size_frac) * cam.width
        sky_rgb = canvas.image.getpixel((int(min(cx, cam.width - 1)), int(cy)))
        rgb = _mix(sky_rgb, style.cloud_color, _uniform(rng, style.cloud_opacity))
        for _ in range(int(rng.integers(3, 6))):
            bx = cx + rng.uniform(-1.0, 1.0) * size
            by = cy + rng.uniform(-0.2, 0.2) * size
            rx, ry = size * rng.uniform(0.4, 0.8), size * rng.uniform(0.15, 0.3)
            canvas.paint_ellipse((bx - rx, by - ry, bx + rx, by + ry), rgb)


def _draw_skyline(rng: np.random.Generator, canvas: _Canvas, cam: _Camera, style: SceneStyle) -> None:
    """Hazy distant buildings along the horizon, seen around the vanishing point."""
    x = 0.0
    base = cam.hy + 1
    while x < cam.width:
        block = _uniform(rng, style.skyline_block_frac) * cam.width
        top = cam.hy - _uniform(rng, style.skyline_height_frac) * cam.height
        rgb = _jitter(rng, style.skyline_color, style.instance_color_std / 2)
        canvas.rectangle((x, top, x + block, base), rgb, BUILDING)
        x += block


def _draw_ground(rng: np.random.Generator, canvas: _Canvas, cam: _Camera, street: _Street,
                 style: SceneStyle) -> None:
    """Road, lane marks, curbs, sidewalks and grass strips as ground patches to the vanishing point."""
    z0, z_inf = cam.bottom_depth * 0.5, 1e5
    left, right, walk_l, walk_r = street.left_m, street.right_m, street.walk_left_m, street.walk_right_m
    # everything below the horizon is ground; far slivers beside the street are sidewalk
    sidewalk_rgb = _jitter(rng, style.sidewalk_color, style.instance_color_std)
    canvas.rectangle((0, cam.hy + 1, cam.width, cam.height), sidewalk_rgb, SIDEWALK)
    for X0, X1 in ((-left - walk_l, -left), (right, right + walk_r)):
        canvas.polygon(cam.project(_ground(X0, X1, z0, z_inf)), sidewalk_rgb, SIDEWALK)
    curb_rgb = _jitter(rng, style.curb_color, style.instance_color_std)
    for X0, X1 in ((-left - style.curb_width_m, -left), (right, right + style.curb_width_m)):
        canvas.polygon(cam.project(_ground(X0, X1, z0, z_inf)), curb_rgb, SIDEWALK)
    for side, walk in ((-1, walk_l), (1, walk_r)):
        if rng.random() < style.terrain_strip_prob:
            edge = (left if side < 0 else right) + walk
            strip = _uniform(rng, style.terrain_strip_width_m)
            rgb = _jitter(rng, style.terrain_color, style.instance_color_std)
            canvas.polygon(cam.project(_ground(side * edge, side * (edge - strip), z0, z_inf)), rgb, TERRAIN)
    road_rgb = _jitter(rng, style.road_color, style.instance_color_std / 2)
    canvas.polygon(cam.project(_ground(-left, right, z0, z_inf)), road_rgb, ROAD)
    # dashed centre line between the camera's lane and the oncoming lane
    mark_rgb = _jitter(rng, style.lane_marking_color, style.instance_color_std)
    centre, half = -style.lane_width_m / 2, style.lane_marking_width_m / 2
    if left > style.lane_width_m:
        z = z0 + rng.uniform(0, style.lane_dash_period_m)
        while z < style.row_end_depth_m:
            canvas.paint(cam.project(_ground(centre - half, centre + half, z, z + style.lane_dash_length_m)), mark_rgb)
            z += style.lane_dash_period_m


def _draw_facade(rng: np.random.Generator, canvas: _Canvas, cam: _Camera, X: float, z0: float, z1: float,
                 height_m: float, shade: float, style: SceneStyle) -> None:
    """One building: a facade quad in the plane X with a grid of darker windows."""
    facade = _pick(rng, style.facade_styles)
    wall = _scale(_jitter(rng, facade.wall, style.instance_color_std), shade)
    window = _scale(_jitter(rng, facade.window, style.instance_color_std / 2), shade)
    canvas.polygon(cam.project(_face_x(X, 0.0, height_m, z0, z1)), wall, BUILDING)
    if cam.px(facade.bay_width_m, z0) * abs(X) / z0 < 1.0:  # even the nearest bay is under a pixel
        return
    window_w = facade.bay_width_m * facade.window_width_frac
    window_h = style.floor_height_m * facade.window_height_frac
    sill = (style.floor_height_m - window_h) / 2
    bays = np.arange(z0 + facade.bay_width_m / 2, z1 - window_w / 2, facade.bay_width_m)
    floors = np.arange(0.0, height_m - style.floor_height_m * 0.5, style.floor_height_m)
    for z in bays:
        za, zb = z - window_w / 2, z + window_w / 2
        if abs(cam.x(X, za) - cam.x(X, zb)) < 1.0:
            break  # windows only shrink with depth
        for floor in floors:
            canvas.paint(cam.project(_face_x(X, floor + sill, floor + sill + window_h, za, zb)), window)


def _draw_gap(rng: np.random.Generator, canvas: _Canvas, cam: _Camera, X: float, z0: float, z1: float,
              shade: float, style: SceneStyle) -> None:
    """A gap in the building row: a lawn with trees in front of a set-back building."""
    setback = X + np.sign(X) * _uniform(rng, style.gap_setback_m)
    # the part of the ground plane and of the set-back facade seen through the opening [z0, z1] in plane X
    z0_back, z1_back = z0 * setback / X, z1 * setback / X
    lawn = [(X, 0.0, z0), (X, 0.0, z1), (setback, 0.0, z1_back), (setback, 0.0, z0_back)]
    canvas.polygon(cam.project(lawn), _jitter(rng, style.terrain_color, style.instance_color_std), TERRAIN)
    _draw_facade(rng, canvas, cam, setback, z0_back, z1_back, _uniform(rng, style.building_height_m), shade, style)
    for zt in np.arange(z1 - 2.0, z0, -style.gap_tree_spacing_m):
        _draw_tree(rng, canvas, cam, X + np.sign(X) * 2.5, float(zt), style)


def _draw_building_rows(rng: np.random.Generator, canvas: _Canvas, cam: _Camera, street: _Street,
                        style: SceneStyle) -> None:
    """A row of facades on each side of the street, far to near; gaps show grass and trees."""
    for side in (-1, 1):
        X = street.facade_x(side)
        shade = _uniform(rng, style.facade_shade)
        segments, z = [], cam.bottom_depth * 0.3
        while z < style.row_end_depth_m:
            length = _uniform(rng, style.building_length_m)
            is_gap = rng.random() < style.building_gap_prob and z > cam.bottom_depth
            segments.append((z, z + length, is_gap))
            z += length
        segments.append((z, 1e5, False))  # the far end of the row as one block
        for z0, z1, is_gap in reversed(segments):
            if is_gap:
                _draw_gap(rng, canvas, cam, X, z0, z1, shade, style)
            else:
                _draw_facade(rng, canvas, cam, X, z0, z1, _uniform(rng, style.building_height_m), shade, style)


def _draw_tree(rng: np.random.Generator, canvas: _Canvas, cam: _Camera, X: float, z: float,
               style: SceneStyle) -> None:
    """A tree: brown trunk and a canopy of green blobs (all labelled vegetation, as in Cityscapes)."""
    height = _uniform(rng, style.tree_height_m)
    radius = _uniform(rng, style.canopy_radius_m)
    half = max(cam.px(0.15, z), 0.5)
    trunk_rgb = _jitter(rng, style.trunk_color, style.instance_color_std)
    canvas.rectangle((cam.x(X, z) - half, cam.y(0.0, z), cam.x(X, z) + half, cam.y(height - radius, z)),
                     trunk_rgb, VEGETATION)
    foliage = _jitter(rng, _pick(rng, style.foliage_colors), style.instance_color_std)
    for _ in range(_count(rng, style.blobs_per_canopy)):
        bx = X + rng.uniform(-0.6, 0.6) * radius
        by = height - radius + rng.uniform(-0.4, 0.5) * radius
        r = cam.px(radius * rng.uniform(0.55, 0.85), z)
        cx, cy = cam.x(bx, z), cam.y(by, z)
        rgb = _scale(foliage, _uniform(rng, style.foliage_shade))
        canvas.ellipse((cx - r, cy - r * rng.uniform(0.8, 1.0), cx + r, cy + r), rgb, VEGETATION)


def _draw_car(rng: np.random.Generator, canvas: _Canvas, cam: _Camera, X: float, z: float,
              style: SceneStyle) -> None:
    """A car seen from behind: body box (side face if off-axis), glass, tyres, lights; all `car`."""
    paint = _pick(rng, style.car_paints)
    body = _jitter(rng, paint.rgb, style.instance_color_std)
    glass = _jitter(rng, style.car_glass_color, style.instance_color_std / 2)
    width = _uniform(rng, style.car_width_m)
    length = _uniform(rng, style.car_length_m)
    height = _uniform(rng, style.car_height_m)
    # body proportions of a hatchback: lower body up to the belt line, glass cabin above it
    half, belt, clearance, tyre_r = width / 2, 0.58 * height, 0.22, 0.33
    cabin_half, cabin_z0, cabin_z1 = 0.86 * half, z + 0.9, z + length - 1.0
    canvas.paint(cam.project(_ground(X - half - 0.1, X + half + 0.1, z - 0.2, z + length)), style.car_shadow_color)
    if abs(X) > half:  # the side facing the camera is visible only when the car is off the camera axis
        side = X - half if X > 0 else X + half
        cabin_side = X - cabin_half if X > 0 else X + cabin_half
        canvas.polygon(cam.project(_face_x(side, clearance, belt, z, z + length)), _scale(body, 0.82), CAR)
        for wz in (z + 0.75, z + length - 0.75):  # wheels, foreshortened along the side
            rx, ry = cam.px(tyre_r, wz) * abs(X) / wz, cam.px(tyre_r, wz)
            cx, cy = cam.x(side, wz), cam.y(tyre_r, wz)
            canvas.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), style.car_tyre_color, CAR)
        side_window = [(side, belt, cabin_z0 - 0.3), (side, belt, cabin_z1 + 0.3),
                       (cabin_side, height, cabin_z1), (cabin_side, height, cabin_z0)]
        canvas.polygon(cam.project(side_window), glass, CAR)
    # rear tyres, boot lid (seen from above), rear window, roof, then the rear face in front of all
    tyre_z = z + 0.3
    for tx in (X - half + 0.05, X + half - 0.32):
        tyre = (cam.x(tx, tyre_z), cam.y(0.0, tyre_z), cam.x(tx + 0.27, tyre_z), cam.y(clearance + 0.1, tyre_z))
        canvas.rectangle(tyre, style.car_tyre_color, CAR)
    if belt < cam.height_m:
        canvas.polygon(cam.project(_ground(X - half, X + half, z, cabin_z0, Y=belt)), _scale(body, 1.08), CAR)
    rear_window = [(X - half, belt, cabin_z0), (X + half, belt, cabin_z0),
                   (X + cabin_half, height, cabin_z0 + 0.5), (X - cabin_half, height, cabin_z0 + 0.5)]
    canvas.polygon(cam.project(rear_window), glass, CAR)
    if height < cam.height_m:
        roof = _ground(X - cabin_half, X + cabin_half, cabin_z0 + 0.5, cabin_z1, Y=height)
        canvas.polygon(cam.project(roof), _scale(body, 1.12), CAR)
    canvas.polygon(cam.project(_face_z(X - half, X + half, clearance, belt, z)), body, CAR)
    light_w, light_top = 0.28, belt - 0.12
    for lx in (X - half + 0.05, X + half - 0.05 - light_w):
        light = _face_z(lx, lx + light_w, light_top - 0.12, light_top, z)
        canvas.paint(cam.project(light), style.car_light_color)


def _draw_person(rng: np.random.Generator, canvas: _Canvas, cam: _Camera, X: float, z: float,
                 style: SceneStyle) -> None:
    """A pedestrian: legs, torso and head in body proportions, sized by perspective."""
    tall = cam.px(_uniform(rng, style.person_height_m), z)
    foot_x, foot_y = cam.x(X, z), cam.y(0.0, z)
    shirt = _jitter(rng, _pick(rng, style.shirt_colors), style.instance_color_std)
    trousers = _jitter(rng, _pick(rng, style.trouser_colors), style.instance_color_std)
    skin = _jitter(rng, _pick(rng, style.skin_colors), style.instance_color_std / 2)
    # proportions as fractions of the body height; max() keeps limbs at least a pixel wide
    leg_w, hip_y, neck_y = max(0.075 * tall, 0.5), foot_y - 0.47 * tall, foot_y - 0.82 * tall
    inner = 0.02 * tall + rng.uniform(0.0, 0.06) * tall  # half the gap between the legs (stride)
    canvas.rectangle((foot_x - inner - leg_w, foot_y, foot_x - inner, hip_y), trousers, PERSON)
    canvas.rectangle((foot_x + inner, foot_y, foot_x + inner + leg_w, hip_y), trousers, PERSON)
    shoulder = max(0.13 * tall, 1.0)
    canvas.rectangle((foot_x - shoulder, hip_y + 0.04 * tall, foot_x + shoulder, neck_y), shirt, PERSON)
    head = max(0.065 * tall, 0.75)
    canvas.ellipse((foot_x - head, neck_y - 2.6 * head, foot_x + head, neck_y + 0.2 * head), skin, PERSON)


def _draw_pole(rng: np.random.Generator, canvas: _Canvas, cam: _Camera, X: float, z: float,
               style: SceneStyle) -> None:
    """A thin vertical pole, with a traffic sign (rim + coloured face) on top with probability sign_prob."""
    height = _uniform(rng, style.pole_height_m)
    half = max(cam.px(style.pole_width_m / 2, z), 0.5)
    x = cam.x(X, z)
    pole_rgb = _jitter(rng, style.pole_color, style.instance_color_std)
    canvas.rectangle((x - half, cam.y(0.0, z), x + half, cam.y(height, z)), pole_rgb, POLE)
    if rng.random() >= style.sign_prob:
        return
    radius = max(cam.px(_uniform(rng, style.sign_size_m) / 2, z), 1.5)
    cy = cam.y(height, z) - radius * 0.8
    box = (x - radius, cy - radius, x + radius, cy + radius)
    face = _jitter(rng, _pick(rng, style.sign_colors).rgb, style.instance_color_std)
    inner = (x - 0.7 * radius, cy - 0.7 * radius, x + 0.7 * radius, cy + 0.7 * radius)
    if rng.random() < style.round_sign_prob:
        canvas.ellipse(box, style.sign_rim_color, TRAFFIC_SIGN)
        canvas.ellipse(inner, face, TRAFFIC_SIGN)
    else:  # square sign
        canvas.rectangle(box, style.sign_rim_color, TRAFFIC_SIGN)
        canvas.rectangle(inner, face, TRAFFIC_SIGN)


def _place_street_objects(rng: np.random.Generator, cam: _Camera, street: _Street, style: SceneStyle) -> list:
    """Sample cars, people, poles and street trees as (depth, draw function, X) in world coordinates."""
    left, right = street.left_m, street.right_m
    objects = []

    def depth(bounds: Range, X: float) -> float:
        # in front of the bottom edge and far enough out that the object is (mostly) inside the image
        low = max(bounds[0], cam.bottom_depth * 1.15, cam.visible_depth(X + math.copysign(0.5, X)) * 1.05)
        return float(rng.uniform(low, max(bounds[1], low + 1.0)))

    # cars: own lane, oncoming lane, and parking lanes along the curbs when the road is wide enough
    lanes = [0.0]
    if left > style.lane_width_m + 0.3:
        lanes.append(-style.lane_width_m)
    if left > style.lane_width_m * 1.5 + 2 * style.parking_offset_m:
        lanes.append(-left + style.parking_offset_m)
    if right > style.lane_width_m / 2 + style.parking_offset_m + 0.1:
        lanes.append(right - style.parking_offset_m)
    taken: list[tuple[float, float]] = []
    for _ in range(_count(rng, style.cars_per_scene)):
        for _attempt in range(8):
            X = lanes[int(rng.integers(len(lanes)))]
            z = depth(style.car_depth_m, X)
            if all(X != tx or abs(z - tz) >= style.min_car_spacing_m for tx, tz in taken):
                taken.append((X, z))
                objects.append((z, _draw_car, X))
                break
    # people, poles and trees stand on the sidewalks
    for count, draw, sidewalk_pos, bounds in (
        (style.people_per_scene, _draw_person, style.person_sidewalk_pos, style.person_depth_m),
        (style.poles_per_scene, _draw_pole, style.pole_sidewalk_pos, style.pole_depth_m),
        (style.trees_per_scene, _draw_tree, style.tree_sidewalk_pos, style.tree_depth_m),
    ):
        for _ in range(_count(rng, count)):
            side = -1 if rng.random() < 0.5 else 1
            curb, walk = (left, street.walk_left_m) if side < 0 else (right, street.walk_right_m)
            X = side * (curb + walk * _uniform(rng, sidewalk_pos))
            objects.append((depth(bounds, X), draw, X))
    return objects


def _draw_ego_hood(rng: np.random.Generator, canvas: _Canvas, cam: _Camera, style: SceneStyle) -> None:
    """The ego-vehicle bonnet along the bottom edge, as in real Cityscapes (a void class)."""
    hood = _uniform(rng, style.ego_hood_frac) * cam.height
    rgb = _jitter(rng, style.ego_hood_color, style.instance_color_std / 2)
    canvas.ellipse((-0.25 * cam.width, cam.height - hood, 1.25 * cam.width, cam.height + 4 * hood), rgb, EGO_VEHICLE)


def render_scene(rng: np.random.Generator, size_hw: tuple[int, int],
                 style: SceneStyle = DEFAULT_STYLE) -> tuple[np.ndarray, np.ndarray]:
    """Render one street scene; returns (image uint8 HxWx3 RGB, label_ids uint8 HxW Cityscapes labelIds)."""
    height, width = size_hw
    cam = _Camera(
        focal_px=style.focal_length_frac * width,
        height_m=style.camera_height_m,
        vx=_uniform(rng, style.vanishing_x_frac) * width,
        hy=_uniform(rng, style.horizon_frac) * height,
        width=width,
        height=height,
    )
    street = _Street(
        left_m=_uniform(rng, style.road_half_width_left_m),
        right_m=_uniform(rng, style.road_half_width_right_m),
        walk_left_m=_uniform(rng, style.sidewalk_width_m),
        walk_right_m=_uniform(rng, style.sidewalk_width_m),
    )
    sky, mode = _draw_sky(rng, height, width, cam.hy, style)
    canvas = _Canvas(sky)
    _draw_clouds(rng, canvas, cam, mode, style)
    _draw_skyline(rng, canvas, cam, style)
    _draw_ground(rng, canvas, cam, street, style)
    _draw_building_rows(rng, canvas, cam, street, style)
    objects = _place_street_objects(rng, cam, street, style)
    for z, draw, X in sorted(objects, key=lambda item: -item[0]):  # painter's order: far to near
        draw(rng, canvas, cam, X, z, style)
    _draw_ego_hood(rng, canvas, cam, style)

    image = np.asarray(canvas.image, dtype=np.float32) * _uniform(rng, style.illumination)
    image += rng.standard_normal(image.shape, dtype=np.float32) * style.pixel_noise_std
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return image, np.asarray(canvas.label, dtype=np.uint8).copy()


def colorize_label_ids(label_ids: np.ndarray) -> np.ndarray:
    """Official Cityscapes colour of each labelId (the `*_gtFine_color.png` content), (H, W, 3) uint8."""
    return _ID_TO_COLOR[label_ids]


def city_names(split: str, num_cities: int) -> list[str]:
    """The synthetic cities of a split (train and val cities differ, as in real Cityscapes)."""
    pool = TRAIN_CITIES if split == "train" else VAL_CITIES
    if not 1 <= num_cities <= len(pool):
        raise ValueError(f"num_cities must be in 1..{len(pool)} for split {split!r}, got {num_cities}")
    return [CITY_PREFIX + name for name in pool[:num_cities]]


def generate_synthetic_cityscapes(root: Path, *, seed: int, num_train: int, num_val: int,
                                  image_size_hw: tuple[int, int], num_cities: int = 2,
                                  style: SceneStyle = DEFAULT_STYLE,
                                  progress: Callable[[int], None] | None = None) -> dict:
    """Write a synthetic dataset in the official Cityscapes layout under `root`; returns the spec.

    Image i of split s depends only on (seed, s, i), so the output is reproducible byte for byte.
    """
    root = Path(root)
    height, width = image_size_hw
    spec = {
        "seed": seed,
        "num_train": num_train,
        "num_val": num_val,
        "image_size_hw": [height, width],
        "num_cities": num_cities,
        "cities": {split: city_names(split, num_cities) for split in SPLITS},
        "style": dataclasses.asdict(style),
    }
    for split_index, (split, count) in enumerate(zip(SPLITS, (num_train, num_val))):
        cities = spec["cities"][split]
        for i in range(count):
            city_index = i * len(cities) // count  # contiguous blocks of images per city
            first_in_city = (city_index * count + len(cities) - 1) // len(cities)
            sequence = i - first_in_city
            stem = f"{cities[city_index]}_{sequence:06d}_{ANNOTATED_FRAME:06d}"
            image, label_ids = render_scene(np.random.default_rng([seed, split_index, i]), (height, width), style)
            image_dir = root / "leftImg8bit" / split / cities[city_index]
            label_dir = root / "gtFine" / split / cities[city_index]
            image_dir.mkdir(parents=True, exist_ok=True)
            label_dir.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(image_dir / f"{stem}_leftImg8bit.png")
            Image.fromarray(label_ids).save(label_dir / f"{stem}_gtFine_labelIds.png")
            Image.fromarray(colorize_label_ids(label_ids)).save(label_dir / f"{stem}_gtFine_color.png")
            if progress is not None:
                progress(1)
    root.mkdir(parents=True, exist_ok=True)
    text = json.dumps(spec, indent=2)
    (root / SPEC_FILENAME).write_text(text + "\n")
    return json.loads(text)  # exactly what is on disk (tuples become lists)
