"""NYU Depth v2 labeled set (paper Sec. 5.1, docs/facts.md §4): read ``nyu_depth_v2_labeled.mat`` one
frame at a time, map its raw object labels to a layout label set, and fit its 4:3 frames to the
cascade's 1:2 aspect.

The paper trains on the first 1200 of the 1449 labeled 640x480 frames and tests on the remaining
249 (our "val" split, named like Cityscapes'); depth is not used. Its label set is not stated, so
two are offered: the common 40-class grouping of Gupta et al. (from the user's ``classMapping40.mat``)
or the N most frequent raw classes of the training frames; every other pixel, and raw label 0
(unlabeled), is void, the last channel.

On-disk facts, verified before writing this module:
- The labeled set is a MATLAB v7.3 MAT file: HDF5 behind a 512-byte user block whose text starts
  "MATLAB 7.3 MAT-file" (v5/v7 files start "MATLAB 5.0 MAT-file" and are not HDF5). MATLAB stores
  arrays column-major, so h5py shows every axis reversed: MATLAB's ``images`` (480x640x3x1449
  uint8) reads as (1449, 3, 640, 480) and ``labels`` (480x640x1449 uint16; 0 = unlabeled, k = the
  k-th entry of ``names``) as (1449, 640, 480). A frame is ``images[i].transpose(2, 1, 0)`` and
  ``labels[i].T``. Other fields (depths, rawDepths, instances, scenes, ...) are not read. Any HDF5
  file with these fields is accepted (the user block only identifies MATLAB as the writer).
- ``names`` (MATLAB's 894x1 cell of English class names) is a (1, 894) dataset of HDF5 object
  references into the ``#refs#`` group; each target is a (n_chars, 1) uint16 array of character
  codes (MATLAB_class "char"); an empty string would be, as anywhere in v7.3, a ``MATLAB_empty`` placeholder.
- ``classMapping40.mat`` as distributed (e.g. in VainF/nyuv2-python-toolkit) is a MATLAB 5.0 file
  read by ``scipy.io.loadmat``: ``mapClass`` 1x894 double with values 1..40 (raw label k -> class
  ``mapClass[k-1]``), ``className`` 1x40 cell (wall, floor, cabinet, bed, chair, ...),
  ``allClassName`` 1x894 cell (the raw names in label order), ``mapToNYUSuperClass``(Mat). A v7.3
  re-save is read with h5py under the same reversed-axes rules.
Sources: the dataset page (https://cs.nyu.edu/~silberman/datasets/nyu_depth_v2.html), public NYU
loaders found with the code search (the (1449, 3, 640, 480) shape and its transpose(2, 1, 0), the
(1, n) reference list of (n_chars, 1) ``<u2`` strings, ``loadmat(...)['mapClass'][0]``), and
``scipy.io.whosmat`` on the distributed classMapping40.mat itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np
import scipy.io
from PIL import Image

from crn_repro.errors import CrnError, check_choice, one_line
from crn_repro.labels import LabelSpace

if TYPE_CHECKING:
    from typing_extensions import Self

NUM_FRAMES = 1449
NUM_TRAIN = 1200
NUM_TEST = 249
FRAME_HW = (480, 640)
SPLITS = ("train", "val")
FIT_MODES = ("crop", "pad")
DOWNLOAD_URL = "http://horatio.cs.nyu.edu/mit/silberman/nyu_depth_v2/nyu_depth_v2_labeled.mat"
V5_MAGIC = b"MATLAB 5.0 MAT-file"
# h5py's default chunk cache is 1 MiB; a larger one keeps a chunk that spans several frames
# decompressed while consecutive frames are read, whatever chunk shape MATLAB chose.
CHUNK_CACHE_BYTES = 64 * 1024 * 1024
MAX_CHANNELS = 255  # channels are stored as uint8


def frame_name(i: int) -> str:
    """Stable name of frame ``i`` (0-based), numbered 1-based like MATLAB's index: 0 -> "nyu_0001"."""
    return f"nyu_{i + 1:04d}"


