"""The realism proxy's calibration: the degradations, the agreement count and the whole check."""

import numpy as np
import torch

from crn_repro.calibration import LEVELS, agreement, calibrate, degrade


def test_agreement_counts_correctly_ordered_pairs_by_hand():
    scores = np.array([[4.0, 3.0, 2.0, 1.0],    # every pair right
                       [1.0, 2.0, 2.0, 0.5]])   # real<slight, real<blurred, slight=blurred (a tie: wrong)
    got = agreement(scores)
    assert got["pairs"]["real>slight"] == 0.5 and got["pairs"]["real>blurred"] == 0.5
    assert got["pairs"]["slight>blurred"] == 0.5 and got["pairs"]["blurred>noise"] == 1.0
    assert got["overall"] == (6 + 3) / 12  # 9 of the 12 pairs in the right order


def test_degradations_keep_the_range_and_grow_in_strength():
    images = torch.rand(2, 3, 32, 64, generator=torch.Generator().manual_seed(0)) * 255
    images = degrade(images, "blurred").round()  # a smooth image, so that mild changes stay mild
    assert torch.equal(degrade(images, "real"), images)
    errors = [float((degrade(images, level) - images).abs().mean()) for level in LEVELS[1:]]
    for level in LEVELS:
        out = degrade(images, level)
        assert out.shape == images.shape and out.min() >= 0 and out.max() <= 255 and torch.equal(out, out.round())
    assert errors[0] < 5 < errors[2]  # slight: a few grey levels; noise: far off


def test_a_proxy_that_sees_sharpness_passes_and_one_that_sees_nothing_fails():
    """Features that measure an image's mean and its high-frequency energy order the levels; constant
    features tie everywhere and fail the threshold."""
    g = torch.Generator().manual_seed(1)
    smooth = degrade(torch.rand(20, 3, 32, 64, generator=g) * 255, "blurred")  # real images: smooth shapes
    images = (smooth + torch.randn(smooth.shape, generator=g) * 2).clamp(0, 255).round().to(torch.uint8)

    def sharpness(x):
        dx = (x[..., 1:] - x[..., :-1]).abs().mean((1, 2, 3))
        return torch.stack([x.mean((1, 2, 3)) / 50, dx], 1)

    good = calibrate(images, sharpness, k=3, space="test")
    assert good["passes"] and good["overall"] >= 0.9 and good["n"] == 10, good
    flat = calibrate(images, lambda x: torch.zeros(len(x), 2), k=3, space="test")
    assert flat["passes"] is False and flat["overall"] == 0.0
    assert calibrate(images[:6], sharpness, k=3, space="test")["passes"] is None  # too few images: not calibrated
