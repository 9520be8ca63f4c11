"""pix2pix baseline (Isola et al. 2017; Chen & Koltun 2017, Sec. 4; docs/facts.md §5).

The networks of pix2pix's public PyTorch implementation (junyanz/pytorch-CycleGAN-and-pix2pix,
``--netG unet_256 --netD basic --norm batch``, dropout on): the U-Net generator (Isola et al.,
Sec. 3.2.1) and the 70x70 PatchGAN discriminator (Sec. 3.2.2), with its ``init_weights('normal')``
initialisation. With 3 input and 3 output channels the generator has 54,413,955 parameters and
the discriminator (6 input channels) 2,768,705, as in that implementation.

Image size. ``unet_256`` halves the resolution ``num_downs`` = 8 times, so H and W must be
divisible by 2^8 = 256. The U-Net is fully convolutional, so the paper's 1:2 frames at 256x512
simply reach a 1x2 bottleneck instead of 1x1; the public release trained pix2pix on Cityscapes at
256x256 (docs/facts.md §5). Smaller demo images use fewer downs (at least 5, the U-Net's fixed outer
four levels plus the innermost one): 32x64 with ``num_downs`` 5 also reaches 1x2.

Input. ``input: color`` is the public release's Cityscapes setup: the networks read 3 channels,
the official colour label map (``gtFine_color``) as input A. Where the prepared data keeps the
official labelIds (Cityscapes with ``cityscapes.keep_label_ids``), the data path colours them
through the official 34-id table and the networks read exactly the gtFine_color image, resized
nearest: void classes keep their own colours (dynamic, ground, parking, rail track, guard rail,
bridge, tunnel, caravan, trailer; unlabeled, ego vehicle, static, ... black). On Cityscapes without
kept ids that is an error (set the param, rerun prepare). Where no ids exist (the synthetic city,
NYU), ``color`` falls back to the dataset palette over the layout channels (void black), computed
inside the networks from L, and training says so in one line. The model file's kwargs record the
source (``color_source``: ``label_ids`` or ``channels``), and synthesis reads the same.
``input: layout`` feeds the one-hot layout L itself. Every input is scaled to [-1, 1].

Test-time note: pix2pix keeps dropout (and batch statistics) on at test time (Isola et al.,
Sec. 3.2); ``eval()`` here disables both, as for every other network in this project.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import nn

from baselines.dcgan import dcgan_init_
from crn_repro.config import doc
from crn_repro.labels import CHANNEL_COLORS
from crn_repro.noise import Dropout

MIN_DOWNS = 5  # the U-Net's outermost four levels are fixed, plus the innermost one
COLOR_SOURCES = ("label_ids", "channels")  # input 'color': the official map from labelIds | palette over L


@dataclass(frozen=True)
class Pix2PixNetworkParams:
    """params.yaml ``<model>.network`` for the pix2pix U-Net generator and PatchGAN discriminator."""

    input: Literal["layout", "color"] = doc(
        "what the networks read: 'layout' (one-hot, c channels) or 'color' (pix2pix's Cityscapes setup: the official "
        "gtFine_color map, which needs cityscapes.keep_label_ids; without Cityscapes ids, the dataset palette over the layout)"
    )
    num_downs: int = doc("U-Net levels; 8 = unet_256, H and W must be divisible by 2^num_downs", 1, 16)
    ngf: int = doc("generator width of the outermost level (64 in pix2pix); capped at 8 * ngf", 1, 65536)
    ndf: int = doc("discriminator width of the first layer (64 in pix2pix)", 1, 65536)
    n_layers_d: int = doc("PatchGAN stride-2 layers; 3 = the 70x70 PatchGAN", 1, 16)
    dropout: float = doc("dropout in the decoder's 8*ngf levels below the bottleneck (0.5 in pix2pix; 0 = none)", 0, 1, high_open=True)

    def validate(self):
        if self.num_downs < MIN_DOWNS:
            yield "num_downs", f"must be >= {MIN_DOWNS}"
        if self.ngf < 1 or self.ndf < 1:
            yield "ngf", "ngf and ndf must be >= 1"
        if self.n_layers_d < 1:
            yield "n_layers_d", "must be >= 1"
        if not 0.0 <= self.dropout < 1.0:
            yield "dropout", "must be in [0, 1)"


def pix2pix_kwargs(
    net: Pix2PixNetworkParams, image_size_hw: tuple[int, int], num_classes: int, colors: list | None = None,
    label_ids: bool = False, dataset: str | None = None, note: Callable[[str], None] | None = None,
) -> dict:
    """Resolve the network params of one run into ``{"G": kwargs, "D": kwargs}`` of the two networks.
    For input 'color': ``label_ids`` says whether the prepared data keeps the official labelIds (then
    the networks read the official colour label map), else ``colors``, the dataset's palette (one RGB
    per channel), colours the layout; ``dataset`` and ``note`` serve the error and the fallback's message."""
    h, w = image_size_hw
    if h % 2**net.num_downs or w % 2**net.num_downs:
        raise ValueError(
            f"num_downs {net.num_downs} needs an image size divisible by 2^{net.num_downs} = {2**net.num_downs}, "
            f"but data.image_size_hw is {h}x{w}"
        )
    extra = {}
    if net.input == "color" and label_ids:
        extra = {"color_source": "label_ids"}
    elif net.input == "color":
        if dataset == "cityscapes":
            raise ValueError(
                "input 'color' reads the official gtFine_color map, but the prepared Cityscapes data keeps no "
                "label ids; set cityscapes.keep_label_ids: true and run `crn-repro prepare` again"
            )
        colors = [list(c) for c in (colors if colors is not None else CHANNEL_COLORS.tolist())]
        if len(colors) != num_classes:
            raise ValueError(f"input 'color' needs one colour per layout channel: {len(colors)} colours, {num_classes} channels")
        extra = {"color_source": "channels", "colors": colors}
        if note is not None:
            note(f"pix2pix: the prepared data ({dataset or 'unknown'}) keeps no official label ids, so input "
                 "'color' colours the layout channels with the dataset palette (void black)")
    return {
        "G": {"num_classes": num_classes, "input": net.input, "num_downs": net.num_downs, "ngf": net.ngf,
              "dropout": net.dropout, **extra},
        "D": {"num_classes": num_classes, "input": net.input, "ndf": net.ndf, "n_layers": net.n_layers_d, **extra},
    }


