"""Web-app study fixtures: a small hand-written study folder per the contract (manifest + 400x200 PNGs),
so the web-app tests do not depend on `crn-repro study make`.

A module, not a conftest.py: a second conftest.py would take the module name ``conftest`` from
tests/conftest.py, which other tests import (`from conftest import REPO`). Call `write_study`.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# realism score per model: the observer prefers the higher one (real > crn > pix2pix > image-space loss)
SCORES = {"real": 2.0, "crn": 1.0, "pix2pix": -1.0, "crn_imgloss": -2.0}
TEST_PAIRS = (("real", "crn"), ("real", "pix2pix"), ("crn", "pix2pix"))


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@functools.cache
def _stimulus(layout: int, model: str) -> bytes:
    """A 400x200 PNG per (layout, model): a layout-coloured scene, noisy for the weaker models (cached:
    encoding is the slow part of writing a study)."""
    image = Image.new("RGB", (400, 200), (40 + 30 * layout % 200, 90, 160))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 120, 400, 200), fill=(70, 70, 70))
    draw.ellipse((40 + 20 * layout, 40, 140 + 20 * layout, 110), fill=(200, 180, 60))
    array = np.asarray(image).astype(np.int16)
    noise = np.random.default_rng(layout * 31 + len(model)).integers(-40, 40, array.shape) * (SCORES[model] < 1)
    return _png(np.clip(array + noise, 0, 255).astype(np.uint8))


@functools.cache
def _mask(seed: int) -> bytes:
    """The post-stimulus mask: 400x200 colour noise."""
    return _png(np.random.default_rng(seed).integers(0, 256, (200, 400, 3), np.uint8))


def write_study(
    root: Path,
    *,
    design: str = "timed",
    durations: tuple[int, ...] = (125, 250, 500),
    jobs: int = 2,
    tests_per_job: int = 5,
    sentinels_per_job: int = 1,
    sentinel_ms: int = 4000,
    question: str = "Which image is more realistic?",
    instructions_html: str = "<p>Pick the image that looks more like a <b>real photograph</b>.</p>",
    seed: int = 0,
) -> Path:
    """Write ``root/manifest.json`` + ``root/images/*.png`` (contract format ``crn-repro-study/2``; the pair
    design without durations is written as ``mixed``).

    Timed design: test trials cycle through ``durations`` (the first test trial of each job gets the
    first duration), sentinels (real vs crn_imgloss) are shown ``sentinel_ms``; unlimited design: no durations.
    """
    rng = random.Random(seed)
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)

    def save(data: bytes) -> str:
        name = f"images/{hashlib.sha1(data).hexdigest()[:16]}.png"
        (root / name).write_bytes(data)
        return name

    def side(layout: int, model: str) -> dict:
        data = _stimulus(layout, model)
        return {"model": model, "image": save(data), "score": SCORES[model], "sha256": hashlib.sha256(data).hexdigest()}

    mask = None
    if design == "timed":
        (images / "mask.png").write_bytes(_mask(seed))
        mask = "images/mask.png"
    manifest_jobs = []
    for j in range(jobs):
        trials = []
        for i in range(tests_per_job + sentinels_per_job):
            layout = j * 7 + i
            sentinel = i >= tests_per_job
            a, b = ("real", "crn_imgloss") if sentinel else TEST_PAIRS[i % len(TEST_PAIRS)]
            if rng.random() < 0.5:
                a, b = b, a
            duration = None if design == "unlimited" else sentinel_ms if sentinel else durations[i % len(durations)]
            trials.append({
                "kind": "sentinel" if sentinel else "test", "layout": f"frame_{layout:03d}", "duration_ms": duration,
                "left": side(layout, a), "right": side(layout, b),
                "correct": ("left" if a == "real" else "right") if sentinel else None,
            })
        head, tail = trials[:1], trials[1:]  # keep the first test trial first (tests address it), shuffle the rest
        rng.shuffle(tail)
        manifest_jobs.append({"job": f"job-{j:03d}", "trials": [dict(t, index=k) for k, t in enumerate(head + tail)]})
    manifest = {
        "format": "crn-repro-study/2", "study_id": f"test-{design}", "design": "mixed" if design == "unlimited" else design,
        "seed": seed, "created_utc": "2026-01-01T00:00:00Z", "image_size_wh": [400, 200], "question": question,
        "instructions_html": instructions_html, "mask": mask,
        "sentinel_rule": "real image vs the image-space-loss baseline; the real one is correct",
        "consent": {"ethics_approval": None, "contact": "the test", "pay": None, "duration_minutes": 5,
                    "text_html": "<p>Taking part is voluntary.</p>"},
        "prolific": None, "attention": {"min_sentinel_accuracy": 1.0},
        "jobs": manifest_jobs,
    }
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return root
