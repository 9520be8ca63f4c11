"""`crn-repro study make`: build a self-contained study folder from the synthesized validation sets
(paper Sec. 5.1, docs/facts.md §6): ``manifest.json`` (format in ``manifest``) and every stimulus
resized to 400x200 PNG, named by its content hash, plus the post-stimulus mask of the time-limited
design.

Every image side carries the SHA-256 of its file, and the manifest's ``sources`` maps it to the
SHA-256 of what it was made from (the synthesized file, or for a real image its prepared pixels), so
judgments stay bound to the images they judged: `evaluate` uses only those whose sources are the
current synthesized images.

Each image carries a realism score (Kynkäänniemi et al. 2019) from the evaluate stage's
``reports/per_image/<model>.csv``; the simulated observer chooses by it. Real images score
``REAL_SCORE_MARGIN`` above the best synthesized image of the study, a documented stand-in: real
images are the reference of that score, which does not rank them among themselves.

The folder is built next to its destination and renamed into place, byte-identical for a seed
(except ``created_utc``, which honours SOURCE_DATE_EPOCH). A study that already holds responses, or
an MTurk export (whose HITs name this build's images; `study export-mturk` logs every export, wherever
its output goes, in ``mturk/exports.json``), is never replaced unless forced.

The instructions name what the images show, from the prepared data's ``meta.json`` dataset
(``SCENES``: street scenes for Cityscapes and the synthetic street-like demo, indoor rooms for NYU);
the manifest keeps it as ``scenes``. The consent text, its pay, duration, contact and ethics approval
come from ``study.consent``; the Prolific codes from ``study.prolific``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import html
import io
import os
import re
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console

from crn_repro.datasets import PreparedSplit, read_prepared_meta
from crn_repro.errors import CrnError
from crn_repro.files import atomic_write_json, read_image, read_json, read_table, staged_dir
from crn_repro.params import Params
from crn_repro.progress import StageProgress
from crn_repro.study.design import Plan, check_design, study_plan
from crn_repro.study.manifest import FORMAT, MANIFEST, TIMED_DESIGNS, trial_sides, validate_manifest
from crn_repro.study.mturk import mturk_exports
from crn_repro.study.params import StudyParams
from crn_repro.study.records import REAL, file_sha256, real_image_sha256
from crn_repro.synthesize import output_names

REAL_SCORE_MARGIN = 1.0
QUESTIONS = {"pairs": "Which image is more realistic?", "hype": "Is this image a real photograph, or was it made by a computer?"}
MASK_BLOCK_PX = 10

# what the study's images show, by the prepared dataset (meta.json "dataset"); others: "images"
SCENES = {"synthetic": "street scenes", "cityscapes": "street scenes", "nyu": "indoor rooms"}
_PAIR_KEYS = ("<p>Answer with the <b>F</b> or <b>&larr;</b> key (left image) or the <b>J</b> or <b>&rarr;</b> key "
              "(right image), or click {what}.</p>")
INSTRUCTIONS = {  # str.format templates: {scenes}, {practice}; timed also {shortest}, {longest} (seconds)
    "unlimited": (
        "<p>You will see pairs of {scenes}. Each time, choose the image that looks <b>more realistic</b>, "
        "that is, more like a real photograph. Take as long as you need.</p>"
        + _PAIR_KEYS.format(what="an image")
        + "<p>{practice}Some pairs check attention; please look at every pair carefully.</p>"
    ),
    "timed": (
        "<p>You will see pairs of {scenes} for a short time, from {shortest} to {longest} seconds; then a "
        "pattern replaces them. Choose the image that looked <b>more realistic</b>, that is, more like a real "
        "photograph. If unsure, make your best guess.</p>"
        + _PAIR_KEYS.format(what="a side")
        + "<p>{practice}Some pairs check attention; please keep your eyes on the screen.</p>"
    ),
    "hype": (
        "<p>You will see {scenes}, one at a time. Some are real photographs; others were made by a computer. "
        "For each, answer <b>Real</b> or <b>Fake</b>. Take as long as you need.</p>"
        "<p>{practice}Some images check attention; please look at every image carefully.</p>"
    ),
}


def practice_note(n: int, hype: bool) -> str:
    """The instructions' sentence on the practice trials ("" without any)."""
    if n == 0:
        return ""
    unit = ("image" if hype else "pair") if n == 1 else ("images" if hype else "pairs")
    first = f"The first {unit} is" if n == 1 else f"The first {n} {unit} are"
    return f"{first} practice: after each you are told the right answer, and they do not count. "


