"""Baselines trained with the CRN loss (Sec. 4): full-resolution network, U-Net, activation memory."""

import json

import pytest
import torch
from torch import nn

from baselines.fullres import FullResNetworkParams, FullResolutionNetwork, fullres_kwargs, inverse_dilations
from baselines.unet import UNet, UNetNetworkParams, unet_kwargs
from crn_repro.config import from_dict
from crn_repro.crn import CRN, CRNNetworkParams, crn_kwargs
from crn_repro.errors import CrnError
from crn_repro.memory import activation_bytes
from crn_repro.registry import count_parameters

C = 20


def one_hot_layout(n: int, hw: tuple[int, int], device: str = "cpu") -> torch.Tensor:
    if device == "meta":
        return torch.zeros(n, C, *hw, device="meta")
    labels = torch.randint(0, C, (n, *hw), generator=torch.Generator().manual_seed(0))
    return nn.functional.one_hot(labels, C).permute(0, 3, 1, 2).float()


def tiny(kind: str) -> nn.Module:
    """A small network of each baseline, built through its resolver and a JSON round trip (as checkpoints do)."""
    if kind == "fullres":
        cls, kwargs = FullResolutionNetwork, fullres_kwargs(FullResNetworkParams(4, 8, None), (16, 32), C)
    else:
        cls, kwargs = UNet, unet_kwargs(UNetNetworkParams(2, 4, 8), (16, 32), C)
    return cls(**json.loads(json.dumps(kwargs)))


@pytest.mark.parametrize("kind", ["fullres", "unet"])
def test_forward_backward_at_input_resolution(kind):
    torch.manual_seed(0)
    net = tiny(kind)
    layout = one_hot_layout(2, (16, 32))
    out = net(layout)
    assert out.shape == (2, 3, 16, 32)
    assert torch.isfinite(out).all()
    out.mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_inverse_dilation_schedule_starts_large_and_halves():
    dilations = fullres_kwargs(FullResNetworkParams(10, 256, None), (256, 512), C)["dilations"]
    assert dilations == [64, 32, 16, 8, 4, 2, 1, 1, 1, 1]
    assert 1 + 2 * sum(dilations) >= 256  # the receptive field spans the image height
    assert inverse_dilations(5, 8) == [8, 4, 2, 1, 1]
    assert fullres_kwargs(FullResNetworkParams(3, 8, 6), (16, 32), C)["dilations"] == [6, 3, 1]
    with pytest.raises(ValueError, match="max_dilation"):
        fullres_kwargs(FullResNetworkParams(3, 8, 32), (16, 32), C)


def test_fullres_paper_setting_parameter_count():
    """10 layers x 256 maps: bias-free 3x3 convs + layer-norm scale/shift, then the 1x1 RGB conv."""
    kwargs = fullres_kwargs(FullResNetworkParams(10, 256, None), (256, 512), C)
    expected = (C * 256 * 9 + 9 * 256 * 256 * 9) + 10 * 2 * 256 + (256 * 3 + 3)
    with torch.device("meta"):
        assert count_parameters(FullResolutionNetwork(**kwargs)) == expected == 5_360_387


def test_unet_widths_and_depth():
    assert unet_kwargs(UNetNetworkParams(3, 64, 256), (64, 128), C)["widths"] == [64, 128, 256, 256]
    # null depth: down to the CRN's 4x8 base
    assert len(unet_kwargs(UNetNetworkParams(None, 64, 1024), (256, 512), C)["widths"]) == 7
    assert len(unet_kwargs(UNetNetworkParams(None, 64, 1024), (48, 96), C)["widths"]) == 4  # bottleneck 6x12
    with pytest.raises(ValueError, match="divisible by 8"):
        unet_kwargs(UNetNetworkParams(3, 4, 8), (20, 40), C)


def test_params_reject_bad_values_all_at_once():
    with pytest.raises(CrnError) as err:
        from_dict(FullResNetworkParams, {"num_layers": 0, "width": 0, "max_dilation": 0}, "fullres.network")
    assert all(k in str(err.value) for k in ("num_layers", "width", "max_dilation"))
    with pytest.raises(CrnError, match="max_width"):
        from_dict(UNetNetworkParams, {"depth": 2, "base_width": 64, "max_width": 32}, "unet.network")


