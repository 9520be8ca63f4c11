"""Model facts for `crn-repro info`: exact trainable parameter counts of every network.

The released 1024p CRN has 98,674,531 parameters (c = 20); the paper's text says 105M, which no
plausible c reproduces (docs/facts.md §1), so we report the true count. c follows the params' dataset
(20 for Cityscapes and the synthetic city, nyu.num_classes + 1 for NYU).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from crn_repro.crn import PRESETS
from crn_repro.errors import CrnError
from crn_repro.params import Params
from crn_repro.prepare import num_classes_for
from crn_repro.registry import BuildContext, count_parameters, get_spec


def describe(params: Params, model: str, preset: str | None = None) -> dict:
    """{"model", "preset", "image_size_hw", "parameters" (the generator's), "networks" (name -> count)}."""
    spec = get_spec(model)
    network = params.model(model).network
    image_size_hw = tuple(params.data.image_size_hw)
    if preset is not None:
        if preset not in PRESETS:
            raise CrnError(f"--preset: unknown preset {preset!r} (valid: {', '.join(PRESETS)})")
        if not any(f.name == "preset" for f in dataclasses.fields(network)):
            raise CrnError(f"--preset: model {model} has no presets")
        network = dataclasses.replace(network, preset=preset, widths=None)
        image_size_hw = PRESETS[preset]["image_size_hw"]
    ctx = BuildContext(image_size_hw, num_classes_for(params), params.vgg, 1, Path(params.paths.runs))
    counts = {}
    for name, (cls, resolve) in spec.networks.items():
        try:
            kwargs = resolve(network, ctx)
        except ValueError as error:
            raise CrnError(f"{model}.network: {error}") from None
        with torch.device("meta"):  # count without allocating ~100M parameters
            counts[name] = count_parameters(cls(**kwargs))
    return {
        "model": model,
        "preset": preset,
        "image_size_hw": list(image_size_hw),
        "num_classes": ctx.num_classes,
        "parameters": counts[next(iter(spec.networks))],  # the generator (or the segmenter's S)
        "networks": counts,
    }
