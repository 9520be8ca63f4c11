"""Objectives: each owns its losses and declares the phases the trainer runs (STYLE conventions 2-4).

An objective is an ``nn.Module`` (so its state, e.g. the adaptive lambda_l, is part of the
resumable training state) with ``phases`` = names of the networks it updates, in order, and
``forward(phase, nets, batch) -> {name: loss, ..., "total": loss}``; ``batch`` is (layout, image), in
training a ``datasets.Batch`` that also carries the images' ``keys``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from crn_repro.config import SEED, doc
from crn_repro.vgg import LAYERS, load_vgg19

TERMS = ("image",) + LAYERS  # Phi_0 = the image itself, then the VGG-19 layers (Sec. 3.3)

# The release's fixed weights (docs/facts.md §2.2): each term is a mean absolute error divided by a
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
    seed: int = doc("seed of the random weights (weights: random)", range=SEED)


@dataclass(frozen=True)
class FeatureMatchingParams:
    """params.yaml ``<model>.objective`` of CRN-loss models: Eq. 1 (one image), Eq. 4 (image-space
    loss, ``terms: image``), and for k > 1 outputs the diversity losses Eq. 2 and Eq. 3."""

    terms: Literal["all", "image"] = doc("all = Eq. 1 (image + VGG layers); image = Eq. 4, the image-space loss")
    lambda_mode: Literal["paper", "authors-256p", "authors-512p"] = doc(
        "paper: 1/numel, rescaled once to equal contributions; authors-*: the release's fixed constants"
    )
    lambda_rescale_after_epochs: float = doc("paper mode: epochs before the one-time rescaling (paper: 100)", 0, 1_000_000, low_open=True)
    collection_loss: Literal["hindsight", "per-class"] = doc(
        "k > 1 outputs: hindsight = Eq. 2 (min over u); per-class = Eq. 3 (min over u for each class)"
    )
    mean_term_weight: float = doc(
        "k > 1: weight w of the mean over outputs added to the min, (1 - w) min + w mean (paper 0, release 0.001)", 0, 1
    )

    def validate(self):
        if self.lambda_rescale_after_epochs <= 0:
            yield "lambda_rescale_after_epochs", "must be > 0"
        if not 0 <= self.mean_term_weight <= 1:
            yield "mean_term_weight", "must be in [0, 1]"


class Objective(nn.Module):
    """Base class: an objective declares its phases and computes named losses.

    Pretrained networks an objective holds (a VGG-19, a segmenter) are inputs, not training state:
    their submodule names are ``frozen_modules``, and ``state_dict`` leaves them out (a training state
    holds what is trained; which weights the frozen networks have is part of ``identity``)."""

    phases: tuple[str, ...] = ("G",)
    frozen_modules: tuple[str, ...] = ()

    def _is_frozen_key(self, key: str) -> bool:
        return any(key.startswith(name + ".") for name in self.frozen_modules)

    def state_dict(self, *args, **kwargs):
        state = super().state_dict(*args, **kwargs)
        return type(state)((k, v) for k, v in state.items() if not self._is_frozen_key(k))

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Load the trained state; the frozen networks keep their own weights (entries for them in an
        older state file are ignored)."""
        own = {k: v for k, v in super().state_dict().items() if self._is_frozen_key(k)}
        trained = {k: v for k, v in state_dict.items() if not self._is_frozen_key(k)}
        return super().load_state_dict({**trained, **own}, strict, assign)

    def after_step(self, step: int) -> None:
        """Called by the trainer after optimizer step ``step`` (1-based); default: nothing."""

    def identity(self) -> dict:
        """What besides its params the objective's behaviour depends on (weights files, ...), for
        the run fingerprint that decides whether a saved state can be resumed. Default: nothing."""
        return {}

    def validation_metrics(self, nets: dict[str, nn.Module], val, device) -> dict:
        """Held-out figures computed once training has finished (``val``: the prepared val split);
        they go into the run's summary.json. Default: none."""
        return {}

    def perception_network(self) -> str:
        """The perception network whose features the losses compare, in words, for the run's facts
        (e.g. which VGG-19 weights); default: none."""
        return "not used"

    def set_reference_cache(self, enabled: bool) -> None:
        """Keep the perception network's features of each training image after their first use
        (``train.cache_reference_features``; batches then carry ``keys``); default: nothing to keep."""


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
        self.vgg_params = vgg
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
        self.reference_cache: dict[int, tuple[torch.Tensor, ...]] | None = None  # set_reference_cache
        # Host copies of `rescaled` and `running_count`, so that a training step never waits for the
        # device to read them; refreshed whenever the buffers are loaded from a training state.
        self._rescaled, self._count = False, 0
        self.register_load_state_dict_post_hook(lambda module, keys: module._read_host_copies())

    def _read_host_copies(self) -> None:
        self._rescaled, self._count = bool(self.rescaled), int(self.running_count)

    def reference_features(self, image: torch.Tensor, keys: tuple[int, ...] | None = None) -> list[torch.Tensor]:
        """Phi_l(I) of the reference images (no gradient). With the cache on and ``keys`` (the images'
        indices in the training split) given, each image's features are computed once and kept: the
        training data has no augmentation, so they never change. Each is computed alone, so its value
        does not depend on the batch it first came in, and a resumed run (whose cache starts empty)
        computes the same values again."""
        with torch.no_grad():
            if self.reference_cache is None or keys is None:
                return self.vgg(image)
            for i, key in enumerate(keys):
                if key not in self.reference_cache:
                    self.reference_cache[key] = tuple(f[0] for f in self.vgg(image[i : i + 1]))
            return [torch.stack(layer) for layer in zip(*(self.reference_cache[key] for key in keys))]

    def error_maps(self, image: torch.Tensor, generated: torch.Tensor, keys: tuple[int, ...] | None = None) -> list[torch.Tensor]:
        """|Phi_l(I) - Phi_l(g_u(L))| averaged over feature channels, per term l: a list of
        (B, k, h_l, w_l) float32 maps. ``image`` (B, 3, H, W) is the reference (no gradient),
        ``generated`` (B, 3k, H, W) the k synthesized images, all in 0..255; ``keys`` identify the
        reference images for ``reference_features``."""
        b, k = image.shape[0], generated.shape[1] // 3
        fake_images = generated.reshape(b * k, 3, *generated.shape[-2:])
        maps = [(image.float().unsqueeze(1) - generated.float().reshape(b, k, 3, *generated.shape[-2:])).abs().mean(2)]
        if self.vgg is not None:
            real = self.reference_features(image, keys)
            fake = self.vgg(fake_images)
            for r, f in zip(real, fake):
                f = f.reshape(b, k, *f.shape[1:])
                maps.append((r.float().unsqueeze(1) - f.float()).abs().mean(2))
        return maps

    def errors(self, image: torch.Tensor, generated: torch.Tensor) -> torch.Tensor:
        """Mean absolute error of every term, shape (B, n_terms) for one output image, or
        (B, k, n_terms) when ``generated`` holds k > 1 images."""
        errors = torch.stack([m.flatten(2).mean(2) for m in self.error_maps(image, generated)], dim=-1)
        return errors[:, 0] if errors.shape[1] == 1 else errors

    def weighted(self, errors: torch.Tensor) -> torch.Tensor:
        """lambda_l * error_l, shape (..., n_terms)."""
        return errors * self.lambdas.to(errors.dtype)

    def observe(self, errors: torch.Tensor) -> None:
        """Accumulate the weighted terms over the epoch before the rescaling step (paper mode)."""
        if self.rescale_at_step is None or self._rescaled:
            return
        batch_mean = self.weighted(errors.detach()).reshape(-1, errors.shape[-1]).double().mean(0)  # over B (and k)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # every rank sees its own share of the batch: average now, so that every rank (and the training
            # state rank 0 saves) holds the sums of the whole batches (an asynchronous collective on GPUs)
            torch.distributed.all_reduce(batch_mean)
            batch_mean /= torch.distributed.get_world_size()
        self.running_sum += batch_mean
        self.running_count += 1
        self._count += 1

    def after_step(self, step: int) -> None:
        if self.rescale_at_step is None or self._rescaled:
            return
        if step == self.rescale_at_step - self.steps_per_epoch:
            self.running_sum.zero_()
            self.running_count.zero_()
            self._count = 0
        if step >= self.rescale_at_step and self._count > 0:
            expected = self.running_sum / self._count
            target = expected.mean()
            self.lambdas *= torch.where(expected > 0, target / expected, torch.ones_like(expected))
            self.rescaled.fill_(True)
            self._rescaled = True


