"""NYU Depth v2 loader (crn_repro/nyu.py) on miniature v7.3 files written like the real one."""

from __future__ import annotations

import pickle

import h5py
import numpy as np
import pytest
import scipy.io
from nyu_fixture import make_frames, raw_names, write_class_mapping, write_nyu_mat
from PIL import Image

from crn_repro.datasets import channels_to_layout
from crn_repro.errors import CrnError
from crn_repro.nyu import (
    FRAME_HW,
    NUM_FRAMES,
    NUM_TEST,
    NUM_TRAIN,
    NyuLabeled,
    fit_to_aspect,
    frame_name,
    label_set_from_mapping,
    label_set_most_frequent,
    load_frame,
    split_indices,
)

HW = (48, 64)  # the real 480x640 scaled by 1/10, keeping 4:3


@pytest.fixture
def mini(tmp_path):
    path = tmp_path / "nyu_depth_v2_labeled.mat"
    return path, write_nyu_mat(path, num_frames=6, hw=HW, num_raw_classes=12, seed=3)


def open_mini(path, frames=6):
    return NyuLabeled(path, expected_frames=frames, expected_hw=HW)


# --- the file as MATLAB writes it -------------------------------------------------------------------


def test_fixture_is_laid_out_like_the_real_file(mini):
    path, _ = mini
    assert path.read_bytes()[:19] == b"MATLAB 7.3 MAT-file"
    with h5py.File(path, "r") as f:
        assert f.userblock_size == 512
        assert f["images"].shape == (6, 3, 64, 48) and f["images"].dtype == np.uint8
        assert f["labels"].shape == (6, 64, 48) and f["labels"].dtype == np.uint16
        assert f["names"].shape == (1, 12) and f["names"].dtype == h5py.ref_dtype
        first = f[f["names"][0, 0]]
        assert first.shape == (4, 1) and first.dtype == np.uint16 and first.parent.name == "/#refs#"


def test_frames_are_untransposed(tmp_path):
    """An asymmetric pattern comes back upright: rows are y, columns x, channels R, G, B in order."""
    n, (h, w) = 2, HW
    y, x = np.mgrid[:h, :w]
    images = np.zeros((n, h, w, 3), np.uint8)
    images[..., 0], images[..., 1] = y, x  # R grows downwards, G to the right
    images[:, :, :, 2] = 200 + np.arange(n)[:, None, None]  # B tells the frames apart
    labels = np.zeros((n, h, w), np.uint16)
    labels[:, :10, :20] = 3  # a wide block in the top-left corner
    labels[1, -1, -1] = 7
    path = tmp_path / "pattern.mat"
    write_nyu_mat(path, n, hw=HW, images=images, labels=labels)
    with open_mini(path, n) as nyu:
        image, raw = nyu.image(1), nyu.labels(1)
    assert image.shape == (h, w, 3) and image.dtype == np.uint8 and image.flags.c_contiguous
    assert tuple(image[0, 0]) == (0, 0, 201)
    assert tuple(image[h - 1, 0]) == (h - 1, 0, 201) and tuple(image[0, w - 1]) == (0, w - 1, 201)
    np.testing.assert_array_equal(image, images[1])
    assert raw.shape == (h, w) and raw[:10, :20].min() == 3 and raw[10, 0] == 0 and raw[0, 20] == 0 and raw[-1, -1] == 7


def test_names_decode_with_unicode_and_empty(tmp_path):
    names = ["café table", "", "chair"]
    path = tmp_path / "names.mat"
    write_nyu_mat(path, 3, num_raw_classes=3, names=names)
    assert open_mini(path, 3).raw_class_names == names


def test_reopens_after_pickling_and_close(mini):
    path, data = mini
    nyu = open_mini(path)
    copy = pickle.loads(pickle.dumps(nyu))
    nyu.close()
    np.testing.assert_array_equal(copy.image(5), data["images"][5])
    np.testing.assert_array_equal(nyu.labels(0), data["labels"][0])  # reopens lazily after close
    assert copy.num_frames == 6 and copy.frame_hw == HW and copy.raw_class_names == raw_names(12)
    with pytest.raises(IndexError):
        nyu.image(6)


