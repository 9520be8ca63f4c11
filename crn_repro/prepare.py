"""The `prepare` stage (paper Sec. 5.1, docs/facts.md §4): read a dataset once — the built-in synthetic
city (generated here from its seed), Cityscapes in its official archive layout, or the NYU Depth v2
labeled set — check it, resize it to the experiment's resolution (bicubic images, nearest labels)
and write the cache that training reads: memory-mapped uint8 arrays plus ``meta.json`` (label
space, counts, per-class pixel frequencies). Cityscapes with ``cityscapes.keep_label_ids`` also keeps
each pixel's official labelId (``label_ids.npy``) and the id -> colour table, from which pix2pix with
input 'color' reads the official colour label map; nothing else reads them, so they cost disk only
when asked for.

Frames are decoded by a thread pool with a bounded number in flight (``FRAMES_IN_FLIGHT``), so a
fast pool never piles decoded 1024p frames up in memory ahead of the writer.

The cache is built in a temporary folder and swapped in only when complete, so a failure (a
missing split, a count mismatch, a corrupt file, an unknown label) leaves the previous cache untouched.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections import deque
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
from rich.console import Console

from crn_repro.files import allocated_memmap, atomic_write_text, staged_dir
from crn_repro.datasets import SPLITS, find_pairs, load_pair
from crn_repro.errors import CrnError
from crn_repro.labels import CITYSCAPES_SPACE, ID_COLORS, LabelSpace
from crn_repro.params import Params
from crn_repro.progress import StageProgress
from crn_repro.synthetic import generate_synthetic_cityscapes

SYNTHETIC_DIR = "synthetic-city"
DECODE_WORKERS = min(32, (os.cpu_count() or 1) + 4)  # ThreadPoolExecutor's default
FRAMES_IN_FLIGHT = 2 * DECODE_WORKERS  # decoded or decoding, not yet written: bounds prepare's memory


@dataclass
class Source:
    """A dataset ready to be read: its label space and, per split, frame names and a frame loader
    (index -> (image uint8 HxWx3, layout channels uint8 HxW) at the target size, plus the labelIds
    uint8 HxW when ``label_ids``)."""

    label_space: LabelSpace
    names: dict[str, Sequence[str]]
    load: dict[str, Callable[[int], tuple[np.ndarray, ...]]]
    meta: dict

    @property
    def label_ids(self) -> bool:
        """Whether the frames carry labelIds: the source's meta then holds their colour table."""
        return "label_id_colors" in self.meta


def num_classes_for(params: Params) -> int:
    """Layout channels c of the configured dataset, without reading it (for `info` and presets)."""
    return params.nyu.num_classes + 1 if params.data.dataset == "nyu" else CITYSCAPES_SPACE.num_classes


def _cityscapes_source(
    root: Path, params: Params, counts: dict, frame_size_hw, label_format: str, keep_label_ids: bool = False,
    vivid_train: bool = False,
) -> Source:
    size = tuple(params.data.image_size_hw)
    pairs = {split: find_pairs(root, split, label_format, counts[split]) for split in SPLITS}
    meta = {"labels": label_format}
    if keep_label_ids:
        meta["label_id_colors"] = ID_COLORS.tolist()  # index = labelId; {train,val}/label_ids.npy
    if vivid_train:
        meta["vivid_train_images"] = True  # part of every run's fingerprint: other training images
    loads = {
        split: (lambda i, ps=pairs[split]: load_pair(ps[i], size, label_format, frame_size_hw, keep_label_ids))
        for split in SPLITS
    }
    if vivid_train:  # the release's tone-mapped training images (512p, 1024p); validation stays as it is
        loads["train"] = _vivid(loads["train"])
    return Source(CITYSCAPES_SPACE, {split: [p.stem for p in pairs[split]] for split in SPLITS}, loads, meta)


def _vivid(load: Callable) -> Callable:
    from crn_repro.vivid import vivid

    def load_vivid(i):
        image, *rest = load(i)
        return (vivid(image), *rest)

    return load_vivid


