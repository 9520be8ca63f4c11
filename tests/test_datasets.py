import json

import numpy as np
import pytest
import torch
from PIL import Image

from crn_repro.datasets import (
    PreparedSplit,
    channels_to_layout,
    find_pairs,
    image_to_tensor,
    load_pair,
    tensor_to_image,
)
from crn_repro.errors import CrnError
from crn_repro.labels import LABELS, label_ids_to_channels
from crn_repro.prepare import prepare


def write_tree(root, split="train", city="aachen", n=2, size=(32, 64), ids=None):
    """A miniature official Cityscapes tree: leftImg8bit + gtFine labelIds."""
    h, w = size
    rng = np.random.default_rng(0)
    ids = ids if ids is not None else [label.id for label in LABELS]
    for i in range(n):
        stem = f"{city}_{i:06d}_000019"
        img_dir, lbl_dir = root / "leftImg8bit" / split / city, root / "gtFine" / split / city
        img_dir.mkdir(parents=True, exist_ok=True)
        lbl_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(img_dir / f"{stem}_leftImg8bit.png")
        Image.fromarray(rng.choice(ids, (h, w)).astype(np.uint8), mode="L").save(lbl_dir / f"{stem}_gtFine_labelIds.png")


def test_every_label_id_maps_to_its_train_class_or_void():
    ids = np.array([label.id for label in LABELS], dtype=np.uint8)
    channels = label_ids_to_channels(ids)
    for label, channel in zip(LABELS, channels):
        assert channel == (19 if label.train_id == 255 else label.train_id), label.name
    assert sorted(set(channels.tolist())) == list(range(20))


def test_unknown_label_id_rejected():
    with pytest.raises(ValueError, match=r"\[34\]"):
        label_ids_to_channels(np.array([7, 34], dtype=np.uint8))


def test_normalise_pair_round_trips():
    images = np.random.default_rng(0).integers(0, 256, (2, 4, 8, 3), dtype=np.uint8)
    tensor = image_to_tensor(images)
    assert tensor.shape == (2, 3, 4, 8) and tensor.dtype == torch.float32
    assert np.array_equal(tensor_to_image(tensor), images)
    assert tensor_to_image(torch.full((1, 3, 2, 2), 300.0)).max() == 255
    assert tensor_to_image(torch.full((1, 3, 2, 2), -5.0)).min() == 0


def test_layout_one_hot():
    layout = channels_to_layout(np.array([[[0, 19]]], dtype=np.uint8))
    assert layout.shape == (1, 20, 1, 2)
    assert layout[0, 0, 0, 0] == 1 and layout[0, 19, 0, 1] == 1 and layout.sum() == 2


def test_loader_reads_and_resizes_official_tree(tmp_path):
    write_tree(tmp_path, n=3, size=(32, 64))
    pairs = find_pairs(tmp_path, "train")
    assert [p.stem for p in pairs] == [f"aachen_{i:06d}_000019" for i in range(3)]
    image, channels = load_pair(pairs[0], (16, 32))
    assert image.shape == (16, 32, 3) and image.dtype == np.uint8
    assert channels.shape == (16, 32) and channels.max() <= 19


def test_loader_errors_name_the_file(tmp_path):
    with pytest.raises(CrnError, match="dataset root not found"):
        find_pairs(tmp_path / "missing", "train")
    write_tree(tmp_path, n=2)
    with pytest.raises(CrnError, match="split folder missing"):
        find_pairs(tmp_path, "val")
    label = tmp_path / "gtFine/train/aachen/aachen_000001_000019_gtFine_labelIds.png"
    label.unlink()
    with pytest.raises(CrnError, match="aachen_000001_000019_leftImg8bit.png: no label file"):
        find_pairs(tmp_path, "train")
    image = tmp_path / "leftImg8bit/train/aachen/aachen_000001_000019_leftImg8bit.png"
    image.unlink()
    Image.fromarray(np.zeros((32, 64), np.uint8), mode="L").save(label)
    (tmp_path / "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png").write_bytes(b"not a png")
    with pytest.raises(CrnError, match="no image"):
        find_pairs(tmp_path, "train")