def test_split_indices_and_names():
    assert split_indices(1449, "train") == range(1200) and split_indices(1449, "val") == range(1200, 1449)
    assert len(split_indices(1449, "val")) == 249
    assert list(split_indices(6, "train", num_train=4)) == [0, 1, 2, 3] and list(split_indices(6, "val", 4)) == [4, 5]
    assert frame_name(0) == "nyu_0001" and frame_name(1448) == "nyu_1449"
    with pytest.raises(CrnError, match="unknown NYU split 'test'"):
        split_indices(6, "test", 4)
    with pytest.raises(CrnError, match="num_train 6"):
        split_indices(6, "train", 6)


# --- label sets -------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["v5", "v7.3"])
def test_mapping_sends_every_raw_id_where_mapclass_says(tmp_path, version):
    rng = np.random.default_rng(0)
    names40 = [f"class {c}" for c in range(1, 41)]
    map_class = rng.integers(1, 41, 894)
    raw = raw_names(894)
    path = tmp_path / "classMapping40.mat"
    write_class_mapping(path, map_class, names40, version=version, all_class_names=raw)
    labels = label_set_from_mapping(path, raw)
    assert labels.channel_names == (*names40, "void") and labels.label_space.num_classes == 41 and labels.label_space.void_channel == 40
    every_id = np.arange(895).reshape(5, 179)
    channels = labels.to_channels(every_id).ravel()
    assert channels.dtype == np.uint8 and channels[0] == 40
    np.testing.assert_array_equal(channels[1:], map_class - 1)


def test_label_colors_are_distinct_deterministic_and_void_black(tmp_path):
    path = tmp_path / "m.mat"
    write_class_mapping(path, np.arange(894) % 40 + 1, [f"c{k}" for k in range(40)])
    a, b = label_set_from_mapping(path, raw_names(894)), label_set_from_mapping(path, raw_names(894))
    assert a.colors.shape == (41, 3) and a.colors.dtype == np.uint8
    assert len({tuple(c) for c in a.colors}) == 41 and tuple(a.colors[-1]) == (0, 0, 0)
    np.testing.assert_array_equal(a.colors, b.colors)


def test_to_channels_rejects_unknown_ids_in_one_line(tmp_path):
    path = tmp_path / "m.mat"
    write_class_mapping(path, [1, 2, 2], ["a", "b"])
    labels = label_set_from_mapping(path, ["x", "y", "z"])
    np.testing.assert_array_equal(labels.to_channels(np.array([[0, 1, 2, 3]], np.uint16)), [[2, 0, 1, 1]])
    with pytest.raises(ValueError, match=r"^raw label ids 4, 9 are not NYU labels \(valid: 0..3\)$"):
        labels.to_channels(np.array([0, 9, 4, 9]))


@pytest.mark.parametrize(
    ("kwargs", "names", "message"),
    [
        ({"omit": ("mapClass",)}, None, "no 'mapClass' variable"),
        ({"omit": ("className",)}, None, "no 'className' variable"),
        ({"map_class": [1, 2]}, None, "'mapClass' has 2 entries but the NYU file has 3 raw classes"),
        ({"map_class": [1, 3, 0]}, None, r"'mapClass' of raw labels \[2, 3\] is not a class number 1..2"),
        ({"map_class": [1, 1.5, 2]}, None, r"raw labels \[2\]"),
        ({"all_class_names": ["x", "q", "z"]}, None, "'allClassName' calls raw label 2 'q' but the NYU file calls it 'y'"),
    ],
)
@pytest.mark.parametrize("version", ["v5", "v7.3"])
def test_bad_mapping_files(tmp_path, version, kwargs, names, message):
    path = tmp_path / "classMapping40.mat"
    args = {"map_class": [1, 2, 2], "class_names": ["a", "b"], "version": version} | kwargs
    write_class_mapping(path, **args)
    with pytest.raises(CrnError, match=message) as info:
        label_set_from_mapping(path, ["x", "y", "z"])
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_mapping_file_missing_or_not_mat(tmp_path):
    with pytest.raises(CrnError, match="class mapping not found"):
        label_set_from_mapping(tmp_path / "nope.mat", ["x"])
    junk = tmp_path / "junk.mat"
    junk.write_bytes(b"not a mat file at all" * 20)
    with pytest.raises(CrnError, match="junk.mat: not a readable MAT file"):
        label_set_from_mapping(junk, ["x"])


