"""The one registry of models: name -> networks, their params types and the objective.

Typer's ``--model`` choices, params.yaml validation, checkpoints and ``info`` all read this dict;
nothing else lists the models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from crn_repro.crn import CRN, CRNNetworkParams, crn_kwargs
from crn_repro.losses import FeatureMatchingObjective, FeatureMatchingParams, Objective, VggParams


@dataclass(frozen=True)
class BuildContext:
    """What a builder may know about the run besides its own params section."""

    image_size_hw: tuple[int, int]
    num_classes: int
    vgg: VggParams
    steps_per_epoch: int


@dataclass(frozen=True)
class ModelSpec:
    summary: str
    network_params: type  # dataclass of params.yaml <model>.network
    objective_params: type  # dataclass of params.yaml <model>.objective
    # name -> (network class, function(network params, context) -> constructor kwargs)
    networks: dict[str, tuple[type[nn.Module], Callable]]
    objective: Callable[[object, BuildContext], Objective]


MODELS: dict[str, ModelSpec] = {
    "crn": ModelSpec(
        summary="Cascaded refinement network with the feature-matching loss (Sec. 3, Eq. 1)",
        network_params=CRNNetworkParams,
        objective_params=FeatureMatchingParams,
        networks={"G": (CRN, lambda net, ctx: crn_kwargs(net, ctx.image_size_hw, ctx.num_classes))},
        objective=lambda obj, ctx: FeatureMatchingObjective(obj, ctx.vgg, ctx.steps_per_epoch),
    ),
}


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
