"""FID feature network (crn_repro/inception.py; the pytorch-fid package's network for the published
protocol): file layouts, the TF graph's pooling, loading, errors.

Weights are random (no downloads): each source's network is built, saved in its file's key layout,
loaded back with ``load_inception`` and compared with an independent in-memory reference. A 299x299
forward is ~6 GFLOPs, seconds on a busy CPU: ``test_input_is_resized_to_299_and_scaled`` checks the
protocol's input, and the network comparisons run one image at 107x107 (``small_input``; Mixed_7c
still sees 2x2 maps, so padding matters everywhere). The pooling tests use single blocks.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from pytorch_fid.inception import FIDInceptionA, FIDInceptionC
from pytorch_fid.inception import FIDInceptionE_1 as FIDInceptionE
from pytorch_fid.inception import FIDInceptionE_2 as FIDInceptionEMaxPool
from torchvision.models.inception import InceptionA, InceptionC, InceptionE

from crn_repro import inception
from crn_repro.errors import CrnError
from crn_repro.inception import (
    FEATURE_DIM,
    PYTORCH_FID_FILE_NAME,
    PYTORCH_FID_URL,
    TORCHVISION_FILE_NAME,
    InceptionFeatures,
    inception_network,
    load_inception,
)

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1)


def random_image(n=1, h=24, w=40, seed=0) -> torch.Tensor:
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed)) * 255.0


@torch.no_grad()
def randomise_(net: nn.Module, seed: int) -> nn.Module:
    """Variance-preserving random weights and non-trivial BatchNorm statistics, so that features
    depend on the input (torch's default init makes a 40-layer stack nearly input-independent)."""
    generator = torch.Generator().manual_seed(seed)
    for module in net.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu", generator=generator)
            if module.bias is not None:
                module.bias.normal_(0.0, 0.1, generator=generator)
        elif isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_(0.0, 0.05, generator=generator)
            module.running_var.uniform_(0.8, 1.2, generator=generator)
            module.weight.uniform_(0.8, 1.2, generator=generator)
            module.bias.normal_(0.0, 0.05, generator=generator)
    return net.eval()


def pool3_via_fc_input(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Reference pool3 features: what the untouched network feeds its fc layer."""
    captured = []
    handle = net.fc.register_forward_pre_hook(lambda module, inputs: captured.append(inputs[0]))
    try:
        with torch.no_grad():
            net(x)
    finally:
        handle.remove()
    return captured[0]


def resized(image_0_255: torch.Tensor) -> torch.Tensor:
    """The protocol's resize, to whatever size the module uses now (see ``small_input``)."""
    return F.interpolate(image_0_255, size=inception.INPUT_SIZE_HW, mode="bilinear", align_corners=False)


@pytest.fixture
def small_input(monkeypatch):
    monkeypatch.setattr(inception, "INPUT_SIZE_HW", (107, 107))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: on a busy 2-core machine OpenMP's barriers make a 2-thread forward of
    this 100-layer network ~100x slower (seconds instead of tens of milliseconds)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def fid_file(tmp_path_factory):
    """A pytorch-fid-layout file with random weights, saved without BatchNorm's num_batches_tracked
    (as files written before PyTorch 0.4 are), and the in-memory network it came from."""
    net = randomise_(inception_network("pytorch-fid"), seed=0)
    state_dict = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path_factory.mktemp("fid") / PYTORCH_FID_FILE_NAME
    torch.save(state_dict, path)
    return net, path


@pytest.fixture(scope="module")
def torchvision_file(tmp_path_factory):
    """A torchvision-layout file (with num_batches_tracked, like current torchvision checkpoints)."""
    net = randomise_(inception_network("torchvision"), seed=1)
    path = tmp_path_factory.mktemp("tv") / TORCHVISION_FILE_NAME
    torch.save(net.state_dict(), path)
    return net, path


# --- file layouts -----------------------------------------------------------------------------------


def test_pytorch_fid_layout_is_the_file_layout():
    # pytorch-fid loads pt_inception-2015-12-05-6726825d.pth strictly into torchvision's
    # inception_v3(num_classes=1008, aux_logits=False) with patched Mixed blocks that keep
    # torchvision's parameter names (pytorch-fid src/pytorch_fid/inception.py, fid_inception_v3).
    with torch.device("meta"):
        ours = inception_network("pytorch-fid").state_dict()
        theirs = torchvision.models.inception_v3(weights=None, num_classes=1008, aux_logits=False, init_weights=False)
        theirs = theirs.state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[key].shape == theirs[key].shape for key in ours)
    assert ours["Mixed_7c.branch_pool.conv.weight"].shape == (192, 2048, 1, 1)
    assert ours["Mixed_7b.branch_pool.conv.weight"].shape == (192, 1280, 1, 1)
    assert ours["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)
    assert "Conv2d_1a_3x3.conv.bias" not in ours  # BasicConv2d: conv without bias, then BatchNorm
    assert ours["fc.weight"].shape == (1008, FEATURE_DIM) and ours["fc.bias"].shape == (1008,)
    assert not any(key.startswith("AuxLogits") for key in ours)


def test_torchvision_layout_is_inception_v3_with_aux_head():
    # inception_v3(weights=IMAGENET1K_V1) forces aux_logits=True before loading the file strictly.
    with torch.device("meta"):
        ours = inception_network("torchvision").state_dict()
        theirs = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict()
    assert list(ours) == list(theirs)
    assert ours["fc.weight"].shape == (1000, FEATURE_DIM)
    assert ours["AuxLogits.fc.weight"].shape == (1000, 768)


def test_tf_blocks_sit_where_the_graph_has_them():
    with torch.device("meta"):
        net = inception_network("pytorch-fid")
    for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d"):
        assert type(getattr(net, name)) is FIDInceptionA
    for name in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
        assert type(getattr(net, name)) is FIDInceptionC
    assert type(net.Mixed_7b) is FIDInceptionE and type(net.Mixed_7c) is FIDInceptionEMaxPool
    assert type(net.Mixed_6a) is torchvision.models.inception.InceptionB  # no pool branch to patch
    assert type(net.Mixed_7a) is torchvision.models.inception.InceptionD
    with torch.device("meta"):
        plain = inception_network("torchvision")
    assert type(plain.Mixed_5b) is InceptionA and type(plain.Mixed_7c) is InceptionE


# --- the TensorFlow graph's pool branches -------------------------------------------------------------

BLOCKS = [  # (FID block, plain torchvision block, constructor args, pool branch channels)
    (FIDInceptionA, InceptionA, (16, 8), 8),
    (FIDInceptionC, InceptionC, (16, 8), 192),
    (FIDInceptionE, InceptionE, (16,), 192),
    (FIDInceptionEMaxPool, InceptionE, (16,), 192),
]


@pytest.mark.parametrize("fid_block, plain_block, args, pool_channels", BLOCKS)
def test_tf_pooling_changes_only_the_pool_branch(fid_block, plain_block, args, pool_channels):
    plain = randomise_(plain_block(*args), seed=0)
    fid = fid_block(*args).eval()
    fid.load_state_dict(plain.state_dict())
    x = torch.randn(1, args[0], 5, 5, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = fid(x), plain(x)
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours[:, :-pool_channels], theirs[:, :-pool_channels])  # other branches
    assert (ours[:, -pool_channels:] - theirs[:, -pool_channels:]).abs().max() > 1e-3  # not dead code


@pytest.mark.parametrize("fid_block, args", [(FIDInceptionA, (4, 2)), (FIDInceptionC, (4, 2)), (FIDInceptionE, (4,))])
def test_average_pool_excludes_the_padding(fid_block, args):
    block = fid_block(*args).eval()
    block.branch_pool = nn.Identity()  # the branch's output is now the pooled input itself
    x = torch.rand(1, 4, 5, 5, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        pooled = block(x)[:, -4:]
    torch.testing.assert_close(pooled[..., 0, 0], x[..., :2, :2].mean(dim=(-2, -1)))  # 4 valid pixels
    torch.testing.assert_close(pooled[..., 0, 2], x[..., :2, 1:4].mean(dim=(-2, -1)))  # 6 valid pixels
    torch.testing.assert_close(pooled[..., 2, 2], x[..., 1:4, 1:4].mean(dim=(-2, -1)))


def test_mixed_7c_max_pools():
    block = FIDInceptionEMaxPool(4).eval()
    block.branch_pool = nn.Identity()
    x = torch.randn(1, 4, 5, 5, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        pooled = block(x)[:, -4:]
    torch.testing.assert_close(pooled[..., 0, 0], x[..., :2, :2].amax(dim=(-2, -1)))
    torch.testing.assert_close(pooled[..., 2, 2], x[..., 1:4, 1:4].amax(dim=(-2, -1)))


def test_tf_pooling_changes_the_network_output(small_input):
    fid = randomise_(inception_network("pytorch-fid"), seed=2)
    plain = torchvision.models.inception_v3(weights=None, num_classes=1008, aux_logits=False, init_weights=False)
    plain.load_state_dict(fid.state_dict())
    x = resized(random_image()) / 127.5 - 1.0
    difference = pool3_via_fc_input(fid, x) - pool3_via_fc_input(plain.eval(), x)
    assert difference.abs().max() > 1e-2


# --- loading ------------------------------------------------------------------------------------------


def test_input_is_resized_to_299_and_scaled():
    image = torch.zeros(2, 3, 20, 30)
    image[:, :, :, 15:] = 255.0
    x = InceptionFeatures.normalize_input(image)
    assert x.shape == (2, 3, 299, 299)
    assert x.min().item() == pytest.approx(-1.0) and x.max().item() == pytest.approx(1.0)
    torch.testing.assert_close(x, F.interpolate(image, size=(299, 299), mode="bilinear", align_corners=False) / 127.5 - 1)


def test_load_pytorch_fid_matches_the_in_memory_network(fid_file, small_input):
    net, path = fid_file
    features = load_inception("pytorch-fid", path)
    image = random_image()
    with torch.no_grad():
        ours = features(image)
    reference = pool3_via_fc_input(net, resized(image) / 255.0 * 2.0 - 1.0)  # pytorch-fid: 2 * x_01 - 1
    assert ours.shape == (1, FEATURE_DIM)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4)
    # The comparison has teeth: a wrong input scaling would be caught.
    assert (pool3_via_fc_input(net, resized(image) / 255.0) - reference).abs().max() > 1e-2

    assert "pytorch-fid" in features.source_description and str(path) in features.source_description
    assert not any(p.requires_grad for p in features.parameters())
    features.train()
    assert not features.training and not features.net.training


def test_load_torchvision_follows_transform_input(torchvision_file, small_input):
    # torchvision's IMAGENET1K_V1 Inception takes ImageNet-normalised input and, with
    # transform_input=True (set when loading those weights), maps it back to 2 * x_01 - 1.
    net, path = torchvision_file
    features = load_inception("torchvision", path)
    reference_net = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False, transform_input=True)
    reference_net.load_state_dict(net.state_dict())
    reference_net.eval()
    image = random_image(seed=1)
    imagenet_normalised = (resized(image) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    with torch.no_grad():
        ours = features(image)
    torch.testing.assert_close(ours, pool3_via_fc_input(reference_net, imagenet_normalised), rtol=1e-4, atol=1e-4)
    assert "NOT the published FID network" in features.source_description


def test_features_wrapper_keeps_the_in_memory_weights(fid_file):
    net, _ = fid_file
    features = InceptionFeatures(copy.deepcopy(net), "test")
    assert isinstance(features.net.fc, nn.Identity) and features.net.AuxLogits is None
    with pytest.raises(ValueError, match="RGB"):
        features(torch.zeros(1, 1, 8, 8))


# --- errors -------------------------------------------------------------------------------------------


def _one_line_crn_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_unknown_source_lists_the_valid_ones():
    with pytest.raises(CrnError) as excinfo:
        load_inception("tf-slim", None)
    assert "pytorch-fid, torchvision" in _one_line_crn_error(excinfo)


def test_missing_file_names_it_and_where_to_get_it(tmp_path):
    with pytest.raises(CrnError) as excinfo:
        load_inception("pytorch-fid", tmp_path / "nope.pth")
    message = _one_line_crn_error(excinfo)
    assert str(tmp_path / "nope.pth") in message and PYTORCH_FID_FILE_NAME in message and PYTORCH_FID_URL in message


def test_no_path_looks_in_the_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(CrnError) as excinfo:
        load_inception("torchvision", None)
    message = _one_line_crn_error(excinfo)
    assert str(tmp_path / "checkpoints" / TORCHVISION_FILE_NAME) in message
    assert "https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth" in message


def test_corrupt_file(tmp_path):
    path = tmp_path / PYTORCH_FID_FILE_NAME
    path.write_bytes(b"not a torch file\n" * 10)
    with pytest.raises(CrnError) as excinfo:
        load_inception("pytorch-fid", path)
    message = _one_line_crn_error(excinfo)
    assert f"{path}: not a readable pytorch-fid Inception weights file (" in message
    assert f"put {PYTORCH_FID_FILE_NAME} there (download {PYTORCH_FID_URL})" in message


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(CrnError, match="expected a state_dict"):
        load_inception("pytorch-fid", path)


def test_missing_keys(tmp_path):
    path = tmp_path / "partial.pth"
    torch.save({"fc.weight": torch.zeros(1008, FEATURE_DIM)}, path)
    with pytest.raises(CrnError) as excinfo:
        load_inception("pytorch-fid", path)
    message = _one_line_crn_error(excinfo)
    assert str(path) in message and "missing" in message and "Conv2d_1a_3x3.conv.weight" in message


def test_mismatched_shapes(tmp_path):
    with torch.device("meta"):
        keys = list(inception_network("pytorch-fid").state_dict())
    path = tmp_path / "shapes.pth"
    torch.save({key: torch.zeros(1) for key in keys}, path)
    with pytest.raises(CrnError) as excinfo:
        load_inception("pytorch-fid", path)
    message = _one_line_crn_error(excinfo)
    assert str(path) in message and "Conv2d_1a_3x3.conv.weight" in message and "(32, 3, 3, 3)" in message


def test_torchvision_file_is_not_the_fid_file(torchvision_file):
    _, path = torchvision_file
    with pytest.raises(CrnError) as excinfo:
        load_inception("pytorch-fid", path)
    message = _one_line_crn_error(excinfo)
    assert str(path) in message and "unexpected" in message and "AuxLogits" in message


def test_loading_gives_what_the_package_loads_itself(fid_file, small_input, monkeypatch):
    """``load_inception('pytorch-fid')`` gives the features of the package's own loading path,
    ``fid_inception_v3`` with its download pointed at the same file."""
    import pytorch_fid.inception as package

    net, path = fid_file
    state = torch.load(path, map_location="cpu", weights_only=True)
    monkeypatch.setattr(package, "load_state_dict_from_url", lambda *args, **kwargs: state)  # offline: the given file
    theirs = package.fid_inception_v3().eval()
    ours = load_inception("pytorch-fid", path)
    x = resized(random_image())
    with torch.no_grad():
        torch.testing.assert_close(ours(random_image()), pool3_via_fc_input(theirs, x / 127.5 - 1.0), rtol=1e-4, atol=1e-5)