def hindsight_loss(weighted_errors: torch.Tensor, mean_term_weight: float) -> torch.Tensor:
    """Hindsight loss (Eq. 2): min over outputs u of sum_l lambda_l ||Phi_l(I) - Phi_l(g_u)||_1,
    per sample; ``weighted_errors`` is (B, k, n_terms). With w > 0, (1 - w) min + w mean."""
    per_output = weighted_errors.sum(-1)
    loss = per_output.min(1).values
    return loss if mean_term_weight == 0 else (1 - mean_term_weight) * loss + mean_term_weight * per_output.mean(1)


def per_class_errors(maps: list[torch.Tensor], layout: torch.Tensor, lambdas: torch.Tensor) -> torch.Tensor:
    """The [k, c] error matrix of Eq. 3 per sample: sum_l lambda_l of the error map of output u
    masked by class p's layout L_p^l (area-downsampled to layer l's resolution, so soft), averaged
    over all pixels (not the mask area, as in the release). Returns (B, k, c)."""
    total = 0
    for weight, error in zip(lambdas, maps):
        mask = F.interpolate(layout.float(), size=error.shape[-2:], mode="area")
        total = total + weight.float() * torch.einsum("bphw,buhw->bup", mask, error) / error[0, 0].numel()
    return total


def per_class_loss(class_errors: torch.Tensor, mean_term_weight: float) -> torch.Tensor:
    """Diversity loss (Eq. 3): sum over classes p of min over outputs u, per sample. Void is a class
    (it has a layout channel). With w > 0 (release: 0.001): (1 - w) sum_p min_u + w sum_p mean_u."""
    loss = class_errors.min(1).values.sum(-1)
    if mean_term_weight == 0:
        return loss
    return (1 - mean_term_weight) * loss + mean_term_weight * class_errors.mean(1).sum(-1)


