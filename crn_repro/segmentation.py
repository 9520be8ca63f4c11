"""Semantic segmentation network S for the "GAN + semantic segmentation" baseline (Sec. 4) and for
scoring synthesized images (mIoU, pixel accuracy; docs/facts.md §7).

The baseline adds to a GAN the pixelwise cross-entropy of a *pretrained, frozen* segmentation
network applied to the generated image, against the input layout L. The release used Yu & Koltun's
dilation network for Cityscapes and an FCN (Long et al.) for NYU (docs/facts.md §5); neither can be
downloaded here, so the pipeline trains its own compact encoder-decoder on the real training images
of the prepared dataset (offline, also on the synthetic city), or loads a user's model file.

Protocol (recorded next to every number, docs/facts.md §7):
- S runs at the prepared resolution (``data.image_size_hw``): it is trained on, and applied to,
  images of that size, in the project's 0..255 range (S normalises them itself, in one place).
- Targets are layout channel ids 0..19, the argmax of the one-hot layout. Void (channel 19) is a
  class S predicts, because the layout has a void channel; the training loss may ignore it
  (``ignore_void``), and the scores drop pixels whose target is void (the Cityscapes convention):
  a non-void pixel predicted as void still counts as an error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from crn_repro.config import doc
from crn_repro.datasets import PreparedSplit
from crn_repro.errors import CrnError
from crn_repro.losses import Objective

MODEL_NAME = "segmenter"  # the registry name of a trained segmenter's model file
NET_NAME = "S"  # its network (and training phase) name


@dataclass(frozen=True)
class SegmenterNetworkParams:
    """params.yaml ``segmenter.network``: the compact encoder-decoder S."""

    base_width: int = doc("feature maps at full resolution; doubled at every level down", 1, 65536)
    depth: int = doc("number of 2x downsamplings; the bottleneck works at 1/2^depth of the image size", 1, 16)
    max_width: int = doc("cap on the feature maps of the deeper levels", 1, 65536)

    def validate(self):
        if self.base_width < 1:
            yield "base_width", "must be >= 1"
        if self.depth < 0:
            yield "depth", "must be >= 0"
        if self.max_width < self.base_width:
            yield "max_width", "must be >= base_width"


@dataclass(frozen=True)
class SegmentationObjectiveParams:
    """params.yaml ``segmenter.objective``: pixelwise cross-entropy against the layout."""

    ignore_void: bool = doc("leave void pixels (the last channel) out of the loss; false = void is a class to learn")


def segmenter_kwargs(params: SegmenterNetworkParams, image_size_hw: tuple[int, int], num_classes: int) -> dict:
    """Resolve the network params of one run into the constructor arguments of :class:`Segmenter`."""
    h, w = image_size_hw
    if min(h, w) < 2**params.depth:
        raise ValueError(f"depth {params.depth} downsamples {h}x{w} images below one pixel; lower `depth`")
    return {
        "num_classes": num_classes,
        "base_width": params.base_width,
        "depth": params.depth,
        "max_width": params.max_width,
    }


def _norm(channels: int) -> nn.GroupNorm:
    # GroupNorm, not BatchNorm: S behaves the same in train and eval mode, so a frozen S inside
    # another objective (which the trainer puts in train mode) neither uses batch statistics nor
    # updates running ones, and it works at batch size 1 (the paper's).
    return nn.GroupNorm(math.gcd(channels, 8), channels)


class ConvBlock(nn.Sequential):
    """Two 3x3 convolutions, each followed by GroupNorm and ReLU."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            _norm(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            _norm(out_channels),
            nn.ReLU(inplace=True),
        )


class Segmenter(nn.Module):
    """Segmentation network S: a U-Net-style encoder-decoder with skips (Ronneberger et al. 2015).
    Input: images (N, 3, H, W) in 0..255; output: logits (N, num_classes, H, W).

    The bottleneck's receptive field is 68 pixels at depth 3 and 140 at depth 4 (a whole 64x128
    image): context is what tells a grey facade from a grey road."""

    def __init__(self, num_classes: int, base_width: int, depth: int, max_width: int):
        super().__init__()
        self.num_classes = num_classes
        widths = [min(base_width * 2**level, max_width) for level in range(depth + 1)]
        self.encoder = nn.ModuleList(
            [ConvBlock(3, widths[0])] + [ConvBlock(widths[i - 1], widths[i]) for i in range(1, depth + 1)]
        )
        self.decoder = nn.ModuleList([ConvBlock(widths[i + 1] + widths[i], widths[i]) for i in reversed(range(depth))])
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    @staticmethod
    def normalise(image_0_255: torch.Tensor) -> torch.Tensor:
        """The project's 0..255 images -> [-1, 1], the only input scaling S applies."""
        return image_0_255 / 127.5 - 1.0

    def forward(self, image_0_255: torch.Tensor) -> torch.Tensor:
        x = self.normalise(image_0_255)
        skips = []
        for level, block in enumerate(self.encoder):
            if level > 0:
                x = F.max_pool2d(x, 2, ceil_mode=True)  # ceil: odd sizes keep their border pixels
            x = block(x)
            skips.append(x)
        skips.pop()  # the bottleneck itself
        for block in self.decoder:
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return self.head(x)


# --- the loss -------------------------------------------------------------------------------------


def layout_to_target(layout: torch.Tensor) -> torch.Tensor:
    """One-hot layout (N, c, H, W) -> channel ids (N, H, W), long."""
    return layout.argmax(1)


