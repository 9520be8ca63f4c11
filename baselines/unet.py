"""Encoder-decoder baseline: a U-Net (Ronneberger et al. 2015) trained with the CRN loss
(Chen & Koltun 2017, Sec. 4; docs/facts.md §5).

The paper uses it to control for the architecture with loss and training held fixed, so its blocks
are the CRN's: two 3x3 bias-free convolutions, each followed by layer normalization and
LReLU(0.2). The encoder halves the resolution ``depth`` times by 2x2 max pooling; the decoder
doubles it by bilinear upsampling followed by a 3x3 convolution, not the original transposed
("up-") convolution, which the paper avoids in the CRN because it "tends to introduce
characteristic artifacts" (Sec. 3.2, citing Odena et al.), and concatenates the encoder features
of the same resolution (skip connections). Depth and widths are
UNCONFIRMED: they are parameters, with widths doubling from ``base_width`` and capped at ``max_width``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from crn_repro.config import doc
from crn_repro.crn import BASE_HW, CRN, LayerNorm2d, RefinementModule


@dataclass(frozen=True)
class UNetNetworkParams:
    """params.yaml ``<model>.network`` for the encoder-decoder (U-Net) baseline."""

    depth: int | None = doc(
        "number of 2x downsamplings; null = as many as leave a bottleneck no smaller than the CRN's "
        "4x8 base (6 at 256x512); H and W must be divisible by 2^depth", 1, 16
    )
    base_width: int = doc("feature maps at full resolution, doubled at each downsampling (Ronneberger et al.: 64)", 1, 65536)
    max_width: int = doc("cap on the feature maps of the coarser levels (Ronneberger et al.: 1024)", 1, 65536)

    def validate(self):
        if self.depth is not None and self.depth < 1:
            yield "depth", "must be >= 1 (or null)"
        if self.base_width < 1:
            yield "base_width", "must be >= 1"
        if self.max_width < self.base_width:
            yield "max_width", "must be >= base_width"


def default_depth(image_size_hw: tuple[int, int]) -> int:
    """The most 2x downsamplings that divide H and W and keep the bottleneck at least 4x8 (CRN's base)."""
    h, w = image_size_hw
    depth = 0
    while h % 2 ** (depth + 1) == 0 and w % 2 ** (depth + 1) == 0 and min(h, w) // 2 ** (depth + 1) >= min(BASE_HW):
        depth += 1
    return max(depth, 1)


def unet_kwargs(net: UNetNetworkParams, image_size_hw: tuple[int, int], num_classes: int) -> dict:
    """Resolve the network params of one run into the constructor arguments of :class:`UNet`."""
    depth = net.depth if net.depth is not None else default_depth(image_size_hw)
    h, w = image_size_hw
    if h % 2**depth or w % 2**depth:
        raise ValueError(f"a U-Net of depth {depth} needs H and W divisible by {2**depth}, got {h}x{w}")
    widths = [min(net.base_width * 2**i, net.max_width) for i in range(depth + 1)]
    return {"num_classes": num_classes, "widths": widths}


class UpStep(nn.Module):
    """Decoder upsampling: bilinear 2x (align_corners=True, as the CRN) then 3x3 conv, layer norm,
    LReLU(0.2), in place of the original up-convolution."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.norm = LayerNorm2d(out_channels)

    def forward(self, x: torch.Tensor, size: torch.Size) -> torch.Tensor:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
        return F.leaky_relu(self.norm(self.conv(x)), 0.2)


class UNet(nn.Module):
    """Encoder-decoder baseline (Sec. 4): a U-Net with ``len(widths) - 1`` downsamplings; widths[i]
    is the width at 1/2^i resolution. Input: one-hot layout (N, c, H, W); output: (N, 3, H, W) in the
    0..255 range (unclipped)."""

    def __init__(self, num_classes: int, widths: list[int]):
        super().__init__()
        self.num_classes = num_classes
        # The two-convolution block of a CRN refinement module, so only the wiring differs from CRN.
        self.down = nn.ModuleList(
            RefinementModule(num_classes if i == 0 else widths[i - 1], width) for i, width in enumerate(widths)
        )
        self.up = nn.ModuleList(UpStep(widths[i + 1], widths[i]) for i in range(len(widths) - 1))
        self.merge = nn.ModuleList(RefinementModule(2 * widths[i], widths[i]) for i in range(len(widths) - 1))
        self.to_rgb = nn.Conv2d(widths[0], 3, 1, bias=True)
        self.reset_parameters()

    # Same initialisation as the CRN (Xavier-uniform, zero bias, unit scale, zero shift).
    reset_parameters = CRN.reset_parameters

    def forward(self, layout: torch.Tensor) -> torch.Tensor:
        skips = []
        x = layout
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for up, merge in zip(reversed(self.up), reversed(self.merge)):
            skip = skips.pop()
            x = merge(torch.cat([up(x, skip.shape[-2:]), skip], dim=1))  # [decoder, skip] order
        return (self.to_rgb(x) + 1.0) / 2.0 * 255.0