def pix2pix_reads(network_kwargs: dict[str, dict]) -> str:
    """What the data path hands the networks (``datasets.READS``): the official colour label map
    ('label_colors') for input 'color' from label ids, else the one-hot layout."""
    return "label_colors" if network_kwargs["G"].get("color_source") == "label_ids" else "layout"


class ConditionInput(nn.Module):
    """The layout as pix2pix's networks read it, in [-1, 1]: the colour label map ('color', 3
    channels) or the one-hot layout itself ('layout', 2L - 1). With ``color_source`` 'label_ids' the
    input already is the official colour label map (N, 3, H, W) in 0..255, only rescaled; with
    'channels' it is the layout, coloured by ``colors`` (the palette, default Cityscapes' with void black)."""

    def __init__(self, num_classes: int, input: str, colors: list | None = None, color_source: str = "channels"):
        super().__init__()
        if input not in ("layout", "color"):
            raise ValueError(f"input must be 'layout' or 'color', got {input!r}")
        if color_source not in COLOR_SOURCES:
            raise ValueError(f"color_source must be one of {COLOR_SOURCES}, got {color_source!r}")
        self.input = input
        self.from_label_ids = input == "color" and color_source == "label_ids"
        self.channels = 3 if input == "color" else num_classes
        if input == "color" and not self.from_label_ids:
            colors = colors if colors is not None else CHANNEL_COLORS.tolist()
            if len(colors) != num_classes:
                raise ValueError(f"input 'color' needs one colour per layout channel: {len(colors)} colours, {num_classes} channels")
            # Fixed, not learned, not saved: checkpoints rebuild it from their constructor arguments.
            palette = torch.tensor(colors, dtype=torch.float32) / 127.5 - 1.0
            self.register_buffer("colors", palette, persistent=False)

    def forward(self, layout: torch.Tensor) -> torch.Tensor:
        if self.from_label_ids:
            return layout / 127.5 - 1.0
        if self.input == "color":
            return torch.einsum("nchw,cd->ndhw", layout, self.colors.to(layout.dtype))
        return layout * 2.0 - 1.0