def pixelwise_cross_entropy(logits: torch.Tensor, layout: torch.Tensor, ignore_void: bool) -> torch.Tensor:
    """Pixelwise cross-entropy of S's logits against the layout L (Sec. 4, GAN + semantic
    segmentation), averaged over the counted pixels; zero if every pixel is void (the last
    channel) and ignored. Computed on the device without a host read (no branch on the data): the sum
    over the counted pixels divided by their number, at least 1."""
    target = layout_to_target(layout)
    if not ignore_void:
        return F.cross_entropy(logits.float(), target)
    void = layout.shape[1] - 1
    total = F.cross_entropy(logits.float(), target, ignore_index=void, reduction="sum")
    return total / (target != void).sum().clamp(min=1)


class SegmentationObjective(Objective):
    """Trains S on real images: cross-entropy of S(I) against the layout's channel ids."""

    phases = (NET_NAME,)

    def __init__(self, params: SegmentationObjectiveParams):
        super().__init__()
        self.params = params

    def forward(self, phase: str, nets: dict[str, nn.Module], batch) -> dict[str, torch.Tensor]:
        layout, image = batch[0], batch[1]
        loss = pixelwise_cross_entropy(nets[NET_NAME](image), layout, self.params.ignore_void)
        return {"cross_entropy": loss.detach(), "total": loss}

    def validation_metrics(self, nets: dict[str, nn.Module], val: PreparedSplit, device) -> dict:
        """Held-out pixel accuracy and mIoU of S on the real validation images."""
        return evaluate_segmenter(nets[NET_NAME], val, batch_size=8, device=device)


# --- scores ---------------------------------------------------------------------------------------


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Pixel counts (C, C), int64: row = target class, column = predicted class."""
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    for name, values in (("pred", pred), ("target", target)):
        if values.numel() and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"{name} holds class ids outside 0..{num_classes - 1}")
    counts = torch.bincount(target * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).cpu()


def segmentation_scores(confusion: torch.Tensor, ignore_index: int | None = -1) -> dict:
    """Pixel accuracy and IoU = TP / (TP + FP + FN) from a confusion matrix (rows = target).

    Pixels whose target is ``ignore_index`` are dropped (from prediction and target alike); a pixel
    of another class predicted as ``ignore_index`` stays an error (a false negative of its class).
    ``mean_iou`` averages over the classes present in the target; ``per_class_iou`` has one entry
    per class, None for absent classes and for ``ignore_index``. The default, -1, is the last class
    (void, in every layout encoding here); None scores every class."""
    confusion = torch.as_tensor(confusion).double()
    num_classes = confusion.shape[0]
    if confusion.shape != (num_classes, num_classes):
        raise ValueError(f"confusion matrix must be square, got {tuple(confusion.shape)}")
    if ignore_index == -1:
        ignore_index = num_classes - 1
    if ignore_index is not None and not 0 <= ignore_index < num_classes:
        raise ValueError(f"ignore_index {ignore_index} is not a class of a {num_classes}-class confusion matrix")
    if ignore_index is not None:
        confusion = confusion.clone()
        confusion[ignore_index] = 0
    tp = confusion.diagonal()
    in_target = confusion.sum(1)  # TP + FN
    in_pred = confusion.sum(0)  # TP + FP
    total = float(in_target.sum())
    if total == 0:
        raise ValueError("no pixels to score (empty confusion matrix, or every target pixel ignored)")
    present = in_target > 0
    iou = tp / (in_target + in_pred - tp).clamp(min=1)
    per_class = [float(iou[c]) if bool(present[c]) and c != ignore_index else None for c in range(num_classes)]
    scored = [v for v in per_class if v is not None]
    return {
        "pixel_accuracy": float(tp.sum()) / total,
        "mean_iou": sum(scored) / len(scored),
        "per_class_iou": per_class,
        "num_pixels": int(total),
        "ignore_index": ignore_index,
    }


@torch.no_grad()
def predict(segmenter: nn.Module, images_0_255: torch.Tensor) -> torch.Tensor:
    """S's label map (N, H, W), long, for images in 0..255."""
    return segmenter(images_0_255).argmax(1)


def confusion_for_batches(
    segmenter: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], num_classes: int
) -> torch.Tensor:
    """Summed confusion matrix of S over (images 0..255 (B, 3, H, W), target ids (B, H, W)) batches,
    e.g. synthesized images and the layouts they were made from. Runs S in eval mode."""
    was_training = segmenter.training
    segmenter.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    try:
        for images, target in batches:
            confusion += confusion_matrix(predict(segmenter, images), target.to(images.device), num_classes)
    finally:
        segmenter.train(was_training)
    return confusion


def evaluate_segmenter(
    segmenter: nn.Module,
    split: PreparedSplit,
    batch_size: int,
    device: torch.device | str,
    ignore_index: int | None = -1,
) -> dict:
    """Scores of S on the real images of ``split`` against their labels (use val for a held-out
    figure), with the protocol they were measured under."""

    def batches():
        for start in range(0, len(split), batch_size):
            layout, image = split.batch(range(start, min(start + batch_size, len(split))), device)
            yield image, layout_to_target(layout)

    num_classes = split.num_classes
    if getattr(segmenter, "num_classes", num_classes) != num_classes:
        raise CrnError(
            f"segmenter predicts {segmenter.num_classes} classes, but the prepared data has {num_classes}; "
            "train a segmenter on this dataset"
        )
    scores = segmentation_scores(confusion_for_batches(segmenter, batches(), num_classes), ignore_index)
    return dict(scores, num_images=len(split), image_size_hw=list(split.size_hw))
