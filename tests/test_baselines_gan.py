import pytest
import torch
from torch import nn

from baselines.dcgan import DCGANDiscriminator, DCGANGenerator, DCGANNetworkParams, dcgan_kwargs
from baselines.pix2pix import PatchDiscriminator, Pix2PixNetworkParams, UnetGenerator, pix2pix_kwargs, pix2pix_reads
from crn_repro.labels import CHANNEL_COLORS
from crn_repro.registry import count_parameters

# Parameter counts of the public pix2pix implementation (unet_256 / basic PatchGAN, BatchNorm)
# with 3-channel input and output; the discriminator reads 3 + 3 channels.
PIX2PIX_G = 54_413_955
PIX2PIX_D = 2_768_705


def pix2pix(input="color", num_downs=8, ngf=64, ndf=64, n_layers_d=3, dropout=0.5):
    return Pix2PixNetworkParams(input, num_downs, ngf, ndf, n_layers_d, dropout)


def one_hot_layout(n, h, w, c=20, seed=0):
    labels = torch.randint(0, c, (n, h, w), generator=torch.Generator().manual_seed(seed))
    return nn.functional.one_hot(labels, c).permute(0, 3, 1, 2).float()


def on_meta(cls, kwargs):
    """Build without allocating memory or drawing init (fast, for counting parameters)."""
    with torch.device("meta"):
        return cls(**kwargs)


def test_pix2pix_parameter_counts_match_public_implementation():
    kw = pix2pix_kwargs(pix2pix("color"), (256, 256), 20)
    assert count_parameters(on_meta(UnetGenerator, kw["G"])) == PIX2PIX_G
    assert count_parameters(on_meta(PatchDiscriminator, kw["D"])) == PIX2PIX_D


def test_pix2pix_layout_input_only_widens_first_layers():
    kw = pix2pix_kwargs(pix2pix("layout"), (256, 512), 20)
    extra_in = 20 - 3  # one-hot channels instead of colour channels
    first_layer = extra_in * 64 * 4 * 4  # 4x4 convs to ngf = ndf = 64 outputs
    assert count_parameters(on_meta(UnetGenerator, kw["G"])) == PIX2PIX_G + first_layer
    assert count_parameters(on_meta(PatchDiscriminator, kw["D"])) == PIX2PIX_D + first_layer


def test_pix2pix_kwargs_are_plain_json_values():
    import json

    kw = pix2pix_kwargs(pix2pix("layout", num_downs=5, ngf=8, ndf=8), (32, 64), 20)
    assert json.loads(json.dumps(kw)) == kw
    assert isinstance(UnetGenerator(**kw["G"]), UnetGenerator)


def test_pix2pix_color_buffer_is_not_saved():
    net = UnetGenerator(20, "color", 5, 4)
    assert not any("colors" in k for k in net.state_dict())


def test_pix2pix_forward_backward_tiny():
    torch.manual_seed(0)
    for mode in ("layout", "color"):
        kw = pix2pix_kwargs(pix2pix(mode, num_downs=5, ngf=8, ndf=8), (32, 64), 20)
        G, D = UnetGenerator(**kw["G"]), PatchDiscriminator(**kw["D"])
        layout = one_hot_layout(2, 32, 64)
        image = G(layout)
        assert image.shape == (2, 3, 32, 64)
        assert torch.isfinite(image).all() and image.min() >= 0 and image.max() <= 255
        logits = D(layout, image)
        assert logits.shape == (2, 1, 2, 6)  # 32x64 -> 16x32 -> 8x16 -> 4x8 -> 3x7 -> 2x6
        (logits.mean() + image.mean()).backward()
        for net in (G, D):
            assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_patch_discriminator_output_at_256():
    with torch.device("meta"):
        D = PatchDiscriminator(20, "color")
        out = D(torch.zeros(1, 20, 256, 256), torch.zeros(1, 3, 256, 256))
    assert out.shape == (1, 1, 30, 30)  # the public implementation's 30x30 patch map