def test_activation_bytes_of_conv_relu_by_hand():
    """Conv2d saves its input (and its weight, a parameter, not counted); ReLU saves its output."""
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
    x = torch.randn(2, 3, 8, 8)
    assert activation_bytes(net, x) == 2 * 3 * 8 * 8 * 4 + 2 * 4 * 8 * 8 * 4
    assert activation_bytes(net, x, dtype=torch.float64) == 2 * (2 * 3 * 8 * 8 * 4 + 2 * 4 * 8 * 8 * 4)
    assert net[0].weight.dtype == torch.float32  # the module itself is left alone


def test_activation_bytes_counts_a_storage_once():
    class SquareOfExp(nn.Module):
        def forward(self, x):
            a = x.exp()  # saves a
            return a.view(-1) * a.view(-1)  # saves two views of a

    x = torch.randn(5, 7, requires_grad=True)
    assert activation_bytes(SquareOfExp(), x) == 5 * 7 * 4


@pytest.mark.parametrize("kind", ["fullres", "unet"])
def test_activation_bytes_meta_matches_cpu(kind):
    """The meta device gives the same count, which lets the tests below size paper-scale networks."""
    net = tiny(kind)
    with torch.device("meta"):
        meta_net = tiny(kind)
    on_cpu = activation_bytes(net, one_hot_layout(1, (16, 32)))
    assert on_cpu == activation_bytes(meta_net, one_hot_layout(1, (16, 32), "meta"))


def memory_row(net, layout) -> dict:
    """Trainable parameters and activation bytes of one forward on ``layout`` (as the report's memory table)."""
    parameters, nbytes = count_parameters(net), activation_bytes(net, layout)
    return {"parameters": parameters, "activation_bytes": nbytes, "activation_bytes_per_parameter": nbytes / parameters}


def test_fullres_needs_more_memory_per_parameter_than_crn_at_same_resolution():
    """Sec. 4 at 1/8 of the paper's widths, run for real at 64x128: the 10-layer full-resolution
    network keeps more activations than a CRN with ~11x its parameters."""
    layout = one_hot_layout(1, (64, 128))
    crn = memory_row(CRN(C, [128, 128, 128, 64, 64]), layout)
    fullres = memory_row(FullResolutionNetwork(**fullres_kwargs(FullResNetworkParams(10, 32, None), (64, 128), C)), layout)
    assert fullres["activation_bytes"] > 1.4 * crn["activation_bytes"]
    assert crn["parameters"] > 10 * fullres["parameters"]
    assert fullres["activation_bytes_per_parameter"] > 10 * crn["activation_bytes_per_parameter"]


def test_paper_scale_memory_on_meta():
    """The paper's networks at 256x512 (shapes only): fullres 10 x 256 keeps ~1.5x the activations of
    the 256p CRN with 1/18 of its parameters."""
    hw = (256, 512)
    with torch.device("meta"):
        crn = CRN(**crn_kwargs(CRNNetworkParams("cityscapes-256p", None, 1), hw, C))
        fullres = FullResolutionNetwork(**fullres_kwargs(FullResNetworkParams(10, 256, None), hw, C))
    layout = one_hot_layout(1, hw, "meta")
    table = {"crn": memory_row(crn, layout), "fullres": memory_row(fullres, layout)}
    assert table["fullres"]["activation_bytes"] > 1.5 * table["crn"]["activation_bytes"]
    ratio = table["fullres"]["activation_bytes_per_parameter"] / table["crn"]["activation_bytes_per_parameter"]
    assert ratio > 20


def test_fullres_activation_bytes_scale_with_pixel_count():
    with torch.device("meta"):
        net = FullResolutionNetwork(C, 256, inverse_dilations(10, 16))
    small = activation_bytes(net, one_hot_layout(1, (64, 128), "meta"))
    large = activation_bytes(net, one_hot_layout(1, (128, 256), "meta"))
    assert large / small == pytest.approx(4.0, rel=1e-3)
