"""The one registry of models: name -> networks, their params types, the objective, and what else
the suite needs to know about a model (its display name, the model files it depends on, what its
networks read, whether its generator is a cascade whose last modules can train alone).

Typer's ``--model`` choices, params.yaml validation, the trainer, checkpoints, the report and ``info``
all read this dict; nothing else lists the models or branches on their names. ``load_model``
rebuilds a model file's networks through it (``checkpoint`` only knows the file format).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import torch
from torch import nn

from baselines.dcgan import DCGANDiscriminator, DCGANGenerator, DCGANNetworkParams, dcgan_kwargs
from baselines.fullres import FullResNetworkParams, FullResolutionNetwork, fullres_kwargs
from baselines.pix2pix import PatchDiscriminator, Pix2PixNetworkParams, UnetGenerator, pix2pix_kwargs, pix2pix_reads
from baselines.unet import UNet, UNetNetworkParams, unet_kwargs
from crn_repro.adversarial import GANSemSegObjective, GANSemSegObjectiveParams, Pix2PixObjective, Pix2PixObjectiveParams
from crn_repro.checkpoint import read_model_file
from crn_repro.crn import CRN, CRNNetworkParams, crn_kwargs
from crn_repro.errors import CrnError, one_line
from crn_repro.losses import FeatureMatchingObjective, FeatureMatchingParams, Objective, VggParams
from crn_repro.segmentation import (
    MODEL_NAME as SEGMENTER,
    NET_NAME as SEGMENTER_NET,
    SegmentationObjective,
    SegmentationObjectiveParams,
    Segmenter,
    SegmenterNetworkParams,
    segmenter_kwargs,
)


@dataclass(frozen=True)
class BuildContext:
    """What a builder may know about the run besides its own params section."""

    image_size_hw: tuple[int, int]
    num_classes: int
    vgg: VggParams
    steps_per_epoch: int
    runs_dir: Path  # where the pipeline's own runs live (e.g. runs/segmenter/model.pt)
    label_colors: tuple[tuple[int, int, int], ...] | None = None  # the dataset's palette, one RGB per channel
    dataset: str | None = None  # the prepared data's dataset (synthetic, cityscapes, nyu)
    label_ids: bool = False  # whether the prepared data keeps the official labelIds (cityscapes.keep_label_ids)
    note: Callable[[str], None] | None = None  # where a builder says, in one line, what it chose for the run


@dataclass(frozen=True)
class ModelSpec:
    summary: str
    display_name: str  # how tables and figures name the model (the paper's names)
    network_params: type  # dataclass of params.yaml <model>.network
    objective_params: type  # dataclass of params.yaml <model>.objective
    # name -> (network class, function(network params, context) -> constructor kwargs); the first one is the
    # network that synthesizes (a segmenter's: the one that segments)
    networks: dict[str, tuple[type[nn.Module], Callable]]
    objective: Callable[[object, BuildContext], Objective]
    role: Literal["generator", "segmenter"] = "generator"  # generators synthesize; a segmenter scores
    # what the networks read of a layout (datasets.READS), from their constructor kwargs, so that training
    # and synthesis (from the model file) feed the same: the one-hot layout, or the official colour label map
    reads: Callable[[dict[str, dict]], str] = lambda network_kwargs: "layout"
    # models whose model file this one's objective reads by default (gan-semseg: the segmenter's), so they
    # are trained first; an objective param may name another file instead
    requires: tuple[str, ...] = ()
    # the generator is a cascade of refinement modules whose last N can train alone (train_last_modules)
    cascade: bool = False
    # the logged loss ("<phase>/<name>") that falls as the model learns; a GAN's total need not
    progress_loss: str = "G/total"

    @property
    def main_network(self) -> str:
        """The network that synthesizes (or segments): the first one."""
        return next(iter(self.networks))


def _feature_matching(obj: FeatureMatchingParams, ctx: BuildContext) -> Objective:
    return FeatureMatchingObjective(obj, ctx.vgg, ctx.steps_per_epoch)


def _crn_loss_model(
    summary: str, display_name: str, params_cls: type, cls: type[nn.Module], resolve: Callable, cascade: bool = False
) -> ModelSpec:
    """A baseline architecture trained with the CRN's feature-matching loss (Sec. 4)."""
    return ModelSpec(
        summary=summary,
        display_name=display_name,
        network_params=params_cls,
        objective_params=FeatureMatchingParams,
        networks={"G": (cls, lambda net, ctx: resolve(net, ctx.image_size_hw, ctx.num_classes))},
        objective=_feature_matching,
        cascade=cascade,
    )