class UnetGenerator(nn.Module):
    """pix2pix U-Net generator (Isola et al. 2017, Sec. 3.2.1; ``unet_256`` at num_downs 8;
    docs/facts.md §5). Input: layout (N, c, H, W), or the colour label map (N, 3, H, W) in 0..255 with
    ``color_source`` 'label_ids' (``ConditionInput``); output (N, 3, H, W) in 0..255.

    Level i (0 = outermost) halves the resolution to ``widths[i]`` channels and its decoder half
    doubles it back. As in the public implementation: 4x4 stride-2 convolutions; LeakyReLU(0.2)
    before every down-conv but the first; ReLU before every up-conv; BatchNorm after every conv
    except the outermost down-conv, the innermost down-conv and the output up-conv; every conv is
    bias-free except the output up-conv; dropout after the decoder halves of the 8*ngf levels
    between the innermost and the 4*ngf -> 8*ngf level (three for unet_256); tanh output.
    """

    def __init__(self, num_classes: int, input: str = "layout", num_downs: int = 8, ngf: int = 64,
                 dropout: float = 0.5, colors: list | None = None, color_source: str = "channels"):
        super().__init__()
        if num_downs < MIN_DOWNS:
            raise ValueError(f"the U-Net needs num_downs >= {MIN_DOWNS}, got {num_downs}")
        self.condition = ConditionInput(num_classes, input, colors, color_source)
        widths = [ngf * min(2**i, 8) for i in range(num_downs)]
        innermost = num_downs - 1
        self.down = nn.ModuleList()
        self.up = nn.ModuleList()
        for i in range(num_downs):
            cin = self.condition.channels if i == 0 else widths[i - 1]
            down = [nn.Conv2d(cin, widths[i], 4, stride=2, padding=1, bias=False)]
            if 0 < i < innermost:
                down.append(nn.BatchNorm2d(widths[i]))
            self.down.append(nn.Sequential(*down))

            # Every level but the innermost reads [skip, decoded] from the level below it.
            up_in = widths[i] if i == innermost else 2 * widths[i]
            if i == 0:
                up = [nn.ConvTranspose2d(up_in, 3, 4, stride=2, padding=1), nn.Tanh()]
            else:
                up = [nn.ConvTranspose2d(up_in, widths[i - 1], 4, stride=2, padding=1, bias=False),
                      nn.BatchNorm2d(widths[i - 1])]
                if 4 <= i < innermost and dropout > 0:
                    up.append(Dropout(dropout))  # per image of the global batch (crn_repro.noise)
            self.up.append(nn.Sequential(*up))
        dcgan_init_(self)

    def forward(self, layout: torch.Tensor) -> torch.Tensor:
        h = self.down[0](self.condition(layout))
        skips = []
        for down in self.down[1:]:
            # The public implementation's LeakyReLU is in place, so its skip connections carry the
            # activated features, not the conv/BatchNorm output; we keep that.
            h = F.leaky_relu(h, 0.2)
            skips.append(h)
            h = down(h)
        h = self.up[-1](F.relu(h))
        for up, skip in zip(reversed(self.up[:-1]), reversed(skips)):
            h = up(F.relu(torch.cat([skip, h], dim=1)))
        return (h + 1.0) / 2.0 * 255.0


class PatchDiscriminator(nn.Module):
    """pix2pix 70x70 PatchGAN discriminator (Isola et al. 2017, Sec. 3.2.2; ``NLayerDiscriminator``
    with n_layers 3; docs/facts.md §5). Reads concat(condition, image), condition first, where the
    condition is the layout encoded as the generator reads it and the image is in 0..255. Output:
    a map of raw logits, one per 70x70 patch (with n_layers 3).

    ``n_layers`` 4x4 stride-2 convs (the first with bias and no BatchNorm, widths ndf * 2^i capped
    at 8 * ndf), one 4x4 stride-1 conv with BatchNorm, then a 4x4 stride-1 conv to one channel;
    LeakyReLU(0.2) between, padding 1 throughout.
    """

    def __init__(self, num_classes: int, input: str = "layout", ndf: int = 64, n_layers: int = 3,
                 colors: list | None = None, color_source: str = "channels"):
        super().__init__()
        self.condition = ConditionInput(num_classes, input, colors, color_source)
        widths = [ndf * min(2**i, 8) for i in range(n_layers + 1)]
        layers = [nn.Conv2d(self.condition.channels + 3, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        for i in range(1, n_layers + 1):
            stride = 2 if i < n_layers else 1
            layers += [
                nn.Conv2d(widths[i - 1], widths[i], 4, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(widths[i]),
                nn.LeakyReLU(0.2),
            ]
        layers.append(nn.Conv2d(widths[-1], 1, 4, stride=1, padding=1))
        self.model = nn.Sequential(*layers)
        dcgan_init_(self)

    def forward(self, layout: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.condition(layout), image / 127.5 - 1.0], dim=1)
        return self.model(x)