def test_corrupt_png_and_unknown_id(tmp_path):
    write_tree(tmp_path, n=1)
    pair = find_pairs(tmp_path, "train")[0]
    pair.image_path.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(CrnError, match="not a readable PNG"):
        load_pair(pair, (16, 32))
    write_tree(tmp_path, n=1, ids=[7, 40])
    with pytest.raises(CrnError, match=r"gtFine_labelIds.png: label ids \[40\]"):
        load_pair(pair, (16, 32))
    wide = np.full((32, 64), 7, np.uint16)
    wide[0, 0] = 263  # a 16-bit labelIds PNG: 263 must not wrap onto 7 (road)
    Image.fromarray(wide).save(pair.label_path)
    with pytest.raises(CrnError, match=r"gtFine_labelIds.png: label ids \[263\]"):
        load_pair(pair, (32, 64))


def test_label_ids_colour_to_the_official_map():
    from crn_repro.datasets import label_ids_to_color_map
    from crn_repro.labels import ID_COLORS

    ids = torch.tensor([[[5, 0], [18, 33]]], dtype=torch.uint8)  # dynamic, unlabeled / polegroup, bicycle
    colors = label_ids_to_color_map(ids, torch.from_numpy(ID_COLORS))
    assert colors.shape == (1, 3, 2, 2) and colors.dtype == torch.float32
    assert colors[0, :, 0, 0].tolist() == [111, 74, 0] and colors[0, :, 0, 1].tolist() == [0, 0, 0]
    assert colors[0, :, 1, 0].tolist() == [153, 153, 153] and colors[0, :, 1, 1].tolist() == [119, 11, 32]


def test_prepared_split_without_ids_delivers_the_layout_only(prepared_tiny):
    root, _ = prepared_tiny
    val = PreparedSplit(root / "data/prepared", "val")
    assert val.label_ids is None and val.dataset == "synthetic"
    with pytest.raises(CrnError, match=r"val: no label_ids.npy.*cityscapes.keep_label_ids"):
        val.batch([0], reads="label_colors")
    with pytest.raises(ValueError, match="reads must be one of"):
        val.batch([0], reads="colors")


def test_prepare_builds_cache_and_keeps_old_one_on_failure(prepared_tiny, tiny_raw, tmp_path):
    root, params = prepared_tiny
    train = PreparedSplit(root / "data/prepared", "train")
    assert len(train) == 6 and train.size_hw == (16, 32)
    layout, image = train.batch([0, 1])
    assert layout.shape == (2, 20, 16, 32) and image.shape == (2, 3, 16, 32)
    meta = json.loads((root / "data/prepared/meta.json").read_text())
    assert meta["splits"]["val"]["count"] == 5
    assert sum(meta["splits"]["train"]["class_pixel_frequency"]) == pytest.approx(1, abs=1e-4)

    # A failing prepare (missing Cityscapes root) leaves the existing cache untouched.
    from crn_repro.params import parse_params

    raw = dict(tiny_raw, paths=dict(tiny_raw["paths"], prepared=str(root / "data/prepared")))
    raw["data"] = dict(raw["data"], dataset="cityscapes")
    raw["cityscapes"] = dict(raw["cityscapes"], root=str(tmp_path / "nowhere"))
    raw["paths"] = dict(raw["paths"], raw=str(tmp_path))
    before = (root / "data/prepared/train/images.npy").read_bytes()
    with pytest.raises(CrnError, match="dataset root not found"):
        prepare(parse_params(raw))
    assert (root / "data/prepared/train/images.npy").read_bytes() == before


def test_prepare_reads_real_cityscapes_layout(tmp_path, tiny_raw):
    from crn_repro.params import parse_params

    write_tree(tmp_path / "cs", "train", n=3)
    write_tree(tmp_path / "cs", "val", city="frankfurt", n=2)
    tiny_raw["data"]["dataset"] = "cityscapes"
    tiny_raw["paths"]["raw"] = str(tmp_path / "cs")
    tiny_raw["cityscapes"].update(root=str(tmp_path / "cs"), expected_train=3, expected_val=2, frame_size_hw=[32, 64])
    meta = prepare(parse_params(tiny_raw))
    assert meta["splits"]["train"]["count"] == 3 and meta["splits"]["val"]["count"] == 2
    val = PreparedSplit(tiny_raw["paths"]["prepared"], "val")
    assert val.names == ["frankfurt_000000_000019", "frankfurt_000001_000019"]
