"""Synthesis from any label maps (`crn-repro synthesize --labels`): Cityscapes labelIds and colour
PNGs and NYU class images at any size, resized to the model's resolution; the release's file layout;
one-line errors for unknown labels."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from crn_repro.checkpoint import save_model_file
from crn_repro.cli import app
from crn_repro.crn import CRN
from crn_repro.errors import CrnError
from crn_repro.labels import ID_COLORS
from crn_repro.synthesize import synthesize_layouts


def model_file(tmp_path, num_classes=20, k=1, name="crn"):
    torch.manual_seed(0)
    kwargs = {"num_classes": num_classes, "widths": [8, 8, 8], "num_outputs": k}
    path = tmp_path / f"{name}-{num_classes}-{k}.pt"
    save_model_file(path, name, {"G": kwargs}, {"G": CRN(**kwargs)}, {"image_size_hw": [16, 32], "num_classes": num_classes})
    return path


def label_ids(seed=0, size_hw=(37, 71)):
    """A labelIds map at an odd size: road, building, sky, car and some void."""
    rng = np.random.default_rng(seed)
    return rng.choice(np.array([7, 11, 23, 26, 0], np.uint8), size=size_hw)


def write_labels(folder, maps, colour=False):
    folder.mkdir(parents=True, exist_ok=True)
    for i, ids in enumerate(maps):
        image = Image.fromarray(ID_COLORS[ids] if colour else ids)
        image.save(folder / f"frame{i}.png")
    return folder


def test_label_ids_and_colour_labels_give_the_same_images_at_the_models_size(tmp_path):
    maps = [label_ids(0), label_ids(1)]
    model = model_file(tmp_path)
    index = synthesize_layouts(model, write_labels(tmp_path / "ids", maps), tmp_path / "a")
    synthesize_layouts(model, write_labels(tmp_path / "colours", maps, colour=True), tmp_path / "b", label_format="color")
    assert index["names"] == ["frame0", "frame1"] and index["k"] == 1
    assert json.loads((tmp_path / "a/index.json").read_text())["label_format"] == "label_ids"
    for name in ("frame0.png", "frame1.png"):
        a, b = np.asarray(Image.open(tmp_path / "a" / name)), np.asarray(Image.open(tmp_path / "b" / name))
        assert a.shape == (16, 32, 3) and np.array_equal(a, b)
    assert not np.array_equal(np.asarray(Image.open(tmp_path / "a/frame0.png")), np.asarray(Image.open(tmp_path / "a/frame1.png")))


def test_nyu_class_images(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "nyu"
    folder.mkdir()
    Image.fromarray(rng.integers(0, 41, (48, 64)).astype(np.uint8)).save(folder / "0001.png")
    synthesize_layouts(model_file(tmp_path, num_classes=41), folder, tmp_path / "out", label_format="nyu")
    assert np.asarray(Image.open(tmp_path / "out/0001.png")).shape == (16, 32, 3)
    Image.fromarray(np.full((8, 8), 45, np.uint8)).save(folder / "0002.png")
    with pytest.raises(CrnError, match=r"0002\.png: class 45 beyond the model's 40 classes"):
        synthesize_layouts(model_file(tmp_path, num_classes=41), folder, tmp_path / "out", label_format="nyu")


def test_release_layout_tiles_k_outputs_into_one_jpeg(tmp_path):
    synthesize_layouts(model_file(tmp_path, k=9, name="crn-diverse"), write_labels(tmp_path / "ids", [label_ids()]),
                       tmp_path / "out", release_layout=True)
    grid = np.asarray(Image.open(tmp_path / "out/frame0_output.jpg"))
    assert grid.shape == (48, 96, 3)  # 3 x 3 images of 16 x 32


def test_unknown_labels_and_colours_are_one_line_errors_and_write_nothing(tmp_path):
    model = model_file(tmp_path)
    bad = label_ids()
    bad[0, :3] = 200
    with pytest.raises(CrnError, match=r"frame0\.png: label ids \[200\] are not Cityscapes labelIds.*another --label-format"):
        synthesize_layouts(model, write_labels(tmp_path / "ids", [bad]), tmp_path / "out")
    wide = label_ids().astype(np.uint16)  # a 16-bit PNG: 256 + 7 must not wrap onto road (7)
    wide[0, 0] = 263
    (tmp_path / "ids16").mkdir()
    Image.fromarray(wide).save(tmp_path / "ids16/frame0.png")
    assert Image.open(tmp_path / "ids16/frame0.png").mode.startswith("I")
    with pytest.raises(CrnError, match=r"frame0\.png: label ids \[263\] are not Cityscapes labelIds"):
        synthesize_layouts(model, tmp_path / "ids16", tmp_path / "out")
    colours = ID_COLORS[label_ids()]
    colours[0, 0] = (1, 2, 3)
    (tmp_path / "col").mkdir()
    Image.fromarray(colours).save(tmp_path / "col/x.png")
    with pytest.raises(CrnError, match=r"x\.png: colours \[\(1, 2, 3\)\] are not in the Cityscapes label palette"):
        synthesize_layouts(model, tmp_path / "col", tmp_path / "out", label_format="color")
    with pytest.raises(CrnError, match="single-channel"):
        synthesize_layouts(model, tmp_path / "col", tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_a_foreign_output_folder_is_never_replaced(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine/thesis.tex").write_text("keep me")
    with pytest.raises(CrnError, match="a folder that synthesize did not write"):
        synthesize_layouts(model_file(tmp_path), write_labels(tmp_path / "ids", [label_ids()]), tmp_path / "mine")
    assert (tmp_path / "mine/thesis.tex").read_text() == "keep me"


def test_cli_needs_out_with_labels_and_checks_the_model_name(tmp_path, tiny_raw):
    import yaml

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_raw))
    labels = write_labels(tmp_path / "ids", [label_ids()])
    runner = CliRunner()
    result = runner.invoke(app, ["--params", str(params), "synthesize", "-m", "crn", "--labels", str(labels)])
    assert result.exit_code == 1 and "--labels needs --out" in result.stderr
    model = model_file(tmp_path, name="image-space")
    result = runner.invoke(app, ["--params", str(params), "synthesize", "-m", "crn", "--labels", str(labels), "--out",
                                 str(tmp_path / "out"), "--model-file", str(model)])
    assert result.exit_code == 1 and "holds a 'image-space' model, not 'crn'" in result.stderr
    result = runner.invoke(app, ["--params", str(params), "synthesize", "-m", "image-space", "--labels", str(labels), "--out",
                                 str(tmp_path / "out"), "--model-file", str(model)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out/frame0.png").is_file()


# --- your own layouts, at the edges -----------------------------------------------------------------------


def _cli(tmp_path, tiny_raw, *args):
    import yaml

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_raw))
    result = CliRunner().invoke(app, ["--params", str(params), "synthesize", "-m", "crn", "--model-file",
                                      str(model_file(tmp_path)), *args])
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    return result, errors


def test_out_naming_an_existing_file_is_one_line_and_keeps_the_file(tmp_path, tiny_raw):
    labels = write_labels(tmp_path / "ids", [label_ids()])
    (tmp_path / "notes.txt").write_text("keep me")
    result, errors = _cli(tmp_path, tiny_raw, "--labels", str(labels), "--out", str(tmp_path / "notes.txt"))
    assert result.exit_code == 1 and len(errors) == 1 and "Traceback" not in result.output, result.output
    assert "--out" in errors[0] and "notes.txt: a file, not a folder" in errors[0] and "name a folder" in errors[0]
    assert (tmp_path / "notes.txt").read_text() == "keep me" and not (tmp_path / "notes.txt.partial").exists()


@pytest.mark.parametrize("suffix", [".jpg", ".JPEG", ".png"])
def test_jpeg_label_images_are_refused_saying_why_and_what_to_do(tmp_path, tiny_raw, suffix):
    """JPEG invents label ids at region edges; a JPEG named .png is caught by its content."""
    labels = write_labels(tmp_path / "ids", [label_ids()])
    Image.fromarray(label_ids(1)).save(tmp_path / "ids" / f"photo{suffix}", format="JPEG")
    for given in (labels, tmp_path / "ids" / f"photo{suffix}"):  # the folder, and the one file
        result, errors = _cli(tmp_path, tiny_raw, "--labels", str(given), "--out", str(tmp_path / "out"))
        assert result.exit_code == 1 and len(errors) == 1, result.output
        assert f"photo{suffix}: a JPEG label image" in errors[0] and "invents label ids" in errors[0]
        assert "as PNG (lossless)" in errors[0]
        assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_one_label_file_works(tmp_path, tiny_raw):
    labels = write_labels(tmp_path / "ids", [label_ids(0, (16, 32)), label_ids(1, (16, 32))])
    result, errors = _cli(tmp_path, tiny_raw, "--labels", str(labels / "frame1.png"), "--out", str(tmp_path / "out"))
    assert result.exit_code == 0 and not errors, result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["frame1.png", "index.json"]
    assert "1 layouts x 1 images at the model's resolution 32x16" in result.stdout
    result, errors = _cli(tmp_path, tiny_raw, "--labels", str(tmp_path / "nowhere.png"), "--out", str(tmp_path / "o2"))
    assert result.exit_code == 1 and "nowhere.png: no such label image or folder" in errors[0]


def test_layouts_of_another_aspect_ratio_are_said_to_be_resized_to_the_models_resolution(tmp_path, tiny_raw):
    labels = write_labels(tmp_path / "ids", [label_ids(0, (999, 17)), label_ids(1, (64, 128))])
    result, errors = _cli(tmp_path, tiny_raw, "--labels", str(labels), "--out", str(tmp_path / "out"))
    assert result.exit_code == 0 and not errors, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "frame0.png (17x999)" in warnings[0] and "frame1" not in warnings[0]
    assert "resized to 32x16" in warnings[0] and "stretched" in warnings[0]
    assert "2 layouts x 1 images at the model's resolution 32x16 (width x height)" in result.stdout
    for name in ("frame0.png", "frame1.png"):
        assert Image.open(tmp_path / "out" / name).size == (32, 16)
