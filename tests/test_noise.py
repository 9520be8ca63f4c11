"""Dropout per image of the global batch (crn_repro/noise.py): the mask an image gets depends on its place in
the step's global batch and the call, not on which process holds it or how many images that process holds."""

from __future__ import annotations

import pytest
import torch

from crn_repro.noise import Dropout, per_image_noise


def test_an_images_mask_is_the_same_in_a_batch_of_two_or_alone():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 5) + 3.0  # no element zero, so a zero is the mask's
    drop = Dropout(0.5).train()
    with per_image_noise(seed=7, positions=[0, 1, 2, 3]):
        whole = [drop(x), drop(x)]  # two calls in one step: two different masks
    with per_image_noise(seed=7, positions=[0, 2]):  # rank 0 of 2
        even = [drop(x[0::2]), drop(x[0::2])]
    with per_image_noise(seed=7, positions=[1, 3]):  # rank 1 of 2
        odd = [drop(x[1::2]), drop(x[1::2])]
    for call in range(2):
        assert torch.equal(whole[call][0::2], even[call]) and torch.equal(whole[call][1::2], odd[call])
    assert not torch.equal(whole[0], whole[1])
    kept = (whole[0] != 0).float().mean().item()
    assert 0.4 < kept < 0.6 and torch.allclose(whole[0][whole[0] != 0], 2 * x[whole[0] != 0])


def test_another_step_draws_other_masks_and_eval_mode_none():
    x = torch.ones(2, 8, 8)
    drop = Dropout(0.5).train()
    with per_image_noise(seed=1, positions=[0, 1]):
        a = drop(x)
    with per_image_noise(seed=2, positions=[0, 1]):
        b = drop(x)
    assert not torch.equal(a, b)
    with per_image_noise(seed=1, positions=[0, 1]):
        assert torch.equal(drop.eval()(x), x)


def test_a_batch_that_is_not_the_declared_share_is_an_error():
    with per_image_noise(seed=1, positions=[0, 1]), pytest.raises(RuntimeError, match="holds 2 images, the batch 3"):
        Dropout(0.5).train()(torch.ones(3, 4))