def _nyu_source(params: Params, stack: contextlib.ExitStack, progress: StageProgress) -> Source:
    from crn_repro import nyu

    cfg = params.nyu
    frame_hw = tuple(cfg.frame_size_hw) if cfg.frame_size_hw else None
    frames = stack.enter_context(nyu.NyuLabeled(Path(cfg.path), expected_frames=cfg.num_frames, expected_hw=frame_hw))
    indices = {split: nyu.split_indices(frames.num_frames, split, cfg.num_train) for split in SPLITS}
    if cfg.class_mapping:
        label_set = nyu.label_set_from_mapping(Path(cfg.class_mapping), frames.raw_class_names)
        found = label_set.label_space.num_classes - 1
        if found != cfg.num_classes:
            raise CrnError(
                f"{cfg.class_mapping}: maps to {found} classes, but nyu.num_classes is "
                f"{cfg.num_classes}; set nyu.num_classes to {found}"
            )
    else:
        task = progress.add_task("count NYU classes (train split)", total=len(indices["train"]))
        label_set = nyu.label_set_most_frequent(
            frames, indices["train"], cfg.num_classes, progress=lambda n=1: progress.advance(task, n)
        )
    size = tuple(params.data.image_size_hw)
    return Source(
        label_set.label_space,
        {split: [nyu.frame_name(i) for i in indices[split]] for split in SPLITS},
        {
            split: (lambda j, idx=indices[split]: nyu.load_frame(frames, idx[j], label_set, size, cfg.fit))
            for split in SPLITS
        },
        {"fit": cfg.fit, "class_mapping": cfg.class_mapping, "num_train": cfg.num_train},
    )


def prepare(params: Params, console: Console | None = None) -> dict:
    """Write ``paths.prepared`` (``{train,val}/images.npy, labels.npy, names.json``, with
    ``cityscapes.keep_label_ids`` also ``label_ids.npy``, and ``meta.json``)."""
    console = console or Console(stderr=True)
    out = Path(params.paths.prepared)
    h, w = params.data.image_size_hw
    dataset = params.data.dataset
    meta = {"dataset": dataset, "image_size_hw": [h, w], "splits": {}}
    with staged_dir(out) as tmp:  # swapped in whole, or removed on any error
        with StageProgress(console) as progress, contextlib.ExitStack() as stack:
            if dataset == "synthetic":
                syn = params.synthetic
                task = progress.add_task("generate synthetic city", total=syn.num_train + syn.num_val)
                spec = generate_synthetic_cityscapes(
                    tmp / SYNTHETIC_DIR,
                    seed=syn.seed,
                    num_train=syn.num_train,
                    num_val=syn.num_val,
                    image_size_hw=tuple(syn.image_size_hw),
                    num_cities=syn.num_cities,
                    progress=lambda n: progress.advance(task, n),
                )
                counts = {"train": syn.num_train, "val": syn.num_val}
                source = _cityscapes_source(tmp / SYNTHETIC_DIR, params, counts, tuple(syn.image_size_hw), "label_ids")
                meta["source"], meta["synthetic_seed"] = str(out / SYNTHETIC_DIR), spec["seed"]
            elif dataset == "cityscapes":
                cs = params.cityscapes
                counts = {"train": cs.expected_train, "val": cs.expected_val}
                frame_size = tuple(cs.frame_size_hw) if cs.frame_size_hw else None
                source = _cityscapes_source(Path(cs.root), params, counts, frame_size, cs.labels, cs.keep_label_ids,
                                            cs.vivid_train_images)
                meta["source"] = str(cs.root)
            else:
                source = _nyu_source(params, stack, progress)
                meta["source"] = str(params.nyu.path)
            meta.update(source.meta)
            meta.update(source.label_space.to_meta())
            limits = {"train": params.data.max_train_images, "val": params.data.max_val_images}
            for split in SPLITS:
                meta["splits"][split] = _write_split(
                    tmp / split, source, split, limits[split], (h, w), progress
                )
            if dataset == "cityscapes" and params.cityscapes.keep_full_resolution_val_labels:
                names = json.loads((tmp / "val" / "names.json").read_text())
                pairs = {p.stem: p for p in find_pairs(Path(cs.root), "val", cs.labels, cs.expected_val)}
                _write_full_resolution_labels(tmp / "val", [pairs[n] for n in names], cs.labels, progress)
        atomic_write_text(tmp / "meta.json", json.dumps(meta, indent=2) + "\n")
    return meta


