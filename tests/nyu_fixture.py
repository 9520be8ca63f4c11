"""Miniature NYU Depth v2 files written the way MATLAB writes the real ones (docs/facts.md §4).

``nyu_depth_v2_labeled.mat`` is MATLAB v7.3: HDF5 behind a 512-byte user block that starts with
"MATLAB 7.3 MAT-file", arrays stored column-major (so h5py sees MATLAB's 480x640x3xN ``images`` as
(N, 3, 640, 480) and 480x640xN ``labels`` as (N, 640, 480)), chunked and deflated, and the
``names`` cell as object references into ``#refs#``, each a (n_chars, 1) uint16 char array.
``classMapping40.mat`` is a v5 file (``mapClass`` 1x894 double, ``className`` 1x40 cell); a v7.3
variant is written too. Callers pass arrays in natural orientation; the writers transpose.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import scipy.io

# The first raw names of the real file's label list; later ones are generated.
RAW_NAMES = ("book", "bottle", "cabinet", "ceiling", "chair", "cone", "counter", "dishwasher", "faucet", "fire extinguisher")


def raw_names(num_raw_classes: int) -> list[str]:
    return [RAW_NAMES[k] if k < len(RAW_NAMES) else f"object {k + 1}" for k in range(num_raw_classes)]


def _matlab_attr(dataset: h5py.Dataset | h5py.Group, matlab_class: str) -> None:
    dataset.attrs["MATLAB_class"] = np.bytes_(matlab_class)


def _write_header(path: Path) -> None:
    """The 128-byte MAT header in the HDF5 user block: text, subsystem offset, version 0x0200, 'IM'."""
    text = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  2 03:04:05 2012 HDF5 schema 1.00 ."
    header = text.ljust(116, b" ") + b"\x00" * 8 + (0x0200).to_bytes(2, "little") + b"IM"
    with open(path, "r+b") as f:
        f.write(header)


def _write_cell_of_strings(file: h5py.File, key: str, strings: list[str], shape: tuple[int, int]) -> None:
    refs = file.require_group("#refs#")
    cell = file.create_dataset(key, shape=shape, dtype=h5py.ref_dtype)
    flat = []
    for text in strings:
        name = f"{key}_{len(refs)}"
        if text:
            chars = refs.create_dataset(name, data=np.array([ord(c) for c in text], dtype="<u2").reshape(-1, 1))
            _matlab_attr(chars, "char")
            chars.attrs["MATLAB_int_decode"] = np.int32(2)
        else:  # MATLAB's placeholder for an empty array: its dimensions, flagged MATLAB_empty
            chars = refs.create_dataset(name, data=np.zeros(2, dtype=np.uint64))
            _matlab_attr(chars, "char")
            chars.attrs["MATLAB_empty"] = np.uint8(1)
        flat.append(chars.ref)
    cell[...] = np.array(flat, dtype=h5py.ref_dtype).reshape(shape)
    _matlab_attr(cell, "cell")


def make_frames(num_frames: int, hw: tuple[int, int], num_raw_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random RGB frames (N, H, W, 3) and blocky raw labels (N, H, W) in 0..num_raw_classes."""
    rng = np.random.default_rng(seed)
    h, w = hw
    images = rng.integers(0, 256, (num_frames, h, w, 3), dtype=np.uint8)
    blocks = rng.integers(0, num_raw_classes + 1, (num_frames, -(-h // 8), -(-w // 8)))
    labels = blocks.repeat(8, axis=1).repeat(8, axis=2)[:, :h, :w].astype(np.uint16)
    return images, labels


def write_nyu_mat(
    path: Path,
    num_frames: int,
    hw: tuple[int, int] = (48, 64),
    num_raw_classes: int = 12,
    seed: int = 0,
    *,
    images: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    names: list[str] | None = None,
    omit: tuple[str, ...] = (),
) -> dict:
    """Write a miniature ``nyu_depth_v2_labeled.mat``; returns the natural-orientation arrays and names.

    ``images`` (N, H, W, 3) uint8 and ``labels`` (N, H, W) default to ``make_frames``; ``omit`` drops fields.
    """
    path = Path(path)
    default_images, default_labels = make_frames(num_frames, hw, num_raw_classes, seed)
    images = default_images if images is None else np.asarray(images)
    labels = default_labels if labels is None else np.asarray(labels)
    names = raw_names(num_raw_classes) if names is None else list(names)
    n, h, w = labels.shape
    with h5py.File(path, "w", userblock_size=512) as file:
        if "images" not in omit:
            _matlab_attr(file.create_dataset("images", data=images.transpose(0, 3, 2, 1), chunks=(1, 3, w, h), compression="gzip"), "uint8")
        if "labels" not in omit:
            data = labels.transpose(0, 2, 1).astype(np.uint16)
            _matlab_attr(file.create_dataset("labels", data=data, chunks=(1, w, h), compression="gzip"), "uint16")
        if "depths" not in omit:
            depths = np.linspace(0.5, 10.0, n * w * h, dtype=np.float32).reshape(n, w, h)
            _matlab_attr(file.create_dataset("depths", data=depths, chunks=(1, w, h), compression="gzip"), "single")
        if "names" not in omit:
            _write_cell_of_strings(file, "names", names, (1, len(names)))  # MATLAB's Cx1 cell, axes reversed
    _write_header(path)
    return {"images": images, "labels": labels, "names": names}


def write_class_mapping(
    path: Path,
    map_class,
    class_names: list[str],
    version: str = "v5",
    all_class_names: list[str] | None = None,
    omit: tuple[str, ...] = (),
) -> None:
    """Write ``classMapping40.mat``-style ``mapClass`` (1xK double) and ``className`` (1xC cell), as v5 or v7.3."""
    map_class = np.asarray(map_class, dtype=np.float64).reshape(1, -1)
    if version == "v5":
        cells = {"className": class_names} | ({"allClassName": all_class_names} if all_class_names is not None else {})
        mat = {"mapClass": map_class} | {key: _object_row(values) for key, values in cells.items()}
        scipy.io.savemat(path, {k: v for k, v in mat.items() if k not in omit}, format="5")
        return
    assert version == "v7.3", version
    with h5py.File(path, "w", userblock_size=512) as file:
        if "mapClass" not in omit:
            _matlab_attr(file.create_dataset("mapClass", data=map_class.T), "double")  # 1xK reads as (K, 1)
        if "className" not in omit:
            _write_cell_of_strings(file, "className", class_names, (len(class_names), 1))
        if all_class_names is not None:
            _write_cell_of_strings(file, "allClassName", all_class_names, (len(all_class_names), 1))
    _write_header(path)


def _object_row(strings: list[str]) -> np.ndarray:
    row = np.empty((1, len(strings)), dtype=object)
    for k, text in enumerate(strings):
        row[0, k] = text
    return row
