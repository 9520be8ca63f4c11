"""`crn-repro study make`: build a self-contained study folder from the synthesized validation sets
(paper Sec. 5.1, docs/facts.md §6): ``manifest.json`` and every stimulus resized to 400x200 PNG, named by
its content hash, plus the post-stimulus mask of the time-limited design.

Each image carries a realism score (Kynkäänniemi et al. 2019) from the evaluate stage's
``reports/per_image/<model>.csv``; the simulated observer chooses by it. Real images score
``REAL_SCORE_MARGIN`` above the best synthesized image of the study, a documented stand-in: real
images are the reference of that score, which does not rank them among themselves.

The folder is built next to its destination and renamed into place, byte-identical for a seed
(except ``created_utc``, which honours SOURCE_DATE_EPOCH). A study that already holds responses, or
an MTurk export (whose HITs name this build's images; `study export-mturk` logs every export, wherever
its output goes, in ``mturk/exports.json``), is never replaced unless forced.

The instructions name what the pairs show, from the prepared data's ``meta.json`` dataset
(``SCENES``: street scenes for Cityscapes and the synthetic street-like demo, indoor rooms for NYU);
the manifest keeps it as ``scenes``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import os
import re
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console

from crn_repro.files import atomic_write_json, read_image, read_json, read_table, staged_dir
from crn_repro.datasets import PreparedSplit, read_prepared_meta
from crn_repro.errors import CrnError
from crn_repro.params import Params
from crn_repro.progress import StageProgress
from crn_repro.study.design import Design, build_jobs, study_design
from crn_repro.study.manifest import FORMAT, MANIFEST, validate_manifest
from crn_repro.study.mturk import mturk_exports
from crn_repro.study.records import REAL
from crn_repro.synthesize import output_names

REAL_SCORE_MARGIN = 1.0
QUESTION = "Which image is more realistic?"
MASK_BLOCK_PX = 10

# what the study's images show, by the prepared dataset (meta.json "dataset"); others: "images"
SCENES = {"synthetic": "street scenes", "cityscapes": "street scenes", "nyu": "indoor rooms"}
INSTRUCTIONS = {  # str.format templates: {scenes}; timed also {shortest}, {longest} (seconds)
    "unlimited": (
        "<p>You will see pairs of {scenes}. Each time, choose the image that looks <b>more realistic</b>, "
        "that is, more like a real photograph. Take as long as you need.</p>"
        "<p>Answer with the <b>F</b> or <b>&larr;</b> key (left image) or the <b>J</b> or <b>&rarr;</b> key "
        "(right image), or click an image.</p>"
        "<p>Some pairs check attention; please look at every pair carefully.</p>"
    ),
    "timed": (
        "<p>You will see pairs of {scenes} for a short time, from {shortest} to {longest} seconds; then a "
        "pattern replaces them. Choose the image that looked <b>more realistic</b>, that is, more like a real "
        "photograph. If unsure, make your best guess.</p>"
        "<p>Answer with the <b>F</b> or <b>&larr;</b> key (left image) or the <b>J</b> or <b>&rarr;</b> key "
        "(right image), or click a side.</p>"
        "<p>Some pairs check attention; please keep your eyes on the screen.</p>"
    ),
}


def has_responses(study_dir: Path) -> bool:
    """Whether a study folder holds collected answers (web database or analysed imports)."""
    study_dir = Path(study_dir)
    return (study_dir / "responses.sqlite").exists() or (study_dir / "analysis" / "responses.csv").exists()


def scenes_of(prepared: Path) -> str:
    """What the pairs show, in words for the instructions, from the prepared data's meta.json."""
    return SCENES.get(read_prepared_meta(Path(prepared)).get("dataset"), "images")


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "study"


def _created_utc() -> str:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    now = dt.datetime.fromtimestamp(int(epoch), dt.timezone.utc) if epoch else dt.datetime.now(dt.timezone.utc)
    return now.replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _png_bytes(image: np.ndarray, size_wh: tuple[int, int]) -> bytes:
    """An RGB image resized (bicubic, as the data pipeline) to ``size_wh`` as PNG bytes."""
    pil = Image.fromarray(np.ascontiguousarray(image)).convert("RGB")
    if pil.size != tuple(size_wh):
        pil = pil.resize(tuple(size_wh), Image.BICUBIC)
    buffer = io.BytesIO()
    pil.save(buffer, format="PNG")
    return buffer.getvalue()