def _write_full_resolution_labels(folder: Path, pairs: list, label_format: str, progress: StageProgress) -> None:
    """``val/labels_full.npy``: the validation labels as layout channels at the frames' own size (1024x2048
    for Cityscapes), for scoring images upsampled to it (DRN-D-105 as SPADE measured, docs/facts.md §11).
    Each frame is read by ``load_pair`` at its own size, with the same checks as the prepared labels."""
    from PIL import Image

    task = progress.add_task("prepare val: full-resolution labels", total=len(pairs))
    out = None
    for i, pair in enumerate(pairs):
        with Image.open(pair.label_path) as label:
            w, h = label.size  # the header only
        _, channels = load_pair(pair, (h, w), label_format)
        if out is None:
            out = allocated_memmap(folder / "labels_full.npy", np.uint8, (len(pairs), *channels.shape))
        elif channels.shape != out.shape[1:]:
            raise CrnError(f"{pair.label_path}: {channels.shape[0]}x{channels.shape[1]} labels, the others are "
                           f"{out.shape[1]}x{out.shape[2]}; full-resolution labels need one frame size")
        out[i] = channels
        progress.advance(task)
    if out is not None:
        out.flush()


def _in_order(pool: Executor, load: Callable, count: int, window: int) -> Iterator:
    """``load(0), ..., load(count - 1)`` run in ``pool`` and yielded in order, with at most ``window``
    submitted but not yet yielded (``pool.map`` would submit all at once). Leaving early (an error,
    in a load or in the consumer) cancels the frames not yet started."""
    pending: deque = deque()
    submitted = 0
    try:
        for _ in range(count):
            while submitted < count and len(pending) < window:
                pending.append(pool.submit(load, submitted))
                submitted += 1
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()


def _write_split(folder: Path, source: Source, split: str, limit: int | None, size_hw, progress: StageProgress) -> dict:
    names = list(source.names[split])[:limit]
    num_classes = source.label_space.num_classes
    h, w = size_hw
    folder.mkdir()
    # disk space reserved up front: a full disk is a one-line error here, not a SIGBUS while writing the map
    images = allocated_memmap(folder / "images.npy", np.uint8, (len(names), h, w, 3))
    labels = allocated_memmap(folder / "labels.npy", np.uint8, (len(names), h, w))
    label_ids = allocated_memmap(folder / "label_ids.npy", np.uint8, (len(names), h, w)) if source.label_ids else None
    counts = np.zeros(num_classes, dtype=np.int64)
    task = progress.add_task(f"prepare {split}", total=len(names))
    # PIL decodes and resizes outside the GIL. The frames close before the pool waits for its
    # threads, so an error cancels the frames not yet started.
    with (
        ThreadPoolExecutor(DECODE_WORKERS) as pool,
        contextlib.closing(_in_order(pool, source.load[split], len(names), FRAMES_IN_FLIGHT)) as frames,
    ):
        for i, (image, channels, *ids) in enumerate(frames):
            images[i], labels[i] = image, channels
            if label_ids is not None:
                label_ids[i] = ids[0]
            counts += np.bincount(channels.ravel(), minlength=num_classes)
            progress.advance(task)
    for array in (images, labels, label_ids):
        if array is not None:
            array.flush()
    del images, labels, label_ids
    (folder / "names.json").write_text(json.dumps(names))
    return {"count": len(names), "class_pixel_frequency": (counts / max(counts.sum(), 1)).round(6).tolist()}
