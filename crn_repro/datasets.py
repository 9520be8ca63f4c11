"""Datasets (paper Sec. 5.1, docs/facts.md §4): the official Cityscapes folder layout (read for real
Cityscapes and for the built-in synthetic city alike), the prepared cache that training reads, and
the one normalise/denormalise pair that training, synthesis, evaluation and figures all use.

Images live in the model's range: float RGB in 0..255, as the CRN output (x + 1) / 2 * 255. What
the networks read of a layout is either the one-hot layout L (every model) or, for pix2pix with
input 'color' on Cityscapes prepared with ``cityscapes.keep_label_ids``, the official colour label
map (``gtFine_color``) in the same 0..255 range, coloured from the kept labelIds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from crn_repro.errors import CrnError, one_line
from crn_repro.files import read_array, read_json
from crn_repro.labels import ID_TO_CHANNEL, NUM_LAYOUT_CHANNELS, LabelSpace, colors_to_label_ids, label_ids_to_channels

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIXES = {"label_ids": "_gtFine_labelIds.png", "color": "_gtFine_color.png"}
LABEL_SUFFIX = LABEL_SUFFIXES["label_ids"]
SPLITS = ("train", "val")
READS = ("layout", "label_colors")  # what a model's networks read of a layout (PreparedSplit.batch)


class Batch(NamedTuple):
    """A training batch as objectives receive it: what the networks read of the layouts, the images
    (B, 3, H, W) in 0..255, and the images' indices in the training split (their identity)."""

    layout: torch.Tensor
    image: torch.Tensor
    keys: tuple[int, ...]


# --- the normalise / denormalise pair -------------------------------------------------------------


def image_to_tensor(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, 3) RGB -> float32 (N, 3, H, W) in the model's 0..255 range."""
    images = torch.as_tensor(np.asarray(images)) if not isinstance(images, torch.Tensor) else images
    return images.permute(0, 3, 1, 2).float()


def tensor_to_image(images: torch.Tensor) -> np.ndarray:
    """float (N, 3, H, W) in 0..255 -> uint8 (N, H, W, 3), rounded and clipped to [0, 255]."""
    return as_saved(images).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def as_saved(images: torch.Tensor) -> torch.Tensor:
    """float (N, 3, H, W) in 0..255 -> the float32 values of the 8-bit image it is saved as (clipped to
    [0, 255], rounded), on its own device."""
    return images.detach().float().clamp(0, 255).round()


def channels_to_layout(channels: np.ndarray | torch.Tensor, num_classes: int = NUM_LAYOUT_CHANNELS) -> torch.Tensor:
    """Layout channel indices (N, H, W) -> one-hot semantic layout L (N, c, H, W), float32."""
    channels = torch.as_tensor(np.asarray(channels)) if not isinstance(channels, torch.Tensor) else channels
    return F.one_hot(channels.long(), num_classes).permute(0, 3, 1, 2).float()


def label_ids_to_color_map(label_ids: torch.Tensor, id_colors: torch.Tensor) -> torch.Tensor:
    """labelIds (N, H, W) -> the official colour label map (N, 3, H, W), float32 in 0..255, through
    ``id_colors`` (the colour of each id, uint8 (34, 3)): what gtFine_color holds at those pixels."""
    return image_to_tensor(id_colors.to(label_ids.device)[label_ids.long()])


