"""The study folder's ``manifest.json`` (paper Sec. 5.1, docs/facts.md §6): load and validate it, and
resolve its image paths without ever leaving the study folder. Every problem is a one-line CrnError
naming the file and the key, so a hand-edited or truncated manifest never reaches a participant.

The contract between `crn-repro study make` (which writes it), the web app (``server``, ``store``,
``static/``), the MTurk round trip and `crn-repro study analyze`; format ``crn-repro-study/2``::

    {
      "format": "crn-repro-study/2",
      "study_id": str, "design": "paper" | "timed" | "mixed" | "hype", "seed": int, "created_utc": str,
      "image_size_wh": [w, h], "question": str, "instructions_html": str, "scenes": str,
      "mask": "images/<name>.png" | null,             # the post-stimulus mask of timed designs
      "sentinel_rule": str,                            # in words, for people
      "consent": {"ethics_approval": str | null, "contact": str, "pay": str | null,
                  "duration_minutes": int, "text_html": str},   # text_html: escaped text, shown before
                                                       # "I agree" and "I do not agree"
      "prolific": null | {"completion_code": str, "declined_code": str, "failed_attention_code": str,
                          "abandon_after_minutes": int},
      "attention": {"min_sentinel_accuracy": float},   # below it a finished participant gets the
                                                       # failed-attention code
      "sources": {sha256: sha256},                     # optional: study image -> the file (or prepared
                                                       # real image) it was made from, for `evaluate`
      "jobs": [{"job": str, "trials": [trial, ...]}, ...]
    }

The server only tells pair designs (every design but ``hype``) from the single-image design ``hype``.
A trial is ``{"index": i (0, 1, ... in order), "kind": "practice" | "test" | "sentinel", "layout": str,
"duration_ms": int | null, ...}``; practice trials come first in a job, are shown with feedback, and
are never analysed. A side is ``{"model": str ("real" for a dataset image), "image": "images/<name>.png",
"score": float, "sha256": the image file's SHA-256}``.

- Pair trial: ``"left"``, ``"right"`` sides and ``"correct"``: "left" | "right" on sentinel and practice
  trials (the real image's side), null on test trials. The answer's ``chosen_side`` is "left" or "right".
  ``duration_ms`` is null (unlimited time) except in the timed design, where every trial has one.
- Hype trial: one ``"image"`` side and ``"truth"``: "real" | "fake" on every trial; ``duration_ms`` is
  null. The answer's ``chosen_side`` is "real" or "fake".

Responses the server stores carry, besides the answer, ``left_sha256`` and ``right_sha256`` (hype:
``image_sha256``) of the images shown, and ``prolific_pid``, ``prolific_study_id``,
``prolific_session_id`` (null when not from Prolific); practice answers are stored with kind
``practice`` and dropped by the analysis (``records`` says how they become canonical records).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from crn_repro.errors import CrnError
from crn_repro.study.records import DESIGNS, TIMED_DESIGNS

FORMAT = "crn-repro-study/2"
KINDS = ("practice", "test", "sentinel")
SIDES = ("left", "right")
HYPE_ANSWERS = ("real", "fake")
MANIFEST = "manifest.json"
_REL_PATH = re.compile(r"^images/[A-Za-z0-9._-]+\.png$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
REQUIRED = ("study_id", "design", "seed", "created_utc", "image_size_wh", "question", "instructions_html", "mask",
            "sentinel_rule", "consent", "prolific", "attention", "jobs")
CONSENT_KEYS = {"ethics_approval", "contact", "pay", "duration_minutes", "text_html"}
PROLIFIC_KEYS = {"completion_code", "declined_code", "failed_attention_code", "abandon_after_minutes"}


def resolve_image(study_dir: Path, rel: str) -> Path:
    """The file a manifest image path names, which must be ``images/<name>.png`` inside the study
    folder (no absolute paths, no ``..``, no links out of it); CrnError otherwise."""
    study_dir = Path(study_dir)
    if not isinstance(rel, str) or not _REL_PATH.match(rel) or ".." in rel:
        raise CrnError(f"{study_dir / MANIFEST}: image path {rel!r} is not images/<name>.png inside the study folder")
    path = (study_dir / rel).resolve()
    if not path.is_relative_to((study_dir / "images").resolve()):
        raise CrnError(f"{study_dir / MANIFEST}: image path {rel!r} leads outside the study folder")
    return path


def is_hype(manifest: dict) -> bool:
    """Whether the study shows one image at a time (HYPE) rather than pairs."""
    return manifest["design"] == "hype"


def trial_sides(manifest: dict) -> tuple[str, ...]:
    """The side keys of this study's trials: ("image",) for HYPE, ("left", "right") for pairs."""
    return ("image",) if is_hype(manifest) else SIDES


