"""The release's vivid training images (crn_repro/vivid.py): CIELAB round trip, the WLS filter's
defining properties, the tone mapping, and `prepare` applying it to the training split only."""

from __future__ import annotations

import json

import numpy as np
import pytest

from crn_repro.vivid import lab_to_srgb, srgb_to_lab, vivid, wls_filter


def test_lab_of_known_colours_and_round_trip():
    np.testing.assert_allclose(srgb_to_lab(np.ones(3)), [100, 0, 0], atol=1e-4)
    np.testing.assert_allclose(srgb_to_lab(np.zeros(3)), [0, 0, 0], atol=1e-9)
    np.testing.assert_allclose(srgb_to_lab(np.array([1.0, 0, 0])), [53.24, 80.09, 67.20], atol=0.02)  # sRGB red, D65
    rgb = np.random.default_rng(0).random((8, 8, 3))
    np.testing.assert_allclose(lab_to_srgb(srgb_to_lab(rgb)), rgb, atol=1e-9)


def test_wls_solves_its_normal_equations_and_preserves_edges():
    rng = np.random.default_rng(0)
    step = np.where(np.arange(32)[None, :] < 16, 30.0, 70.0) * np.ones((16, 1))
    noisy = step + rng.normal(0, 2, step.shape)
    smooth = wls_filter(noisy, 0.5)
    # (I + L_w) u = v: the residual of the normal equations, checked with the weights written out
    guide = np.log(noisy + np.finfo(float).eps)
    wy = 0.5 / (np.abs(np.diff(guide, axis=0)) ** 1.2 + 1e-4)
    wx = 0.5 / (np.abs(np.diff(guide, axis=1)) ** 1.2 + 1e-4)
    lap = np.zeros_like(smooth)
    lap[:-1] += wy * (smooth[:-1] - smooth[1:])
    lap[1:] += wy * (smooth[1:] - smooth[:-1])
    lap[:, :-1] += wx * (smooth[:, :-1] - smooth[:, 1:])
    lap[:, 1:] += wx * (smooth[:, 1:] - smooth[:, :-1])
    np.testing.assert_allclose(smooth + lap, noisy, atol=1e-6)
    assert np.std(smooth[:, :14] - 30) < 0.5 * np.std(noisy[:, :14] - 30)  # noise smoothed
    assert smooth[:, 17:].mean() - smooth[:, :15].mean() > 35  # the 40-level edge kept
    np.testing.assert_allclose(wls_filter(np.full((6, 6), 42.0), 1.0), 42.0)  # a constant stays


def test_vivid_raises_contrast_and_keeps_the_image_shape():
    rng = np.random.default_rng(1)
    dull = (110 + 20 * rng.random((32, 64, 3))).astype(np.uint8)
    dull[:, 32:] += 15
    out = vivid(dull)
    assert out.shape == dull.shape and out.dtype == np.uint8
    lightness = lambda im: srgb_to_lab(im / 255.0)[..., 0]  # noqa: E731
    assert lightness(out).std() > lightness(dull).std()


@pytest.mark.slow
def test_prepare_makes_only_the_training_images_vivid(tmp_path, tiny_raw):
    from cityscapes_fixture import write_cityscapes

    from crn_repro.datasets import PreparedSplit
    from crn_repro.params import parse_params
    from crn_repro.prepare import prepare

    write_cityscapes(tmp_path / "cs")
    tiny_raw["paths"]["raw"] = str(tmp_path / "cs")
    tiny_raw["data"].update(dataset="cityscapes", image_size_hw=[16, 32])
    tiny_raw["cityscapes"].update(root=str(tmp_path / "cs"), expected_train=5, expected_val=3, frame_size_hw=[32, 64])
    plain = parse_params(tiny_raw)
    prepare(plain)
    before = {split: np.array(PreparedSplit(plain.paths.prepared, split).images) for split in ("train", "val")}
    tiny_raw["cityscapes"]["vivid_train_images"] = True
    meta = prepare(parse_params(tiny_raw))
    assert meta["vivid_train_images"] is True
    after = {split: np.array(PreparedSplit(plain.paths.prepared, split).images) for split in ("train", "val")}
    assert np.array_equal(after["val"], before["val"])  # evaluation images as they are
    assert not np.array_equal(after["train"], before["train"])
    np.testing.assert_array_equal(after["train"][0], vivid(before["train"][0]))
    assert json.loads((tmp_path / "data/prepared/meta.json").read_text())["vivid_train_images"] is True
