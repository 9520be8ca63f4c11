"""Web-app study fixtures: a small hand-written study folder per the contract (manifest v2 + 400x200 PNGs),
so the web-app tests do not depend on `crn-repro study make`.

A module, not a conftest.py: a second conftest.py would take the module name ``conftest`` from
tests/conftest.py, which other tests import (`from conftest import REPO`). Call `write_study`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import io
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
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


CONSENT = {
    "ethics_approval": "University ethics board, approval ERB-2026-014",
    "contact": "Dr. A. Researcher, study@example.org",
    "pay": "£1.80",
    "duration_minutes": 12,
    "text_html": "<p>Taking part is voluntary; you may stop at any time. Answers are stored under a pseudonymous "
                 "id and used for research only.</p>",
}
PROLIFIC = {"completion_code": "C1A2B3C4", "declined_code": "CDECLINE", "failed_attention_code": "CATTFAIL",
            "abandon_after_minutes": 30}


def write_study(
    root: Path,
    *,
    design: str = "timed",
    durations: tuple[int, ...] = (125, 250, 500),
    jobs: int = 2,
    tests_per_job: int = 5,
    sentinels_per_job: int = 1,
    practice_per_job: int = 0,
    sentinel_ms: int = 4000,
    question: str | None = None,
    instructions_html: str = "<p>Pick the image that looks more like a <b>real photograph</b>.</p>",
    consent: dict | None = CONSENT,
    prolific: dict | None = None,
    min_sentinel_accuracy: float = 1.0,
    seed: int = 0,
) -> Path:
    """Write ``root/manifest.json`` + ``root/images/*.png`` (contract format ``crn-repro-study/2``).

    Each job: ``practice_per_job`` practice trials first (with their answers), then test trials and
    sentinels. Pair designs ("timed", "unlimited", written as design "mixed"): sentinels are real vs crn_imgloss; timed test trials
    cycle through ``durations`` (the first test trial of each job gets the first duration), sentinels are
    shown ``sentinel_ms``, practice trials the first duration. ``design="hype"``: one image per trial (real
    or a model's, ``truth`` real/fake), unlimited time; sentinels are the obvious fakes (crn_imgloss).
    ``prolific``: the manifest's Prolific section (e.g. ``PROLIFIC``) or None (a lab study).
    """
    rng = random.Random(seed)
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    hype = design == "hype"
    if question is None:
        question = "Is this image a real photograph?" if hype else "Which image is more realistic?"

    def save(data: bytes) -> tuple[str, str]:
        name = f"images/{hashlib.sha1(data).hexdigest()[:16]}.png"
        (root / name).write_bytes(data)
        return name, hashlib.sha256(data).hexdigest()

    def side(layout: int, model: str) -> dict:
        name, sha256 = save(_stimulus(layout, model))
        return {"model": model, "image": name, "score": SCORES[model], "sha256": sha256}

    mask = None
    if design == "timed":
        (images / "mask.png").write_bytes(_mask(seed))
        mask = "images/mask.png"

    def duration(kind: str, i: int) -> int | None:
        if design != "timed":
            return None
        return sentinel_ms if kind == "sentinel" else durations[0] if kind == "practice" else durations[i % len(durations)]

    def trial(kind: str, layout: int, i: int) -> dict:
        if hype:
            model = "crn_imgloss" if kind == "sentinel" else ("real", "crn", "pix2pix")[i % 3]
            return {"kind": kind, "layout": f"frame_{layout:03d}", "duration_ms": None, "image": side(layout, model),
                    "truth": "real" if model == "real" else "fake"}
        a, b = ("real", "crn_imgloss") if kind != "test" else TEST_PAIRS[i % len(TEST_PAIRS)]
        if rng.random() < 0.5:
            a, b = b, a
        return {"kind": kind, "layout": f"frame_{layout:03d}", "duration_ms": duration(kind, i),
                "left": side(layout, a), "right": side(layout, b),
                "correct": ("left" if a == "real" else "right") if kind != "test" else None}

    manifest_jobs = []
    for j in range(jobs):
        practice = [trial("practice", 900 + j * 7 + i, i) for i in range(practice_per_job)]
        trials = [trial("sentinel" if i >= tests_per_job else "test", j * 7 + i, i)
                  for i in range(tests_per_job + sentinels_per_job)]
        head, tail = trials[:1], trials[1:]  # keep the first test trial first (tests address it), shuffle the rest
        rng.shuffle(tail)
        manifest_jobs.append({"job": f"job-{j:03d}",
                              "trials": [dict(t, index=k) for k, t in enumerate(practice + head + tail)]})
    manifest = {
        # the pair design without durations is study-stats' "mixed" (no "unlimited" design in crn-repro-study/2)
        "format": "crn-repro-study/2", "study_id": f"test-{design}", "design": "mixed" if design == "unlimited" else design,
        "seed": seed,
        "created_utc": "2026-01-01T00:00:00Z", "image_size_wh": [400, 200], "question": question,
        "instructions_html": instructions_html, "mask": mask,
        "sentinel_rule": "real image vs the image-space-loss baseline; the real one is correct",
        "consent": consent, "prolific": prolific, "attention": {"min_sentinel_accuracy": min_sentinel_accuracy},
        "jobs": manifest_jobs,
    }
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return root


# -- the real components the web tests drive: Debian's chromium (Playwright) -----------------------------

CHROMIUM = shutil.which("chromium")
PHASE_TIMEOUT_MS = 15_000


def require(tools: dict[str, bool], what: str) -> None:
    """Skip (with the reason) unless every tool is present (``{description: present}``); where CI demands
    them (CRN_REQUIRE_BROWSER=1 or CRN_REQUIRE_PROXY=1, set by .ci/run), fail instead."""
    missing = [tool for tool, present in tools.items() if not present]
    if not missing:
        return
    reason = f"{what} need {' and '.join(missing)}"
    demanded = [env for env in ("CRN_REQUIRE_BROWSER", "CRN_REQUIRE_PROXY") if os.environ.get(env) == "1"]
    if demanded:
        pytest.fail(f"{reason}; {demanded[0]}=1 forbids skipping them")
    pytest.skip(reason)


@contextlib.contextmanager
def chromium():
    """Headless Debian chromium through Playwright (nothing downloaded); skips or fails as `require` says."""
    require({"Playwright for Python (pip install -e '.[test]')": importlib.util.find_spec("playwright") is not None,
             "the chromium executable (apt-get install chromium)": CHROMIUM is not None}, "browser tests")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def wait_phase(page, phase: str, trial: int | None = None) -> None:
    """Wait until the study page is in ``phase`` (its body's data-phase), at ``trial`` if given."""
    selector = f'body[data-phase="{phase}"]' + ("" if trial is None else f'[data-trial="{trial}"]')
    page.wait_for_selector(selector, state="attached", timeout=PHASE_TIMEOUT_MS)


PROLIFIC_COMPLETE = "https://app.prolific.com/submissions/complete"


def prolific_ids(i: int) -> dict:
    """Made-up Prolific ids of participant ``i`` (24 hex digits each, as Prolific writes them)."""
    return {"PROLIFIC_PID": f"5f{i:022x}", "STUDY_ID": "66a1b2c3d4e5f60718293a4b", "SESSION_ID": f"67{i:022x}"}


def catch_prolific(context_or_page) -> list[str]:
    """Answer requests to Prolific's completion URL locally (nothing leaves the machine); returns the list
    of URLs the page was sent to."""
    seen = []

    def fulfil(route, request):
        seen.append(request.url)
        route.fulfill(body="<p id='prolific'>back on Prolific</p>", content_type="text/html")

    context_or_page.route(PROLIFIC_COMPLETE + "*", fulfil)
    return seen


def take_part(page, trials: list[dict], choose=lambda trial: trial.get("correct") or trial.get("truth") or "left",
              keys: dict | None = None, start: int = 0) -> None:
    """Answer the page's trials from ``start`` on, in order, as ``choose(trial)`` says (by key), continuing
    past practice feedback; ``trials``: the participant's job in the manifest."""
    keys = keys or {"left": "f", "right": "j", "real": "r", "fake": "ArrowRight"}
    for trial in trials[start:]:
        wait_phase(page, "answer", trial["index"])
        page.keyboard.press(keys[choose(trial)])
        if trial["kind"] == "practice":
            wait_phase(page, "feedback")
            page.click("#continue")