def _check_side(where: str, side, study_dir: Path, check_files: bool) -> None:
    if not isinstance(side, dict) or set(side) != {"model", "image", "score", "sha256"}:
        raise CrnError(f"{where}: expected {{model, image, score, sha256}}")
    if not isinstance(side["model"], str) or not side["model"]:
        raise CrnError(f"{where}.model: expected a model name or 'real'")
    if not isinstance(side["score"], (int, float)) or isinstance(side["score"], bool):
        raise CrnError(f"{where}.score: expected a number")
    if not isinstance(side["sha256"], str) or not _SHA256.match(side["sha256"]):
        raise CrnError(f"{where}.sha256: expected the image file's SHA-256 (64 hex digits)")
    path = resolve_image(study_dir, side["image"])
    if check_files and not path.is_file():
        raise CrnError(f"{where}.image: {side['image']} is missing from the study folder; run `crn-repro study make` again")


def _check_trial(t: str, trial, index: int, manifest: dict, study_dir: Path, check_files: bool) -> None:
    if not isinstance(trial, dict):
        raise CrnError(f"{t}: expected an object")
    if trial.get("index") != index:
        raise CrnError(f"{t}.index: expected {index} (trials are numbered in order from 0)")
    if trial.get("kind") not in KINDS:
        raise CrnError(f"{t}.kind: expected one of {', '.join(KINDS)}")
    if not isinstance(trial.get("layout"), str):
        raise CrnError(f"{t}.layout: expected a frame name")
    duration = trial.get("duration_ms")
    if duration is not None and not (isinstance(duration, int) and not isinstance(duration, bool) and duration > 0):
        raise CrnError(f"{t}.duration_ms: expected null or a positive integer")
    timed = manifest["design"] in TIMED_DESIGNS
    if (duration is not None) != timed:
        raise CrnError(f"{t}.duration_ms: the {manifest['design']} design needs {'a duration' if timed else 'null'}")
    for side in trial_sides(manifest):
        _check_side(f"{t}.{side}", trial.get(side), study_dir, check_files)
    if is_hype(manifest):
        truth = trial.get("truth")
        if truth not in HYPE_ANSWERS or (truth == "real") != (trial["image"]["model"] == "real"):
            raise CrnError(f"{t}.truth: expected 'real' for a real image and 'fake' for a synthesized one")
        return
    correct = trial.get("correct")
    if trial["kind"] != "test" and (correct not in SIDES or trial[correct]["model"] != "real"):
        raise CrnError(f"{t}.correct: a {trial['kind']} pair needs the real image's side, 'left' or 'right'")
    if trial["kind"] == "test" and correct is not None:
        raise CrnError(f"{t}.correct: must be null for a test trial")