class FeatureMatchingObjective(Objective):
    """CRN objective (Sec. 3.3-3.4): Eq. 1 for one image (Eq. 4 with ``terms: image``); for a
    collection of k > 1 images, Eq. 2 or Eq. 3 by ``collection_loss``."""

    phases = ("G",)
    frozen_modules = ("loss.vgg",)

    def __init__(self, params: FeatureMatchingParams, vgg: VggParams, steps_per_epoch: int):
        super().__init__()
        self.params = params
        self.loss = FeatureMatchingLoss(params, vgg, steps_per_epoch)

    def forward(self, phase: str, nets: dict[str, nn.Module], batch) -> dict[str, torch.Tensor]:
        layout, image = batch[0], batch[1]
        generated = nets["G"](layout)
        maps = self.loss.error_maps(image, generated, getattr(batch, "keys", None) if self.training else None)
        errors = torch.stack([m.flatten(2).mean(2) for m in maps], dim=-1)  # (B, k, n_terms)
        if self.training:
            self.loss.observe(errors)
        weighted = self.loss.weighted(errors)
        out = {name: weighted[..., i].mean().detach() for i, name in enumerate(self.loss.terms)}
        if errors.shape[1] == 1:
            out["total"] = weighted.sum(-1).mean().float()
        elif self.params.collection_loss == "hindsight":
            out["total"] = hindsight_loss(weighted, self.params.mean_term_weight).mean().float()
        else:
            class_errors = per_class_errors(maps, layout, self.loss.lambdas)
            out["total"] = per_class_loss(class_errors, self.params.mean_term_weight).mean().float()
        return out

    def after_step(self, step: int) -> None:
        self.loss.after_step(step)

    def identity(self) -> dict:
        return {"vgg": repr(self.loss.vgg_params)} if self.loss.vgg is not None else {}

    def perception_network(self) -> str:
        return self.loss.vgg.source_description if self.loss.vgg is not None else "not used"

    def set_reference_cache(self, enabled: bool) -> None:
        self.loss.reference_cache = {} if enabled and self.loss.vgg is not None else None