def split_indices(num_frames: int, split: str, num_train: int = NUM_TRAIN) -> range:
    """The paper's split (Sec. 5.1): the first ``num_train`` frames train, the rest are held out ("val")."""
    check_choice("NYU split", split, SPLITS)
    if not 0 < num_train < num_frames:
        raise CrnError(f"NYU num_train {num_train} must leave frames for both splits (1..{num_frames - 1})")
    return range(num_train) if split == "train" else range(num_train, num_frames)


# --- reading MATLAB files -------------------------------------------------------------------------


def _not_hdf5_message(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(len(V5_MAGIC))
    kind = "a MATLAB v5/v7 file, not v7.3 (HDF5)" if head == V5_MAGIC else "not a MAT file"
    return f"{path}: {kind}; download the v7.3 labeled set from {DOWNLOAD_URL}"


def _hdf5_strings(file: h5py.File, dataset: h5py.Dataset, what: str) -> list[str]:
    """Decode a MATLAB v7.3 cell array of strings: object references to char arrays, in MATLAB order."""
    refs = dataset[()]
    if refs.dtype != h5py.ref_dtype:
        raise ValueError(f"{what} is not a cell array (dtype {refs.dtype})")
    strings = []
    for ref in refs.ravel():  # C order of the reversed axes = MATLAB's column-major order
        if not ref:
            raise ValueError(f"{what} holds a null reference")
        chars = file[ref]
        if chars.attrs.get("MATLAB_empty", 0):
            strings.append("")
            continue
        codes = np.asarray(chars[()])
        if codes.dtype.kind not in "ui":
            raise ValueError(f"{what} entry {len(strings) + 1} is not a char array (dtype {codes.dtype})")
        strings.append("".join(map(chr, codes.ravel().tolist())))
    return strings


def _v5_string(cell: np.ndarray) -> str:
    value = np.asarray(cell)
    if value.dtype.kind != "U":
        raise ValueError(f"expected a char array, got {value.dtype}")
    return "".join(value.ravel().tolist())


class NyuLabeled:
    """``nyu_depth_v2_labeled.mat`` opened read-only, one frame per read (the real file is 2.8 GB).

    Validated on construction; usable as a context manager; picklable (a copy reopens the file on
    first use), so worker processes can share one instance.
    """

    def __init__(self, path: Path, expected_frames: int = NUM_FRAMES, expected_hw: tuple[int, int] | None = FRAME_HW):
        self.path = Path(path)
        self._file: h5py.File | None = None
        if not self.path.is_file():
            raise CrnError(f"{self.path}: NYU labeled set not found; download nyu_depth_v2_labeled.mat from {DOWNLOAD_URL}")
        if not h5py.is_hdf5(self.path):
            raise CrnError(_not_hdf5_message(self.path))
        try:
            self._validate(self._open(), expected_frames, expected_hw)
        except BaseException:
            self.close()
            raise

    def _validate(self, file: h5py.File, expected_frames: int, expected_hw: tuple[int, int] | None) -> None:
        for field in ("images", "labels", "names"):
            if not isinstance(file.get(field), h5py.Dataset):
                raise CrnError(f"{self.path}: no {field!r} field; this is not the NYU Depth v2 labeled set ({DOWNLOAD_URL})")
        images, labels = file["images"], file["labels"]
        if images.ndim != 4 or images.shape[1] != 3 or images.dtype != np.uint8:
            raise CrnError(
                f"{self.path}: 'images' is {images.dtype} {images.shape}, expected uint8 (frames, 3, width, height) "
                f"as MATLAB v7.3 stores 480x640x3xN; re-download {DOWNLOAD_URL}"
            )
        num, _, width, height = images.shape
        if labels.shape != (num, width, height) or labels.dtype.kind not in "ui":
            raise CrnError(
                f"{self.path}: 'labels' is {labels.dtype} {labels.shape}, expected integer {(num, width, height)} "
                f"to match 'images'; re-download {DOWNLOAD_URL}"
            )
        if num != expected_frames:
            raise CrnError(f"{self.path}: {num} frames, expected {expected_frames}; the download is incomplete or another file")
        if expected_hw is not None and (height, width) != tuple(expected_hw):
            raise CrnError(f"{self.path}: frames are {width}x{height}, expected {expected_hw[1]}x{expected_hw[0]}")
        try:
            self.raw_class_names: list[str] = _hdf5_strings(file, file["names"], "'names'")
        except (ValueError, KeyError, OSError) as error:
            raise CrnError(f"{self.path}: 'names' is unreadable ({one_line(error)}); re-download {DOWNLOAD_URL}") from None
        self.num_frames: int = num
        self.frame_hw: tuple[int, int] = (height, width)

    def _open(self) -> h5py.File:
        if self._file is None:
            try:
                self._file = h5py.File(self.path, "r", rdcc_nbytes=CHUNK_CACHE_BYTES)
            except OSError as error:
                raise CrnError(f"{self.path}: not a readable HDF5 file ({one_line(error)}); re-download {DOWNLOAD_URL}") from None
        return self._file

    def _read(self, field: str, i: int) -> np.ndarray:
        if not 0 <= i < self.num_frames:
            raise IndexError(f"frame {i} out of range 0..{self.num_frames - 1}")
        try:
            return self._open()[field][i]
        except OSError as error:  # a damaged chunk fails to decompress
            raise CrnError(
                f"{self.path}: {field!r} of frame {frame_name(i)} is unreadable ({one_line(error)}); "
                f"the file is damaged, re-download {DOWNLOAD_URL}"
            ) from None

    def image(self, i: int) -> np.ndarray:
        """Frame ``i`` as (H, W, 3) uint8 RGB, un-transposed from MATLAB's column-major layout."""
        return np.ascontiguousarray(self._read("images", i).transpose(2, 1, 0))

    def labels(self, i: int) -> np.ndarray:
        """Raw labels of frame ``i`` as (H, W) integers: 0 = unlabeled, k = ``raw_class_names[k - 1]``."""
        return np.ascontiguousarray(self._read("labels", i).T)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_file": None}


# --- label sets -----------------------------------------------------------------------------------


def _palette(num_classes: int) -> np.ndarray:
    """Colours for ``num_classes`` classes then void: class k gets the bits of k + 1 spread over R, G, B
    from the most significant bit down, so colours are distinct (for k < 2**24) and never black; void is black."""
    colors = np.zeros((num_classes + 1, 3), dtype=np.uint8)
    for k in range(num_classes):
        code, rgb = k + 1, [0, 0, 0]
        for bit in range(8):
            for c in range(3):
                rgb[c] |= ((code >> (3 * bit + c)) & 1) << (7 - bit)
        colors[k] = rgb
    return colors


@dataclass(frozen=True, eq=False)
class NyuLabelSet:
    """A layout label set for NYU: ``channel_names`` are the classes, then "void" last; ``lut`` maps
    each raw label (0..number of raw names) to its channel, raw 0 (unlabeled) to void."""

    channel_names: tuple[str, ...]
    colors: np.ndarray
    lut: np.ndarray

    @property
    def label_space(self) -> LabelSpace:
        """The layout channels this set makes (names, colours, c, void), as the prepared cache records them."""
        return LabelSpace(self.channel_names, tuple(tuple(int(v) for v in c) for c in self.colors))

    def to_channels(self, raw: np.ndarray) -> np.ndarray:
        """Raw labels -> uint8 layout channels; ids outside the table raise a one-line ValueError listing them."""
        raw = np.asarray(raw)
        outside = (raw < 0) | (raw >= len(self.lut))
        if outside.any():
            ids = np.unique(raw[outside])
            shown = ", ".join(str(int(v)) for v in ids[:10]) + (", ..." if len(ids) > 10 else "")
            raise ValueError(f"raw label ids {shown} are not NYU labels (valid: 0..{len(self.lut) - 1})")
        return self.lut[raw]


def _label_set(class_names: list[str], raw_to_channel: np.ndarray) -> NyuLabelSet:
    if len(class_names) + 1 > MAX_CHANNELS:
        raise CrnError(f"{len(class_names)} NYU classes + void exceed the {MAX_CHANNELS} layout channels a uint8 cache holds")
    lut = raw_to_channel.astype(np.uint8)
    lut.flags.writeable = False
    colors = _palette(len(class_names))
    colors.flags.writeable = False
    return NyuLabelSet(tuple(class_names) + ("void",), colors, lut)


def _read_mapping(path: Path) -> tuple[np.ndarray, list[str], list[str] | None]:
    """(mapClass, className, allClassName or None) from a v5/v7 or v7.3 MAT file, in MATLAB's order."""
    if h5py.is_hdf5(path):
        with h5py.File(path, "r") as file:
            for key in ("mapClass", "className"):
                if not isinstance(file.get(key), h5py.Dataset):
                    raise CrnError(f"{path}: no {key!r} variable; expected the 40-class mapping classMapping40.mat")
            map_class = np.asarray(file["mapClass"][()], dtype=np.float64).ravel()
            names = _hdf5_strings(file, file["className"], "'className'")
            all_names = _hdf5_strings(file, file["allClassName"], "'allClassName'") if "allClassName" in file else None
        return map_class, names, all_names
    try:
        mat = scipy.io.loadmat(path)
    except (ValueError, TypeError, OSError, NotImplementedError) as error:
        raise CrnError(f"{path}: not a readable MAT file ({one_line(error)}); expected classMapping40.mat") from None
    for key in ("mapClass", "className"):
        if key not in mat:
            raise CrnError(f"{path}: no {key!r} variable; expected the 40-class mapping classMapping40.mat")
    map_class = np.asarray(mat["mapClass"], dtype=np.float64).ravel(order="F")
    if mat["className"].dtype != object:
        raise ValueError("'className' is not a cell array of names")
    names = [_v5_string(cell) for cell in mat["className"].ravel(order="F")]
    all_names = [_v5_string(cell) for cell in mat["allClassName"].ravel(order="F")] if "allClassName" in mat else None
    return map_class, names, all_names


def label_set_from_mapping(path: Path, raw_class_names: list[str]) -> NyuLabelSet:
    """The 40-class grouping (Gupta et al.) from ``classMapping40.mat``: raw label k -> class
    ``mapClass[k-1]`` (1-based into ``className``), raw 0 -> void."""
    path = Path(path)
    if not path.is_file():
        raise CrnError(f"{path}: class mapping not found; put classMapping40.mat there or use the most-frequent label set")
    try:
        map_class, class_names, all_names = _read_mapping(path)
    except (ValueError, KeyError, OSError) as error:
        raise CrnError(f"{path}: unreadable class mapping ({one_line(error)})") from None
    if not class_names:
        raise CrnError(f"{path}: 'className' is empty")
    if len(map_class) != len(raw_class_names):
        raise CrnError(
            f"{path}: 'mapClass' has {len(map_class)} entries but the NYU file has {len(raw_class_names)} raw classes; "
            "use the mapping made for nyu_depth_v2_labeled.mat"
        )
    bad = ~np.isfinite(map_class) | (map_class != np.round(map_class)) | (map_class < 1) | (map_class > len(class_names))
    if bad.any():
        raw_ids = (np.flatnonzero(bad) + 1)[:10].tolist()
        raise CrnError(f"{path}: 'mapClass' of raw labels {raw_ids} is not a class number 1..{len(class_names)}")
    if all_names is not None:
        for k, (theirs, ours) in enumerate(zip(all_names, raw_class_names), start=1):
            if theirs.strip().lower() != ours.strip().lower():
                raise CrnError(
                    f"{path}: 'allClassName' calls raw label {k} {theirs!r} but the NYU file calls it {ours!r}; "
                    "this mapping was made for another label list"
                )
    raw_to_channel = np.concatenate([[len(class_names)], map_class.astype(np.int64) - 1])
    return _label_set(class_names, raw_to_channel)


def label_set_most_frequent(
    nyu: NyuLabeled, indices: Iterable[int], n: int, progress: Callable[[int], None] | None = None
) -> NyuLabelSet:
    """The ``n`` raw classes with the most pixels over ``indices`` (the training frames), most frequent
    first, ties broken by raw id; every other raw class and raw 0 are void. ``progress(1)`` per frame."""
    if n < 1:
        raise CrnError(f"NYU num_classes must be >= 1, got {n}")
    num_raw = len(nyu.raw_class_names)
    counts = np.zeros(num_raw + 1, dtype=np.int64)
    num_frames = 0
    for i in indices:
        frame_counts = np.bincount(nyu.labels(i).ravel(), minlength=num_raw + 1)
        if len(frame_counts) > num_raw + 1:
            unknown = (np.flatnonzero(frame_counts[num_raw + 1 :]) + num_raw + 1)[:10].tolist()
            raise CrnError(f"{nyu.path}: frame {frame_name(i)} has raw label ids {unknown} beyond the {num_raw} names")
        counts += frame_counts
        num_frames += 1
        if progress is not None:
            progress(1)
    present = np.flatnonzero(counts[1:]) + 1
    if len(present) < n:
        raise CrnError(f"{nyu.path}: only {len(present)} raw classes occur in the {num_frames} frames counted; ask for at most that many")
    chosen = present[np.lexsort((present, -counts[present]))][:n]
    raw_to_channel = np.full(num_raw + 1, n, dtype=np.int64)
    raw_to_channel[chosen] = np.arange(n)
    return _label_set([nyu.raw_class_names[r - 1] for r in chosen], raw_to_channel)


# --- geometry -------------------------------------------------------------------------------------


def _pad(array: np.ndarray, axis: int, size: int, value: int) -> np.ndarray:
    before = (size - array.shape[axis]) // 2
    widths = [(0, 0)] * array.ndim
    widths[axis] = (before, size - array.shape[axis] - before)
    return np.pad(array, widths, constant_values=value)


def _crop(array: np.ndarray, axis: int, size: int) -> np.ndarray:
    start = (array.shape[axis] - size) // 2
    return array.take(range(start, start + size), axis=axis)


def fit_to_aspect(
    image: np.ndarray, channels: np.ndarray, mode: str, void_channel: int, aspect_hw: tuple[int, int] = (1, 2)
) -> tuple[np.ndarray, np.ndarray]:
    """Bring a frame to the cascade's aspect (1:2, Sec. 3.2) at native resolution, before resizing.

    "crop": the central part, e.g. 480x640 -> rows 80..399, 320x640; it keeps every pixel at full
    detail but loses a third of each frame's height (floor and ceiling edges).
    "pad": symmetric black borders labelled void, e.g. 480x640 -> 480x960; it keeps the whole scene
    but a third of the canvas is void, spending resolution and model capacity on empty borders.
    """
    check_choice("NYU fit mode", mode, FIT_MODES)
    h, w = channels.shape
    if image.shape[:2] != (h, w):
        raise ValueError(f"image {image.shape[:2]} and labels {(h, w)} differ in size")
    ah, aw = aspect_hw
    if h * aw == w * ah:
        return image, channels
    if h * aw > w * ah:  # taller than the target: crop rows or pad columns
        axis, size = (0, round(w * ah / aw)) if mode == "crop" else (1, round(h * aw / ah))
    else:  # wider than the target: crop columns or pad rows
        axis, size = (1, round(h * aw / ah)) if mode == "crop" else (0, round(w * ah / aw))
    if mode == "crop":
        return _crop(image, axis, size), _crop(channels, axis, size)
    return _pad(image, axis, size, 0), _pad(channels, axis, size, void_channel)


def load_frame(
    nyu: NyuLabeled, i: int, label_set: NyuLabelSet, size_hw: tuple[int, int], fit: str
) -> tuple[np.ndarray, np.ndarray]:
    """Frame ``i`` at ``size_hw``: fitted to that aspect, then the image resized bicubic (uint8 HxWx3)
    and the layout channels nearest (uint8 HxW), the conventions of ``datasets.load_pair`` (docs/facts.md §4)."""
    image = nyu.image(i)
    try:
        channels = label_set.to_channels(nyu.labels(i))
    except ValueError as error:
        raise CrnError(f"{nyu.path}: frame {frame_name(i)}: {error}") from None
    h, w = size_hw
    image, channels = fit_to_aspect(image, channels, fit, label_set.label_space.void_channel, aspect_hw=(h, w))
    if channels.shape != (h, w):
        image = np.asarray(Image.fromarray(image).resize((w, h), Image.BICUBIC))
        channels = np.asarray(Image.fromarray(channels).resize((w, h), Image.NEAREST))
    return image, channels
