"""Tests for the synthetic Cityscapes-layout street generator (crn_repro/synthetic.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from crn_repro.labels import LABELS, NAME_TO_ID, label_ids_to_channels
from crn_repro.synthetic import (
    DEFAULT_STYLE,
    SPEC_FILENAME,
    colorize_label_ids,
    generate_synthetic_cityscapes,
    render_scene,
)

SIZE_HW = (64, 128)
NUM_TRAIN, NUM_VAL = 5, 3
IMAGE_RE = re.compile(r"^(?P<city>[a-z]+)_(?P<seq>\d{6})_(?P<frame>\d{6})_leftImg8bit\.png$")
REQUIRED_CLASSES = ("sky", "road", "sidewalk", "building", "vegetation", "car", "person", "pole", "traffic sign")


def _generate(root: Path, seed: int, progress=None) -> dict:
    return generate_synthetic_cityscapes(root, seed=seed, num_train=NUM_TRAIN, num_val=NUM_VAL,
                                         image_size_hw=SIZE_HW, num_cities=2, progress=progress)


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, dict, int]:
    root = tmp_path_factory.mktemp("synthetic")
    steps = []
    spec = _generate(root, seed=3, progress=steps.append)
    return root, spec, sum(steps)


def test_same_seed_is_byte_identical_and_other_seed_differs(dataset, tmp_path):
    root, _, _ = dataset
    again = _generate(tmp_path / "again", seed=3)
    other = _generate(tmp_path / "other", seed=4)
    assert again == json.loads((root / SPEC_FILENAME).read_text())
    reference = _tree_bytes(root)
    assert _tree_bytes(tmp_path / "again") == reference
    other_files = _tree_bytes(tmp_path / "other")
    assert other_files.keys() == reference.keys()  # same names: they depend only on counts
    images = [name for name in reference if name.endswith("_leftImg8bit.png")]
    assert all(other_files[name] != reference[name] for name in images)
    assert other["seed"] == 4


def test_image_depends_only_on_seed_split_and_index(dataset, tmp_path):
    root, _, _ = dataset
    # fewer images and a different city count must not change image 0 of train or val
    generate_synthetic_cityscapes(tmp_path, seed=3, num_train=1, num_val=1, image_size_hw=SIZE_HW, num_cities=1)
    for split in ("train", "val"):
        first = sorted((root / "leftImg8bit" / split).rglob("*.png"))[0]
        alone = next((tmp_path / "leftImg8bit" / split).rglob("*.png"))
        assert alone.read_bytes() == first.read_bytes()


def test_cityscapes_folder_layout_and_file_names(dataset):
    root, spec, _ = dataset
    cities = {}
    for split, count in (("train", NUM_TRAIN), ("val", NUM_VAL)):
        images = sorted((root / "leftImg8bit" / split).glob("*/*.png"))
        assert len(images) == count
        cities[split] = {p.parent.name for p in images}
        for image_path in images:
            match = IMAGE_RE.match(image_path.name)
            assert match, image_path.name
            assert match["city"] == image_path.parent.name and match["city"].startswith("synth")
            stem = image_path.name.removesuffix("_leftImg8bit.png")
            label_dir = root / "gtFine" / split / image_path.parent.name
            assert (label_dir / f"{stem}_gtFine_labelIds.png").is_file()
            assert (label_dir / f"{stem}_gtFine_color.png").is_file()
        assert len(list((root / "gtFine" / split).glob("*/*"))) == 2 * count  # nothing else there
        assert cities[split] == set(spec["cities"][split])
    assert cities["train"] == {"synthaachen", "synthbonn"}
    assert cities["train"].isdisjoint(cities["val"])


def test_png_modes_sizes_and_colour_maps(dataset):
    root, _, _ = dataset
    height, width = SIZE_HW
    for image_path in sorted((root / "leftImg8bit").rglob("*.png")):
        stem = image_path.name.removesuffix("_leftImg8bit.png")
        label_dir = root / "gtFine" / image_path.parent.parent.name / image_path.parent.name
        image = Image.open(image_path)
        label = Image.open(label_dir / f"{stem}_gtFine_labelIds.png")
        color = Image.open(label_dir / f"{stem}_gtFine_color.png")
        assert (image.mode, label.mode, color.mode) == ("RGB", "L", "RGB")
        assert image.size == label.size == color.size == (width, height)
        label_ids = np.asarray(label)
        expected = {label_id: np.array(entry.color) for label_id, entry in ((l.id, l) for l in LABELS)}
        for label_id in np.unique(label_ids):
            assert (np.asarray(color)[label_ids == label_id] == expected[int(label_id)]).all()


def test_labels_are_valid_ids_and_cover_street_classes(dataset):
    root, _, _ = dataset
    valid = {label.id for label in LABELS}
    seen: set[int] = set()
    for path in sorted((root / "gtFine").rglob("*_gtFine_labelIds.png")):
        label_ids = np.asarray(Image.open(path))
        label_ids_to_channels(label_ids)  # raises on ids outside the table
        seen |= {int(v) for v in np.unique(label_ids)}
    assert seen <= valid
    missing = [name for name in REQUIRED_CLASSES if NAME_TO_ID[name] not in seen]
    assert not missing, f"classes never drawn: {missing}"


@pytest.mark.parametrize("size_hw", [(64, 128), (128, 256), (256, 512)])
def test_render_scene_shapes_and_dtypes(size_hw):
    image, label_ids = render_scene(np.random.default_rng(0), size_hw)
    assert image.shape == (*size_hw, 3) and image.dtype == np.uint8
    assert label_ids.shape == size_hw and label_ids.dtype == np.uint8
    # the scene is a street: sky on top, road at the centre just above the ego-vehicle hood
    assert label_ids[0, size_hw[1] // 2] in (NAME_TO_ID["sky"], NAME_TO_ID["building"])
    assert np.mean(label_ids == NAME_TO_ID["road"]) > 0.1


def test_cars_are_visible_at_the_smallest_size():
    rows = []
    for i in range(8):
        _, label_ids = render_scene(np.random.default_rng([5, 0, i]), (64, 128))
        rows.append(np.flatnonzero((label_ids == NAME_TO_ID["car"]).any(axis=1)).size)
    assert max(rows) >= 6  # at least one car several pixels tall


def test_car_colours_have_at_least_four_modes():
    paints = np.array([paint.rgb for paint in DEFAULT_STYLE.car_paints], dtype=np.float64)
    modes = set()
    for i in range(24):
        image, label_ids = render_scene(np.random.default_rng([11, 0, i]), (128, 256))
        components, count = ndimage.label(label_ids == NAME_TO_ID["car"])
        for k in range(1, count + 1):
            pixels = image[components == k].astype(np.float64)
            if len(pixels) < 60:
                continue
            # each pixel votes for its nearest paint; glass and tyres vote "black", the body wins
            nearest = np.argmin(((pixels[:, None, :] - paints[None]) ** 2).sum(-1), axis=1)
            votes = np.bincount(nearest, minlength=len(paints))
            modes.add(DEFAULT_STYLE.car_paints[int(votes.argmax())].name)
    assert len(modes) >= 4, modes


def test_sky_has_several_modes():
    blue_minus_red = []
    for i in range(16):
        image, label_ids = render_scene(np.random.default_rng([2, 0, i]), (64, 128))
        sky = image[:20][label_ids[:20] == NAME_TO_ID["sky"]].astype(np.float64)
        if len(sky) >= 20:
            blue_minus_red.append(np.median(sky[:, 2] - sky[:, 0]))
    assert max(blue_minus_red) > 80 and min(blue_minus_red) < 30  # clear blue and overcast/hazy skies


def test_spec_json_and_progress(dataset):
    root, spec, steps = dataset
    assert steps == NUM_TRAIN + NUM_VAL
    on_disk = json.loads((root / SPEC_FILENAME).read_text())
    assert on_disk == spec
    assert on_disk["seed"] == 3 and on_disk["num_train"] == NUM_TRAIN and on_disk["num_val"] == NUM_VAL
    assert on_disk["image_size_hw"] == list(SIZE_HW)
    assert [p["name"] for p in on_disk["style"]["car_paints"]] == [p.name for p in DEFAULT_STYLE.car_paints]
    assert len(on_disk["style"]["sky_modes"]) >= 2 and len(on_disk["style"]["facade_styles"]) >= 4


def test_colorize_label_ids_uses_official_colours():
    label_ids = np.array([[NAME_TO_ID["road"], NAME_TO_ID["car"]]], dtype=np.uint8)
    assert colorize_label_ids(label_ids).tolist() == [[[128, 64, 128], [0, 0, 142]]]


def test_too_many_cities_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="num_cities"):
        generate_synthetic_cityscapes(tmp_path, seed=0, num_train=1, num_val=1, image_size_hw=SIZE_HW, num_cities=99)