def test_patchgan_receptive_field_is_70():
    convs = [m for m in PatchDiscriminator(20, "color", 4, 3).modules() if isinstance(m, nn.Conv2d)]
    field = 1
    for conv in reversed(convs):
        field = (field - 1) * conv.stride[0] + conv.kernel_size[0]
    assert field == 70


def test_color_input_uses_cityscapes_colors():
    net = UnetGenerator(20, "color", 5, 4)
    layout = torch.zeros(1, 20, 1, 2)
    layout[0, 0, 0, 0] = 1  # road
    layout[0, 19, 0, 1] = 1  # void
    x = net.condition(layout)
    torch.testing.assert_close(x[0, :, 0, 0], torch.tensor([128, 64, 128]) / 127.5 - 1)
    torch.testing.assert_close(x[0, :, 0, 1], torch.full((3,), -1.0))
    assert CHANNEL_COLORS[19].tolist() == [0, 0, 0]


def test_color_from_label_ids_reads_the_colour_map_itself():
    kw = pix2pix_kwargs(pix2pix("color"), (256, 256), 20, label_ids=True, dataset="cityscapes")
    assert kw["G"]["color_source"] == kw["D"]["color_source"] == "label_ids" and "colors" not in kw["G"]
    assert pix2pix_reads(kw) == "label_colors"
    assert count_parameters(on_meta(UnetGenerator, kw["G"])) == PIX2PIX_G  # 3 input channels either way
    assert count_parameters(on_meta(PatchDiscriminator, kw["D"])) == PIX2PIX_D
    net = UnetGenerator(**dict(kw["G"], num_downs=5, ngf=4))
    color_map = torch.tensor([[111.0, 74.0, 0.0], [0.0, 0.0, 0.0]]).T.reshape(1, 3, 1, 2)  # dynamic, unlabeled
    torch.testing.assert_close(net.condition(color_map), color_map / 127.5 - 1)


def test_color_fallback_and_missing_ids():
    notes = []
    kw = pix2pix_kwargs(pix2pix("color"), (256, 256), 20, CHANNEL_COLORS.tolist(), False, "synthetic", notes.append)
    assert kw["G"]["color_source"] == "channels" and kw["G"]["colors"] == CHANNEL_COLORS.tolist()
    assert pix2pix_reads(kw) == "layout" and len(notes) == 1 and "(synthetic)" in notes[0]
    assert pix2pix_reads(pix2pix_kwargs(pix2pix("layout"), (256, 256), 20, dataset="cityscapes")) == "layout"
    with pytest.raises(ValueError, match=r"cityscapes.keep_label_ids: true and run `crn-repro prepare` again"):
        pix2pix_kwargs(pix2pix("color"), (256, 256), 20, dataset="cityscapes")
    old = {k: v for k, v in kw["G"].items() if k != "color_source"}  # a model file from before color_source
    assert not UnetGenerator(**dict(old, num_downs=5, ngf=4)).condition.from_label_ids
    with pytest.raises(ValueError, match="color_source"):
        UnetGenerator(20, "color", 5, 4, color_source="rgb")


@pytest.mark.parametrize("size", [(32, 48), (48, 64), (256, 300)])
def test_pix2pix_rejects_sizes_not_divisible(size):
    num_downs = 5 if size[0] < 256 else 8
    with pytest.raises(ValueError, match=f"{size[0]}x{size[1]}"):
        pix2pix_kwargs(pix2pix(num_downs=num_downs), size, 20)


def test_pix2pix_params_validate():
    problems = dict(pix2pix(num_downs=4, dropout=1.0).validate())
    assert set(problems) == {"num_downs", "dropout"}
    assert not list(pix2pix().validate())