def test_most_frequent_classes_from_known_counts(tmp_path):
    """Raw pixel counts over the training frames: 5 -> 900, 2 -> 500, 7 -> 500, 1 -> 300, 3 -> 100."""
    h, w = HW  # 3072 pixels a frame
    labels = np.zeros((4, h, w), np.uint16)
    flat = labels.reshape(4, -1)
    flat[0, :900], flat[0, 900:1400], flat[0, 1400:1500] = 5, 7, 3
    flat[1, :500], flat[1, 500:800] = 2, 1
    flat[3, :3000] = 4  # frame 3 is held out, so raw 4 must not count
    path = tmp_path / "freq.mat"
    write_nyu_mat(path, 4, hw=HW, num_raw_classes=8, labels=labels)
    nyu = open_mini(path, 4)
    ticks = []
    labels3 = label_set_most_frequent(nyu, split_indices(4, "train", 3), 3, progress=ticks.append)
    assert ticks == [1, 1, 1]
    assert labels3.channel_names == ("chair", "bottle", "counter", "void")  # raw 5, then the 2/7 tie by id
    np.testing.assert_array_equal(labels3.to_channels(np.arange(9)), [3, 3, 1, 3, 3, 0, 3, 2, 3])
    assert label_set_most_frequent(nyu, range(3), 5).channel_names[-2:] == ("cabinet", "void")
    with pytest.raises(CrnError, match="only 5 raw classes occur in the 3 frames counted"):
        label_set_most_frequent(nyu, range(3), 6)


def test_most_frequent_rejects_ids_beyond_the_names(tmp_path):
    labels = np.zeros((2, *HW), np.uint16)
    labels[1, 0, 0] = 13
    path = tmp_path / "beyond.mat"
    write_nyu_mat(path, 2, num_raw_classes=12, labels=labels)
    with pytest.raises(CrnError, match=r"frame nyu_0002 has raw label ids \[13\] beyond the 12 names"):
        label_set_most_frequent(open_mini(path, 2), range(2), 1)


# --- geometry -----------------------------------------------------------------------------------------


def test_crop_keeps_the_central_rows():
    image = np.arange(480 * 640 * 3, dtype=np.int64).reshape(480, 640, 3).astype(np.uint8)
    channels = np.repeat(np.arange(480) % 7, 640).reshape(480, 640).astype(np.uint8)
    out_image, out_channels = fit_to_aspect(image, channels, "crop", void_channel=40)
    assert out_image.shape == (320, 640, 3) and out_channels.shape == (320, 640)
    np.testing.assert_array_equal(out_image, image[80:400])
    np.testing.assert_array_equal(out_channels, channels[80:400])


def test_pad_adds_symmetric_black_void_borders():
    image = np.full((48, 64, 3), 9, np.uint8)
    channels = np.full((48, 64), 2, np.uint8)
    out_image, out_channels = fit_to_aspect(image, channels, "pad", void_channel=40)
    assert out_image.shape == (48, 96, 3) and out_channels.shape == (48, 96)
    assert (out_image[:, :16] == 0).all() and (out_image[:, 80:] == 0).all() and (out_image[:, 16:80] == 9).all()
    assert (out_channels[:, :16] == 40).all() and (out_channels[:, 80:] == 40).all() and (out_channels[:, 16:80] == 2).all()
    assert fit_to_aspect(np.zeros((480, 640, 3), np.uint8), np.zeros((480, 640), np.uint8), "pad", 0)[1].shape == (480, 960)


