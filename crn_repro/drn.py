"""DRN-D-105, the Cityscapes segmenter of the literature's protocols (docs/facts.md §7, §11).

SPADE (Park et al. 2019) scored CRN and later methods by segmenting the synthesized Cityscapes images
with the dilated residual network DRN-D-105 (Yu, Koltun & Funkhouser 2017) as released in fyu/drn
(`drn-d-105_ms_cityscapes.pth`): mIoU over the 19 train classes and pixel accuracy, void ignored.
This module builds that network with the release's module layout, so that its state_dict loads as
it is, and scores images with it. Nothing is downloaded: the weights file is given by path.

The network (facts of the release, written here in our own code): a stem of a 7x7 convolution
(3 -> 16) with BatchNorm and ReLU; two plain 3x3 conv stages (16, 32 channels; the second strided);
four stages of bottleneck residual blocks (expansion 4) with 3, 4, 23 and 3 blocks at widths 64, 128,
256 and 512, the first two strided, the last two dilated 2 and 4 instead of strided (output stride
8); two plain 3x3 conv stages of 512 channels with dilation 2 and 1; a 1x1 classifier with bias;
and a fixed bilinear 8x up-sampling (a grouped transposed convolution, kernel 16, stride 8, padding
4). Inputs: RGB in [0, 1] normalised by the release's Cityscapes mean and standard deviation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from crn_repro.checkpoint import read_torch_file
from crn_repro.errors import CrnError

NUM_CLASSES = 19  # the Cityscapes train classes; void is ignored
MEAN = (0.29010095242892997, 0.32808144844279574, 0.28696394422942517)  # fyu/drn's Cityscapes statistics
STD = (0.1829540508368939, 0.18656561047509476, 0.18447508988480435)
FILE_NAME = "drn-d-105_ms_cityscapes.pth"
WHERE = f"fyu/drn's Cityscapes model {FILE_NAME} (linked from github.com/fyu/drn's README)"
# The two variants of the score, by the suffix of their metric names (drn_miou, drn_miou_upsampled, ...):
# the synthesized images segmented as they are, against labels of their size, or upsampled bilinearly to the
# frames' size (1024x2048) and rounded to 8 bits as saved images are, against the frames' own labels. Which one
# SPADE's published numbers used is open (docs/facts.md §11): neither is called SPADE's protocol.
VARIANTS = {"": "synthesis-size", "_upsampled": "upsampled"}
BLOCKS = (3, 4, 23, 3)  # bottleneck blocks of the four residual stages
WIDTHS = (16, 32, 64, 128, 256, 512, 512, 512)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride, dilation) -> 1x1 (x4 channels), BatchNorm after each, residual added before the last ReLU."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


def _plain(inplanes: int, channels: int, stride: int = 1, dilation: int = 1, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inplanes, channels, kernel, stride=stride, padding=dilation * (kernel // 2), dilation=dilation, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU(inplace=True),
    )


def _residual(inplanes: int, planes: int, blocks: int, stride: int, dilation: int) -> nn.Sequential:
    downsample = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride=stride, bias=False), nn.BatchNorm2d(planes * 4))
    layers = [Bottleneck(inplanes, planes, stride, dilation, downsample)]
    layers += [Bottleneck(planes * 4, planes, 1, dilation) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def bilinear_kernel(size: int) -> Tensor:
    """The (size, size) bilinear interpolation kernel of an up-sampling by size // 2 (as FCN's)."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    ramp = 1 - (torch.arange(size, dtype=torch.float64) - center).abs() / factor
    return (ramp[:, None] * ramp[None, :]).float()


class DRNSegmenter(nn.Module):
    """DRN-D-105 for Cityscapes segmentation; ``forward``: RGB (N, 3, H, W) in 0..255 -> class scores
    (N, 19, H, W) (H and W multiples of 8). The state_dict keys are those of the release's file
    (``base.<stage>...``, ``seg``, ``up``)."""

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        w = WIDTHS
        self.base = nn.Sequential(
            _plain(3, w[0], kernel=7),
            _plain(w[0], w[0]),
            _plain(w[0], w[1], stride=2),
            _residual(w[1], w[2], BLOCKS[0], stride=2, dilation=1),
            _residual(w[2] * 4, w[3], BLOCKS[1], stride=2, dilation=1),
            _residual(w[3] * 4, w[4], BLOCKS[2], stride=1, dilation=2),
            _residual(w[4] * 4, w[5], BLOCKS[3], stride=1, dilation=4),
            _plain(w[5] * 4, w[6], dilation=2),
            _plain(w[6], w[7]),
        )
        self.seg = nn.Conv2d(w[7], num_classes, 1, bias=True)
        self.up = nn.ConvTranspose2d(num_classes, num_classes, 16, stride=8, padding=4, groups=num_classes, bias=False)
        with torch.no_grad():
            self.up.weight.copy_(bilinear_kernel(16).expand_as(self.up.weight))
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> DRNSegmenter:  # a measuring instrument: BatchNorm keeps its statistics
        return super().train(False)

    def forward(self, images_0_255: Tensor) -> Tensor:
        if images_0_255.shape[-2] % 8 or images_0_255.shape[-1] % 8:
            raise CrnError(f"DRN-D-105: image size {tuple(images_0_255.shape[-2:])} is not a multiple of 8")
        x = (images_0_255.float() - self.mean) / self.std
        return self.up(self.seg(self.base(x)))


def load_drn(path: str | Path, device: str | torch.device = "cpu") -> DRNSegmenter:
    """DRN-D-105 with the weights of ``path`` (the release's state_dict; a ``state_dict`` entry and a
    DataParallel ``module.`` prefix are accepted); every key and shape is checked."""
    path = Path(path)
    state = read_torch_file(path, "DRN-D-105 weights file", f"it is {WHERE} (evaluate.drn_weights)")
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CrnError(f"{path}: expected a state_dict, got {type(state).__name__}; expected {FILE_NAME}")
    state = {key.removeprefix("module."): value for key, value in state.items()}
    net = DRNSegmenter()
    expected = net.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise CrnError(f"{path}: not DRN-D-105 for Cityscapes ({len(missing)} missing keys, e.g. {missing[:2]}; "
                       f"{len(unexpected)} unexpected, e.g. {unexpected[:2]}); expected {FILE_NAME}")
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise CrnError(f"{path}: {key} has shape {tuple(value.shape)}, DRN-D-105 has {tuple(expected[key].shape)}")
    net.load_state_dict(state, strict=False)
    return net.to(device)


def confusion(predicted: Tensor, target: Tensor, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """(num_classes + 1) x (num_classes + 1) counts, rows = target (the last row: void, any id >= num_classes)."""
    t = target.flatten().long().clamp(max=num_classes)
    p = predicted.flatten().long()
    return torch.bincount(t * (num_classes + 1) + p, minlength=(num_classes + 1) ** 2).reshape(num_classes + 1, -1).numpy()


def scores(counts: np.ndarray) -> dict[str, float]:
    """mIoU over the classes that occur (in the targets or the predictions), pixel accuracy with void
    ignored (the literature's) and with void counted as wrong."""
    c = counts[:-1, :-1].astype(np.float64)  # void rows and the (never predicted) void column left out
    true_positive = np.diag(c)
    union = c.sum(0) + c.sum(1) - true_positive
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = true_positive / union
    return {"miou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
            "pixel_accuracy": float(true_positive.sum() / c.sum()) if c.sum() else float("nan"),
            "pixel_accuracy_void_counted": float(true_positive.sum() / counts.sum()) if counts.sum() else float("nan")}
