"""Adversarial objectives of the GAN baselines (paper Sec. 4): a discriminator phase "D" and a
generator phase "G", run by the one trainer in that order every step.

The fake batch is computed once per step, in the D phase, and reused by the G phase (as the
public pix2pix implementation does): D trains on it detached, then G is scored by the updated D.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from crn_repro.config import doc
from crn_repro.losses import Objective
from crn_repro.segmentation import pixelwise_cross_entropy


def _bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    """Vanilla GAN loss (Goodfellow et al.): binary cross-entropy on raw logits."""
    return F.binary_cross_entropy_with_logits(logits.float(), torch.full_like(logits.float(), target))


class _AdversarialObjective(Objective):
    """Shared D/G bookkeeping: one generator forward per step, reused by both phases."""

    phases = ("D", "G")

    def __init__(self):
        super().__init__()
        self._fake: torch.Tensor | None = None

    def discriminate(self, nets, layout, image) -> torch.Tensor:
        raise NotImplementedError

    def generator_terms(self, nets, layout, image, fake) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward(self, phase: str, nets: dict[str, nn.Module], batch) -> dict[str, torch.Tensor]:
        layout, image = batch[0], batch[1]
        if phase == "D":
            self._fake = nets["G"](layout)
            real = _bce(self.discriminate(nets, layout, image), 1.0)
            fake = _bce(self.discriminate(nets, layout, self._fake.detach()), 0.0)
            return {"real": real.detach(), "fake": fake.detach(), "total": 0.5 * (real + fake)}
        fake, self._fake = self._fake, None
        if fake is None:  # G phase alone (e.g. evaluation of the loss)
            fake = nets["G"](layout)
        terms = self.generator_terms(nets, layout, image, fake)
        total = sum(terms.values())
        out = {name: value.detach() for name, value in terms.items()}
        out["total"] = total
        return out


@dataclass(frozen=True)
class Pix2PixObjectiveParams:
    """params.yaml ``pix2pix.objective``: conditional GAN + lambda L1 (Isola et al. 2017, Eq. 4)."""

    l1_weight: float = doc("lambda of the L1 term (pix2pix: 100), on images scaled to [-1, 1]", 0, 1e6)


class Pix2PixObjective(_AdversarialObjective):
    """pix2pix (Isola et al. 2017): G* = arg min_G max_D L_cGAN(G, D) + lambda L_L1(G), with the
    vanilla GAN loss, D's loss halved, and D conditioned on the generator's input."""

    def __init__(self, params: Pix2PixObjectiveParams):
        super().__init__()
        self.params = params

    def discriminate(self, nets, layout, image):
        return nets["D"](layout, image)

    def generator_terms(self, nets, layout, image, fake):
        return {
            "gan": _bce(self.discriminate(nets, layout, fake), 1.0),
            "l1": self.params.l1_weight * (fake.float() - image.float()).abs().mean() / 127.5,
        }


@dataclass(frozen=True)
class GANSemSegObjectiveParams:
    """params.yaml ``gan-semseg.objective`` (paper Sec. 4, "GAN and semantic segmentation")."""

    segmentation_weight: float = doc("weight of the pixelwise cross-entropy term (UNCONFIRMED; GAN term has weight 1)", 0, 1e6)
    segmenter: str | None = doc("segmentation model file; null = the pipeline's own (paths.runs/segmenter/model.pt)")


class GANSemSegObjective(_AdversarialObjective):
    """GAN + semantic segmentation baseline (Sec. 4): a DCGAN discriminator on images alone, plus
    the pixelwise cross-entropy of a frozen segmentation network applied to the generated image
    against the input layout."""

    frozen_modules = ("segmenter",)  # an input, not training state: always the file's

    def __init__(self, params: GANSemSegObjectiveParams, segmenter: nn.Module, segmenter_identity: dict):
        super().__init__()
        self.params = params
        self.segmenter = segmenter  # frozen (registry.load_segmenter); moves with the objective
        self._segmenter_identity = dict(segmenter_identity)

    def identity(self) -> dict:
        """The segmenter file's content (its sha256): a retrained segmenter makes a saved state stale."""
        return dict(self._segmenter_identity)

    def train(self, mode: bool = True):
        super().train(mode)
        self.segmenter.eval()  # the frozen network stays in inference mode
        return self

    def discriminate(self, nets, layout, image):
        return nets["D"](image)

    def generator_terms(self, nets, layout, image, fake):
        logits = self.segmenter(fake)
        return {
            "gan": _bce(self.discriminate(nets, layout, fake), 1.0),
            "segmentation": self.params.segmentation_weight * pixelwise_cross_entropy(logits, layout, ignore_void=False),
        }
