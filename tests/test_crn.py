
import pytest
import torch

from crn_repro.crn import CRN, PRESETS, CRNNetworkParams, LayerNorm2d, crn_kwargs, layout_pyramid
from crn_repro.registry import count_parameters

# Exact counts of the authors' released checkpoints (docs/facts.md §1), c = 20.
RELEASED = {
    ("cityscapes-256p", 9): 97_875_483,
    ("cityscapes-512p", 1): 98_622_851,
    ("cityscapes-1024p", 1): 98_674_531,
}


@pytest.mark.parametrize("preset,k", list(RELEASED))
def test_preset_parameter_counts_match_release(preset, k):
    kwargs = crn_kwargs(CRNNetworkParams(preset=preset, widths=None, num_outputs=k), PRESETS[preset]["image_size_hw"], 20)
    with torch.device("meta"):
        assert count_parameters(CRN(**kwargs)) == RELEASED[(preset, k)]


def test_each_extra_class_adds_56736_parameters():
    kw = crn_kwargs(CRNNetworkParams("cityscapes-1024p", None, 1), (1024, 2048), 20)
    with torch.device("meta"):
        a = count_parameters(CRN(**kw))
        b = count_parameters(CRN(**dict(kw, num_classes=21)))
    assert b - a == 56_736


def test_layer_norm_matches_formula():
    torch.manual_seed(0)
    norm = LayerNorm2d(6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(3, 6, 5, 7) * 4 + 2
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    var = x.var(dim=(1, 2, 3), unbiased=False, keepdim=True)
    expected = (x - mean) / torch.sqrt(var + 1e-12) * norm.weight.view(1, -1, 1, 1) + norm.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(norm(x), expected, rtol=1e-5, atol=1e-5)


def test_layout_pyramid_is_area_average():
    layout = torch.zeros(1, 2, 4, 8)
    layout[:, 0, :, :3] = 1
    layout[:, 1, :, 3:] = 1
    pyramid = layout_pyramid(layout, 3)
    assert [p.shape[-1] for p in pyramid] == [2, 4, 8]
    assert pyramid[0][0, 0, 0, 0] == pytest.approx(0.75)  # soft mask: 3 of 4 columns are class 0
    torch.testing.assert_close(pyramid[0].sum(1), torch.ones(1, 1, 2))


def test_forward_backward_shapes_and_range():
    torch.manual_seed(0)
    net = CRN(num_classes=20, widths=[8, 8, 8], num_outputs=2)
    layout = torch.nn.functional.one_hot(torch.randint(0, 20, (2, 16, 32)), 20).permute(0, 3, 1, 2).float()
    out = net(layout)
    assert out.shape == (2, 6, 16, 32)
    assert torch.isfinite(out).all()
    out.mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_convs_bias_free_except_output():
    net = CRN(num_classes=20, widths=[8, 8], num_outputs=1)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c.bias is None for c in convs[:-1]) and convs[-1].bias is not None
    assert convs[-1].kernel_size == (1, 1)


@pytest.mark.parametrize("size,ok", [((16, 32), True), ((16, 30), False), ((12, 24), False)])
def test_widths_must_match_resolution(size, ok):
    params = CRNNetworkParams(None, (8, 8, 8), 1)
    if ok:
        assert crn_kwargs(params, size, 20)["widths"] == [8, 8, 8]
    else:
        with pytest.raises(ValueError):
            crn_kwargs(params, size, 20)


def test_preset_rejects_other_resolution():
    with pytest.raises(ValueError, match="preset cityscapes-256p is for 256x512"):
        crn_kwargs(CRNNetworkParams("cityscapes-256p", None, 1), (64, 128), 20)