def _crn_like(summary: str, display_name: str) -> ModelSpec:
    """A model with the CRN network and the feature-matching objective: crn, image-space and
    crn-diverse differ only in their params (Sec. 3.3, 3.4, Eq. 4)."""
    return _crn_loss_model(summary, display_name, CRNNetworkParams, CRN, crn_kwargs, cascade=True)


def _gan_model(
    summary: str, display_name: str, params_cls: type, objective_cls: type, generator: type, discriminator: type,
    resolve: Callable, objective: Callable, progress_loss: str,
    reads: Callable[[dict[str, dict]], str] = lambda network_kwargs: "layout", requires: tuple[str, ...] = (),
) -> ModelSpec:
    """A GAN baseline (Sec. 4): networks G and D, whose kwargs ``resolve(net, ctx)`` gives as {"G": .., "D": ..}."""
    return ModelSpec(
        summary=summary,
        display_name=display_name,
        network_params=params_cls,
        objective_params=objective_cls,
        networks={
            "G": (generator, lambda net, ctx: resolve(net, ctx)["G"]),
            "D": (discriminator, lambda net, ctx: resolve(net, ctx)["D"]),
        },
        objective=objective,
        reads=reads,
        requires=requires,
        progress_loss=progress_loss,
    )


def _gan_semseg_objective(obj: GANSemSegObjectiveParams, ctx: BuildContext) -> Objective:
    path = Path(obj.segmenter) if obj.segmenter else ctx.runs_dir / SEGMENTER / "model.pt"
    segmenter = load_segmenter(path, "cpu", ctx.image_size_hw)
    return GANSemSegObjective(obj, segmenter, {"segmenter_sha256": hashlib.sha256(path.read_bytes()).hexdigest()})


MODELS: dict[str, ModelSpec] = {
    "crn": _crn_like("Cascaded refinement network with the feature-matching loss (Sec. 3, Eq. 1)", "CRN"),
    "image-space": _crn_like(
        "CRN trained with L1 on pixels only: the image-space loss baseline (Sec. 4, Eq. 4)", "Image-space loss"
    ),
    "crn-diverse": _crn_like(
        "CRN synthesizing k images with the diversity loss (Sec. 3.4, Eq. 2 / Eq. 3)", "CRN (diverse, u=0)"
    ),
    "fullres": _crn_loss_model(
        "Full-resolution network: inverted context aggregation, CRN loss (Sec. 4)", "Full-resolution net",
        FullResNetworkParams, FullResolutionNetwork, fullres_kwargs,
    ),
    "unet": _crn_loss_model(
        "Encoder-decoder (U-Net) with the CRN loss (Sec. 4)", "Encoder-decoder", UNetNetworkParams, UNet, unet_kwargs
    ),
    "pix2pix": _gan_model(
        "pix2pix: conditional GAN, U-Net generator, PatchGAN, GAN + 100 L1 (Isola et al., Sec. 4)", "pix2pix",
        Pix2PixNetworkParams, Pix2PixObjectiveParams, UnetGenerator, PatchDiscriminator,
        lambda net, ctx: pix2pix_kwargs(
            net, ctx.image_size_hw, ctx.num_classes, ctx.label_colors, ctx.label_ids, ctx.dataset, ctx.note
        ),
        lambda obj, ctx: Pix2PixObjective(obj),
        progress_loss="G/l1",
        reads=pix2pix_reads,
    ),
    "gan-semseg": _gan_model(
        "DCGAN generator and discriminator + segmentation cross-entropy (Sec. 4)", "GAN+SemSeg",
        DCGANNetworkParams, GANSemSegObjectiveParams, DCGANGenerator, DCGANDiscriminator,
        lambda net, ctx: dcgan_kwargs(net, ctx.image_size_hw, ctx.num_classes),
        _gan_semseg_objective,
        progress_loss="G/segmentation",
        requires=(SEGMENTER,),
    ),
    SEGMENTER: ModelSpec(
        summary="Semantic segmentation network trained on real images; used by gan-semseg and evaluation",
        display_name="Segmenter",
        network_params=SegmenterNetworkParams,
        objective_params=SegmentationObjectiveParams,
        networks={SEGMENTER_NET: (Segmenter, lambda net, ctx: segmenter_kwargs(net, ctx.image_size_hw, ctx.num_classes))},
        objective=lambda obj, ctx: SegmentationObjective(obj),
        role="segmenter",
        progress_loss=f"{SEGMENTER_NET}/total",
    ),
}
GENERATORS = tuple(name for name, spec in MODELS.items() if spec.role == "generator")


