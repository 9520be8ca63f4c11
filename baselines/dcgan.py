"""Networks of the "GAN + semantic segmentation" baseline (Chen & Koltun 2017, Sec. 4; docs/facts.md §5).

The paper: "The GAN setup follows the work of Radford et al. (DCGAN). The input to the generator
is the semantic layout L." No code was released, so the networks follow the DCGAN guidelines
(Radford et al. 2016, Sec. 3): all-convolutional with strided convolutions instead of pooling,
BatchNorm everywhere except the discriminator's input layer and the generator's output layer,
ReLU in the generator with tanh at the output, LeakyReLU(0.2) in the discriminator, weights drawn
from N(0, 0.02) (Sec. 4).

The generator encodes the layout with strided 4x4 convolutions down to a small map (DCGAN's
generator starts from a 4x4 map; ``num_downs`` 6 gives 4x8 for 256x512 frames) and decodes it
with the DCGAN generator's 4x4 stride-2 transposed convolutions. It has no skip connections: that
is what separates it from the pix2pix U-Net (baselines/pix2pix.py). The discriminator sees the
image alone (the layout enters the objective through the segmentation loss) and returns one
logit per image, shaped (N, 1, 1, 1): as in DCGAN, whose last convolutional layer is flattened
into a single output, its last layer is a convolution whose kernel covers the whole remaining
map, so it is built for one image size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from crn_repro.config import doc


@dataclass(frozen=True)
class DCGANNetworkParams:
    """params.yaml ``<model>.network`` for the DCGAN-style generator and discriminator."""

    ngf: int = doc("generator width of the first encoder layer; doubles per layer up to 8 * ngf", 1, 65536)
    ndf: int = doc("discriminator width of the first layer; doubles per layer up to 8 * ndf", 1, 65536)
    num_downs: int = doc("stride-2 layers of the generator's encoder (and decoder); 6 takes 256x512 to 4x8", 1, 16)
    num_downs_d: int = doc("stride-2 layers of the discriminator before its image-sized logit layer", 1, 16)

    def validate(self):
        if self.ngf < 1 or self.ndf < 1:
            yield "ngf", "ngf and ndf must be >= 1"
        if self.num_downs < 1:
            yield "num_downs", "must be >= 1"
        if self.num_downs_d < 1:
            yield "num_downs_d", "must be >= 1"


def dcgan_kwargs(net: DCGANNetworkParams, image_size_hw: tuple[int, int], num_classes: int) -> dict:
    """Resolve the network params of one run into ``{"G": kwargs, "D": kwargs}`` of the two networks."""
    h, w = image_size_hw
    for key, downs in (("num_downs", net.num_downs), ("num_downs_d", net.num_downs_d)):
        if h % 2**downs or w % 2**downs:
            raise ValueError(
                f"{key} {downs} needs an image size divisible by 2^{downs} = {2**downs}, "
                f"but data.image_size_hw is {h}x{w}"
            )
    return {
        "G": {"num_classes": num_classes, "ngf": net.ngf, "num_downs": net.num_downs},
        "D": {"image_size_hw": [h, w], "ndf": net.ndf, "num_downs": net.num_downs_d},
    }


def dcgan_init_(module: nn.Module) -> None:
    """DCGAN initialisation (Radford et al. 2016, Sec. 4), as pix2pix's ``init_weights('normal')``
    applies it: conv weights N(0, 0.02), BatchNorm scale N(1, 0.02), all biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def _widths(base: int, layers: int) -> list[int]:
    """Per-layer widths of a DCGAN stack: base, 2 base, 4 base, 8 base, 8 base, ..."""
    return [base * min(2**i, 8) for i in range(layers)]


def _down(cin: int, cout: int, norm: bool) -> nn.Sequential:
    # A conv followed by BatchNorm needs no bias (the norm's shift replaces it).
    layers = [nn.Conv2d(cin, cout, 4, stride=2, padding=1, bias=not norm)]
    if norm:
        layers.append(nn.BatchNorm2d(cout))
    return nn.Sequential(*layers, nn.LeakyReLU(0.2))


class DCGANGenerator(nn.Module):
    """DCGAN-style generator g(L) of the GAN + segmentation baseline (Sec. 4; Radford et al. 2016,
    Sec. 3): strided-conv encoder of the layout, transposed-conv decoder, no skips. Input: layout
    (N, c, H, W); output (N, 3, H, W) in 0..255."""

    def __init__(self, num_classes: int, ngf: int = 64, num_downs: int = 6):
        super().__init__()
        widths = _widths(ngf, num_downs)
        # Encoder: no BatchNorm on the input layer (DCGAN's rule for a network that reads data).
        self.encoder = nn.Sequential(
            *(_down(num_classes if i == 0 else widths[i - 1], widths[i], norm=i > 0) for i in range(num_downs))
        )
        decoder = []
        for i in reversed(range(1, num_downs)):
            decoder += [
                nn.ConvTranspose2d(widths[i], widths[i - 1], 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(widths[i - 1]),
                nn.ReLU(),
            ]
        # Output layer: no BatchNorm, tanh.
        decoder += [nn.ConvTranspose2d(widths[0], 3, 4, stride=2, padding=1), nn.Tanh()]
        self.decoder = nn.Sequential(*decoder)
        dcgan_init_(self)

    def forward(self, layout: torch.Tensor) -> torch.Tensor:
        t = self.decoder(self.encoder(layout * 2.0 - 1.0))  # one-hot {0, 1} -> {-1, 1}
        return (t + 1.0) / 2.0 * 255.0


class DCGANDiscriminator(nn.Module):
    """DCGAN discriminator (Radford et al. 2016, Sec. 3) on the image alone: strided 4x4 convs,
    BatchNorm except on the first layer, LeakyReLU(0.2), then a conv over the whole remaining map.
    Input: images (N, 3, H, W) in 0..255, H x W = ``image_size_hw``; output: one raw logit per
    image, (N, 1, 1, 1)."""

    def __init__(self, image_size_hw: list[int], ndf: int = 64, num_downs: int = 6):
        super().__init__()
        widths = _widths(ndf, num_downs)
        self.features = nn.Sequential(
            *(_down(3 if i == 0 else widths[i - 1], widths[i], norm=i > 0) for i in range(num_downs))
        )
        h, w = image_size_hw
        self.to_logit = nn.Conv2d(widths[-1], 1, (h // 2**num_downs, w // 2**num_downs))
        dcgan_init_(self)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.to_logit(self.features(image / 127.5 - 1.0))