def test_fit_handles_frames_wider_than_the_target_and_exact_ones():
    wide_image, wide = np.zeros((10, 40, 3), np.uint8), np.zeros((10, 40), np.uint8)
    assert fit_to_aspect(wide_image, wide, "crop", 5)[1].shape == (10, 20)
    assert fit_to_aspect(wide_image, wide, "pad", 5)[1].shape == (20, 40)
    exact_image, exact = np.zeros((16, 32, 3), np.uint8), np.zeros((16, 32), np.uint8)
    assert fit_to_aspect(exact_image, exact, "crop", 5)[1] is exact
    with pytest.raises(CrnError, match="unknown NYU fit mode 'stretch'; valid: crop, pad"):
        fit_to_aspect(exact_image, exact, "stretch", 5)


def test_load_frame_fits_then_resizes_bicubic_and_nearest(mini, tmp_path):
    path, data = mini
    mapping = tmp_path / "m.mat"
    write_class_mapping(mapping, np.arange(12) % 4 + 1, ["wall", "floor", "cabinet", "bed"])
    nyu = open_mini(path)
    labels = label_set_from_mapping(mapping, nyu.raw_class_names)
    channels = labels.to_channels(data["labels"][2])
    # native 1:2 after the crop: no resampling at all
    image, out = load_frame(nyu, 2, labels, (32, 64), "crop")
    np.testing.assert_array_equal(image, data["images"][2][8:40])
    np.testing.assert_array_equal(out, channels[8:40])
    # pad to 48x96, then down to 16x32
    image, out = load_frame(nyu, 2, labels, (16, 32), "pad")
    padded_image, padded = fit_to_aspect(data["images"][2], channels, "pad", labels.label_space.void_channel)
    assert image.shape == (16, 32, 3) and image.dtype == np.uint8 and out.shape == (16, 32) and out.dtype == np.uint8
    np.testing.assert_array_equal(image, np.asarray(Image.fromarray(padded_image).resize((32, 16), Image.BICUBIC)))
    np.testing.assert_array_equal(out, np.asarray(Image.fromarray(padded).resize((32, 16), Image.NEAREST)))
    assert set(np.unique(out)) <= set(range(5)) and (out[:, :4] == 4).all()


def test_load_frame_names_the_file_and_frame_of_an_unknown_label(tmp_path):
    labels = np.ones((2, *HW), np.uint16)
    labels[1, 5, 5] = 99
    path = tmp_path / "bad_label.mat"
    write_nyu_mat(path, 2, num_raw_classes=3, labels=labels)
    mapping = tmp_path / "m.mat"
    write_class_mapping(mapping, [1, 1, 1], ["wall"])
    nyu = open_mini(path, 2)
    label_set = label_set_from_mapping(mapping, nyu.raw_class_names)
    load_frame(nyu, 0, label_set, (16, 32), "crop")
    with pytest.raises(CrnError, match=r"bad_label.mat: frame nyu_0002: raw label ids 99 are not NYU labels"):
        load_frame(nyu, 1, label_set, (16, 32), "crop")


# --- bad NYU files --------------------------------------------------------------------------------------


def test_missing_file_or_folder(tmp_path):
    for path in (tmp_path / "absent.mat", tmp_path):
        with pytest.raises(CrnError, match="NYU labeled set not found; download nyu_depth_v2_labeled.mat"):
            NyuLabeled(path)


def test_v5_mat_file_is_refused(tmp_path):
    path = tmp_path / "v5.mat"
    images, labels = make_frames(2, HW, 3, seed=0)
    scipy.io.savemat(path, {"images": images.transpose(1, 2, 3, 0), "labels": labels.transpose(1, 2, 0)})
    with pytest.raises(CrnError, match=r"v5.mat: a MATLAB v5/v7 file, not v7.3 \(HDF5\); download the v7.3 labeled set"):
        NyuLabeled(path, expected_frames=2, expected_hw=HW)


def test_non_mat_and_truncated_files_are_refused(mini, tmp_path):
    junk = tmp_path / "junk.mat"
    junk.write_bytes(b"\x89PNG\r\n" + bytes(1000))
    with pytest.raises(CrnError, match="junk.mat: not a MAT file"):
        NyuLabeled(junk)
    path, _ = mini
    truncated = tmp_path / "truncated.mat"
    truncated.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(CrnError, match="truncated.mat: not a readable HDF5 file"):
        open_mini(truncated)


