"""Cascaded Refinement Network (Chen & Koltun 2017, Sec. 3.2; details as in docs/facts.md §1).

A cascade of refinement modules M_0..M_{n-1}. M_0 works at 4x8, each later module doubles the
resolution (aspect 1:2). Module M_i sees the bilinearly upsampled features of M_{i-1} concatenated
with the semantic layout area-averaged to its resolution; the last module is followed by a 1x1
convolution to 3k channels (k images), mapped from [-1, 1] to [0, 255].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from crn_repro.config import doc

# Widths d_i of the paper's Cityscapes models (Sec. 3.2, docs/facts.md §1): 1024 from 4x8 to 64x128,
# 512 at 128x256 and 256x512, 128 at 512x1024, 32 at 1024x2048.
PRESETS: dict[str, dict] = {
    "cityscapes-256p": {"image_size_hw": (256, 512), "widths": (1024,) * 5 + (512, 512)},
    "cityscapes-512p": {"image_size_hw": (512, 1024), "widths": (1024,) * 5 + (512, 512, 128)},
    "cityscapes-1024p": {"image_size_hw": (1024, 2048), "widths": (1024,) * 5 + (512, 512, 128, 32)},
}
BASE_HW = (4, 8)


@dataclass(frozen=True)
class CRNNetworkParams:
    """params.yaml ``<model>.network`` for CRN-architecture models."""

    preset: str | None = doc("named paper configuration (cityscapes-256p/512p/1024p) or null to use `widths`")
    widths: tuple[int, ...] | None = doc("feature widths d_i, one per module from 4x8 up; null when `preset` is set", 1, 65536)
    num_outputs: int = doc("k, the number of images synthesized per layout (Sec. 3.4); 1 for the simple loss", 1, 100)

    def validate(self):
        if (self.preset is None) == (self.widths is None):
            yield "preset", "set exactly one of `preset` and `widths`"
        if self.preset is not None and self.preset not in PRESETS:
            yield "preset", f"unknown preset {self.preset!r} (valid: {', '.join(PRESETS)})"
        if self.widths is not None and (not self.widths or min(self.widths) < 1):
            yield "widths", "must be a non-empty list of positive integers"
        if self.num_outputs < 1:
            yield "num_outputs", "must be >= 1"


def num_modules_for(image_size_hw: tuple[int, int]) -> int:
    """Number of modules whose last one works at ``image_size_hw`` (4x8 doubling, so H = 4 * 2^(n-1))."""
    h, w = image_size_hw
    n = math.log2(h / BASE_HW[0]) + 1
    if h * BASE_HW[1] != w * BASE_HW[0] or n != int(n) or n < 1:
        raise ValueError(f"CRN needs a 1:2 image size of 4*2^m x 8*2^m, got {h}x{w}")
    return int(n)


def crn_kwargs(net: CRNNetworkParams, image_size_hw: tuple[int, int], num_classes: int) -> dict:
    """Resolve the network params of one run into the constructor arguments of :class:`CRN`."""
    if net.preset is not None:
        preset = PRESETS[net.preset]
        if tuple(image_size_hw) != preset["image_size_hw"]:
            raise ValueError(
                f"preset {net.preset} is for {preset['image_size_hw'][0]}x{preset['image_size_hw'][1]} images, "
                f"but data.image_size_hw is {image_size_hw[0]}x{image_size_hw[1]}"
            )
        widths = preset["widths"]
    else:
        widths = tuple(net.widths)
        n = num_modules_for(image_size_hw)
        if len(widths) != n:
            raise ValueError(
                f"{image_size_hw[0]}x{image_size_hw[1]} images need {n} modules (4x8 doubling), "
                f"so `widths` needs {n} entries, got {len(widths)}"
            )
    return {"num_classes": num_classes, "widths": list(widths), "num_outputs": net.num_outputs}


class LayerNorm2d(nn.GroupNorm):
    """Layer normalization (Ba et al. 2016) as the release computes it: statistics per sample over
    C, H, W (biased variance, eps 1e-12), learned per-channel scale and shift = GroupNorm(1, C)."""

    def __init__(self, channels: int):
        super().__init__(1, channels, eps=1e-12)


class RefinementModule(nn.Module):
    """Refinement module M_i (Sec. 3.2, Fig. 2): two 3x3 bias-free convolutions, each followed by
    layer normalization and LReLU(0.2)."""

    def __init__(self, in_channels: int, width: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.norm1 = LayerNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.norm2 = LayerNorm2d(width)

    def weight_requires_grad(self) -> bool:
        return self.conv1.weight.requires_grad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.norm1(self.conv1(x)), 0.2)
        return F.leaky_relu(self.norm2(self.conv2(x)), 0.2)


def layout_pyramid(layout: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """The layout at every module's resolution, coarsest first, by area averaging (2x2 mean pooling),
    so coarse layouts are soft masks (docs/facts.md §1)."""
    pyramid = [layout]
    for _ in range(levels - 1):
        pyramid.append(F.avg_pool2d(pyramid[-1], 2))
    return pyramid[::-1]


class CRN(nn.Module):
    """Cascaded refinement network g(L; theta) (Sec. 3.2). Input: one-hot layout (N, c, H, W) at the
    output resolution; output: (N, 3k, H, W) images in the 0..255 range (unclipped)."""

    def __init__(self, num_classes: int, widths: list[int], num_outputs: int = 1):
        super().__init__()
        self.num_classes = num_classes
        self.num_outputs = num_outputs
        blocks = []
        previous = 0
        for width in widths:
            blocks.append(RefinementModule(previous + num_classes, width))
            previous = width
        self.cascade = nn.ModuleList(blocks)
        self.to_rgb = nn.Conv2d(previous, 3 * num_outputs, 1, bias=True)
        self.activation_checkpointing = False  # set by the trainer (train.activation_checkpointing)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform weights, zero biases, unit scale, zero shift (the release's init)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.GroupNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def freeze_all_but_last(self, n: int) -> None:
        """Train only the last ``n`` refinement modules and the output layer (the release's 1024p
        run trained the last two, docs/facts.md §3). Frozen modules build no autograd graph, so their
        activations are not kept for the backward pass."""
        if not 1 <= n <= len(self.cascade):
            raise ValueError(f"train_last_modules must be in 1..{len(self.cascade)} for this {len(self.cascade)}-module CRN, got {n}")
        for module in self.cascade[: len(self.cascade) - n]:
            module.requires_grad_(False)

    def forward(self, layout: torch.Tensor) -> torch.Tensor:
        pyramid = layout_pyramid(layout, len(self.cascade))
        features = None
        for module, layout_i in zip(self.cascade, pyramid):
            if features is None:
                x = layout_i
            else:
                up = F.interpolate(features, size=layout_i.shape[-2:], mode="bilinear", align_corners=True)
                x = torch.cat([up, layout_i.to(up.dtype)], dim=1)  # [features, layout] order
            if self.activation_checkpointing and torch.is_grad_enabled() and module.weight_requires_grad():
                # keep only x; the backward pass runs the module again (same result: it has no randomness)
                features = checkpoint(module, x, use_reentrant=False)
            else:
                features = module(x)
        return (self.to_rgb(features) + 1.0) / 2.0 * 255.0
