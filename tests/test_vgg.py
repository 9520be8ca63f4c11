"""Perception network Phi (crn_repro/vgg.py): weight sources, conventions, freezing, errors."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io
import scipy.signal
import torch
import torchvision
from torch import nn

from crn_repro.errors import CrnError
from crn_repro.vgg import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    LAYERS,
    MATCONVNET_MEAN_RGB,
    TORCHVISION_FEATURE_INDEX,
    VGG19Features,
    load_vgg19,
)

# The full VGG-19 conv list in MatConvNet naming; conv5_3/conv5_4 are in the files but unused.
VGG19_CONVS = (
    ("conv1_1", 3, 64), ("conv1_2", 64, 64),
    ("conv2_1", 64, 128), ("conv2_2", 128, 128),
    ("conv3_1", 128, 256), ("conv3_2", 256, 256), ("conv3_3", 256, 256), ("conv3_4", 256, 256),
    ("conv4_1", 256, 512), ("conv4_2", 512, 512), ("conv4_3", 512, 512), ("conv4_4", 512, 512),
    ("conv5_1", 512, 512), ("conv5_2", 512, 512), ("conv5_3", 512, 512), ("conv5_4", 512, 512),
)  # fmt: skip
FEATURE_SHAPES_32x64 = [(64, 32, 64), (128, 16, 32), (256, 8, 16), (512, 4, 8), (512, 2, 4)]


def random_image(n=1, h=32, w=64, seed=0) -> torch.Tensor:
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed)) * 255.0


# ---------------------------------------------------------------------------------------------
# torchvision source


def torchvision_features(seed: int = 0) -> nn.Sequential:
    """torchvision's own vgg19().features with seeded random weights (built on meta, so the 100M
    classifier weights are never allocated)."""
    with torch.device("meta"):
        model = torchvision.models.vgg19(weights=None)
    features = model.features.to_empty(device="cpu").eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in features:
            if isinstance(layer, nn.Conv2d):
                nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu", generator=generator)
                layer.bias.normal_(0.0, 0.1, generator=generator)
    return features


def torchvision_state_dict(features: nn.Sequential) -> dict[str, torch.Tensor]:
    """Keyed like vgg19-dcbb9e9d.pth: features.N.* plus classifier.* (a tiny stand-in; the loader
    ignores classifier.*)."""
    state_dict = {f"features.{k}": v for k, v in features.state_dict().items()}
    state_dict["classifier.0.weight"] = torch.zeros(4, 8)
    return state_dict


@pytest.fixture(scope="module")
def torchvision_file(tmp_path_factory):
    features = torchvision_features(seed=0)
    path = tmp_path_factory.mktemp("tv") / "vgg19-dcbb9e9d.pth"
    torch.save(torchvision_state_dict(features), path)
    return features, path


def test_torchvision_index_table_matches_torchvision_structure():
    with torch.device("meta"):
        features = torchvision.models.vgg19(weights=None).features
    conv_indices = [i for i, layer in enumerate(features) if isinstance(layer, nn.Conv2d)]
    assert conv_indices[: len(TORCHVISION_FEATURE_INDEX)] == list(TORCHVISION_FEATURE_INDEX.values())
    ours = VGG19Features()
    for name, index in TORCHVISION_FEATURE_INDEX.items():
        theirs, mine = features[index], ours.convs[name]
        assert (theirs.in_channels, theirs.out_channels) == (mine.in_channels, mine.out_channels)
        assert isinstance(features[index + 1], nn.ReLU)
    # After-ReLU outputs of LAYERS sit at these indices of torchvision's Sequential.
    assert [TORCHVISION_FEATURE_INDEX[name] + 1 for name in LAYERS] == [3, 8, 13, 22, 31]


def test_torchvision_source_matches_torchvision_features(torchvision_file):
    features, path = torchvision_file
    vgg = load_vgg19("torchvision", path, "max")
    assert vgg.input_convention == "torchvision"
    assert str(path) in vgg.source_description and "IMAGENET1K_V1" in vgg.source_description

    image = random_image()
    mean = torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1)
    x = (image / 255.0 - mean) / std
    expected = []
    with torch.no_grad():
        for index, layer in enumerate(features[:32]):
            x = layer(x)
            if index in (3, 8, 13, 22, 31):
                expected.append(x.clone())
        ours = vgg(image)
    assert len(ours) == len(LAYERS)
    for got, want in zip(ours, expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


def test_torchvision_source_finds_hub_cache(torchvision_file, tmp_path, monkeypatch):
    _, path = torchvision_file
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "vgg19-dcbb9e9d.pth").symlink_to(path)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    vgg = load_vgg19("torchvision", None, "max")
    assert str(tmp_path / "checkpoints" / "vgg19-dcbb9e9d.pth") in vgg.source_description


def test_torchvision_source_without_file_or_download_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(CrnError) as error:
        load_vgg19("torchvision", None, "max")
    message = str(error.value)
    assert str(tmp_path / "checkpoints" / "vgg19-dcbb9e9d.pth") in message
    assert "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth" in message
    assert "vgg.path" in message
    assert "\n" not in message


def test_torchvision_source_downloads_only_when_allowed(torchvision_file, tmp_path, monkeypatch):
    calls = []

    def fake_download(url, **kwargs):
        calls.append((url, kwargs))
        return torchvision_state_dict(torchvision_file[0])

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    with pytest.raises(CrnError):
        load_vgg19("torchvision", None, "max")
    assert calls == []
    load_vgg19("torchvision", None, "max", allow_download=True)
    assert calls[0][0] == "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"
    assert calls[0][1]["weights_only"] is True


def test_torchvision_missing_file(tmp_path):
    path = tmp_path / "nope.pth"
    with pytest.raises(CrnError, match="vgg.path") as error:
        load_vgg19("torchvision", path, "max")
    assert str(path) in str(error.value)


def test_torchvision_corrupt_file(tmp_path):
    path = tmp_path / "corrupt.pth"
    path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CrnError) as error:
        load_vgg19("torchvision", path, "max")
    message = str(error.value)
    assert f"{path}: not a readable VGG-19 weights file (" in message and "\n" not in message
    assert "put torchvision's vgg19-dcbb9e9d.pth there (https://download.pytorch.org/models/vgg19-dcbb9e9d.pth)" in message
    assert "vgg.path" in message


def test_torchvision_state_dict_missing_key(torchvision_file, tmp_path):
    state_dict = torchvision_state_dict(torchvision_file[0])
    del state_dict["features.21.weight"]  # conv4_2
    path = tmp_path / "incomplete.pth"
    torch.save(state_dict, path)
    with pytest.raises(CrnError, match="features.21.weight") as error:
        load_vgg19("torchvision", path, "max")
    assert str(path) in str(error.value)


def test_torchvision_state_dict_wrong_shape(torchvision_file, tmp_path):
    state_dict = torchvision_state_dict(torchvision_file[0])
    state_dict["features.12.weight"] = torch.zeros(256, 256, 1, 1)
    path = tmp_path / "wrong_shape.pth"
    torch.save(state_dict, path)
    with pytest.raises(CrnError, match=r"features\.12\.weight \(conv3_2\)") as error:
        load_vgg19("torchvision", path, "max")
    assert str(path) in str(error.value)


# ---------------------------------------------------------------------------------------------
# MatConvNet source: files mirroring imagenet-vgg-verydeep-19.mat's structure


def vgg19_matconvnet_layer_names() -> list[tuple[str, str]]:
    """(name, type) for the 43 layers of the real file."""
    layers = []
    for block, convs in enumerate((2, 2, 4, 4, 4), start=1):
        for i in range(1, convs + 1):
            layers += [(f"conv{block}_{i}", "conv"), (f"relu{block}_{i}", "relu")]
        layers.append((f"pool{block}", "pool"))
    layers += [("fc6", "conv"), ("relu6", "relu"), ("fc7", "conv"), ("relu7", "relu")]
    layers += [("fc8", "conv"), ("prob", "softmax")]
    return layers


@pytest.fixture(scope="module")
def matconvnet_arrays():
    """Known random conv weights in MatConvNet layout (height, width, in, out) and biases."""
    rng = np.random.default_rng(0)
    arrays = {}
    for name, c_in, c_out in VGG19_CONVS:
        w = (rng.standard_normal((3, 3, c_in, c_out)) * np.sqrt(2.0 / (9 * c_in))).astype(np.float32)
        b = (rng.standard_normal(c_out) * 0.1).astype(np.float32)
        arrays[name] = (w, b)
    return arrays


def write_matconvnet_file(
    path, arrays, *, normalization="meta", average_image=None, bias_shape="row", layer_names=None
) -> None:
    """A .mat laid out like MatConvNet's file: ``layers`` a 1xN cell of structs name/type/weights,
    the mean image under meta.normalization (current files) or top-level normalization (older)."""
    layer_names = layer_names or vgg19_matconvnet_layer_names()
    cells = np.empty((1, len(layer_names)), dtype=object)
    for i, (name, kind) in enumerate(layer_names):
        weights = np.empty((1, 0), dtype=object)  # relu/pool/softmax: an empty cell
        layer = {"name": name, "type": kind, "weights": None}  # the real file's field order
        if name in arrays:
            w, b = arrays[name]
            weights = np.empty((1, 2), dtype=object)
            weights[0, 0] = w
            weights[0, 1] = b.reshape(1, -1) if bias_shape == "row" else b.reshape(-1, 1)
            layer.update(pad=np.ones((1, 4)), stride=np.ones((1, 2)))
        elif kind == "conv":  # fc6..fc8: tiny stand-ins (the real fc6 is 7x7x512x4096), unused by Phi
            weights = np.empty((1, 2), dtype=object)
            weights[0, 0] = np.zeros((1, 1, 4, 3), dtype=np.float32)
            weights[0, 1] = np.zeros((1, 3), dtype=np.float32)
        elif kind == "pool":
            layer.update(method="max", pool=np.full((1, 2), 2.0), stride=np.full((1, 2), 2.0), pad=np.zeros((1, 4)))
        layer["weights"] = weights
        cells[0, i] = layer
    content = {"layers": cells}
    norm = {"imageSize": np.array([[224.0, 224.0, 3.0, 1.0]])}
    if average_image is not None:
        norm["averageImage"] = average_image
    if normalization == "meta":
        content["meta"] = {"normalization": norm, "classes": {"name": np.array(["n01440764"], dtype=object)}}
    elif normalization == "top-level":
        content["normalization"] = norm
    scipy.io.savemat(path, content)


@pytest.fixture(scope="module")
def matconvnet_file(tmp_path_factory, matconvnet_arrays):
    path = tmp_path_factory.mktemp("mcn") / "imagenet-vgg-verydeep-19.mat"
    mean = np.array(MATCONVNET_MEAN_RGB, dtype=np.float64).reshape(1, 1, 3)
    write_matconvnet_file(path, matconvnet_arrays, average_image=mean)
    return path


@pytest.fixture(scope="module")
def matconvnet_vgg(matconvnet_file):
    return load_vgg19("matconvnet", matconvnet_file, "max")


def correlate_hwc(x_hwc: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """MatConvNet's 3x3 conv (pad 1) by definition: y[i,j,o] = b[o] + sum W[u,v,c,o] x[i+u, j+v, c],
    with u along rows (height) and v along columns (width)."""
    padded = np.pad(x_hwc, ((1, 1), (1, 1), (0, 0)))
    patches = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(0, 1))  # (H, W, C, u, v)
    return np.einsum("hwcuv,uvco->hwo", patches, w.astype(np.float64)) + b.astype(np.float64)


def test_matconvnet_conv1_1_matches_scipy_correlate(matconvnet_vgg, matconvnet_arrays):
    vgg = matconvnet_vgg
    image = random_image(h=5, w=7)
    with torch.no_grad():
        got = vgg.convs["conv1_1"](vgg.normalize_input(image))[0].numpy()  # (64, 5, 7)
    x = image[0].permute(1, 2, 0).double().numpy() - np.array(MATCONVNET_MEAN_RGB)  # H x W x RGB
    w, b = matconvnet_arrays["conv1_1"]
    padded = np.pad(x, ((1, 1), (1, 1), (0, 0)))
    for o in (0, 17, 63):
        want = b[o] + sum(scipy.signal.correlate(padded[:, :, c], w[:, :, c, o], mode="valid") for c in range(3))
        np.testing.assert_allclose(got[o], want, rtol=1e-4, atol=1e-3)


def test_matconvnet_source_matches_hand_computed_conv1_2(matconvnet_vgg, matconvnet_arrays):
    vgg = matconvnet_vgg
    assert vgg.input_convention == "matconvnet"
    assert "MatConvNet imagenet-vgg-verydeep-19.mat from" in vgg.source_description
    image = random_image(h=16, w=24)  # H != W and asymmetric filters: a swapped axis cannot pass
    with torch.no_grad():
        got = vgg(image)[0][0].permute(1, 2, 0).numpy()  # relu1_2 as H x W x C

    def relu1_2(w1, w2):
        x = image[0].permute(1, 2, 0).double().numpy() - np.array(MATCONVNET_MEAN_RGB)
        x = np.maximum(correlate_hwc(x, w1, matconvnet_arrays["conv1_1"][1]), 0)
        return np.maximum(correlate_hwc(x, w2, matconvnet_arrays["conv1_2"][1]), 0)

    (w1, _), (w2, _) = matconvnet_arrays["conv1_1"], matconvnet_arrays["conv1_2"]
    want = relu1_2(w1, w2)
    tolerance = 1e-4 * np.abs(want).max()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=tolerance)
    # The check is sensitive to the layout: reading W as (width, height, ...) or BGR would fail it.
    assert not np.allclose(got, relu1_2(w1.transpose(1, 0, 2, 3), w2.transpose(1, 0, 2, 3)), atol=tolerance)
    assert not np.allclose(got, relu1_2(w1[:, :, ::-1], w2), atol=tolerance)


def test_matconvnet_all_layers_loaded(matconvnet_vgg, matconvnet_arrays):
    vgg = matconvnet_vgg
    for name, _, _ in VGG19_CONVS[:14]:
        w, b = matconvnet_arrays[name]
        np.testing.assert_array_equal(vgg.convs[name].weight.numpy(), w.transpose(3, 2, 0, 1))
        np.testing.assert_array_equal(vgg.convs[name].bias.numpy(), b)
    assert [tuple(f.shape[1:]) for f in vgg(random_image())] == FEATURE_SHAPES_32x64


@pytest.mark.parametrize(
    ("normalization", "average_image", "bias_shape", "expected_mean"),
    [
        # older files: top-level normalization, column biases
        ("top-level", np.array([10.0, 20.0, 30.0]).reshape(1, 1, 3), "column", (10.0, 20.0, 30.0)),
        # an H x W x 3 mean image: its per-channel mean
        ("meta", np.stack([np.full((4, 6), 1.0), np.arange(24.0).reshape(4, 6), np.full((4, 6), 5.0)], axis=-1),
         "row", (1.0, 11.5, 5.0)),
        ("none", None, "row", MATCONVNET_MEAN_RGB),  # no mean stored: the known VGG mean
    ],
)  # fmt: skip
def test_matconvnet_file_variants(tmp_path, matconvnet_arrays, normalization, average_image, bias_shape, expected_mean):
    path = tmp_path / "variant.mat"
    write_matconvnet_file(
        path, matconvnet_arrays, normalization=normalization, average_image=average_image, bias_shape=bias_shape
    )
    vgg = load_vgg19("matconvnet", path, "max")
    torch.testing.assert_close(vgg.input_shift.flatten(), -torch.tensor(expected_mean, dtype=torch.float32))
    torch.testing.assert_close(vgg.input_scale.flatten(), torch.ones(3))
    np.testing.assert_array_equal(vgg.convs["conv5_2"].bias.numpy(), matconvnet_arrays["conv5_2"][1])


def test_matconvnet_errors(tmp_path, matconvnet_arrays):
    with pytest.raises(CrnError, match="vgg.path") as error:
        load_vgg19("matconvnet", None, "avg")
    assert "vlfeat.org/matconvnet/pretrained" in str(error.value)

    missing = tmp_path / "imagenet-vgg-verydeep-19.mat"
    with pytest.raises(CrnError, match="vlfeat.org/matconvnet/pretrained") as error:
        load_vgg19("matconvnet", missing, "avg")
    assert str(missing) in str(error.value)

    corrupt = tmp_path / "corrupt.mat"
    corrupt.write_bytes(b"MATLAB 5.0 MAT-file, but truncated" + bytes(20))
    with pytest.raises(CrnError) as error:
        load_vgg19("matconvnet", corrupt, "avg")
    assert str(corrupt) in str(error.value) and "\n" not in str(error.value)

    truncated = tmp_path / "vgg16ish.mat"  # a valid .mat that stops after block 1
    write_matconvnet_file(truncated, matconvnet_arrays, layer_names=vgg19_matconvnet_layer_names()[:5])
    with pytest.raises(CrnError, match="conv2_1") as error:
        load_vgg19("matconvnet", truncated, "avg")
    assert str(truncated) in str(error.value)

    wrong_shape = tmp_path / "wrong_shape.mat"
    arrays = dict(matconvnet_arrays, conv1_2=(np.zeros((3, 3, 64, 32), np.float32), np.zeros(32, np.float32)))
    write_matconvnet_file(wrong_shape, arrays, layer_names=vgg19_matconvnet_layer_names()[:5])
    with pytest.raises(CrnError, match=r"conv1_2 has weights \(3, 3, 64, 32\)") as error:
        load_vgg19("matconvnet", wrong_shape, "avg")
    assert str(wrong_shape) in str(error.value)


# ---------------------------------------------------------------------------------------------
# Random source, pooling, freezing, memory format


@pytest.fixture(scope="module")
def random_vgg():
    return load_vgg19("random", None, "max")


def test_random_source_is_deterministic_and_leaves_global_rng_alone():
    rng_state = torch.get_rng_state()
    a = load_vgg19("random", None, "max", seed=3)
    b = load_vgg19("random", None, "max", seed=3)
    c = load_vgg19("random", None, "max", seed=4)
    assert torch.equal(torch.get_rng_state(), rng_state)
    for name in ("conv1_1", "conv5_2"):
        assert torch.equal(a.convs[name].weight, b.convs[name].weight)
        assert not torch.equal(a.convs[name].weight, c.convs[name].weight)
        assert torch.count_nonzero(a.convs[name].bias) == 0
    assert a.input_convention == "torchvision"
    assert a.source_description == "random init (seed 3) — NOT pretrained"


def test_avg_and_max_pooling_differ_after_the_first_pool(random_vgg):
    image = random_image()
    with torch.no_grad():
        max_features = random_vgg(image)
        avg_features = load_vgg19("random", None, "avg")(image)
    assert torch.equal(max_features[0], avg_features[0])  # conv1_2 comes before any pooling
    for got_max, got_avg in zip(max_features[1:], avg_features[1:]):
        assert got_max.shape == got_avg.shape
        assert not torch.allclose(got_max, got_avg)


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(CrnError, match="torchvision, matconvnet, random"):
        load_vgg19("caffe", None, "max")
    with pytest.raises(CrnError, match="max, avg"):
        load_vgg19("random", None, "mean")


def test_frozen_eval_and_differentiable_in_the_input(random_vgg):
    vgg = random_vgg
    parent = nn.Sequential(vgg)
    parent.train()
    assert not vgg.training and not any(m.training for m in vgg.modules())
    assert not any(p.requires_grad for p in vgg.parameters())

    image = random_image().requires_grad_(True)
    features = vgg(image)
    assert [tuple(f.shape[1:]) for f in features] == FEATURE_SHAPES_32x64
    sum(f.mean() for f in features).backward()
    assert image.grad is not None and image.grad.abs().sum() > 0
    assert all(p.grad is None for p in vgg.parameters())


def test_too_small_input_is_refused(random_vgg):
    with pytest.raises(ValueError, match="H, W >= 16"):
        random_vgg(random_image(h=8, w=64))


def test_channels_last_input_gives_the_same_features(random_vgg):
    vgg = random_vgg
    image = random_image(n=2)
    with torch.no_grad():
        expected = vgg(image)
        got = vgg(image.to(memory_format=torch.channels_last))
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)
