"""The study folder's ``manifest.json`` (formats ``crn-repro-study/1`` and ``/2``; paper Sec. 5.1, docs/facts.md §6):
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
FORMAT_V2 = "crn-repro-study/2"  # minimal acceptance (study-web); the v2 writer and full checks are study-stats'
DESIGNS = ("unlimited", "timed")
DESIGNS_V2 = ("unlimited", "timed", "paper", "mixed", "hype")  # "hype": one image per trial, answered real or fake
KINDS = ("test", "sentinel")
KINDS_V2 = ("test", "sentinel", "practice")
SIDES = ("left", "right")
TRUTHS = ("real", "fake")
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


def _check_side(where: str, side, study_dir: Path, check_files: bool, v2: bool = False) -> None:
    keys = {"model", "image", "score", "sha256"} if v2 else {"model", "image", "score"}
    if not isinstance(side, dict) or set(side) != keys:
        raise CrnError(f"{where}: expected {{{', '.join(sorted(keys))}}}")
    if v2 and not (isinstance(side["sha256"], str) and re.fullmatch(r"[0-9a-f]{64}", side["sha256"])):
        raise CrnError(f"{where}.sha256: expected the image's SHA-256 (64 hex digits)")
    if not isinstance(side["model"], str) or not side["model"]:
        raise CrnError(f"{where}.model: expected a model name or 'real'")
    if not isinstance(side["score"], (int, float)) or isinstance(side["score"], bool):
        raise CrnError(f"{where}.score: expected a number")
    path = resolve_image(study_dir, side["image"])
    if check_files and not path.is_file():
        raise CrnError(f"{where}.image: {side['image']} is missing from the study folder; run `crn-repro study make` again")


def _checked_jobs(manifest: dict, study_dir: Path, check_files: bool, where: str):
    """Check the mask and the job list (names unique, trials non-empty); yields (where, job) per job."""
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
        yield at, job


def _check_top(manifest: dict, where: str, more_keys: tuple[str, ...], designs: tuple[str, ...]) -> None:
    required = ("study_id", "design", "seed", "created_utc", "image_size_wh", "question", "instructions_html", "mask",
                "jobs", *more_keys)
    missing = [key for key in required if key not in manifest]
    if missing:
        raise CrnError(f"{where}: missing keys {', '.join(missing)}")
    if manifest["design"] not in designs:
        raise CrnError(f"{where}: design {manifest['design']!r} is not one of {', '.join(designs)}")
    size = manifest["image_size_wh"]
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
        raise CrnError(f"{where}: image_size_wh must be [width, height]")


def validate_manifest(manifest, study_dir: Path, check_files: bool = True) -> dict:
    """Check a parsed manifest against the format; returns it unchanged. CrnError on the first problem."""
    where = str(Path(study_dir) / MANIFEST)
    if not isinstance(manifest, dict):
        raise CrnError(f"{where}: expected a JSON object")
    if manifest.get("format") == FORMAT_V2:
        return _validate_v2(manifest, study_dir, check_files)
    if manifest.get("format") != FORMAT:
        raise CrnError(f"{where}: format {manifest.get('format')!r} is not {FORMAT!r}; rebuild it with `crn-repro study make`")
    _check_top(manifest, where, ("sentinel_rule",), DESIGNS)
    for at, job in _checked_jobs(manifest, study_dir, check_files, where):
        for i, trial in enumerate(job["trials"]):
            t = f"{at}.trials[{i}]"
            duration = _check_trial_head(t, trial, i, KINDS)
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


def _validate_v2(manifest: dict, study_dir: Path, check_files: bool) -> dict:
    """Minimal checks of a ``crn-repro-study/2`` manifest (study-web's acceptance, to be reconciled with
    study-stats' validator): the top-level consent/prolific/attention sections, trial kinds (practice
    first), pair trials (left/right + correct) or hype trials (image + truth), sides with sha256."""
    where = str(Path(study_dir) / MANIFEST)
    _check_top(manifest, where, ("consent", "prolific", "attention"), DESIGNS_V2)
    consent = manifest["consent"]
    if not isinstance(consent, dict) or set(consent) != {"ethics_approval", "contact", "pay", "duration_minutes", "text_html"}:
        raise CrnError(f"{where}: consent: expected {{ethics_approval, contact, pay, duration_minutes, text_html}}")
    prolific = manifest["prolific"]
    codes = ("completion_code", "declined_code", "failed_attention_code")
    if prolific is not None:
        if not isinstance(prolific, dict) or set(prolific) != {*codes, "abandon_after_minutes"}:
            raise CrnError(f"{where}: prolific: expected null or {{{', '.join(codes)}, abandon_after_minutes}}")
        for key in codes:
            if not (isinstance(prolific[key], str) and re.fullmatch(r"[A-Za-z0-9_-]{1,64}", prolific[key])):
                raise CrnError(f"{where}: prolific.{key}: expected a Prolific completion code (letters and digits)")
        minutes = prolific["abandon_after_minutes"]
        if isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or not minutes > 0:
            raise CrnError(f"{where}: prolific.abandon_after_minutes: expected a number of minutes > 0")
    accuracy = manifest["attention"].get("min_sentinel_accuracy") if isinstance(manifest["attention"], dict) else None
    if isinstance(accuracy, bool) or not isinstance(accuracy, (int, float)) or not 0 <= accuracy <= 1:
        raise CrnError(f"{where}: attention.min_sentinel_accuracy: expected a number in [0, 1]")
    for at, job in _checked_jobs(manifest, study_dir, check_files, where):
        kinds = [trial.get("kind") if isinstance(trial, dict) else None for trial in job["trials"]]
        if "practice" in kinds[kinds.count("practice"):]:
            raise CrnError(f"{at}: practice trials must come first")
        for i, trial in enumerate(job["trials"]):
            _check_trial_v2(f"{at}.trials[{i}]", trial, i, manifest["design"] == "hype", study_dir, check_files)
    return manifest


def _check_trial_head(t: str, trial, i: int, kinds: tuple[str, ...]):
    """Check a trial's index, kind, layout and duration; returns the duration (None: unlimited)."""
    if not isinstance(trial, dict):
        raise CrnError(f"{t}: expected an object")
    if trial.get("index") != i:
        raise CrnError(f"{t}.index: expected {i} (trials are numbered in order from 0)")
    if trial.get("kind") not in kinds:
        raise CrnError(f"{t}.kind: expected one of {', '.join(kinds)}")
    if not isinstance(trial.get("layout"), str):
        raise CrnError(f"{t}.layout: expected a frame name")
    duration = trial.get("duration_ms")
    if duration is not None and not (isinstance(duration, int) and not isinstance(duration, bool) and duration > 0):
        raise CrnError(f"{t}.duration_ms: expected null or a positive integer")
    return duration


def _check_trial_v2(t: str, trial, i: int, hype: bool, study_dir: Path, check_files: bool) -> None:
    _check_trial_head(t, trial, i, KINDS_V2)
    if hype:
        _check_side(f"{t}.image", trial.get("image"), study_dir, check_files, v2=True)
        if trial.get("truth") not in TRUTHS:
            raise CrnError(f"{t}.truth: expected 'real' or 'fake'")
        return
    for side in SIDES:
        _check_side(f"{t}.{side}", trial.get(side), study_dir, check_files, v2=True)
    correct = trial.get("correct")
    if trial["kind"] != "test" and correct not in SIDES:
        raise CrnError(f"{t}.correct: a {trial['kind']} trial needs 'left' or 'right'")
    if trial["kind"] == "test" and correct is not None:
        raise CrnError(f"{t}.correct: must be null for a test trial")


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