SEGMENTERS = tuple(name for name, spec in MODELS.items() if spec.role == "segmenter")


def get_spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise CrnError(f"unknown model {name!r} (valid: {', '.join(MODELS)})")
    return MODELS[name]


def display_name(name: str) -> str:
    """How tables and figures name a model; a name the registry does not know is shown as it is."""
    return MODELS[name].display_name if name in MODELS else name


def build_network(model: str, net_name: str, kwargs: dict) -> nn.Module:
    """Rebuild one network of ``model`` from its stored constructor arguments."""
    cls, _ = get_spec(model).networks[net_name]
    return cls(**kwargs)


def load_model(path: Path, device: str | torch.device = "cpu", expected: str | None = None) -> tuple[dict[str, nn.Module], dict]:
    """Rebuild every network of a model file; returns (networks in eval mode, file contents). With
    ``expected``, the file must hold that model (a file copied into another model's run folder is refused)."""
    data = read_model_file(path)
    if expected is not None and data.get("model") != expected:
        raise CrnError(f"{path}: holds a {data.get('model')!r} model, not {expected!r}; train {expected} again "
                       f"(`crn-repro train --model {expected}`) or put its own model file there")
    nets = {}
    for name, kwargs in data["network_kwargs"].items():
        try:
            net = build_network(data["model"], name, kwargs)
            net.load_state_dict(data["state_dicts"][name])
        except (KeyError, TypeError, RuntimeError, ValueError) as error:
            raise CrnError(f"{path}: does not fit the current code ({one_line(error)}); train this model again") from None
        nets[name] = net.to(device).eval()
    return nets, data


def load_segmenter(path: Path | str, device: torch.device | str = "cpu", image_size_hw: tuple[int, int] | None = None) -> nn.Module:
    """The frozen S (eval mode, no gradients) of a segmenter model file; if ``image_size_hw`` is
    given, the file must have been trained at that resolution (the protocol: S runs at the
    prepared resolution)."""
    path = Path(path)
    hint = f"train one with `crn-repro train --model {SEGMENTER}` or give the path of a segmenter model file"
    if not path.is_file():
        raise CrnError(f"{path}: segmenter model file not found; {hint}")
    try:
        nets, data = load_model(path, device)
    except CrnError as error:
        message = str(error)
        raise CrnError(message if message.startswith(str(path)) else f"{path}: {message}") from None
    if data["model"] != SEGMENTER or set(nets) != {SEGMENTER_NET}:
        raise CrnError(f"{path}: holds a {data['model']!r} model, not a {SEGMENTER}; {hint}")
    trained_hw = data["facts"].get("image_size_hw")
    if image_size_hw is not None and trained_hw is not None and tuple(trained_hw) != tuple(image_size_hw):
        raise CrnError(
            f"{path}: segmenter trained at {trained_hw[0]}x{trained_hw[1]}, but images are "
            f"{image_size_hw[0]}x{image_size_hw[1]}; train a segmenter at this resolution"
        )
    segmenter = nets[SEGMENTER_NET].eval()
    segmenter.requires_grad_(False)
    return segmenter


def count_parameters(module: nn.Module) -> int:
    """Exact number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
