"""Perception network Phi: VGG-19 features for the feature-matching loss (Sec. 3.3, Eq. 1).

Phi_l is VGG-19 after the ReLU of conv1_2, conv2_2, conv3_2, conv4_2 and conv5_2 (docs/facts.md §2.1),
so the network is built only up to relu5_2. Three weight sources, recorded on the module as
``source_description``:

- ``torchvision``: the IMAGENET1K_V1 state_dict (``vgg19-dcbb9e9d.pth``); inputs in [0, 1]
  normalised by the ImageNet mean/std.
- ``matconvnet``: ``imagenet-vgg-verydeep-19.mat``, the file the authors' release used; inputs are
  RGB 0..255 minus the mean colour, no std. (The release also swapped max for average pooling;
  pooling is a separate setting.)
- ``random``: seeded Kaiming init, for offline demos only; NOT a perception network.

Callers always pass RGB in 0..255; each weight convention's input conversion lives in
``VGG19Features.normalize_input`` and nowhere else.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crn_repro.checkpoint import read_state_dict
from crn_repro.errors import CrnError, check_choice, one_line

LAYERS = ("conv1_2", "conv2_2", "conv3_2", "conv4_2", "conv5_2")  # features taken after their ReLU

POOLINGS = ("max", "avg")
INPUT_CONVENTIONS = ("torchvision", "matconvnet")
SOURCES = ("torchvision", "matconvnet", "random")

# VGG-19 (configuration "E") up to conv5_2: (name, in_channels, out_channels). Every conv is 3x3,
# stride 1, padding 1; a 2x2 stride-2 pool precedes the first conv of blocks 2..5.
_CONVS = (
    ("conv1_1", 3, 64), ("conv1_2", 64, 64),
    ("conv2_1", 64, 128), ("conv2_2", 128, 128),
    ("conv3_1", 128, 256), ("conv3_2", 256, 256), ("conv3_3", 256, 256), ("conv3_4", 256, 256),
    ("conv4_1", 256, 512), ("conv4_2", 512, 512), ("conv4_3", 512, 512), ("conv4_4", 512, 512),
    ("conv5_1", 512, 512), ("conv5_2", 512, 512),
)  # fmt: skip
_POOL_BEFORE = frozenset({"conv2_1", "conv3_1", "conv4_1", "conv5_1"})

# Index of each conv in torchvision's ``vgg19().features`` Sequential (conv, ReLU per layer, plus one
# MaxPool per block); tests check this against torchvision's own structure.
TORCHVISION_FEATURE_INDEX = {
    "conv1_1": 0, "conv1_2": 2,
    "conv2_1": 5, "conv2_2": 7,
    "conv3_1": 10, "conv3_2": 12, "conv3_3": 14, "conv3_4": 16,
    "conv4_1": 19, "conv4_2": 21, "conv4_3": 23, "conv4_4": 25,
    "conv5_1": 28, "conv5_2": 30,
}  # fmt: skip

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MATCONVNET_MEAN_RGB = (123.68, 116.779, 103.939)  # fallback when the .mat carries no mean

TORCHVISION_FILE_NAME = "vgg19-dcbb9e9d.pth"
MATCONVNET_FILE_NAME = "imagenet-vgg-verydeep-19.mat"
MATCONVNET_MODELS_PAGE = "https://www.vlfeat.org/matconvnet/pretrained/"
PARAMS_KEY = "vgg.path"  # params.yaml key of the weights file


class VGG19Features(nn.Module):
    """VGG-19 up to relu5_2 (paper Sec. 3.3). Frozen: no parameter requires grad, always eval mode.

    Build it with ``load_vgg19``; a bare instance holds seeded random weights (seed 0).
    """

    def __init__(
        self,
        pooling: str = "max",
        input_convention: str = "torchvision",
        mean_rgb: tuple[float, float, float] | None = None,
    ) -> None:
        """pooling: "max" (standard VGG) or "avg" (the authors' release), 2x2 stride 2.
        input_convention: "torchvision" (x/255, then ImageNet mean/std) or "matconvnet" (x minus
        ``mean_rgb`` in 0..255 units, default MATCONVNET_MEAN_RGB; no std).
        """
        super().__init__()
        check_choice("VGG pooling (vgg.pooling)", pooling, POOLINGS)
        check_choice("input convention", input_convention, INPUT_CONVENTIONS)
        self.pooling = pooling
        self.input_convention = input_convention
        self.source_description = "random init (seed 0) — NOT pretrained"

        # skip_init: nn.Conv2d's own init would consume the global RNG; we initialise from a
        # local generator instead.
        self.convs = nn.ModuleDict(
            {
                name: nn.utils.skip_init(nn.Conv2d, c_in, c_out, kernel_size=3, padding=1)
                for name, c_in, c_out in _CONVS
            }
        )
        # x_normalised = x_0_255 * input_scale + input_shift, per channel. Not persistent: they
        # follow from the convention (and the .mat's mean), not from training.
        if input_convention == "torchvision":
            if mean_rgb is not None:
                raise ValueError("mean_rgb applies to the matconvnet input convention only")
            std = torch.tensor(IMAGENET_STD)
            scale = 1.0 / (255.0 * std)
            shift = -torch.tensor(IMAGENET_MEAN) / std
        else:
            scale = torch.ones(3)
            shift = -torch.tensor(mean_rgb if mean_rgb is not None else MATCONVNET_MEAN_RGB)
        self.register_buffer("input_scale", scale.float().reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_shift", shift.float().reshape(1, 3, 1, 1), persistent=False)

        self.init_random_(seed=0)
        self.requires_grad_(False)
        self.train(False)

    @torch.no_grad()
    def init_random_(self, seed: int) -> None:
        """Kaiming-normal (fan_out) weights and zero biases from a local generator (global RNG untouched)."""
        generator = torch.Generator().manual_seed(seed)
        for conv in self.convs.values():
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu", generator=generator)
            nn.init.zeros_(conv.bias)

    def train(self, mode: bool = True) -> VGG19Features:
        """Phi is a fixed measuring instrument: stay in eval mode whatever a parent module asks."""
        return super().train(False)

    def normalize_input(self, image_0_255: Tensor) -> Tensor:
        """RGB in 0..255 -> the input scaling the weights were trained with (the one place it happens)."""
        return image_0_255 * self.input_scale + self.input_shift

    def forward(self, image_0_255: Tensor) -> list[Tensor]:
        """image: float (N, 3, H, W) RGB in 0..255 (any memory format). Returns the after-ReLU
        features of LAYERS, in order, at 1, 1/2, 1/4, 1/8 and 1/16 resolution.
        """
        if image_0_255.ndim != 4 or image_0_255.shape[1] != 3 or min(image_0_255.shape[2:]) < 16:
            raise ValueError(f"expected an (N, 3, H, W) RGB image with H, W >= 16, got {tuple(image_0_255.shape)}")
        pool = F.max_pool2d if self.pooling == "max" else F.avg_pool2d
        x = self.normalize_input(image_0_255)
        features = []
        for name, _, _ in _CONVS:
            if name in _POOL_BEFORE:
                x = pool(x, kernel_size=2, stride=2)
            x = F.relu(self.convs[name](x), inplace=True)  # in place on the conv's fresh output
            if name in LAYERS:
                features.append(x)
        return features


def load_vgg19(
    source: str,
    path: str | Path | None,
    pooling: str,
    allow_download: bool = False,
    seed: int = 0,
) -> VGG19Features:
    """Perception network Phi from one of SOURCES, frozen and in eval mode.

    path: the weights file (torchvision: None means torch's hub cache; random: ignored).
    allow_download: torchvision only, fetch IMAGENET1K_V1 into the hub cache when it is absent.
    seed: random only.
    """
    check_choice("VGG weights source (vgg.weights)", source, SOURCES)
    if source == "random":
        vgg = VGG19Features(pooling, "torchvision")
        vgg.init_random_(seed)
        vgg.source_description = f"random init (seed {seed}) — NOT pretrained"
    elif source == "torchvision":
        state_dict, resolved = _read_torchvision(path, allow_download)
        weights = _torchvision_convs(state_dict, resolved)
        vgg = VGG19Features(pooling, "torchvision")
        _copy_convs(vgg, weights)
        vgg.source_description = f"torchvision IMAGENET1K_V1 from {resolved}"
    else:
        weights, mean_rgb, resolved = _read_matconvnet(path)
        vgg = VGG19Features(pooling, "matconvnet", mean_rgb=mean_rgb)
        _copy_convs(vgg, weights)
        mean_text = ", ".join(f"{m:.3f}" for m in mean_rgb)
        vgg.source_description = f"MatConvNet {resolved.name} from {resolved} (mean RGB {mean_text})"
    return vgg.requires_grad_(False).eval()


@torch.no_grad()
def _copy_convs(vgg: VGG19Features, weights: dict[str, tuple[Tensor, Tensor]]) -> None:
    """Copy checked (weight (out, in, 3, 3), bias (out,)) pairs into the named convs."""
    for name, (weight, bias) in weights.items():
        vgg.convs[name].weight.copy_(weight)
        vgg.convs[name].bias.copy_(bias)


# ---------------------------------------------------------------------------------------------
# torchvision: state_dict with features.N.weight / features.N.bias (classifier.* ignored)


def _read_torchvision(path: str | Path | None, allow_download: bool) -> tuple[dict, Path]:
    """The IMAGENET1K_V1 state_dict and where it came from; downloads only if allowed."""
    fix = f"put torchvision's {TORCHVISION_FILE_NAME} there ({_torchvision_url()}) or fix {PARAMS_KEY}"
    if path is not None:
        return read_state_dict(path, "VGG-19 weights file", fix), Path(path)

    cached = Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_FILE_NAME
    if cached.is_file():
        return read_state_dict(cached, "VGG-19 weights file", fix), cached
    if not allow_download:
        raise CrnError(
            f"{cached}: torchvision VGG-19 weights not found; download {_torchvision_url()} to that "
            f"path, set {PARAMS_KEY} to a copy of {TORCHVISION_FILE_NAME}, or set vgg.allow_download: true"
        )
    state_dict = torch.hub.load_state_dict_from_url(
        _torchvision_url(), map_location="cpu", check_hash=True, weights_only=True
    )
    return state_dict, cached


def _torchvision_url() -> str:
    from torchvision.models import VGG19_Weights

    return VGG19_Weights.IMAGENET1K_V1.url


def _torchvision_convs(state_dict: dict, path: Path) -> dict[str, tuple[Tensor, Tensor]]:
    """features.N.weight / features.N.bias of every conv up to conv5_2, keys and shapes checked."""
    missing = [
        f"features.{index}.{kind}"
        for index in TORCHVISION_FEATURE_INDEX.values()
        for kind in ("weight", "bias")
        if f"features.{index}.{kind}" not in state_dict
    ]
    if missing:
        raise CrnError(
            f"{path}: not a torchvision VGG-19 state_dict, missing {len(missing)} key(s): "
            f"{', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}"
        )
    weights = {}
    for name, c_in, c_out in _CONVS:
        pair = []
        for kind, shape in (("weight", (c_out, c_in, 3, 3)), ("bias", (c_out,))):
            key = f"features.{TORCHVISION_FEATURE_INDEX[name]}.{kind}"
            value = state_dict[key]
            if not isinstance(value, Tensor) or tuple(value.shape) != shape:
                got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise CrnError(f"{path}: {key} ({name}) has shape {got}, expected {shape}")
            pair.append(value)
        weights[name] = (pair[0], pair[1])
    return weights


# ---------------------------------------------------------------------------------------------
# MatConvNet: imagenet-vgg-verydeep-19.mat (layers cell of structs; meta.normalization)


def _read_matconvnet(path: str | Path | None) -> tuple[dict[str, tuple[Tensor, Tensor]], tuple, Path]:
    """Conv weights up to conv5_2 in torch layout, the mean RGB (0..255) and the resolved path."""
    how_to_get = (
        f"download {MATCONVNET_FILE_NAME} from the MatConvNet pretrained models page "
        f"({MATCONVNET_MODELS_PAGE}) and set {PARAMS_KEY} to its path"
    )
    if path is None:
        raise CrnError(f"{PARAMS_KEY} is not set: the matconvnet VGG-19 source needs a file; {how_to_get}")
    path = Path(path)
    if not path.is_file():
        raise CrnError(f"{path}: MatConvNet VGG-19 file not found; {how_to_get}")

    import scipy.io

    try:
        # squeeze_me drops MATLAB's 1x1 wrappers; struct_as_record=False gives attribute access.
        mat = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)
    except NotImplementedError as error:  # v7.3 files are HDF5
        raise CrnError(f"{path}: MATLAB v7.3 (HDF5) .mat is not supported; re-save it with -v7") from error
    except Exception as error:
        raise CrnError(f"{path}: cannot read as a MATLAB .mat file ({one_line(error)})") from error
    if "layers" not in mat:
        raise CrnError(f"{path}: no top-level 'layers'; not a MatConvNet SimpleNN model like {MATCONVNET_FILE_NAME}")

    layers = {}
    for layer in np.atleast_1d(mat["layers"]).ravel():
        name = getattr(layer, "name", None)
        if isinstance(name, str):
            layers[name] = layer

    weights = {}
    for name, c_in, c_out in _CONVS:
        layer = layers.get(name)
        if layer is None or getattr(layer, "type", None) != "conv":
            raise CrnError(f"{path}: no conv layer named {name!r}; not a VGG-19 MatConvNet model")
        w, b = _matconvnet_conv_arrays(layer)
        if w is None or w.shape != (3, 3, c_in, c_out) or b is None or b.size != c_out:
            got_w = None if w is None else w.shape
            got_b = None if b is None else b.shape
            raise CrnError(
                f"{path}: layer {name} has weights {got_w} and bias {got_b}, "
                f"expected (3, 3, {c_in}, {c_out}) and {c_out} values"
            )
        # W[u, v, c, o] has u along rows (height): MatConvNet's Caffe importer writes filters as
        # (height, width, in, out) and the authors' release fed them to tf.nn.conv2d as HWIO
        # unchanged (vl_nnconv's help text says "FW x FH"; ports that trusted it transpose every
        # filter). Both libraries correlate, so torch's weight[o, c, u, v] is a permutation, no flip.
        weight = torch.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1), dtype=np.float32))
        bias = torch.from_numpy(np.ascontiguousarray(b.reshape(-1), dtype=np.float32))
        weights[name] = (weight, bias)
    return weights, _matconvnet_mean(mat, path), path


def _matconvnet_conv_arrays(layer) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(W, b) from the layer's ``weights`` cell {W, b}; (None, None) if it has no such pair."""
    pair = np.atleast_1d(getattr(layer, "weights", None))
    if pair.dtype != object or pair.size != 2:
        return None, None
    return np.asarray(pair.flat[0]), np.asarray(pair.flat[1])


def _matconvnet_mean(mat: dict, path: Path) -> tuple[float, float, float]:
    """Per-channel mean of averageImage (1x1x3 or HxWx3), from meta.normalization (current files)
    or top-level normalization (older files); MATCONVNET_MEAN_RGB if neither has one.
    """
    normalization = getattr(mat.get("meta"), "normalization", None)
    if normalization is None:
        normalization = mat.get("normalization")
    average = getattr(normalization, "averageImage", None)
    if average is None:
        return MATCONVNET_MEAN_RGB
    average = np.asarray(average, dtype=np.float64)
    if average.size == 0:
        return MATCONVNET_MEAN_RGB
    if average.shape[-1] != 3:
        raise CrnError(f"{path}: normalization.averageImage has shape {average.shape}, expected 1x1x3 or HxWx3")
    mean = average.reshape(-1, 3).mean(axis=0)
    return (float(mean[0]), float(mean[1]), float(mean[2]))
