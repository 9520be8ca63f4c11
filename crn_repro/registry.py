"""The one registry of models: name -> networks, their params types and the objective.

Typer's ``--model`` choices, params.yaml validation, checkpoints and ``info`` all read this dict;
nothing else lists the models.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

from torch import nn

from baselines.dcgan import DCGANDiscriminator, DCGANGenerator, DCGANNetworkParams, dcgan_kwargs
from baselines.fullres import FullResNetworkParams, FullResolutionNetwork, fullres_kwargs
from baselines.pix2pix import PatchDiscriminator, Pix2PixNetworkParams, UnetGenerator, pix2pix_kwargs, pix2pix_reads
from baselines.unet import UNet, UNetNetworkParams, unet_kwargs
from crn_repro.adversarial import GANSemSegObjective, GANSemSegObjectiveParams, Pix2PixObjective, Pix2PixObjectiveParams
from crn_repro.crn import CRN, CRNNetworkParams, crn_kwargs
from crn_repro.losses import FeatureMatchingObjective, FeatureMatchingParams, Objective, VggParams
from crn_repro.segmentation import (
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
    network_params: type  # dataclass of params.yaml <model>.network
    objective_params: type  # dataclass of params.yaml <model>.objective
    # name -> (network class, function(network params, context) -> constructor kwargs)
    networks: dict[str, tuple[type[nn.Module], Callable]]
    objective: Callable[[object, BuildContext], Objective]
    role: Literal["generator", "segmenter"] = "generator"  # generators synthesize; a segmenter scores
    # what the networks read of a layout (datasets.READS), from their constructor kwargs, so that training
    # and synthesis (from the model file) feed the same: the one-hot layout, or the official colour label map
    reads: Callable[[dict[str, dict]], str] = lambda network_kwargs: "layout"


def _feature_matching(obj: FeatureMatchingParams, ctx: BuildContext) -> Objective:
    return FeatureMatchingObjective(obj, ctx.vgg, ctx.steps_per_epoch)


def _crn_loss_model(summary: str, params_cls: type, cls: type[nn.Module], resolve: Callable) -> ModelSpec:
    """A baseline architecture trained with the CRN's feature-matching loss (Sec. 4)."""
    return ModelSpec(
        summary=summary,
        network_params=params_cls,
        objective_params=FeatureMatchingParams,
        networks={"G": (cls, lambda net, ctx: resolve(net, ctx.image_size_hw, ctx.num_classes))},
        objective=_feature_matching,
    )


def _crn_like(summary: str) -> ModelSpec:
    """A model with the CRN network and the feature-matching objective: crn, image-space and
    crn-diverse differ only in their params (Sec. 3.3, 3.4, Eq. 4)."""
    return _crn_loss_model(summary, CRNNetworkParams, CRN, crn_kwargs)


def _gan_model(
    summary: str, params_cls: type, objective_cls: type, generator: type, discriminator: type, resolve: Callable,
    objective: Callable, reads: Callable[[dict[str, dict]], str] = lambda network_kwargs: "layout",
) -> ModelSpec:
    """A GAN baseline (Sec. 4): networks G and D, whose kwargs ``resolve(net, ctx)`` gives as {"G": .., "D": ..}."""
    return ModelSpec(
        summary=summary,
        network_params=params_cls,
        objective_params=objective_cls,
        networks={
            "G": (generator, lambda net, ctx: resolve(net, ctx)["G"]),
            "D": (discriminator, lambda net, ctx: resolve(net, ctx)["D"]),
        },
        objective=objective,
        reads=reads,
    )


def _gan_semseg_objective(obj: GANSemSegObjectiveParams, ctx: BuildContext) -> Objective:
    path = Path(obj.segmenter) if obj.segmenter else ctx.runs_dir / "segmenter" / "model.pt"
    return GANSemSegObjective(obj, path, ctx.image_size_hw)


MODELS: dict[str, ModelSpec] = {
    "crn": _crn_like("Cascaded refinement network with the feature-matching loss (Sec. 3, Eq. 1)"),
    "image-space": _crn_like("CRN trained with L1 on pixels only: the image-space loss baseline (Sec. 4, Eq. 4)"),
    "crn-diverse": _crn_like("CRN synthesizing k images with the diversity loss (Sec. 3.4, Eq. 2 / Eq. 3)"),
    "fullres": _crn_loss_model(
        "Full-resolution network: inverted context aggregation, CRN loss (Sec. 4)",
        FullResNetworkParams, FullResolutionNetwork, fullres_kwargs,
    ),
    "unet": _crn_loss_model(
        "Encoder-decoder (U-Net) with the CRN loss (Sec. 4)", UNetNetworkParams, UNet, unet_kwargs
    ),
    "pix2pix": _gan_model(
        "pix2pix: conditional GAN, U-Net generator, PatchGAN, GAN + 100 L1 (Isola et al., Sec. 4)",
        Pix2PixNetworkParams, Pix2PixObjectiveParams, UnetGenerator, PatchDiscriminator,
        lambda net, ctx: pix2pix_kwargs(
            net, ctx.image_size_hw, ctx.num_classes, ctx.label_colors, ctx.label_ids, ctx.dataset, ctx.note
        ),
        lambda obj, ctx: Pix2PixObjective(obj),
        pix2pix_reads,
    ),
    "gan-semseg": _gan_model(
        "DCGAN generator and discriminator + segmentation cross-entropy (Sec. 4)",
        DCGANNetworkParams, GANSemSegObjectiveParams, DCGANGenerator, DCGANDiscriminator,
        lambda net, ctx: dcgan_kwargs(net, ctx.image_size_hw, ctx.num_classes),
        _gan_semseg_objective,
    ),
    "segmenter": ModelSpec(
        summary="Semantic segmentation network trained on real images; used by gan-semseg and evaluation",
        network_params=SegmenterNetworkParams,
        objective_params=SegmentationObjectiveParams,
        networks={"S": (Segmenter, lambda net, ctx: segmenter_kwargs(net, ctx.image_size_hw, ctx.num_classes))},
        objective=lambda obj, ctx: SegmentationObjective(obj),
        role="segmenter",
    ),
}
GENERATORS = tuple(name for name, spec in MODELS.items() if spec.role == "generator")


def get_spec(name: str) -> ModelSpec:
    from crn_repro.errors import CrnError

    if name not in MODELS:
        raise CrnError(f"unknown model {name!r} (valid: {', '.join(MODELS)})")
    return MODELS[name]


def build_network(model: str, net_name: str, kwargs: dict) -> nn.Module:
    """Rebuild one network of ``model`` from its stored constructor arguments."""
    cls, _ = get_spec(model).networks[net_name]
    return cls(**kwargs)


def count_parameters(module: nn.Module) -> int:
    """Exact number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