def _check_top(where: str, manifest: dict, study_dir: Path, check_files: bool) -> None:
    missing = [key for key in REQUIRED if key not in manifest]
    if missing:
        raise CrnError(f"{where}: missing keys {', '.join(missing)}")
    if manifest["design"] not in DESIGNS:
        raise CrnError(f"{where}: design {manifest['design']!r} is not one of {', '.join(DESIGNS)}")
    size = manifest["image_size_wh"]
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
        raise CrnError(f"{where}: image_size_wh must be [width, height]")
    if manifest["mask"] is not None:
        path = resolve_image(study_dir, manifest["mask"])
        if check_files and not path.is_file():
            raise CrnError(f"{where}: mask {manifest['mask']} is missing; run `crn-repro study make` again")
    consent = manifest["consent"]
    if not isinstance(consent, dict) or set(consent) != CONSENT_KEYS or not isinstance(consent["text_html"], str):
        raise CrnError(f"{where}: consent must be {{{', '.join(sorted(CONSENT_KEYS))}}}")
    prolific = manifest["prolific"]
    if prolific is not None and (not isinstance(prolific, dict) or set(prolific) != PROLIFIC_KEYS):
        raise CrnError(f"{where}: prolific must be null or {{{', '.join(sorted(PROLIFIC_KEYS))}}}")
    attention = manifest["attention"]
    if not isinstance(attention, dict) or not isinstance(attention.get("min_sentinel_accuracy"), (int, float)):
        raise CrnError(f"{where}: attention must be {{min_sentinel_accuracy}}")
    sources = manifest.get("sources", {})
    if not isinstance(sources, dict) or not all(_SHA256.match(k) and isinstance(v, str) and _SHA256.match(v)
                                                for k, v in sources.items()):
        raise CrnError(f"{where}: sources must map image SHA-256s to source SHA-256s")


def validate_manifest(manifest, study_dir: Path, check_files: bool = True) -> dict:
    """Check a parsed manifest against the format; returns it unchanged. CrnError on the first problem."""
    where = str(Path(study_dir) / MANIFEST)
    if not isinstance(manifest, dict):
        raise CrnError(f"{where}: expected a JSON object")
    if manifest.get("format") != FORMAT:
        older = str(manifest.get("format", "")).startswith("crn-repro-study/")
        raise CrnError(f"{where}: format {manifest.get('format')!r} is not {FORMAT!r}"
                       + ("; it was made by an older crn-repro: rebuild it with `crn-repro study make --force` "
                          "(answers already collected stay in its analysis/responses.csv)" if older
                          else "; rebuild it with `crn-repro study make`"))
    _check_top(where, manifest, study_dir, check_files)
    jobs = manifest["jobs"]
    if not isinstance(jobs, list) or not jobs:
        raise CrnError(f"{where}: jobs must be a non-empty list")
    names = set()
    for j, job in enumerate(jobs):
        at = f"{where}: jobs[{j}]"
        if not isinstance(job, dict) or not isinstance(job.get("job"), str) or not isinstance(job.get("trials"), list):
            raise CrnError(f"{at}: expected {{job: name, trials: [...]}}")
        if job["job"] in names:
            raise CrnError(f"{at}: job name {job['job']!r} appears twice")
        names.add(job["job"])
        if not any(isinstance(t, dict) and t.get("kind") == "test" for t in job["trials"]):
            raise CrnError(f"{at}: has no test trials")
        seen_other = False
        for i, trial in enumerate(job["trials"]):
            _check_trial(f"{at}.trials[{i}]", trial, i, manifest, study_dir, check_files)
            if trial["kind"] == "practice" and seen_other:
                raise CrnError(f"{at}.trials[{i}].kind: practice trials come first in a job")
            seen_other = seen_other or trial["kind"] != "practice"
    return manifest


def load_manifest(study_dir: Path) -> dict:
    """Read and validate ``<study_dir>/manifest.json`` (images checked to exist); CrnError on problems."""
    study_dir = Path(study_dir)
    path = study_dir / MANIFEST
    if not path.is_file():
        raise CrnError(f"{path}: no study here; build one with `crn-repro study make`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CrnError(f"{path}: not valid JSON ({error}); rebuild it with `crn-repro study make`") from None
    return validate_manifest(manifest, study_dir)


def trials_by_key(manifest: dict) -> dict[tuple[str, int], dict]:
    """Every trial of the study by (job name, index)."""
    return {(job["job"], trial["index"]): trial for job in manifest["jobs"] for trial in job["trials"]}
