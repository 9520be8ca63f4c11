"""The `prepare` stage: read a dataset in the official Cityscapes layout (real, or the built-in
synthetic city generated here from its seed) once, resize it to the experiment's resolution
(bicubic images, nearest labels; crn-facts §4) and write the cache that training reads.

The cache is built in a temporary folder and swapped in only when complete, so a failure (a
corrupt file, an unknown label) leaves the previous cache untouched.
"""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from numpy.lib.format import open_memmap
from rich.console import Console
from rich.progress import Progress

from crn_repro.datasets import SPLITS, find_pairs, load_pair
from crn_repro.labels import CHANNEL_NAMES, NUM_LAYOUT_CHANNELS
from crn_repro.params import Params
from crn_repro.synthetic import generate_synthetic_cityscapes

SYNTHETIC_DIR = "synthetic-city"


def prepare(params: Params, console: Console | None = None) -> dict:
    """Write ``paths.prepared`` (``{train,val}/images.npy, labels.npy, names.json`` and ``meta.json``)."""
    console = console or Console(stderr=True)
    out = Path(params.paths.prepared)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    h, w = params.data.image_size_hw
    meta = {"dataset": params.data.dataset, "image_size_hw": [h, w], "channel_names": list(CHANNEL_NAMES), "splits": {}}
    with Progress(console=console) as progress:
        if params.data.dataset == "synthetic":
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
            root, meta["source"] = tmp / SYNTHETIC_DIR, str(out / SYNTHETIC_DIR)
            meta["synthetic_seed"] = spec["seed"]
        else:
            root = Path(params.data.cityscapes_root)
            meta["source"] = str(root)
        limits = {"train": params.data.max_train_images, "val": params.data.max_val_images}
        for split in SPLITS:
            pairs = find_pairs(root, split)[: limits[split]]
            split_dir = tmp / split
            split_dir.mkdir()
            images = open_memmap(split_dir / "images.npy", "w+", np.uint8, (len(pairs), h, w, 3))
            labels = open_memmap(split_dir / "labels.npy", "w+", np.uint8, (len(pairs), h, w))
            counts = np.zeros(NUM_LAYOUT_CHANNELS, dtype=np.int64)
            task = progress.add_task(f"prepare {split}", total=len(pairs))
            with ThreadPoolExecutor() as pool:  # PIL decodes and resizes outside the GIL
                for i, (image, channels) in enumerate(pool.map(lambda p: load_pair(p, (h, w)), pairs)):
                    images[i], labels[i] = image, channels
                    counts += np.bincount(channels.ravel(), minlength=NUM_LAYOUT_CHANNELS)
                    progress.advance(task)
            images.flush()
            labels.flush()
            del images, labels
            (split_dir / "names.json").write_text(json.dumps([p.stem for p in pairs]))
            meta["splits"][split] = {
                "count": len(pairs),
                "class_pixel_frequency": (counts / max(counts.sum(), 1)).round(6).tolist(),
            }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    return meta