@pytest.mark.parametrize("field", ["images", "labels", "names"])
def test_missing_field(tmp_path, field):
    path = tmp_path / "nyu.mat"
    write_nyu_mat(path, 2, omit=(field,))
    with pytest.raises(CrnError, match=f"nyu.mat: no '{field}' field; this is not the NYU Depth v2 labeled set"):
        open_mini(path, 2)


def test_wrong_shapes_counts_and_sizes(mini, tmp_path):
    path, _ = mini
    with pytest.raises(CrnError, match="6 frames, expected 1449; the download is incomplete"):
        NyuLabeled(path, expected_hw=HW)
    with pytest.raises(CrnError, match="frames are 64x48, expected 640x480"):
        NyuLabeled(path, expected_frames=6)
    assert NyuLabeled(path, expected_frames=6, expected_hw=None).frame_hw == HW
    images, labels = make_frames(2, HW, 3, seed=0)
    mismatched = tmp_path / "mismatched.mat"
    write_nyu_mat(mismatched, 2, images=images, labels=labels[:, :40])
    with pytest.raises(CrnError, match=r"'labels' is uint16 \(2, 64, 40\), expected integer \(2, 64, 48\)"):
        open_mini(mismatched, 2)
    gray = tmp_path / "gray.mat"
    write_nyu_mat(gray, 2, omit=("images",))
    with h5py.File(gray, "r+") as f:
        f.create_dataset("images", data=np.zeros((2, 1, 64, 48), np.uint8))
    with pytest.raises(CrnError, match=r"'images' is uint8 \(2, 1, 64, 48\), expected uint8 \(frames, 3, width, height\)"):
        open_mini(gray, 2)


def test_corrupt_chunk_names_the_file_and_frame(mini):
    path, data = mini
    with h5py.File(path, "r") as f:
        chunk = f["images"].id.get_chunk_info(4)  # byte_offset is absolute, user block included
    raw = bytearray(path.read_bytes())
    raw[chunk.byte_offset : chunk.byte_offset + 64] = bytes(range(64))
    path.write_bytes(bytes(raw))
    nyu = open_mini(path)
    np.testing.assert_array_equal(nyu.image(3), data["images"][3])
    with pytest.raises(CrnError, match=r"'images' of frame nyu_0005 is unreadable \(OSError: .*\); the file is damaged"):
        nyu.image(4)


def test_end_to_end_split_to_layout(tmp_path):
    """File -> most-frequent label set over train -> every val frame at 16x32 -> one-hot layouts."""
    assert NUM_TRAIN + NUM_TEST == NUM_FRAMES == 1449 and FRAME_HW == (480, 640)
    path = tmp_path / "nyu_depth_v2_labeled.mat"
    write_nyu_mat(path, 10, hw=HW, num_raw_classes=12, seed=5)
    with NyuLabeled(path, expected_frames=10, expected_hw=HW) as nyu:
        label_set = label_set_most_frequent(nyu, split_indices(10, "train", 8), 6)
        val = [load_frame(nyu, i, label_set, (16, 32), "crop") for i in split_indices(10, "val", 8)]
    images = np.stack([image for image, _ in val])
    layout = channels_to_layout(np.stack([channels for _, channels in val]), label_set.label_space.num_classes)
    assert images.shape == (2, 16, 32, 3) and layout.shape == (2, 7, 16, 32)
    assert (layout.sum(1) == 1).all() and layout[:, -1].sum() > 0  # unlabeled and rarer classes are void


def test_names_that_are_not_a_cell_of_strings(tmp_path):
    path = tmp_path / "nyu.mat"
    write_nyu_mat(path, 2, omit=("names",))
    with h5py.File(path, "r+") as f:
        f.create_dataset("names", data=np.zeros((1, 3)))
    with pytest.raises(CrnError, match=r"nyu.mat: 'names' is unreadable \(ValueError: 'names' is not a cell array"):
        open_mini(path, 2)
