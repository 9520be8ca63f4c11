"""Cityscapes from the official archives' layout (docs/facts.md §4), proven on a miniature tree."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cityscapes_fixture import ALL_IDS, write_cityscapes
from PIL import Image
from typer.testing import CliRunner

from crn_repro.cli import app
from crn_repro.datasets import PreparedSplit
from crn_repro.errors import CrnError
from crn_repro.labels import CHANNEL_NAMES, ID_TO_CHANNEL, LABELS, NAME_TO_ID
from crn_repro.params import parse_params
from crn_repro.prepare import prepare

runner = CliRunner()


def cityscapes_raw(tiny_raw, root, size_hw=(32, 64), **cityscapes):
    tiny_raw["paths"]["raw"] = str(root)
    tiny_raw["data"].update(dataset="cityscapes", image_size_hw=list(size_hw))
    tiny_raw["cityscapes"].update({"root": str(root), "expected_train": 5, "expected_val": 3, "frame_size_hw": [32, 64], **cityscapes})
    return tiny_raw


def test_every_label_id_maps_through_the_official_table(tmp_path, tiny_raw):
    stems = write_cityscapes(tmp_path / "cs")
    params = parse_params(cityscapes_raw(tiny_raw, tmp_path / "cs"))
    meta = prepare(params)
    assert meta["channel_names"] == list(CHANNEL_NAMES) and meta["labels"] == "label_ids"
    assert {s: meta["splits"][s]["count"] for s in ("train", "val")} == {"train": 5, "val": 3}
    for split in ("train", "val"):
        prepared = PreparedSplit(params.paths.prepared, split)
        assert prepared.names == stems[split]  # sorted, cities mixed, the test split ignored
        seen = set()
        for i, stem in enumerate(prepared.names):
            city = stem.split("_")[0]
            ids = np.asarray(Image.open(tmp_path / "cs/gtFine" / split / city / f"{stem}_gtFine_labelIds.png"))
            seen |= set(np.unique(ids).tolist())
            assert np.array_equal(prepared.labels[i], ID_TO_CHANNEL[ids])  # native size: exact
            image = np.asarray(Image.open(tmp_path / "cs/leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"))
            assert np.array_equal(prepared.images[i], image)
        assert seen == set(ALL_IDS.tolist())  # every labelId 0..33 went through the table
        freq = meta["splits"][split]["class_pixel_frequency"]
        assert len(freq) == 20 and sum(freq) == pytest.approx(1, abs=1e-4) and all(f > 0 for f in freq)


def test_colour_labels_follow_the_release(tmp_path, tiny_raw):
    """gtFine_color matched by colour: the same 20 channels, except that polegroup shares pole's colour."""
    write_cityscapes(tmp_path / "cs")
    raw = cityscapes_raw(tiny_raw, tmp_path / "cs")
    by_ids = PreparedSplit(prepare(parse_params(raw)) and raw["paths"]["prepared"], "train").labels.copy()
    raw["cityscapes"]["labels"] = "color"
    raw["paths"]["prepared"] += "-color"
    meta = prepare(parse_params(raw))
    by_color = PreparedSplit(raw["paths"]["prepared"], "train")
    assert meta["labels"] == "color"
    differ = by_ids != by_color.labels
    assert differ.any()
    assert set(np.unique(by_ids[differ]).tolist()) == {19}  # void by the table ...
    assert set(np.unique(by_color.labels[differ]).tolist()) == {CHANNEL_NAMES.index("pole")}  # ... pole by colour
    names = by_color.names
    for i, stem in enumerate(names):
        ids = np.asarray(Image.open(tmp_path / "cs/gtFine/train" / stem.split("_")[0] / f"{stem}_gtFine_labelIds.png"))
        assert np.array_equal(differ[i], ids == NAME_TO_ID["polegroup"])


@pytest.mark.parametrize("size_hw", [(32, 64), (16, 32)])
def test_label_ids_survive_the_cache(tmp_path, tiny_raw, size_hw):
    """cityscapes.keep_label_ids keeps the official labelIds (nearest-resized) and their colours; the
    rest of the cache is byte for byte what it is without them."""
    root = tmp_path / "cs"
    write_cityscapes(root)
    raw = cityscapes_raw(tiny_raw, root, size_hw=size_hw)
    without = prepare(parse_params(raw))
    plain = {f: (tmp_path / "data/prepared" / f).read_bytes() for f in ("train/images.npy", "train/labels.npy", "val/labels.npy")}
    assert not list((tmp_path / "data/prepared").glob("*/label_ids.npy"))
    raw["cityscapes"]["keep_label_ids"] = True
    meta = prepare(parse_params(raw))
    assert meta["label_id_colors"] == [list(label.color) for label in LABELS]  # index = labelId
    assert {k: v for k, v in meta.items() if k != "label_id_colors"} == without
    assert all((tmp_path / "data/prepared" / f).read_bytes() == b for f, b in plain.items())
    for split in ("train", "val"):
        prepared = PreparedSplit(raw["paths"]["prepared"], split)
        assert prepared.label_ids.dtype == np.uint8 and prepared.label_ids.shape == prepared.labels.shape
        for i, stem in enumerate(prepared.names):
            ids = Image.open(tmp_path / "cs/gtFine" / split / stem.split("_")[0] / f"{stem}_gtFine_labelIds.png")
            expected = np.asarray(ids.resize(size_hw[::-1], Image.NEAREST))
            assert np.array_equal(prepared.label_ids[i], expected)
            assert np.array_equal(prepared.labels[i], ID_TO_CHANNEL[expected])


