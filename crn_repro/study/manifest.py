"""The study folder's ``manifest.json`` (format ``crn-repro-study/1``; paper Sec. 5.1, docs/facts.md §6):
load and validate it, and resolve its image paths without ever leaving the study folder.

Every problem is a one-line CrnError naming the file and the key, so a hand-edited or truncated
manifest never reaches a participant.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from crn_repro.errors import CrnError

FORMAT = "crn-repro-study/1"
DESIGNS = ("unlimited", "timed")
KINDS = ("test", "sentinel")
SIDES = ("left", "right")
MANIFEST = "manifest.json"
_REL_PATH = re.compile(r"^images/[A-Za-z0-9._-]+\.png$")


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


def _check_side(where: str, side, study_dir: Path, check_files: bool) -> None:
    if not isinstance(side, dict) or set(side) != {"model", "image", "score"}:
        raise CrnError(f"{where}: expected {{model, image, score}}")
    if not isinstance(side["model"], str) or not side["model"]:
        raise CrnError(f"{where}.model: expected a model name or 'real'")
    if not isinstance(side["score"], (int, float)) or isinstance(side["score"], bool):
        raise CrnError(f"{where}.score: expected a number")
    path = resolve_image(study_dir, side["image"])
    if check_files and not path.is_file():
        raise CrnError(f"{where}.image: {side['image']} is missing from the study folder; run `crn-repro study make` again")


def validate_manifest(manifest, study_dir: Path, check_files: bool = True) -> dict:
    """Check a parsed manifest against the format; returns it unchanged. CrnError on the first problem."""
    where = str(Path(study_dir) / MANIFEST)
    if not isinstance(manifest, dict):
        raise CrnError(f"{where}: expected a JSON object")
    if manifest.get("format") != FORMAT:
        raise CrnError(f"{where}: format {manifest.get('format')!r} is not {FORMAT!r}; rebuild it with `crn-repro study make`")
    required = ("study_id", "design", "seed", "created_utc", "image_size_wh", "question", "instructions_html", "mask",
                "sentinel_rule", "jobs")
    missing = [key for key in required if key not in manifest]
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
        if not job["trials"]:
            raise CrnError(f"{at}: has no trials")
        for i, trial in enumerate(job["trials"]):
            t = f"{at}.trials[{i}]"
            if not isinstance(trial, dict):
                raise CrnError(f"{t}: expected an object")
            if trial.get("index") != i:
                raise CrnError(f"{t}.index: expected {i} (trials are numbered in order from 0)")
            if trial.get("kind") not in KINDS:
                raise CrnError(f"{t}.kind: expected one of {', '.join(KINDS)}")
            if not isinstance(trial.get("layout"), str):
                raise CrnError(f"{t}.layout: expected a frame name")
            duration = trial.get("duration_ms")
            if duration is not None and not (isinstance(duration, int) and not isinstance(duration, bool) and duration > 0):
                raise CrnError(f"{t}.duration_ms: expected null or a positive integer")
            if (duration is None) != (manifest["design"] == "unlimited"):
                raise CrnError(f"{t}.duration_ms: the {manifest['design']} design needs {'null' if duration else 'a duration'}")
            for side in SIDES:
                _check_side(f"{t}.{side}", trial.get(side), study_dir, check_files)
            correct = trial.get("correct")
            if trial["kind"] == "sentinel" and correct not in SIDES:
                raise CrnError(f"{t}.correct: a sentinel needs 'left' or 'right'")
            if trial["kind"] == "test" and correct is not None:
                raise CrnError(f"{t}.correct: must be null for a test trial")
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
