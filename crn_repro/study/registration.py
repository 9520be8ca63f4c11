"""Pre-registration of a study's analysis (docs/facts.md §6): `crn-repro study preregister STUDY`
freezes, before the first real answer, what the analysis will be, and `crn-repro study analyze` says
whether it ran as registered.

``STUDY/preregistration.json`` holds the SHA-256 of the manifest (the trials and images), the study's
params (``study`` section, less ``dir``, which only says where the folder lies) and their SHA-256, the
exclusion rule, the payment rule, the model formula, alpha and the bootstrap settings, each rule
also in words. Registering is refused once a person (not a simulated participant) has answered:
the web app's database and the imported answers are checked. A deviation is any difference between
the registration and the analysis as it runs: another manifest, a changed setting (each one listed
with its registered and current value), or answers given before the registration.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

import pandas as pd

from crn_repro.errors import CrnError
from crn_repro.files import atomic_write_json, read_json
from crn_repro.judgments import MIXED_FORMULA
from crn_repro.study.manifest import MANIFEST, load_manifest
from crn_repro.study.records import is_simulated

REGISTRATION = "preregistration.json"
FORMAT = "crn-repro-preregistration/1"
_UNREGISTERED_KEYS = ("dir",)  # where the folder lies is not part of the analysis


def _utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def registered_params(study_params: dict) -> dict:
    """The ``study`` params a registration freezes (all but ``dir``)."""
    return {k: v for k, v in study_params.items() if k not in _UNREGISTERED_KEYS}


def params_sha256(study_params: dict) -> str:
    """SHA-256 of the registered params in canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(registered_params(study_params), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def rules(study_params: dict) -> dict:
    """The registered rules in words, from the params."""
    p = study_params
    tolerance = p["timing_tolerance_frames"]
    return {
        "exclusion_rule": (f"a participant (per source) with a fraction of sentinels right below {p['min_sentinel_accuracy']:g}, "
                           f"or who answered no sentinel, is excluded with all their answers; so is one who returned the "
                           f"Prolific submission; a timed test trial measured further than {tolerance:g} frame(s) of the "
                           "participant's display from its target, or not measured, is left out; practice trials are never "
                           "analysed"),
        "payment_rule": (f"Prolific submissions awaiting review are approved when every trial is answered and fewer than "
                         f"{p['prolific']['reject_min_failed_sentinels']} sentinels are failed, rejected (with the evidence) "
                         "with at least that many, and otherwise left for review (ask to return)"),
        "model": (f"per comparison (and duration): logit {MIXED_FORMULA}, by maximum likelihood with the Laplace "
                  "approximation (lme4's glmer, nAGQ = 1); Wald 95% intervals and p; Wilson intervals, one-way and "
                  "crossed bootstraps beside it; a Bradley-Terry ranking from all pairs"),
        "alpha": p["alpha"],
        "bootstrap_resamples": p["bootstrap_resamples"],
        "seed": p["seed"],
    }


def human_answer_times(study_dir: Path) -> list[str]:
    """When people (not simulated participants) answered, from the web app's database and the imported
    answers (``analysis/responses.csv``)."""
    study_dir = Path(study_dir)
    times = []
    if (study_dir / "responses.sqlite").exists():
        from crn_repro.study.store import read_responses

        web = read_responses(study_dir)
        times += list(web.answered_utc[~is_simulated(web.source)].astype(str))
    imported = study_dir / "analysis" / "responses.csv"
    if imported.exists():
        from crn_repro.study.records import read_responses_csv

        table = read_responses_csv(imported)
        times += list(table.answered_utc[~is_simulated(table.source)].astype(str))
    return sorted(times)


def preregister(study_dir: Path, study_params: dict, force: bool = False) -> dict:
    """Write ``STUDY/preregistration.json``; returns it. Refused once a person has answered, and over
    an existing registration unless ``force`` (which is still refused after the first real answer)."""
    study_dir = Path(study_dir)
    manifest = load_manifest(study_dir)
    path = study_dir / REGISTRATION
    answered = human_answer_times(study_dir)
    if answered:
        raise CrnError(f"{study_dir}: people have already answered ({len(answered)} answers, the first at {answered[0]}); a "
                       "registration frozen now would not be a pre-registration")
    if path.exists() and not force:
        raise CrnError(f"{path}: already registered; pass --force to register again (no one has answered yet)")
    record = {
        "format": FORMAT, "registered_utc": _utc_now(), "study_id": manifest["study_id"], "design": manifest["design"],
        "manifest_sha256": hashlib.sha256((study_dir / MANIFEST).read_bytes()).hexdigest(),
        "params_sha256": params_sha256(study_params), "params": registered_params(study_params),
        **rules(study_params),
    }
    atomic_write_json(path, record)
    return record


def _flat(value, prefix: str = "") -> dict:
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            out.update(_flat(item, f"{prefix}.{key}" if prefix else key))
        return out
    return {prefix: value}


def check_registration(study_dir: Path, study_params: dict | None, answered_utc: pd.Series) -> dict:
    """Whether the analysis runs as registered: ``registered`` (a registration exists), ``as_registered``
    and ``deviations`` (one line each). ``answered_utc``: when the analysed people answered."""
    study_dir = Path(study_dir)
    path = study_dir / REGISTRATION
    if not path.exists():
        return {"registered": False, "as_registered": False, "deviations": [],
                "note": f"not pre-registered (run `crn-repro study preregister {study_dir}` before the first real answer)"}
    record = read_json(path, f"restore it, or register again with `crn-repro study preregister {study_dir} --force` "
                             "(before anyone answers)")
    deviations = []
    if record.get("manifest_sha256") != hashlib.sha256((study_dir / MANIFEST).read_bytes()).hexdigest():
        deviations.append("manifest.json differs from the registered one (the study was rebuilt)")
    if study_params is not None and record.get("params_sha256") != params_sha256(study_params):
        registered, now = _flat(record.get("params", {})), _flat(registered_params(study_params))
        for key in sorted(set(registered) | set(now)):
            if registered.get(key) != now.get(key):
                deviations.append(f"study.{key}: registered {registered.get(key)!r}, analysed with {now.get(key)!r}")
    early = sorted(t for t in answered_utc.dropna().astype(str) if t < str(record.get("registered_utc", "")))
    if early:
        deviations.append(f"{len(early)} answers were given before the registration ({record.get('registered_utc')}), the first at "
                          f"{early[0]}")
    return {"registered": True, "as_registered": not deviations, "deviations": deviations,
            "note": f"pre-registered {record.get('registered_utc')} ({path.name})"}