def test_label_ids_from_colour_labels_are_canonical(tmp_path, tiny_raw):
    """Read from gtFine_color, ids that share a colour become one canonical id: polegroup -> pole,
    ego vehicle / rectification border / out of roi / static -> unlabeled; every other id is exact."""
    root = tmp_path / "cs"
    write_cityscapes(root)
    meta = prepare(parse_params(cityscapes_raw(tiny_raw, root, labels="color", keep_label_ids=True)))
    assert meta["labels"] == "color"
    prepared = PreparedSplit(tiny_raw["paths"]["prepared"], "train")
    canonical = np.arange(34, dtype=np.uint8)
    canonical[[1, 2, 3, 4]] = NAME_TO_ID["unlabeled"]
    canonical[NAME_TO_ID["polegroup"]] = NAME_TO_ID["pole"]
    for i, stem in enumerate(prepared.names):
        ids = np.asarray(Image.open(tmp_path / "cs/gtFine/train" / stem.split("_")[0] / f"{stem}_gtFine_labelIds.png"))
        assert np.array_equal(prepared.label_ids[i], canonical[ids])
        assert np.array_equal(prepared.labels[i], ID_TO_CHANNEL[prepared.label_ids[i]])


def test_resize_is_bicubic_for_images_and_nearest_for_labels(tmp_path, tiny_raw):
    write_cityscapes(tmp_path / "cs")
    params = parse_params(cityscapes_raw(tiny_raw, tmp_path / "cs", size_hw=(16, 32)))
    prepare(params)
    val = PreparedSplit(params.paths.prepared, "val")
    stem = val.names[0]
    city = stem.split("_")[0]
    image = Image.open(tmp_path / "cs/leftImg8bit/val" / city / f"{stem}_leftImg8bit.png")
    ids = Image.open(tmp_path / "cs/gtFine/val" / city / f"{stem}_gtFine_labelIds.png")
    assert np.array_equal(val.images[0], np.asarray(image.resize((32, 16), Image.BICUBIC)))
    assert np.array_equal(val.labels[0], ID_TO_CHANNEL[np.asarray(ids.resize((32, 16), Image.NEAREST))])
    layout, _ = val.batch([0])
    assert layout.shape == (1, 20, 16, 32) and bool((layout.sum(1) == 1).all())


def _write(tmp_path, raw):
    import yaml

    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def _break_unpaired(root):
    next(root.glob("gtFine/train/bochum/*_labelIds.png")).unlink()
    return "no label file"


def _break_corrupt(root):
    path = next(root.glob("leftImg8bit/val/lindau/*.png"))
    path.write_bytes(path.read_bytes()[:60])
    return "not a readable PNG"


def _break_label_id(root):
    path = next(root.glob("gtFine/train/zurich/*_labelIds.png"))
    ids = np.asarray(Image.open(path)).copy()
    ids[0, 0] = 34
    Image.fromarray(ids, "L").save(path)
    return r"label ids [34] are not Cityscapes labelIds"


def _break_size(root):
    path = next(root.glob("leftImg8bit/train/aachen/*.png"))
    Image.open(path).resize((32, 16)).save(path)
    return "16x32 pixels, expected 32x64"


def _break_count(root):
    write_cityscapes(root, {"train": {"ulm": 1}}, with_test=False, seed=1)
    return "6 frames, expected 5"


def _break_split(root):
    import shutil

    shutil.rmtree(root / "gtFine/val")
    return "split folder missing"


def _break_city(root):
    path = next(root.glob("leftImg8bit/train/aachen/*.png"))
    path.rename(path.with_name(path.name.replace("aachen", "bonn")))
    return "does not start with its city folder"


@pytest.mark.parametrize(
    "damage", [_break_unpaired, _break_corrupt, _break_label_id, _break_size, _break_count, _break_split, _break_city]
)
def test_bad_input_is_one_line_error_and_keeps_the_cache(tmp_path, tiny_raw, damage):
    root = tmp_path / "cs"
    write_cityscapes(root)
    params_file = _write(tmp_path, cityscapes_raw(tiny_raw, root))
    assert runner.invoke(app, ["--params", params_file, "prepare"]).exit_code == 0
    cache = tmp_path / "data/prepared/train/images.npy"
    before = cache.read_bytes()
    expected = damage(root)
    result = runner.invoke(app, ["--params", params_file, "prepare"])
    assert result.exit_code == 1
    last = result.output.strip().splitlines()[-1]  # (progress bars above it)
    assert last.startswith("error: ") and expected in last and result.output.count("error:") == 1, result.output
    assert str(root) in last  # names the file or folder
    assert cache.read_bytes() == before
    assert not (tmp_path / "data/prepared.partial").exists()


def test_count_check_off_and_limits(tmp_path, tiny_raw):
    write_cityscapes(tmp_path / "cs")
    raw = cityscapes_raw(tiny_raw, tmp_path / "cs", expected_train=None, expected_val=None, frame_size_hw=None)
    raw["data"]["max_train_images"] = 2
    meta = prepare(parse_params(raw))
    assert meta["splits"]["train"]["count"] == 2 and meta["splits"]["val"]["count"] == 3
    raw["cityscapes"]["expected_train"] = 2975  # the full split is checked even when only part is used
    with pytest.raises(CrnError, match="5 frames, expected 2975"):
        prepare(parse_params(raw))
    json.loads((tmp_path / "data/prepared/meta.json").read_text())  # the old cache is still whole
