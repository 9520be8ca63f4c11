"""A miniature Cityscapes tree in the official archives' layout (docs/facts.md §4), written by the tests.

``leftImg8bit_trainvaltest.zip`` and ``gtFine_trainvaltest.zip`` extract to
``leftImg8bit/{train,val,test}/<city>/<city>_<seq:06d>_<frame:06d>_leftImg8bit.png`` (8-bit RGB) and
``gtFine/{train,val,test}/<city>/<stem>_gtFine_{color.png (RGBA), instanceIds.png (16-bit),
labelIds.png (8-bit), polygons.json}``, plus a README and license.txt at the root. Every labelId
0..33 appears in every frame (a grid of blocks in a per-frame order), so a miniature tree exercises
the whole label table at native resolution.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from crn_repro.labels import LABELS

TRAIN_CITIES = ("aachen", "bochum", "zurich")
VAL_CITIES = ("frankfurt", "lindau")
ALL_IDS = np.array([label.id for label in LABELS], dtype=np.uint8)
ID_COLORS = {label.id: label.color for label in LABELS}


def label_grid(size_hw: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """(H, W) uint8 labelIds: a 5 x 7 grid of blocks holding all 34 ids (one block repeats) in random order."""
    h, w = size_hw
    order = np.concatenate([rng.permutation(ALL_IDS), rng.choice(ALL_IDS, 1)])
    rows = np.minimum(np.arange(h) * 5 // h, 4)
    cols = np.minimum(np.arange(w) * 7 // w, 6)
    return order[rows[:, None] * 7 + cols[None, :]]


def write_frame(root: Path, split: str, city: str, seq: int, size_hw: tuple[int, int], rng: np.random.Generator) -> str:
    """One frame with all its official files; returns the stem."""
    stem = f"{city}_{seq:06d}_000019"
    image_dir, label_dir = root / "leftImg8bit" / split / city, root / "gtFine" / split / city
    image_dir.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    h, w = size_hw
    ids = label_grid(size_hw, rng)
    base = np.array([ID_COLORS[i] for i in range(34)], dtype=np.int16)[ids]  # a photo-ish image correlated with labels
    image = np.clip(base + rng.integers(-20, 21, (h, w, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(image, "RGB").save(image_dir / f"{stem}_leftImg8bit.png")
    Image.fromarray(ids, "L").save(label_dir / f"{stem}_gtFine_labelIds.png")
    color = np.concatenate([base.astype(np.uint8), np.full((h, w, 1), 255, np.uint8)], axis=2)
    Image.fromarray(color, "RGBA").save(label_dir / f"{stem}_gtFine_color.png")
    instances = (ids.astype(np.uint16) * 1000)  # 16-bit: id * 1000 + instance number for instance classes
    Image.fromarray(instances).save(label_dir / f"{stem}_gtFine_instanceIds.png")
    polygons = {"imgHeight": h, "imgWidth": w, "objects": []}
    (label_dir / f"{stem}_gtFine_polygons.json").write_text(json.dumps(polygons))
    return stem


def write_cityscapes(
    root: Path,
    frames: dict[str, dict[str, int]] | None = None,
    size_hw: tuple[int, int] = (32, 64),
    seed: int = 0,
    with_test: bool = True,
) -> dict[str, list[str]]:
    """Write a miniature tree; ``frames`` maps split -> city -> frame count (default: 3 train cities
    with 2, 2, 1 frames and 2 val cities with 2, 1; a test split with dummy labels like the real one).
    Returns split -> sorted stems."""
    frames = frames or {
        "train": dict(zip(TRAIN_CITIES, (2, 2, 1))),
        "val": dict(zip(VAL_CITIES, (2, 1))),
    }
    rng = np.random.default_rng(seed)
    root = Path(root)
    stems: dict[str, list[str]] = {}
    for split, cities in frames.items():
        stems[split] = sorted(
            write_frame(root, split, city, seq, size_hw, rng) for city, n in cities.items() for seq in range(n)
        )
    if with_test:
        write_frame(root, "test", "berlin", 0, size_hw, rng)
    (root / "README").write_text("miniature Cityscapes tree written by the crn-repro tests\n")
    (root / "license.txt").write_text("test data\n")
    return stems
