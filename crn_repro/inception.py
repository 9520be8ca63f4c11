"""Inception-v3 pool3 features (2048-d), the feature space of FID and KID (docs/facts.md §7).

FID (Heusel et al. 2017) and KID (Binkowski et al. 2018) are defined on the 2048-d activations
after the final average pool ("pool3") of the TensorFlow Inception-v3 graph of 2015-12-05. Two
weight sources, recorded on the module as ``source_description``:

- ``pytorch-fid``: ``pt_inception-2015-12-05-6726825d.pth``, the pytorch-fid project's port of
  that graph, built by the ``pytorch_fid`` package itself (its ``fid_inception_v3``, with the weights
  file given by path instead of its download). ONLY this source reproduces the published FID/KID
  protocol. The port is torchvision's Inception3 layout (1008-way fc, no auxiliary head) with the
  TensorFlow graph's pool branches: the 3x3 average pools in Mixed_5b..5d, 6b..6e and 7b exclude
  the zero padding, and Mixed_7c's pool branch max-pools.
- ``torchvision``: ``inception_v3_google-0cc3c7bd.pth`` (IMAGENET1K_V1), a different port of a
  different Google checkpoint, with torchvision's unmodified blocks. Its scores are self-consistent
  but NOT comparable with published FIDs.

Protocol (both sources): images RGB in 0..255 are resized bilinearly to 299x299
(``align_corners=False``, no antialiasing, as pytorch-fid does) and scaled to [-1, 1]. For
torchvision's weights that is the same input: torchvision loads them with ``transform_input=True``,
which maps ImageNet-normalised input back to 2 * x_01 - 1 before the first convolution. The
published protocol feeds 8-bit images; round the images first to match it exactly.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.inception import Inception3

from crn_repro.checkpoint import read_state_dict
from crn_repro.errors import CrnError, check_choice

SOURCES = ("pytorch-fid", "torchvision")
FEATURE_DIM = 2048
INPUT_SIZE_HW = (299, 299)

PYTORCH_FID_FILE_NAME = "pt_inception-2015-12-05-6726825d.pth"
PYTORCH_FID_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{PYTORCH_FID_FILE_NAME}"
PYTORCH_FID_NUM_CLASSES = 1008  # the TensorFlow graph's softmax has 1008 outputs (1000 + unused)
TORCHVISION_FILE_NAME = "inception_v3_google-0cc3c7bd.pth"

_FILE_NAMES = {"pytorch-fid": PYTORCH_FID_FILE_NAME, "torchvision": TORCHVISION_FILE_NAME}


def inception_network(source: str) -> Inception3:
    """The full torchvision Inception3 whose state_dict has the key layout of SOURCE's weights file.

    Weights are torch's default init (not torchvision's slow truncated normal): the file replaces
    them. Build it under ``torch.device("meta")`` to inspect the layout without allocating.
    """
    check_choice("Inception weights source", source, SOURCES)
    if source == "torchvision":
        # What inception_v3(weights=IMAGENET1K_V1) builds, less the input transform (done in
        # InceptionFeatures.normalize_input); the file carries the auxiliary head, so it stays here.
        return Inception3(num_classes=1000, aux_logits=True, transform_input=False, init_weights=False)
    return _pytorch_fid_network()


def _pytorch_fid_network() -> Inception3:
    """pytorch-fid's FID Inception, built by the package (``pytorch_fid.inception.fid_inception_v3``)
    without its download: the one call that would fetch the weights gets the network's own fresh
    ones instead, which ``load_inception`` then replaces with the given file's."""
    import pytorch_fid.inception as package

    built: list[Inception3] = []
    builder, loader = package._inception_v3, package.load_state_dict_from_url

    def build(*args, **kwargs):
        built.append(builder(*args, **kwargs))
        return built[-1]

    package._inception_v3 = build
    package.load_state_dict_from_url = lambda *args, **kwargs: built[-1].state_dict()
    try:
        return package.fid_inception_v3()
    finally:
        package._inception_v3, package.load_state_dict_from_url = builder, loader


# --- the feature extractor ----------------------------------------------------------------------


