"""Objectives: each owns its losses and declares the phases the trainer runs (STYLE conventions 2-4).

An objective is an ``nn.Module`` (so its state, e.g. the adaptive lambda_l, is part of the
resumable training state) with ``phases`` = names of the networks it updates, in order, and
``forward(phase, nets, batch) -> {name: loss, ..., "total": loss}``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from crn_repro.config import doc
from crn_repro.vgg import LAYERS, load_vgg19

TERMS = ("image",) + LAYERS  # Phi_0 = the image itself, then the VGG-19 layers (Sec. 3.3)

# The release's fixed weights (crn-facts §2.2): each term is a mean absolute error divided by a
# constant collected at epoch 100 of an earlier run; conv5_2 carries an extra factor 10.
AUTHORS_LAMBDAS = {
    "authors-256p": (1.0, 1 / 1.6, 1 / 2.3, 1 / 1.8, 1 / 2.8, 10 / 0.8),
    "authors-512p": (1.0, 1 / 2.6, 1 / 4.8, 1 / 3.7, 1 / 5.6, 10 / 1.5),
}


@dataclass(frozen=True)
class VggParams:
    """params.yaml ``vgg``: the perception network Phi of the feature-matching loss."""

    weights: Literal["random", "torchvision", "matconvnet"] = doc(
        "torchvision IMAGENET1K_V1 state_dict, MatConvNet imagenet-vgg-verydeep-19.mat (the release's), "
        "or random (offline demo only: NOT a perceptual loss)"
    )
    path: str | None = doc("weights file; null = torch's hub cache for torchvision")
    allow_download: bool = doc("let torchvision download its weights if missing")
    pooling: Literal["max", "avg"] = doc("max = standard VGG (paper), avg = the authors' release")
    seed: int = doc("seed of the random weights (weights: random)")


@dataclass(frozen=True)
class FeatureMatchingParams:
    """params.yaml ``<model>.objective`` of CRN-loss models (Eq. 1; Eq. 4 with terms: image)."""

    terms: Literal["all", "image"] = doc("all = Eq. 1 (image + VGG layers); image = Eq. 4, the image-space loss")
    lambda_mode: Literal["paper", "authors-256p", "authors-512p"] = doc(
        "paper: 1/numel, rescaled once to equal contributions; authors-*: the release's fixed constants"
    )
    lambda_rescale_after_epochs: float = doc("paper mode: epochs before the one-time rescaling (paper: 100)")

    def validate(self):
        if self.lambda_rescale_after_epochs <= 0:
            yield "lambda_rescale_after_epochs", "must be > 0"


class Objective(nn.Module):
    """Base class: an objective declares its phases and computes named losses."""

    phases: tuple[str, ...] = ("G",)

    def after_step(self, step: int) -> None:
        """Called by the trainer after optimizer step ``step`` (1-based); default: nothing."""


class FeatureMatchingLoss(nn.Module):
    """Feature-matching loss (Eq. 1): sum_l lambda_l ||Phi_l(I) - Phi_l(g(L))||_1 over the image
    (l = 0) and VGG-19 conv1_2..conv5_2 after ReLU.

    lambda_l in ``paper`` mode (Sec. 3.3) start as 1 / numel(Phi_l), i.e. each term is a mean. After
    ``rescale_at_step`` steps they are rescaled once so that every term's expected contribution,
    measured as its mean over the preceding epoch, equals the mean contribution of all terms. The
    scales and the running sums are buffers, so they resume with the training state.
    """

    def __init__(self, params: FeatureMatchingParams, vgg: VggParams | None, steps_per_epoch: int):
        super().__init__()
        self.params = params
        self.terms = TERMS if params.terms == "all" else ("image",)
        self.vgg = load_vgg19(vgg.weights, vgg.path, vgg.pooling, vgg.allow_download, vgg.seed) if params.terms == "all" else None
        n = len(self.terms)
        base = AUTHORS_LAMBDAS[params.lambda_mode][:n] if params.lambda_mode in AUTHORS_LAMBDAS else (1.0,) * n
        self.register_buffer("lambdas", torch.tensor(base, dtype=torch.float64))
        self.register_buffer("running_sum", torch.zeros(n, dtype=torch.float64))
        self.register_buffer("running_count", torch.zeros((), dtype=torch.int64))
        self.register_buffer("rescaled", torch.zeros((), dtype=torch.bool))
        self.steps_per_epoch = steps_per_epoch
        self.rescale_at_step = (
            max(1, math.ceil(params.lambda_rescale_after_epochs * steps_per_epoch)) if params.lambda_mode == "paper" else None
        )

    def errors(self, image: torch.Tensor, generated: torch.Tensor) -> torch.Tensor:
        """Per-sample mean absolute error of every term, shape (B, n_terms), float32. ``image`` is the
        reference (no gradient), ``generated`` the synthesized batch, both in 0..255."""
        errs = [(image.float() - generated.float()).abs().flatten(1).mean(1)]
        if self.vgg is not None:
            with torch.no_grad():
                real = self.vgg(image)
            fake = self.vgg(generated)
            errs += [(r.float() - f.float()).abs().flatten(1).mean(1) for r, f in zip(real, fake)]
        return torch.stack(errs, dim=1)

    def weighted(self, errors: torch.Tensor) -> torch.Tensor:
        """lambda_l * error_l, shape (..., n_terms)."""
        return errors * self.lambdas.to(errors.dtype)

    def observe(self, errors: torch.Tensor) -> None:
        """Accumulate the weighted terms over the epoch before the rescaling step (paper mode)."""
        if self.rescale_at_step is None or bool(self.rescaled):
            return
        self.running_sum += self.weighted(errors.detach()).reshape(-1, errors.shape[-1]).double().mean(0)
        self.running_count += 1

    def after_step(self, step: int) -> None:
        if self.rescale_at_step is None or bool(self.rescaled):
            return
        if step == self.rescale_at_step - self.steps_per_epoch:
            self.running_sum.zero_()
            self.running_count.zero_()
        if step >= self.rescale_at_step and int(self.running_count) > 0:
            expected = self.running_sum / int(self.running_count)
            target = expected.mean()
            self.lambdas *= torch.where(expected > 0, target / expected, torch.ones_like(expected))
            self.rescaled.fill_(True)


class FeatureMatchingObjective(Objective):
    """CRN objective: Eq. 1 on the single synthesized image (k = 1), or Eq. 4 with ``terms: image``."""

    phases = ("G",)

    def __init__(self, params: FeatureMatchingParams, vgg: VggParams, steps_per_epoch: int):
        super().__init__()
        self.loss = FeatureMatchingLoss(params, vgg, steps_per_epoch)

    def forward(self, phase: str, nets: dict[str, nn.Module], batch) -> dict[str, torch.Tensor]:
        layout, image = batch
        generated = nets["G"](layout)
        errors = self.loss.errors(image, generated)
        if self.training:
            self.loss.observe(errors)
        weighted = self.loss.weighted(errors).mean(0)
        out = {name: weighted[i].detach() for i, name in enumerate(self.loss.terms)}
        out["total"] = weighted.sum().float()
        return out

    def after_step(self, step: int) -> None:
        self.loss.after_step(step)
