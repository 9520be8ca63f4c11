"""Full-resolution network baseline (Chen & Koltun 2017, Sec. 4; docs/facts.md §5).

A context-aggregation network (Yu & Koltun 2016) with its dilation schedule inverted: the first
layer has the largest dilation and each later one halves it, because semantic layouts are
piecewise constant and a network that starts with a small receptive field sees nothing but flat
regions. Every layer works at the full image resolution, which is what makes it memory-hungry
(see crn_repro.memory). Paper setting: 10 layers of 256 feature maps, trained with the CRN loss.

UNCONFIRMED (no code was released), chosen here and exposed as parameters: 3x3 convolutions with
padding = dilation, each followed by layer normalization and LReLU(0.2) as in a CRN module; the
dilations max_dilation, max_dilation / 2, ... (integer halving) floored at 1 for the remaining
layers; the CRN's 1x1 output convolution and [-1, 1] -> [0, 255] mapping on top.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from crn_repro.config import doc
from crn_repro.crn import CRN, LayerNorm2d


@dataclass(frozen=True)
class FullResNetworkParams:
    """params.yaml ``<model>.network`` for the full-resolution network."""

    num_layers: int = doc("dilated 3x3 layers, all at full resolution (paper: 10)", 1, 100)
    width: int = doc("feature maps per layer (paper: 256)", 1, 65536)
    max_dilation: int | None = doc(
        "dilation of the first layer, halved by each later one down to 1; null = the largest power of 2 "
        "not above min(H, W) / 4, so the receptive field 1 + 2 * sum(dilations) spans about min(H, W)", 1, 65536
    )

    def validate(self):
        if self.num_layers < 1:
            yield "num_layers", "must be >= 1"
        if self.width < 1:
            yield "width", "must be >= 1"
        if self.max_dilation is not None and self.max_dilation < 1:
            yield "max_dilation", "must be >= 1 (or null)"


def default_max_dilation(image_size_hw: tuple[int, int]) -> int:
    """The largest power of 2 not above min(H, W) / 4 (at least 1): with the halving schedule the
    receptive field then covers about the shorter image side (Yu & Koltun size it to the input)."""
    quarter = min(image_size_hw) // 4
    return 1 << (quarter.bit_length() - 1) if quarter >= 1 else 1


def inverse_dilations(num_layers: int, max_dilation: int) -> list[int]:
    """Inverted context-aggregation schedule (Sec. 4): max_dilation, then halved each layer, floored at 1."""
    return [max(max_dilation >> j, 1) for j in range(num_layers)]


def fullres_kwargs(net: FullResNetworkParams, image_size_hw: tuple[int, int], num_classes: int) -> dict:
    """Resolve the network params of one run into the constructor arguments of :class:`FullResolutionNetwork`."""
    max_dilation = net.max_dilation if net.max_dilation is not None else default_max_dilation(image_size_hw)
    if max_dilation >= max(image_size_hw):
        raise ValueError(
            f"max_dilation {max_dilation} is not below the image size {image_size_hw[0]}x{image_size_hw[1]}: "
            "every off-centre tap of the first layer would read padding"
        )
    dilations = inverse_dilations(net.num_layers, max_dilation)
    return {"num_classes": num_classes, "width": net.width, "dilations": dilations}


class DilatedLayer(nn.Module):
    """One full-resolution layer: 3x3 bias-free convolution with dilation d (padding d keeps the size),
    layer normalization and LReLU(0.2), as in a CRN module (Sec. 3.2)."""

    def __init__(self, in_channels: int, width: int, dilation: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, width, 3, padding=dilation, dilation=dilation, bias=False)
        self.norm = LayerNorm2d(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.norm(self.conv(x)), 0.2)


class FullResolutionNetwork(nn.Module):
    """Full-resolution network (Sec. 4): dilated layers at full resolution, dilations large to small.
    Input: one-hot layout (N, c, H, W); output: (N, 3, H, W) in the 0..255 range (unclipped).
    ``len(dilations)`` is the number of layers."""

    def __init__(self, num_classes: int, width: int, dilations: list[int]):
        super().__init__()
        self.num_classes = num_classes
        self.layers = nn.Sequential(
            *(DilatedLayer(num_classes if j == 0 else width, width, d) for j, d in enumerate(dilations))
        )
        self.to_rgb = nn.Conv2d(width, 3, 1, bias=True)
        self.reset_parameters()

    # Same initialisation as the CRN (Xavier-uniform, zero bias, unit scale, zero shift), so the
    # comparison controls for the architecture only.
    reset_parameters = CRN.reset_parameters

    def forward(self, layout: torch.Tensor) -> torch.Tensor:
        return (self.to_rgb(self.layers(layout)) + 1.0) / 2.0 * 255.0
