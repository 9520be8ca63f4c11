"""The Cityscapes label table (crn_repro/labels.py) pinned to the official one, written out here
independently (cityscapesScripts' labels table, docs/facts.md §4), so that a slip in the package's table
(a swapped trainId, a void class mapped to a train class) fails a test instead of every test
agreeing with the package's own table."""

from __future__ import annotations

import numpy as np
import pytest

from crn_repro.labels import (
    CHANNEL_COLORS,
    CHANNEL_NAMES,
    COLOR_TO_CHANNEL,
    ID_TO_CHANNEL,
    LABELS,
    colors_to_channels,
    label_ids_to_channels,
)

# labelId 0..33 -> trainId (255 = void), as in the official table
OFFICIAL_TRAIN_IDS = (
    255, 255, 255, 255, 255, 255, 255, 0, 1, 255,  # unlabeled .. parking
    255, 2, 3, 4, 255, 255, 255, 5, 255, 6,  # rail track .. traffic light
    7, 8, 9, 10, 11, 12, 13, 14, 15, 255,  # traffic sign .. caravan
    255, 16, 17, 18,  # trailer .. bicycle
)
OFFICIAL_TRAIN_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)
OFFICIAL_TRAIN_COLORS = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
)
# colours that only void ids have in the official gtFine_color images
OFFICIAL_VOID_COLORS = (
    (0, 0, 0), (111, 74, 0), (81, 0, 81), (250, 170, 160), (230, 150, 140), (180, 165, 180),
    (150, 100, 100), (150, 120, 90), (0, 0, 90), (0, 0, 110),
)


def test_table_matches_the_official_ids_train_ids_and_colours():
    assert [label.id for label in LABELS] == list(range(34))
    assert tuple(label.train_id for label in LABELS) == OFFICIAL_TRAIN_IDS
    assert CHANNEL_NAMES == OFFICIAL_TRAIN_CLASSES + ("void",)
    assert [tuple(c) for c in CHANNEL_COLORS.tolist()] == list(OFFICIAL_TRAIN_COLORS) + [(0, 0, 0)]


def test_every_label_id_maps_to_its_official_channel():
    ids = np.arange(34, dtype=np.uint8).reshape(2, 17)
    expected = np.array([19 if t == 255 else t for t in OFFICIAL_TRAIN_IDS], dtype=np.uint8).reshape(2, 17)
    np.testing.assert_array_equal(label_ids_to_channels(ids), expected)
    assert (ID_TO_CHANNEL[34:] == 255).all()  # anything else is unknown, not void


def test_wide_label_ids_map_like_8_bit_ones_and_never_wrap():
    """16-bit label images (and int arrays) map as uint8 ones do; an id above 255 is unknown, not the
    id it would wrap onto (263 would be road's 7 as uint8)."""
    ids = np.arange(34).reshape(2, 17)
    for dtype in (np.uint16, np.int32, np.int64):
        np.testing.assert_array_equal(label_ids_to_channels(ids.astype(dtype)), label_ids_to_channels(ids.astype(np.uint8)))
    for bad, listed in ((np.array([7, 263], np.uint16), "[263]"), (np.array([7, -1], np.int64), "[-1]"),
                        (np.arange(30, 300, dtype=np.int32), "[34, 35, 36, 37, 38, ...]")):
        with pytest.raises(ValueError) as error:
            label_ids_to_channels(bad)
        assert f"label ids {listed} are not Cityscapes labelIds" in str(error.value)


def test_colour_matching_follows_the_official_colours():
    train = np.array(OFFICIAL_TRAIN_COLORS, dtype=np.uint8).reshape(1, 19, 3)
    np.testing.assert_array_equal(colors_to_channels(train), np.arange(19, dtype=np.uint8).reshape(1, 19))
    void = np.array(OFFICIAL_VOID_COLORS, dtype=np.uint8).reshape(1, -1, 3)
    assert (colors_to_channels(void) == 19).all()
    assert set(COLOR_TO_CHANNEL) == set(OFFICIAL_TRAIN_COLORS) | set(OFFICIAL_VOID_COLORS)