def has_responses(study_dir: Path) -> bool:
    """Whether a study folder holds collected answers (web database or analysed imports)."""
    study_dir = Path(study_dir)
    return (study_dir / "responses.sqlite").exists() or (study_dir / "analysis" / "responses.csv").exists()


def scenes_of(prepared: Path) -> str:
    """What the images show, in words for the instructions, from the prepared data's meta.json."""
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


def consent_html(study: StudyParams, hype: bool) -> str:
    """The consent text (``study.consent.text``, or the built-in one), its values filled in, escaped, one
    ``<p>`` per paragraph."""
    c = study.consent
    values = {"duration_minutes": c.duration_minutes, "pay": c.pay or "no payment", "contact": c.contact,
              "ethics_approval": c.ethics_approval or "not stated"}
    if c.text is not None:
        paragraphs = [p.strip() for p in re.split(r"\n\s*\n", c.text.format(**values)) if p.strip()]
    else:
        task = "whether images are real photographs" if hype else "which of two images looks more realistic"
        paragraphs = [
            f"This study asks you to judge {task}. It is part of research on how computers make images.",
            f"It takes about {c.duration_minutes} minutes. "
            + (f"You are paid {c.pay} when you finish." if c.pay else "It is unpaid."),
            "Taking part is voluntary: you may stop at any time, without giving a reason, by closing this page"
            + (" (on Prolific, return the submission)." if study.prolific.enabled else "."),
            "We record your answers, how long each took, and a pseudonymous id of your session"
            + (" (your Prolific ID)" if study.prolific.enabled else "")
            + "; nothing else about you. Results are published only in aggregate.",
            *([f"Ethics approval: {c.ethics_approval}."] if c.ethics_approval else []),
            f"Questions about the study: {c.contact}.",
        ]
    return "".join(f"<p>{html.escape(p)}</p>" for p in paragraphs)


def _check_destination(out: Path, force: bool) -> None:
    if not out.exists():
        return
    if not out.is_dir() or (not (out / MANIFEST).is_file() and any(out.iterdir())):
        raise CrnError(f"{out}: exists and is not a study folder; choose another study.dir or --out")
    if has_responses(out) and not force:
        raise CrnError(f"{out}: the study already holds responses; pass --force to replace it (they are lost) or use another --out")
    exports = mturk_exports(out) if not force else []
    if exports:
        raise CrnError(f"{out}: the study has an MTurk export ({', '.join(exports)}) whose HITs name its images; "
                       "pass --force to replace it (a published batch would then no longer match) or use another --out")


class _Stimuli:
    """The study's images: each (model, layout) resized once into ``images/``, with its SHA-256 and the
    SHA-256 of its source."""

    def __init__(self, params: Params, models: list[str], val: PreparedSplit, folder: Path):
        self.params, self.val, self.folder = params, val, folder
        self.names = list(val.names)
        self.row_of = {name: i for i, name in enumerate(self.names)}
        self.indexes, self.scores = {}, {}
        for model in models:
            index_path = Path(params.paths.synth) / model / "index.json"
            index = read_json(index_path, f"run `crn-repro synthesize --model {model}` (the study shows it)")
            if not isinstance(index, dict) or not {"names", "k"} <= set(index):
                raise CrnError(f"{index_path}: not a synthesized set's index; run `crn-repro synthesize --model {model}` again")
            if index["names"] != self.names:
                raise CrnError(f"{index_path.parent}: synthesized for other layouts than the prepared val split; synthesize again")
            self.indexes[model] = index
            self.scores[model] = read_scores(Path(params.paths.reports), model, self.names)
        best = max((max(s.values()) for s in self.scores.values()), default=0.0)
        self.scores[REAL] = dict.fromkeys(self.names, best + REAL_SCORE_MARGIN)
        self.sources: dict[str, str] = {}
        self.written: dict[tuple[str, str], dict] = {}

    def side(self, model: str, layout: str) -> dict:
        """The manifest side of one stimulus, its file written the first time it is asked for."""
        if (model, layout) not in self.written:
            if model == REAL:
                pixels = np.asarray(self.val.images[self.row_of[layout]])
                source = real_image_sha256(pixels)
            else:
                path = Path(self.params.paths.synth) / model / output_names(layout, self.indexes[model]["k"])[0]
                pixels = read_image(path, f"run `crn-repro synthesize --model {model}` again")
                source = file_sha256(path)
            data = _png_bytes(pixels, tuple(self.params.study.image_size_wh))
            rel = f"images/{hashlib.sha1(data).hexdigest()[:16]}.png"
            (self.folder / rel).write_bytes(data)
            sha256 = hashlib.sha256(data).hexdigest()
            self.sources[sha256] = source
            self.written[(model, layout)] = {"model": model, "image": rel, "score": round(float(self.scores[model][layout]), 6),
                                             "sha256": sha256}
        return dict(self.written[(model, layout)])