def test_pix2pix_dropout_in_train_mode_only():
    torch.manual_seed(0)
    G = UnetGenerator(20, "layout", 6, 4, dropout=0.5)  # one dropout level at num_downs 6
    assert sum(isinstance(m, nn.Dropout) for m in G.modules()) == 1
    assert sum(isinstance(m, nn.Dropout) for m in UnetGenerator(20, "layout", 8, 4).modules()) == 3
    assert not any(isinstance(m, nn.Dropout) for m in UnetGenerator(20, "layout", 8, 4, dropout=0.0).modules())
    layout = one_hot_layout(2, 64, 64)
    with torch.no_grad():
        assert not torch.equal(G(layout), G(layout))
        G.eval()
        torch.testing.assert_close(G(layout), G(layout), rtol=0, atol=0)


def test_pix2pix_bias_only_where_public_implementation_has_it():
    G = UnetGenerator(20, "color", 8, 4)
    with_bias = [m for m in G.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and m.bias is not None]
    assert with_bias == [G.up[0][0]]  # the output up-conv
    D = PatchDiscriminator(20, "color", 4, 3)
    convs = [m for m in D.modules() if isinstance(m, nn.Conv2d)]
    assert [c.bias is not None for c in convs] == [True, False, False, False, True]


@pytest.mark.parametrize("cls,kwargs", [
    (UnetGenerator, {"num_classes": 20, "input": "color", "num_downs": 8, "ngf": 64}),
    (PatchDiscriminator, {"num_classes": 20, "input": "color", "ndf": 64}),
    (DCGANGenerator, {"num_classes": 20, "ngf": 64, "num_downs": 6}),
    (DCGANDiscriminator, {"image_size_hw": [256, 512], "ndf": 64, "num_downs": 6}),
])
def test_init_is_dcgan_normal(cls, kwargs):
    torch.manual_seed(0)
    net = cls(**kwargs)
    convs = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    weights = torch.cat([m.weight.flatten() for m in convs])
    assert abs(weights.mean().item()) < 1e-3 and weights.std().item() == pytest.approx(0.02, rel=0.02)
    assert all(m.bias is None or not m.bias.any() for m in convs)
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    scales = torch.cat([m.weight for m in norms])
    assert abs(scales.mean().item() - 1) < 0.01 and scales.std().item() == pytest.approx(0.02, rel=0.2)
    assert not torch.cat([m.bias for m in norms]).any()


def test_dcgan_forward_backward_tiny():
    torch.manual_seed(0)
    kw = dcgan_kwargs(DCGANNetworkParams(ngf=8, ndf=8, num_downs=3, num_downs_d=3), (32, 64), 20)
    G, D = DCGANGenerator(**kw["G"]), DCGANDiscriminator(**kw["D"])
    image = G(one_hot_layout(2, 32, 64))
    assert image.shape == (2, 3, 32, 64)
    assert torch.isfinite(image).all() and image.min() >= 0 and image.max() <= 255
    logits = D(image)
    assert logits.shape == (2, 1, 1, 1)  # one logit per image
    (logits.mean() + image.mean()).backward()
    for net in (G, D):
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_dcgan_generator_has_no_skips():
    # Without skips, the encoder's bottleneck alone determines the output.
    G = DCGANGenerator(20, 4, 3).eval()
    layout = one_hot_layout(1, 16, 32)
    with torch.no_grad():
        torch.testing.assert_close(G(layout), (G.decoder(G.encoder(layout * 2 - 1)) + 1) / 2 * 255)
    assert G.encoder(layout * 2 - 1).shape == (1, 16, 2, 4)


def test_dcgan_layer_layout():
    G = DCGANGenerator(20, 4, 3)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in G.encoder[0])  # no BN on the input layer
    assert isinstance(G.decoder[-1], nn.Tanh) and isinstance(G.decoder[-2], nn.ConvTranspose2d)
    D = DCGANDiscriminator([32, 64], 4, 3)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in D.features[0])
    assert D.to_logit.kernel_size == (4, 8)


@pytest.mark.parametrize("downs", [(5, 3), (3, 5)])
def test_dcgan_rejects_sizes_not_divisible(downs):
    params = DCGANNetworkParams(ngf=8, ndf=8, num_downs=downs[0], num_downs_d=downs[1])
    with pytest.raises(ValueError, match="16x32"):
        dcgan_kwargs(params, (16, 32), 20)