# --- the official Cityscapes folder layout ---------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    """One frame: ``<city>_<seq>_<frame>`` with its leftImg8bit image and gtFine label file
    (``*_gtFine_labelIds.png``, or ``*_gtFine_color.png`` when labels are read by colour)."""

    stem: str
    image_path: Path
    label_path: Path


def find_pairs(root: Path, split: str, label_format: str = "label_ids", expected_count: int | None = None) -> list[Pair]:
    """All (image, label) pairs of a split in the official layout, sorted by name. ``label_format`` picks
    the label files (label_ids or color); ``expected_count`` checks the split's size (Cityscapes:
    train 2975, val 500) before anything is read."""
    root = Path(root)
    if not root.is_dir():
        raise CrnError(
            f"{root}: dataset root not found; unzip leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip "
            "(cityscapes-dataset.com) there or point cityscapes.root at that folder (README: Reproducing the paper)"
        )
    suffix = LABEL_SUFFIXES[label_format]
    image_dir, label_dir = root / "leftImg8bit" / split, root / "gtFine" / split
    for folder in (image_dir, label_dir):
        if not folder.is_dir():
            raise CrnError(f"{folder}: split folder missing; extract leftImg8bit_trainvaltest and gtFine_trainvaltest here")
    images = {p.name[: -len(IMAGE_SUFFIX)]: p for p in image_dir.glob(f"*/*{IMAGE_SUFFIX}")}
    labels = {p.name[: -len(suffix)]: p for p in label_dir.glob(f"*/*{suffix}")}
    if not images:
        raise CrnError(f"{image_dir}: no *{IMAGE_SUFFIX} images in this split")
    for stem, path in images.items():
        if not stem.startswith(path.parent.name + "_"):
            raise CrnError(f"{path}: file name does not start with its city folder {path.parent.name!r}; restore the official layout")
    for stem in sorted(images):
        if stem not in labels:
            city = images[stem].parent.name
            raise CrnError(f"{images[stem]}: no label file {label_dir / city / (stem + suffix)}; restore it or remove the image")
    for stem in sorted(labels):
        if stem not in images:
            city = labels[stem].parent.name
            raise CrnError(f"{labels[stem]}: no image {image_dir / city / (stem + IMAGE_SUFFIX)}; restore it or remove the label")
    if expected_count is not None and len(images) != expected_count:
        raise CrnError(
            f"{image_dir}: {len(images)} frames, expected {expected_count}; the extraction is incomplete or mixed "
            "(re-extract the archives, or set cityscapes.expected_{train,val} to null to skip the check)"
        )
    return [Pair(stem, images[stem], labels[stem]) for stem in sorted(images)]


def _open_image(path: Path) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
        return image
    except (OSError, SyntaxError, ValueError) as error:
        raise CrnError(f"{path}: not a readable PNG ({error}); re-extract this file from the dataset archive") from None


def load_pair(
    pair: Pair, size_hw: tuple[int, int], label_format: str = "label_ids", frame_size_hw: tuple[int, int] | None = None,
    keep_label_ids: bool = False,
) -> tuple[np.ndarray, ...]:
    """Read one frame at ``size_hw``: image resized bicubic (uint8 HxWx3), labels resized nearest and
    mapped to layout channels (uint8 HxW, 0..19), as the release did (docs/facts.md §4). ``label_format``
    says how the label file is read (label_ids or color); ``frame_size_hw`` checks the original size.
    ``keep_label_ids`` adds a third array, the labelIds (uint8 HxW; read by colour: the canonical id
    of each colour, ``labels.COLOR_TO_ID``)."""
    image = _open_image(pair.image_path).convert("RGB")
    label = _open_image(pair.label_path)
    if label_format == "label_ids" and label.mode not in ("L", "P", "I", "I;16"):
        raise CrnError(f"{pair.label_path}: expected a single-channel labelIds PNG, got mode {label.mode}")
    if label_format == "color":
        if label.mode not in ("RGB", "RGBA", "P"):
            raise CrnError(f"{pair.label_path}: expected an RGB(A) gtFine_color PNG, got mode {label.mode}")
        label = label.convert("RGB")
    if frame_size_hw is not None and image.size != (frame_size_hw[1], frame_size_hw[0]):
        raise CrnError(
            f"{pair.image_path}: {image.size[1]}x{image.size[0]} pixels, expected {frame_size_hw[0]}x{frame_size_hw[1]} "
            "(cityscapes.frame_size_hw); re-extract it, or set frame_size_hw to null for other data"
        )
    if image.size != label.size:
        raise CrnError(f"{pair.label_path}: size {label.size} differs from its image's {image.size}")
    h, w = size_hw
    if image.size != (w, h):
        image = image.resize((w, h), Image.BICUBIC)
        label = label.resize((w, h), Image.NEAREST)
    values = np.asarray(label)
    try:
        if label_format == "color":
            label_ids = colors_to_label_ids(values)
            channels = ID_TO_CHANNEL[label_ids]
        else:
            channels = label_ids_to_channels(values)
            label_ids = values
    except ValueError as error:
        raise CrnError(f"{pair.label_path}: {error}") from None
    if keep_label_ids:
        return np.asarray(image, dtype=np.uint8), channels, label_ids.astype(np.uint8, copy=False)
    return np.asarray(image, dtype=np.uint8), channels


# --- the prepared cache -----------------------------------------------------------------------------


class PreparedSplit:
    """A prepared split: ``images.npy`` (N, H, W, 3) uint8 and ``labels.npy`` (N, H, W) uint8 layout
    channels, memory-mapped so that large datasets stream from disk instead of filling memory.
    ``label_space`` (from meta.json) names the channels; void is the last one. Cityscapes prepared
    with ``cityscapes.keep_label_ids`` also has ``label_ids.npy`` (N, H, W) uint8 official labelIds
    and their colours in meta.json (``label_id_colors``); elsewhere ``label_ids`` is None."""

    def __init__(self, prepared_dir: Path, split: str):
        folder = Path(prepared_dir) / split
        if not (folder / "images.npy").is_file():
            raise CrnError(f"{folder}: no prepared data; run `crn-repro prepare` (or `dvc repro prepare`) first")
        self.folder = folder
        self.label_space = read_label_space(prepared_dir)
        meta = read_prepared_meta(prepared_dir)
        self.dataset: str | None = meta.get("dataset")
        again = "run `crn-repro prepare` again (or `dvc repro prepare --force`)"
        self.images = read_array(folder / "images.npy", again, shape_tail=(3,), dtype="uint8")
        self.labels = read_array(folder / "labels.npy", again, dtype="uint8")
        self.names: list[str] = read_json(folder / "names.json", again)
        if not isinstance(self.names, list) or not all(isinstance(n, str) for n in self.names):
            raise CrnError(f"{folder / 'names.json'}: expected a list of frame names; {again}")
        if self.images.ndim != 4 or self.labels.shape != self.images.shape[:3]:
            raise CrnError(f"{folder}: images.npy {tuple(self.images.shape)} and labels.npy {tuple(self.labels.shape)} "
                           f"do not fit (N, H, W, 3) and (N, H, W); {again}")
        if not (len(self.images) == len(self.labels) == len(self.names)):
            raise CrnError(f"{folder}: images, labels and names disagree in length; {again}")
        self.labels_full = None  # val labels at the frames' own size (cityscapes.keep_full_resolution_val_labels)
        if (folder / "labels_full.npy").is_file():
            self.labels_full = read_array(folder / "labels_full.npy", again, dtype="uint8")
            if self.labels_full.ndim != 3 or len(self.labels_full) != len(self.names):
                raise CrnError(f"{folder / 'labels_full.npy'}: shape {tuple(self.labels_full.shape)} does not fit "
                               f"{len(self.names)} frames; {again}")
        self.label_ids = None
        self.id_colors = None
        if (folder / "label_ids.npy").is_file():
            self.label_ids = read_array(folder / "label_ids.npy", again, dtype="uint8")
            colors = meta.get("label_id_colors")
            if self.label_ids.shape != self.labels.shape or not colors:
                raise CrnError(f"{folder}: label_ids.npy does not fit labels.npy and meta.json; run `crn-repro prepare` again")
            self.id_colors = torch.tensor(colors, dtype=torch.uint8)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def size_hw(self) -> tuple[int, int]:
        return tuple(self.images.shape[1:3])

    def require(self, reads: str) -> None:
        """Fail early, in one line, when this split cannot deliver what a model reads (``READS``)."""
        if reads not in READS:
            raise ValueError(f"reads must be one of {READS}, got {reads!r}")
        if reads == "label_colors" and self.label_ids is None:
            raise CrnError(
                f"{self.folder}: no label_ids.npy, but this model reads the official colour label map (pix2pix, "
                "input 'color'); set cityscapes.keep_label_ids: true and run `crn-repro prepare` again"
            )

    def read(self, indices, reads: str = "layout", pin: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """The uint8 arrays of a batch, on the CPU: (layout channels (B, H, W), or labelIds for
        ``reads`` 'label_colors'; images (B, H, W, 3)). ``pin`` puts them in pinned memory, so that
        the copy to a GPU can run asynchronously (``to_device``)."""
        self.require(reads)
        indices = np.asarray(indices)
        labels = self.label_ids if reads == "label_colors" else self.labels
        batch_labels = np.ascontiguousarray(labels[indices])
        if reads == "layout" and batch_labels.size and batch_labels.max() >= self.num_classes:  # cheap on the host
            raise CrnError(
                f"{self.folder / 'labels.npy'}: label {int(batch_labels.max())} in frames {indices.tolist()[:4]} is beyond the "
                f"{self.num_classes} layout channels of meta.json; run `crn-repro prepare` again"
            )
        raw = (torch.from_numpy(batch_labels), torch.from_numpy(np.ascontiguousarray(self.images[indices])))
        return tuple(t.pin_memory() for t in raw) if pin else raw

    def to_device(self, raw: tuple[torch.Tensor, torch.Tensor], device: torch.device | str, reads: str = "layout"):
        """``read``'s uint8 arrays copied to ``device`` (non-blocking) and expanded there: (layout as
        the networks read it, image (B, 3, H, W) in 0..255)."""
        labels, images = (t.to(device, non_blocking=True) for t in raw)
        if reads == "label_colors":
            return label_ids_to_color_map(labels, self.id_colors), image_to_tensor(images)
        return channels_to_layout(labels, self.num_classes), image_to_tensor(images)

    def batch(self, indices, device: torch.device | str = "cpu", reads: str = "layout") -> tuple[torch.Tensor, torch.Tensor]:
        """(layout as the networks read it, image (B, 3, H, W) in 0..255) for the given indices: the
        one-hot layout (B, c, H, W) for ``reads`` 'layout', the official colour label map (B, 3, H, W)
        in 0..255 for 'label_colors'. The uint8 arrays travel to the device first and are expanded there."""
        return self.to_device(self.read(indices, reads), device, reads)

    @property
    def num_classes(self) -> int:
        return self.label_space.num_classes


def read_prepared_meta(prepared_dir: Path) -> dict:
    path = Path(prepared_dir) / "meta.json"
    if not path.is_file():
        raise CrnError(f"{path}: missing; run `crn-repro prepare` (or `dvc repro prepare`) first")
    return read_json(path, "run `crn-repro prepare` again")


def read_label_space(prepared_dir: Path) -> LabelSpace:
    """The layout channels of a prepared dataset (names, colours; void last), from its meta.json."""
    meta = read_prepared_meta(prepared_dir)
    try:
        return LabelSpace.from_meta(meta)
    except (KeyError, TypeError, ValueError) as error:
        raise CrnError(
            f"{Path(prepared_dir) / 'meta.json'}: no valid channel names/colours ({one_line(error)}); "
            "run `crn-repro prepare` again"
        ) from None