def _manifest(params: Params, plan: Plan, out: Path, scenes: str, stimuli: _Stimuli, mask: str | None) -> dict:
    """The manifest's top level around the plan's jobs (their sides already filled in)."""
    sp = params.study
    hype = plan.design == "hype"
    template = "hype" if hype else "timed" if plan.design in TIMED_DESIGNS else "unlimited"
    practice = practice_note(sp.practice_trials, hype)
    prolific = sp.prolific
    return {
        "format": FORMAT, "study_id": _slug(out.name), "design": plan.design, "seed": sp.seed, "created_utc": _created_utc(),
        "image_size_wh": list(sp.image_size_wh), "question": QUESTIONS["hype" if hype else "pairs"],
        "instructions_html": INSTRUCTIONS[template].format(
            scenes=scenes, practice=practice, shortest=f"{min(sp.timed.durations_ms) / 1000:g}",
            longest=f"{max(sp.timed.durations_ms) / 1000:g}"),
        "scenes": scenes, "mask": mask, "sentinel_rule": plan.sentinel_rule,
        "consent": {"ethics_approval": sp.consent.ethics_approval, "contact": sp.consent.contact, "pay": sp.consent.pay,
                    "duration_minutes": sp.consent.duration_minutes, "text_html": consent_html(sp, hype)},
        "prolific": None if not prolific.enabled else {
            "completion_code": prolific.completion_code, "declined_code": prolific.declined_code,
            "failed_attention_code": prolific.failed_attention_code, "abandon_after_minutes": prolific.abandon_after_minutes},
        "attention": {"min_sentinel_accuracy": sp.min_sentinel_accuracy},
        "sources": dict(sorted(stimuli.sources.items())),
        "jobs": plan.jobs,
    }


def make_study(
    params: Params, design: str | None = None, out: Path | None = None, force: bool = False, console: Console | None = None
) -> dict:
    """Write the study folder (default ``study.dir``) for ``design`` (default ``study.design``);
    returns its manifest."""
    console = console or Console(stderr=True)
    sp = params.study
    out = Path(out or sp.dir)
    _check_destination(out, force)
    check_design(sp, design or sp.design, params.models)
    val = PreparedSplit(Path(params.paths.prepared), "val")
    plan = study_plan(sp, design or sp.design, params.models, list(val.names))
    scenes = scenes_of(Path(params.paths.prepared))
    with staged_dir(out) as tmp:  # swapped in whole, or removed on any error
        (tmp / "images").mkdir()
        stimuli = _Stimuli(params, plan.models, val, tmp)
        sides = trial_sides({"design": plan.design})
        total = sum(len(job["trials"]) for job in plan.jobs)
        with StageProgress(console) as progress:
            task = progress.add_task(f"study {plan.design}: stimuli", total=total)
            for job in plan.jobs:
                for trial in job["trials"]:
                    for side in sides:
                        trial[side] = stimuli.side(trial[side]["model"], trial["layout"])
                    progress.advance(task)
        mask = None
        if plan.design in TIMED_DESIGNS:
            mask = "images/mask.png"
            (tmp / mask).write_bytes(_png_bytes(mask_image(tuple(sp.image_size_wh), sp.seed), tuple(sp.image_size_wh)))
        manifest = _manifest(params, plan, out, scenes, stimuli, mask)
        validate_manifest(manifest, tmp)
        atomic_write_json(tmp / MANIFEST, manifest)
    return manifest
