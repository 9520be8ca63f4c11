"""Cityscapes label table and the 20-channel layout encoding (docs/facts.md §4).

The official Cityscapes ``labelIds`` run 0..33 (license plate, id -1, is never drawn into the
label PNGs). The 19 standard train classes become layout channels 0..18; every other id is void,
channel 19, which the layout encodes as 1 - sum of the others. The official colour label map
(``gtFine_color``) is a function of the ids through the same table (``ID_COLORS``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np


class Label(NamedTuple):
    name: str
    id: int
    train_id: int  # 0..18, or 255 for void
    color: tuple[int, int, int]


# The official table (cityscapesScripts helpers/labels.py), ids 0..33.
LABELS: tuple[Label, ...] = (
    Label("unlabeled", 0, 255, (0, 0, 0)),
    Label("ego vehicle", 1, 255, (0, 0, 0)),
    Label("rectification border", 2, 255, (0, 0, 0)),
    Label("out of roi", 3, 255, (0, 0, 0)),
    Label("static", 4, 255, (0, 0, 0)),
    Label("dynamic", 5, 255, (111, 74, 0)),
    Label("ground", 6, 255, (81, 0, 81)),
    Label("road", 7, 0, (128, 64, 128)),
    Label("sidewalk", 8, 1, (244, 35, 232)),
    Label("parking", 9, 255, (250, 170, 160)),
    Label("rail track", 10, 255, (230, 150, 140)),
    Label("building", 11, 2, (70, 70, 70)),
    Label("wall", 12, 3, (102, 102, 156)),
    Label("fence", 13, 4, (190, 153, 153)),
    Label("guard rail", 14, 255, (180, 165, 180)),
    Label("bridge", 15, 255, (150, 100, 100)),
    Label("tunnel", 16, 255, (150, 120, 90)),
    Label("pole", 17, 5, (153, 153, 153)),
    Label("polegroup", 18, 255, (153, 153, 153)),
    Label("traffic light", 19, 6, (250, 170, 30)),
    Label("traffic sign", 20, 7, (220, 220, 0)),
    Label("vegetation", 21, 8, (107, 142, 35)),
    Label("terrain", 22, 9, (152, 251, 152)),
    Label("sky", 23, 10, (70, 130, 180)),
    Label("person", 24, 11, (220, 20, 60)),
    Label("rider", 25, 12, (255, 0, 0)),
    Label("car", 26, 13, (0, 0, 142)),
    Label("truck", 27, 14, (0, 0, 70)),
    Label("bus", 28, 15, (0, 60, 100)),
    Label("caravan", 29, 255, (0, 0, 90)),
    Label("trailer", 30, 255, (0, 0, 110)),
    Label("train", 31, 16, (0, 80, 100)),
    Label("motorcycle", 32, 17, (0, 0, 230)),
    Label("bicycle", 33, 18, (119, 11, 32)),
)

NUM_TRAIN_CLASSES = 19
VOID_CHANNEL = NUM_TRAIN_CLASSES  # layout channel 19
NUM_LAYOUT_CHANNELS = NUM_TRAIN_CLASSES + 1  # c = 20
VOID_TRAIN_ID = 255

NAME_TO_ID = {label.name: label.id for label in LABELS}
CHANNEL_NAMES: tuple[str, ...] = tuple(
    [next(l.name for l in LABELS if l.train_id == t) for t in range(NUM_TRAIN_CLASSES)] + ["void"]
)
CHANNEL_COLORS = np.array(
    [next(l.color for l in LABELS if l.train_id == t) for t in range(NUM_TRAIN_CLASSES)] + [(0, 0, 0)],
    dtype=np.uint8,
)

# labelId -> layout channel (0..19); ids outside the table map to 255 (= unknown).
ID_TO_CHANNEL = np.full(256, 255, dtype=np.uint8)
for _label in LABELS:
    ID_TO_CHANNEL[_label.id] = VOID_CHANNEL if _label.train_id == VOID_TRAIN_ID else _label.train_id


def label_ids_to_channels(label_ids: np.ndarray) -> np.ndarray:
    """Map Cityscapes labelIds (any integer dtype: 8-bit, or the values of a 16-bit PNG) to layout
    channel indices 0..19 (19 = void), uint8 of the same shape.

    Raises ValueError listing (up to five of) the ids that are not in the Cityscapes table; an id
    outside 0..255 is one of them, never wrapped onto a valid id.
    """
    values = np.asarray(label_ids)
    if values.dtype == np.uint8:
        channels = ID_TO_CHANNEL[values]
    else:
        wide = values.astype(np.int64)
        channels = ID_TO_CHANNEL[np.where((wide >= 0) & (wide < len(ID_TO_CHANNEL)), wide, 255)]  # 255: unknown
    if (channels == 255).any():
        unknown = sorted(int(v) for v in np.unique(values[channels == 255]))
        listed = ", ".join(map(str, unknown[:5])) + (", ..." if len(unknown) > 5 else "")
        raise ValueError(f"label ids [{listed}] are not Cityscapes labelIds (valid: 0..33)")
    return channels


def colorize_channels(channels: np.ndarray, colors: np.ndarray = CHANNEL_COLORS) -> np.ndarray:
    """Colour a (H, W) channel-index map with a palette (default: the official Cityscapes one); returns (H, W, 3) uint8."""
    return np.asarray(colors, dtype=np.uint8)[channels]


# labelId -> its official colour (ids 0..33 in order): the colour of gtFine_color, void ids included
# (dynamic, ground, parking, ...: their own colours; unlabeled, ego vehicle, static, ...: black).
ID_COLORS = np.zeros((len(LABELS), 3), dtype=np.uint8)
for _label in LABELS:
    ID_COLORS[_label.id] = _label.color

# gtFine_color -> labelId, as the release read labels (docs/facts.md §4: it matched the colours of the
# colour label images). Some ids share a colour, so each colour maps to one canonical id: the id of
# its train class when it has one (polegroup -> pole, license plate -> car), else the lowest id
# (black -> unlabeled). Canonical ids reproduce the colour image exactly and give the same layout
# channel as any id of that colour would, except polegroup (void by the table, pole by colour).
COLOR_TO_ID: dict[tuple[int, int, int], int] = {}
for _label in LABELS:
    if _label.train_id != VOID_TRAIN_ID:
        COLOR_TO_ID[_label.color] = _label.id
for _label in LABELS:
    COLOR_TO_ID.setdefault(_label.color, _label.id)
COLOR_TO_CHANNEL: dict[tuple[int, int, int], int] = {c: int(ID_TO_CHANNEL[i]) for c, i in COLOR_TO_ID.items()}


def colors_to_label_ids(rgb: np.ndarray) -> np.ndarray:
    """Map a gtFine_color image (H, W, 3) uint8 to canonical labelIds (uint8) by exact colour match.

    Raises ValueError listing (up to five) colours that are not in the Cityscapes palette.
    """
    packed = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    keys = np.array([(r << 16) | (g << 8) | b for r, g, b in COLOR_TO_ID], dtype=np.int32)
    values = np.array(list(COLOR_TO_ID.values()), dtype=np.uint8)
    order = np.argsort(keys)
    keys, values = keys[order], values[order]
    position = np.clip(np.searchsorted(keys, packed), 0, len(keys) - 1)
    found = keys[position] == packed
    if not found.all():
        unknown = [tuple(int(v) for v in ((c >> 16) & 255, (c >> 8) & 255, c & 255)) for c in np.unique(packed[~found])[:5]]
        raise ValueError(f"colours {unknown} are not in the Cityscapes label palette")
    return values[position]


def colors_to_channels(rgb: np.ndarray) -> np.ndarray:
    """Map a gtFine_color image (H, W, 3) uint8 to layout channels 0..19 by exact colour match
    (through its canonical labelIds); raises ValueError for colours outside the palette."""
    return ID_TO_CHANNEL[colors_to_label_ids(rgb)]


@dataclass(frozen=True)
class LabelSpace:
    """The layout channels of a prepared dataset: class names (void last) and their display colours.

    Every dataset encodes its layout as one-hot channels with void as the last channel, so
    ``num_classes`` (c in the paper) and ``void_channel`` follow from the names.
    """

    names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]

    def __post_init__(self):
        if len(self.names) != len(self.colors) or len(self.names) < 2 or self.names[-1] != "void":
            raise ValueError("a label space needs one colour per class and 'void' as its last class")

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @property
    def void_channel(self) -> int:
        return len(self.names) - 1

    @property
    def palette(self) -> np.ndarray:
        return np.array(self.colors, dtype=np.uint8)

    def to_meta(self) -> dict:
        return {"channel_names": list(self.names), "channel_colors": [list(c) for c in self.colors]}

    @classmethod
    def from_meta(cls, meta: dict) -> "LabelSpace":
        return cls(tuple(meta["channel_names"]), tuple(tuple(int(v) for v in c) for c in meta["channel_colors"]))


CITYSCAPES_SPACE = LabelSpace(CHANNEL_NAMES, tuple(tuple(int(v) for v in c) for c in CHANNEL_COLORS.tolist()))
