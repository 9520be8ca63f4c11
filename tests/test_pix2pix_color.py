"""pix2pix's input 'color' (its public release's Cityscapes setup): on Cityscapes prepared with
``cityscapes.keep_label_ids`` the networks read exactly the official gtFine_color image (nearest-resized),
void classes in their own colours; without kept ids Cityscapes is an error, while the synthetic city
and NYU fall back to the dataset palette over the layout channels."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from cityscapes_fixture import write_cityscapes
from nyu_fixture import write_nyu_mat
from PIL import Image
from rich.console import Console

from baselines.pix2pix import ConditionInput
from crn_repro.batches import batch_indices
from crn_repro.registry import load_model
from crn_repro.datasets import PreparedSplit
from crn_repro.errors import CrnError
from crn_repro.labels import NAME_TO_ID
from crn_repro.params import parse_params
from crn_repro.prepare import prepare
from crn_repro.synthesize import synthesize
from crn_repro.trainer import train

SIZE = (32, 64)  # the tiny U-Net's 2^5 divides it
TINY_PIX2PIX = {"input": "color", "num_downs": 5, "ngf": 4, "ndf": 4, "n_layers_d": 3, "dropout": 0.5}
# The void classes of the official gtFine_color images that keep their own colour (cityscapesScripts
# helpers/labels.py), written out here rather than read from crn_repro.labels.
VOID_COLORS = {
    "unlabeled": (0, 0, 0), "ego vehicle": (0, 0, 0), "rectification border": (0, 0, 0), "out of roi": (0, 0, 0),
    "static": (0, 0, 0), "dynamic": (111, 74, 0), "ground": (81, 0, 81), "parking": (250, 170, 160),
    "rail track": (230, 150, 140), "guard rail": (180, 165, 180), "bridge": (150, 100, 100),
    "tunnel": (150, 120, 90), "polegroup": (153, 153, 153), "caravan": (0, 0, 90), "trailer": (0, 0, 110),
}


def pix2pix_raw(tiny_raw, **network):
    tiny_raw["data"]["image_size_hw"] = list(SIZE)
    tiny_raw["train"].update(total_steps=2, checkpoint_every_steps=2)
    tiny_raw["pix2pix"]["network"] = dict(TINY_PIX2PIX, **network)
    return tiny_raw


def cityscapes_pix2pix_raw(tiny_raw, root, keep_label_ids=True, labels="label_ids"):
    """Cityscapes frames at 64x128 prepared at 32x64, so labels go through the nearest resize."""
    raw = pix2pix_raw(tiny_raw)
    raw["paths"]["raw"] = str(root)
    raw["data"]["dataset"] = "cityscapes"
    raw["cityscapes"].update(root=str(root), labels=labels, expected_train=5, expected_val=3, frame_size_hw=[64, 128],
                             keep_label_ids=keep_label_ids)
    return raw


def official_color(root, split, stem):
    """The stored gtFine_color image of a frame, nearest-resized to SIZE (RGB)."""
    path = root / "gtFine" / split / stem.split("_")[0] / f"{stem}_gtFine_color.png"
    return np.asarray(Image.open(path).convert("RGB").resize(SIZE[::-1], Image.NEAREST))


def official_ids(root, split, stem):
    path = root / "gtFine" / split / stem.split("_")[0] / f"{stem}_gtFine_labelIds.png"
    return np.asarray(Image.open(path).resize(SIZE[::-1], Image.NEAREST))


@pytest.fixture
def recorded_inputs(monkeypatch):
    """Every tensor handed to a pix2pix network's input encoding (G's and D's), in call order, with
    whether the network was training (a checkpoint's validation runs in eval mode)."""
    calls = []
    forward = ConditionInput.forward

    def recording(self, layout):
        calls.append((self.training, layout.detach().clone()))
        return forward(self, layout)

    monkeypatch.setattr(ConditionInput, "forward", recording)
    return calls


def as_color_images(maps: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) colour maps in 0..255 -> (N, H, W, 3) uint8, checking they hold whole values."""
    assert torch.equal(maps, maps.round()) and maps.min() >= 0 and maps.max() <= 255
    return maps.permute(0, 2, 3, 1).to(torch.uint8).numpy()


def test_pix2pix_reads_the_official_color_labels_in_training_and_synthesis(tmp_path, tiny_raw, recorded_inputs):
    root = tmp_path / "cs"
    stems = write_cityscapes(root, size_hw=(64, 128))
    params = parse_params(cityscapes_pix2pix_raw(tiny_raw, root))
    prepare(params)
    train_split = PreparedSplit(params.paths.prepared, "train")

    train(params, "pix2pix", console=Console(quiet=True))
    nets, info = load_model(tmp_path / "runs/pix2pix/model.pt")
    for name in ("G", "D"):  # the model file says which colour source it was trained on
        assert info["network_kwargs"][name]["color_source"] == "label_ids" and "colors" not in info["network_kwargs"][name]
    tp = params.model("pix2pix").train
    training = [x for is_training, x in recorded_inputs if is_training]
    # G then D (real), D (fake) in the D phase, D (fake) in the G phase: four encodings of one batch per step.
    assert len(training) == 4 * tp.total_steps
    for step in range(tp.total_steps):
        indices = batch_indices(tp.seed, step, len(train_split), tp.batch_size_per_process)
        expected = np.stack([official_color(root, "train", train_split.names[i]) for i in indices])
        for seen in training[4 * step : 4 * step + 4]:
            assert np.array_equal(as_color_images(seen), expected)
    validation = [x for is_training, x in recorded_inputs if not is_training]  # the checkpoint's validation
    assert validation and all(np.array_equal(as_color_images(x), np.stack(
        [official_color(root, "val", stem) for stem in stems["val"][: len(x)]])) for x in validation)

    recorded_inputs.clear()
    synthesize(params, "pix2pix", console=Console(quiet=True))
    seen = np.concatenate([as_color_images(x) for _, x in recorded_inputs])
    expected = np.stack([official_color(root, "val", stem) for stem in stems["val"]])
    assert np.array_equal(seen, expected)  # pixel for pixel, every val frame
    ids = np.stack([official_ids(root, "val", stem) for stem in stems["val"]])
    for name, color in VOID_COLORS.items():  # void classes in their own colours, not the layout's black
        where = ids == NAME_TO_ID[name]
        assert where.any() and (seen[where] == color).all(), name


def test_colour_labels_give_the_same_map(tmp_path, tiny_raw):
    """Labels read from gtFine_color keep canonical ids (polegroup as pole, static as unlabeled, ...):
    the map pix2pix reads is still the colour image itself."""
    root = tmp_path / "cs"
    write_cityscapes(root, size_hw=(64, 128))
    params = parse_params(cityscapes_pix2pix_raw(tiny_raw, root, labels="color"))
    prepare(params)
    val = PreparedSplit(params.paths.prepared, "val")
    maps, _ = val.batch(range(len(val)), reads="label_colors")
    assert np.array_equal(as_color_images(maps), np.stack([official_color(root, "val", s) for s in val.names]))


def test_cityscapes_without_ids_is_an_error(tmp_path, tiny_raw):
    root = tmp_path / "cs"
    write_cityscapes(root, size_hw=(64, 128))
    raw = cityscapes_pix2pix_raw(tiny_raw, root, keep_label_ids=False)
    prepare(parse_params(raw))
    with pytest.raises(CrnError) as error:
        train(parse_params(raw), "pix2pix", console=Console(quiet=True))
    message = str(error.value)
    assert "\n" not in message and "pix2pix.network" in message
    assert "cityscapes.keep_label_ids: true" in message and "`crn-repro prepare`" in message
    assert not (tmp_path / "runs/pix2pix").exists()

    # A model trained on kept ids does not silently synthesize from the layout palette either.
    raw["cityscapes"]["keep_label_ids"] = True
    prepare(parse_params(raw))
    train(parse_params(raw), "pix2pix", console=Console(quiet=True))
    raw["cityscapes"]["keep_label_ids"] = False
    prepare(parse_params(raw))
    with pytest.raises(CrnError, match=r"val: no label_ids.npy.*cityscapes.keep_label_ids: true.*`crn-repro prepare`"):
        synthesize(parse_params(raw), "pix2pix", console=Console(quiet=True))


def test_layout_input_on_cityscapes_needs_no_ids(tmp_path, tiny_raw, recorded_inputs):
    root = tmp_path / "cs"
    write_cityscapes(root, size_hw=(64, 128))
    raw = cityscapes_pix2pix_raw(tiny_raw, root, keep_label_ids=False)
    raw["pix2pix"]["network"]["input"] = "layout"
    params = parse_params(raw)
    prepare(params)
    train(params, "pix2pix", until_step=1, console=Console(quiet=True))
    assert recorded_inputs[0][1].shape[1] == 20  # the one-hot layout


def _nyu(tiny_raw, tmp_path):
    write_nyu_mat(tmp_path / "nyu.mat", 9, hw=(48, 64), num_raw_classes=12, seed=3)
    tiny_raw["paths"]["raw"] = str(tmp_path)
    tiny_raw["data"]["dataset"] = "nyu"
    tiny_raw["nyu"].update(path=str(tmp_path / "nyu.mat"), num_frames=9, num_train=6, frame_size_hw=[48, 64],
                           num_classes=5, class_mapping=None, fit="crop")
    return tiny_raw


@pytest.mark.parametrize("dataset", ["synthetic", "nyu"])
def test_without_ids_color_is_the_dataset_palette(tmp_path, tiny_raw, recorded_inputs, dataset):
    raw = pix2pix_raw(tiny_raw)
    if dataset == "nyu":
        raw = _nyu(raw, tmp_path)
    params = parse_params(raw)
    meta = prepare(params)
    assert "label_id_colors" not in meta and not list((tmp_path / "data/prepared").glob("*/label_ids.npy"))
    out = io.StringIO()
    train(params, "pix2pix", until_step=1, console=Console(file=out, width=400))
    notes = [line for line in out.getvalue().splitlines() if "keeps no official label ids" in line]
    assert len(notes) == 1 and f"({dataset})" in notes[0] and "dataset palette" in notes[0]

    split = PreparedSplit(params.paths.prepared, "train")
    assert split.label_ids is None
    _, info = load_model(tmp_path / "runs/pix2pix/model.pt")
    kwargs = info["network_kwargs"]["G"]
    assert kwargs["color_source"] == "channels" and kwargs["colors"] == [list(c) for c in split.label_space.colors]
    layout = recorded_inputs[0][1]
    assert layout.shape[1] == split.num_classes  # the one-hot layout, coloured inside the network
    indices = batch_indices(params.model("pix2pix").train.seed, 0, len(split), 2)
    expected = split.label_space.palette[np.asarray(split.labels[indices])]
    encoded = ConditionInput(split.num_classes, "color", kwargs["colors"])(layout)
    assert np.array_equal(as_color_images(((encoded + 1) * 127.5).round()), expected)


def test_shipped_params_keep_ids_where_pix2pix_trains_on_colour():
    """A params file that trains pix2pix with input 'color' on Cityscapes keeps the label ids (else
    training stops at once); the 256p preset, the paper's comparisons, does."""
    from conftest import REPO

    from crn_repro.params import parse_params
    from crn_repro.presets import load_preset, preset_names

    trains_on_colour = []
    for name in preset_names(REPO / "presets"):
        params = parse_params(load_preset(name, REPO / "presets"))
        if params.data.dataset == "cityscapes" and "pix2pix" in params.models and params.model("pix2pix").network.input == "color":
            assert params.cityscapes.keep_label_ids, name
            trains_on_colour.append(name)
    assert "cityscapes-256p" in trains_on_colour