class InceptionFeatures(nn.Module):
    """Inception-v3 pool3 features: the (N, 2048) input of the final fc layer. Frozen, always eval.

    Build it with ``load_inception``. Takes ownership of ``net``: its fc and auxiliary head are
    dropped (dropout before fc is inactive in eval mode, so the output is pool3 exactly).
    """

    def __init__(self, net: Inception3, source_description: str) -> None:
        super().__init__()
        net.fc = nn.Identity()
        net.AuxLogits = None
        net.aux_logits = False
        net.transform_input = False
        self.net = net
        self.source_description = source_description
        self.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> InceptionFeatures:
        """A measuring instrument: BatchNorm uses its stored statistics whatever a parent asks."""
        return super().train(False)

    @staticmethod
    def normalize_input(images_0_255: Tensor) -> Tensor:
        """RGB 0..255, any size -> 299x299 in [-1, 1] (the one place the protocol's input happens)."""
        x = F.interpolate(images_0_255, size=INPUT_SIZE_HW, mode="bilinear", align_corners=False)
        return x / 127.5 - 1.0

    def forward(self, images_0_255: Tensor) -> Tensor:
        """images: float (N, 3, H, W) RGB in 0..255. Returns pool3 features (N, 2048)."""
        if images_0_255.ndim != 4 or images_0_255.shape[1] != 3:
            raise ValueError(f"expected (N, 3, H, W) RGB images, got {tuple(images_0_255.shape)}")
        return self.net(self.normalize_input(images_0_255.float()))


def load_inception(source: str, path: str | Path | None) -> InceptionFeatures:
    """The pool3 feature extractor of SOURCE (see SOURCES), frozen and in eval mode.

    path: the weights file; None looks in torch's hub cache (``<hub dir>/checkpoints/<file name>``),
    where pytorch-fid and torchvision put their downloads. Nothing is ever downloaded.
    """
    check_choice("Inception weights source", source, SOURCES)
    file_name = _FILE_NAMES[source]
    url = weights_url(source)
    if path is None:
        path = weights_file(source, None)
        if not path.is_file():
            raise CrnError(
                f"{path}: {source} Inception weights not found; download {url} there or pass the path of a copy of {file_name}"
            )
    path = Path(path)
    state_dict = read_state_dict(path, f"{source} Inception weights file", f"put {file_name} there (download {url})")
    with torch.device("meta"):  # no allocation: the file's tensors become the parameters
        net = inception_network(source)
    net.load_state_dict(_checked_state_dict(net, state_dict, path, source), strict=True, assign=True)
    if source == "pytorch-fid":
        description = f"the pytorch-fid package's FID Inception (TF graph 2015-12-05) with weights from {path}"
    else:
        description = f"torchvision Inception-v3 IMAGENET1K_V1 from {path} — NOT the published FID network"
    return InceptionFeatures(net, description)


def weights_file(source: str, path: str | Path | None) -> Path:
    """The file ``load_inception(source, path)`` reads: ``path``, or with None torch's hub cache's copy."""
    check_choice("Inception weights source", source, SOURCES)
    return Path(path) if path is not None else Path(torch.hub.get_dir()) / "checkpoints" / _FILE_NAMES[source]


def weights_url(source: str) -> str:
    """Where SOURCE's weights file is published (never downloaded by the suite)."""
    return PYTORCH_FID_URL if source == "pytorch-fid" else _torchvision_url()


def _torchvision_url() -> str:
    from torchvision.models import Inception_V3_Weights

    return Inception_V3_Weights.IMAGENET1K_V1.url


def _checked_state_dict(net: nn.Module, state_dict: dict, path: Path, source: str) -> dict:
    """The file's tensors, keys and shapes checked against ``net``; BatchNorm's num_batches_tracked
    (absent from files saved before PyTorch 0.4, and unused in eval mode) filled in when missing."""
    expected = net.state_dict()
    optional = {key for key in expected if key.endswith("num_batches_tracked")}
    missing = [key for key in expected if key not in state_dict and key not in optional]
    unexpected = [key for key in state_dict if key not in expected]
    if missing or unexpected:
        parts = [f"{len(keys)} {what} key(s): {', '.join(map(str, keys[:3]))}{' ...' if len(keys) > 3 else ''}"
                 for what, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
        raise CrnError(f"{path}: not the {source} Inception-v3 state_dict ({_FILE_NAMES[source]}); {'; '.join(parts)}")
    checked = {}
    for key, reference in expected.items():
        if key not in state_dict:
            checked[key] = torch.zeros((), dtype=torch.long)
            continue
        value = state_dict[key]
        if not isinstance(value, Tensor) or tuple(value.shape) != tuple(reference.shape):
            got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise CrnError(f"{path}: {key} has shape {got}, expected {tuple(reference.shape)} ({source} Inception-v3)")
        checked[key] = value.float() if value.is_floating_point() else value
    return checked