def mask_image(size_wh: tuple[int, int], seed: int) -> np.ndarray:
    """The post-stimulus mask: coloured blocks of random noise (deterministic for a seed)."""
    w, h = size_wh
    blocks = np.random.default_rng([seed, 1]).integers(0, 256, size=(-(-h // MASK_BLOCK_PX), -(-w // MASK_BLOCK_PX), 3))
    return np.kron(blocks, np.ones((MASK_BLOCK_PX, MASK_BLOCK_PX, 1)))[:h, :w].astype(np.uint8)


def read_scores(reports: Path, model: str, names: list[str]) -> dict[str, float]:
    """Per-layout realism score of a model's first output, from ``reports/per_image/<model>.csv``."""
    path = Path(reports) / "per_image" / f"{model}.csv"
    table = read_table(
        path, ("image", "realism_score"), fix="run `crn-repro evaluate` again",
        missing="missing; the study's realism scores come from the evaluate stage: run `crn-repro evaluate` first",
    )
    scores = dict(zip(table["image"].astype(str), table["realism_score"].astype(float)))
    missing = [name for name in names if name not in scores]
    if missing:
        raise CrnError(f"{path}: no score for layout {missing[0]!r}; run `crn-repro evaluate` again")
    return {name: scores[name] for name in names}


def _sentinel_rule(design: Design) -> str:
    s = design.sentinel
    shown = "unlimited time" if s.duration_ms is None else f"{s.duration_ms} ms"
    return (f"{design.sentinels_per_job} sentinel pairs per job: a real image against {s.second} ({shown}); "
            f"the real image is the right answer")


def make_study(
    params: Params, design: str | None = None, out: Path | None = None, force: bool = False, console: Console | None = None
) -> dict:
    """Write the study folder (default ``study.dir``) for ``design`` (default ``study.design``);
    returns its manifest."""
    console = console or Console(stderr=True)
    sp = params.study
    design_name = design or sp.design
    out = Path(out or sp.dir)
    if out.exists():
        if not out.is_dir() or (not (out / MANIFEST).is_file() and any(out.iterdir())):
            raise CrnError(f"{out}: exists and is not a study folder; choose another study.dir or --out")
        if has_responses(out) and not force:
            raise CrnError(f"{out}: the study already holds responses; pass --force to replace it (they are lost) or use another --out")
        exports = mturk_exports(out) if not force else []
        if exports:
            raise CrnError(f"{out}: the study has an MTurk export ({', '.join(exports)}) whose HITs name its images; "
                           "pass --force to replace it (a published batch would then no longer match) or use another --out")
    plan = study_design(sp, design_name, params.models)
    scenes = scenes_of(Path(params.paths.prepared))
    val = PreparedSplit(Path(params.paths.prepared), "val")
    names = list(val.names)
    jobs = build_jobs(plan, names, sp.jobs, sp.seed)

    indexes, scores = {}, {}
    for model in plan.models:
        index_path = Path(params.paths.synth) / model / "index.json"
        indexes[model] = read_json(index_path, f"run `crn-repro synthesize --model {model}` (the study shows it)")
        if not isinstance(indexes[model], dict) or not {"names", "k"} <= set(indexes[model]):
            raise CrnError(f"{index_path}: not a synthesized set's index; run `crn-repro synthesize --model {model}` again")
        if indexes[model]["names"] != names:
            raise CrnError(f"{index_path.parent}: synthesized for other layouts than the prepared val split; synthesize again")
        scores[model] = read_scores(Path(params.paths.reports), model, names)
    scores[REAL] = dict.fromkeys(names, max(max(s.values()) for s in scores.values()) + REAL_SCORE_MARGIN)
    row_of = {name: i for i, name in enumerate(names)}

    with staged_dir(out) as tmp:  # swapped in whole, or removed on any error
        (tmp / "images").mkdir()
        size = tuple(sp.image_size_wh)
        written: dict[tuple[str, str], str] = {}

        def stimulus(model: str, layout: str) -> str:
            """The study-relative path of one stimulus, written once."""
            if (model, layout) not in written:
                if model == REAL:
                    pixels = np.asarray(val.images[row_of[layout]])
                else:
                    path = Path(params.paths.synth) / model / output_names(layout, indexes[model]["k"])[0]
                    pixels = read_image(path, f"run `crn-repro synthesize --model {model}` again")
                data = _png_bytes(pixels, size)
                rel = f"images/{hashlib.sha1(data).hexdigest()[:16]}.png"
                (tmp / rel).write_bytes(data)
                written[(model, layout)] = rel
            return written[(model, layout)]

        total = sum(len(job["trials"]) for job in jobs)
        with StageProgress(console) as progress:
            task = progress.add_task(f"study {design_name}: stimuli", total=total)
            for job in jobs:
                for trial in job["trials"]:
                    for side in ("left", "right"):
                        model = trial[side]["model"]
                        trial[side] = {"model": model, "image": stimulus(model, trial["layout"]),
                                       "score": round(float(scores[model][trial["layout"]]), 6)}
                    progress.advance(task)
        mask = None
        if design_name == "timed":
            mask = "images/mask.png"
            (tmp / mask).write_bytes(_png_bytes(mask_image(size, sp.seed), size))
        manifest = {
            "format": FORMAT,
            "study_id": _slug(out.name),
            "design": design_name,
            "seed": sp.seed,
            "created_utc": _created_utc(),
            "image_size_wh": list(size),
            "question": QUESTION,
            "instructions_html": INSTRUCTIONS[design_name].format(
                scenes=scenes, shortest=f"{min(sp.timed.durations_ms) / 1000:g}", longest=f"{max(sp.timed.durations_ms) / 1000:g}"
            ),
            "scenes": scenes,
            "mask": mask,
            "sentinel_rule": _sentinel_rule(plan),
            "jobs": jobs,
        }
        validate_manifest(manifest, tmp)
        atomic_write_json(tmp / MANIFEST, manifest)
    return manifest
