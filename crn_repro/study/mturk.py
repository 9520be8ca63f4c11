"""The MTurk round trip of the perceptual study (paper Sec. 5.1: "Each MTurk job involves a batch of
roughly 100 pairwise comparisons, along with sentinel pairs").

Design: **one HIT per job**, as in the paper. A job's trials travel in one batch-input variable,
``${trials}``, compactly encoded (``index|duration_ms|left image|right image`` joined by ``;``; an
empty duration means unlimited time; a practice trial adds ``|left`` or ``|right``, its right answer,
for the page's feedback), and its images are loaded from ``${image_base_url}``, where
the user hosts the study folder's ``images/``. The hype design (one image at a time) is not exported:
it runs in the web app. One HIT per trial would need ~110 HITs per session
and lose the job's sentinel check; one variable per trial would need hundreds of columns.

- ``export_mturk`` writes ``hit.html`` (an HTMLQuestion body with crowd-form; the page presents the
  trials as the web app does: fixation, freshly decoded images swapped in on a requestAnimationFrame,
  the mask swapped in on the frame where the target is reached, the on-screen time measured from rAF
  timestamps; it submits one hidden field ``responses``: a JSON list of ``[trial index,
  "left"|"right", measured_ms, response_ms, frame_ms]`` (results of HITs exported before frame_ms was
  recorded have four entries); a practice trial is followed by feedback (which side was right) and a
  Continue button; in MTurk's preview, assignmentId
  ``ASSIGNMENT_ID_NOT_AVAILABLE`` in the frame's URL, it shows the instructions and an example and says
  "Accept the HIT to begin", with nothing to start or submit) and ``batch_input.csv`` (header = the
  template's variables, one row per job).
  Every export is logged in the study's ``mturk/exports.json`` (outside the evaluate stage's
  dependencies, like all of ``mturk/``), so `study make` refuses to replace a study whose HITs may be
  published, wherever the export was written.
- ``import_results`` reads MTurk batch results CSVs (HITId, WorkerId, AssignmentId, AssignmentStatus,
  ..., Input.<var>, Answer.<field>, Approve, Reject) into canonical records (source "mturk");
  rejected assignments are skipped. ``Answer.responses`` is read, or the crowd-form JSON in
  ``Answer.taskAnswers``.
- ``simulate_results`` writes a batch results CSV as MTurk would, answered by simulated observers,
  and marks it as a real MTurk export never is: its ``Keywords`` are ``SIMULATED_KEYWORDS`` and its
  WorkerIds start with ``SIM-`` (real ones are upper-case letters and digits). ``import_results``
  gives a row with either mark the source "simulated-mturk", so simulated answers never pass as people's.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import math
import re
from importlib import resources
from pathlib import Path

import pandas as pd

from crn_repro.files import atomic_write_json, atomic_write_text
from crn_repro.errors import CrnError
from crn_repro.study.manifest import is_hype, load_manifest, trials_by_key
from crn_repro.study.observer import observer_factory
from crn_repro.study.records import RESPONSE_COLUMNS, SIDES, read_external_csv

HIT_VARIABLES = ("study_id", "job", "image_base_url", "mask_url", "trials")
REQUIRED_RESULT_COLUMNS = ("HITId", "WorkerId", "AssignmentId", "AssignmentStatus", "Input.job", "Input.trials")
# MTurk's batch results CSV: these columns, then Input.<var>, Answer.<field>, then Approve, Reject.
RESULT_COLUMNS_BEFORE_INPUT = (
    "HITId", "HITTypeId", "Title", "Description", "Keywords", "Reward", "CreationTime", "MaxAssignments",
    "RequesterAnnotation", "AssignmentDurationInSeconds", "AutoApprovalDelayInSeconds", "Expiration",
    "NumberOfSimilarHITs", "LifetimeInSeconds", "AssignmentId", "WorkerId", "AssignmentStatus", "AcceptTime",
    "SubmitTime", "AutoApprovalTime", "ApprovalTime", "RejectionTime", "RequesterFeedback", "WorkTimeInSeconds",
    "LifetimeApprovalRate", "Last30DaysApprovalRate", "Last7DaysApprovalRate",
)
SIMULATED_KEYWORDS = "crn-repro-simulated"  # the Keywords of a simulated results CSV's HITs
SIMULATED_WORKER_PREFIX = "SIM-"  # never in a real WorkerId (upper-case letters and digits)
EXPORT = Path("mturk") / "batch_input.csv"  # where the README puts `study export-mturk`'s output
EXPORT_LOG = Path("mturk") / "exports.json"  # every export of the study: where, when, for which base URL
_TZ_HOURS = {"UTC": 0, "GMT": 0, "PST": -8, "PDT": -7}
_MTURK_TIME = "%a %b %d %H:%M:%S %Y"


def encode_trials(job: dict) -> str:
    """The ``${trials}`` value of a job: ``index|duration_ms|left|right`` per trial (image names in
    images/), joined by ``;``; a practice trial adds a fifth field, the side that is right, for the
    page's feedback."""
    parts = []
    for t in job["trials"]:
        duration = "" if t["duration_ms"] is None else str(t["duration_ms"])
        part = f"{t['index']}|{duration}|{t['left']['image'].removeprefix('images/')}|{t['right']['image'].removeprefix('images/')}"
        parts.append(part + (f"|{t['correct']}" if t["kind"] == "practice" else ""))
    return ";".join(parts)


def decode_trials(text: str) -> list[tuple[int, int | None, str, str]]:
    """Inverse of ``encode_trials``: (index, duration_ms or None, left image, right image) per trial."""
    out = []
    for part in text.split(";"):
        index, duration, left, right = part.split("|")[:4]
        out.append((int(index), int(duration) if duration else None, left, right))
    return out


def _csv_text(header: list[str], rows: list[list], quote_all: bool = False) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, quoting=csv.QUOTE_ALL if quote_all else csv.QUOTE_MINIMAL, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def hit_html(manifest: dict) -> str:
    """The HIT template (``static/hit.html``, with ``static/trial.js`` inlined, the trial presentation the
    web app uses too): the study's trusted instructions and question, and ``${...}`` variables."""
    static = resources.files("crn_repro.study").joinpath("static")
    w, h = manifest["image_size_wh"]
    return (
        static.joinpath("hit.html").read_text()
        .replace("@@TRIAL_JS@@", static.joinpath("trial.js").read_text().rstrip())
        .replace("@@QUESTION@@", manifest["question"])
        .replace("@@INSTRUCTIONS@@", manifest["instructions_html"])
        .replace("@@W@@", str(w))
        .replace("@@H@@", str(h))
    )


def mturk_exports(study_dir: Path) -> list[str]:
    """Where this study's MTurk exports went (published HITs name its trials and images): the logged
    destinations, and ``mturk/`` for an export there from before the log existed."""
    study_dir = Path(study_dir)
    places = [str(entry.get("batch_input", "?")) for entry in read_export_log(study_dir)]
    if (study_dir / EXPORT).exists() and not places:
        places.append(EXPORT.as_posix())
    return places


def read_export_log(study_dir: Path) -> list[dict]:
    """The entries of ``mturk/exports.json`` (none if absent); a damaged log is an error, not silence."""
    path = Path(study_dir) / EXPORT_LOG
    if not path.exists():
        return []
    try:
        entries = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CrnError(f"{path}: unreadable export log ({error}); restore it, or delete it if no batch was published") from None
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise CrnError(f"{path}: expected a list of exports; restore it, or delete it if no batch was published")
    return entries


def export_mturk(study_dir: Path, out_dir: Path, base_url: str) -> dict[str, Path]:
    """Write ``hit.html`` and ``batch_input.csv`` into ``out_dir``; images are expected at
    ``<base_url>/images/``. Returns the written paths."""
    manifest = load_manifest(study_dir)
    if is_hype(manifest):
        raise CrnError(f"{study_dir}: the hype design shows one image at a time, which the MTurk HIT does not; run it in the web app "
                       f"(`crn-repro study serve {study_dir}`, also for Prolific)")
    if not re.match(r"^https?://[^\s\"'<>]+$", base_url):
        raise CrnError(f"--base-url {base_url!r}: expected the http(s) URL where the study's images/ folder is hosted")
    base = base_url.rstrip("/")
    rows = [
        [manifest["study_id"], job["job"], f"{base}/images/", f"{base}/{manifest['mask']}" if manifest["mask"] else "",
         encode_trials(job)]
        for job in manifest["jobs"]
    ]
    out_dir = Path(out_dir)
    paths = {"hit": out_dir / "hit.html", "batch_input": out_dir / "batch_input.csv"}
    log = read_export_log(study_dir)  # read first: a damaged log stops the export before anything is written
    atomic_write_text(paths["hit"], hit_html(manifest))
    atomic_write_text(paths["batch_input"], _csv_text(list(HIT_VARIABLES), rows))
    log.append({"batch_input": str(paths["batch_input"].resolve()), "base_url": base, "study_id": manifest["study_id"],
                "utc": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")})
    atomic_write_json(Path(study_dir) / EXPORT_LOG, log)
    return paths


def _utc(text: str) -> str:
    """MTurk's "Wed Nov 25 00:12:01 PST 2026" as ISO 8601 UTC; other forms are kept as given."""
    parts = str(text).split()
    if len(parts) == 6 and parts[4] in _TZ_HOURS:
        try:
            local = dt.datetime.strptime(" ".join(parts[:4] + parts[5:]), _MTURK_TIME)
        except ValueError:
            return str(text)
        return (local - dt.timedelta(hours=_TZ_HOURS[parts[4]])).isoformat() + "Z"
    return str(text)


def _answers(row: dict, where: str) -> list:
    if "Answer.responses" in row:
        text = row["Answer.responses"]
    else:
        try:
            text = json.loads(row["Answer.taskAnswers"])[0]["responses"]
        except (json.JSONDecodeError, KeyError, IndexError, TypeError):
            raise CrnError(f"{where}: Answer.taskAnswers holds no `responses` field") from None
    try:
        answers = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        raise CrnError(f"{where}: Answer.responses is not JSON") from None
    if not isinstance(answers, list) or not all(isinstance(a, list) and len(a) in (4, 5) for a in answers):
        raise CrnError(f"{where}: Answer.responses must be a list of [trial, side, measured_ms, response_ms, frame_ms]")
    return [a if len(a) == 5 else [*a, None] for a in answers]  # HITs exported before frame_ms was recorded


def is_simulated_row(row: dict) -> bool:
    """Whether a results row comes from `simulate_results` (its Keywords or its WorkerId says so)."""
    keywords = {k.strip() for k in (row.get("Keywords") or "").split(",")}
    return SIMULATED_KEYWORDS in keywords or (row.get("WorkerId") or "").startswith(SIMULATED_WORKER_PREFIX)


def _number(value) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or not 0 <= value < 1e8:
        raise ValueError(value)
    return float(value)


def import_results(study_dir: Path, paths: list[Path]) -> pd.DataFrame:
    """Canonical records (source "mturk", or "simulated-mturk" for `simulate_results` rows) from MTurk
    batch results CSVs of this study's HITs.

    One-line CrnError on: missing columns, a job or trial the study does not have, a HIT made from
    another export of the study, an answer other than left/right, the same (worker, job, trial) twice.
    """
    manifest = load_manifest(study_dir)
    trials = trials_by_key(manifest)
    jobs = {job["job"]: job for job in manifest["jobs"]}
    encoded = {name: encode_trials(job) for name, job in jobs.items()}
    records, seen = [], {}
    for path in map(Path, paths):
        header, table = read_external_csv(path, "MTurk batch results file")
        missing = [c for c in REQUIRED_RESULT_COLUMNS if c not in header]
        if not any(c in header for c in ("Answer.responses", "Answer.taskAnswers")):
            missing.append("Answer.responses")
        if missing:
            raise CrnError(f"{path}: missing columns {', '.join(missing)}; expected MTurk batch results of a `crn-repro study export-mturk` HIT")
        for number, row in enumerate(table, start=2):  # line 1 is the header
            where = f"{path}: line {number}"
            if row["AssignmentStatus"] == "Rejected":
                continue
            job = row["Input.job"]
            if job not in jobs:
                raise CrnError(f"{where}: Input.job {job!r} is not a job of study {manifest['study_id']!r}")
            if row["Input.trials"] != encoded[job]:
                raise CrnError(f"{where}: the HIT's trials differ from {job} of this study (made from another build?); "
                               "export again with `crn-repro study export-mturk`")
            worker = row["WorkerId"]
            if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", worker or ""):
                raise CrnError(f"{where}: WorkerId {worker!r} is not an MTurk worker id")
            answered = _utc(row.get("SubmitTime", ""))
            source = "simulated-mturk" if is_simulated_row(row) else "mturk"
            for answer in _answers(row, where):
                index, side, measured, response, frame = answer
                if not isinstance(index, int) or isinstance(index, bool) or (job, index) not in trials:
                    raise CrnError(f"{where}: trial {index!r} is not in {job} (0..{len(jobs[job]['trials']) - 1})")
                if side not in SIDES:
                    raise CrnError(f"{where}: trial {index}: answer {side!r} is not left or right")
                try:
                    measured, response, frame = _number(measured), _number(response), _number(frame)
                except ValueError as error:
                    raise CrnError(f"{where}: trial {index}: timing {error.args[0]!r} is not a duration in ms") from None
                key = (worker, job, index)
                if key in seen:
                    raise CrnError(f"{where}: worker {worker} answered {job} trial {index} twice (also at {seen[key]})")
                seen[key] = where
                t = trials[(job, index)]
                records.append({
                    "source": source, "participant": worker, "job": job, "trial": index, "kind": t["kind"],
                    "layout": t["layout"], "left_model": t["left"]["model"], "right_model": t["right"]["model"],
                    "chosen_side": side, "chosen_model": t[side]["model"], "duration_ms": t["duration_ms"],
                    "measured_ms": measured, "response_ms": response, "frame_ms": frame, "answered_utc": answered,
                    "left_sha256": t["left"]["sha256"], "right_sha256": t["right"]["sha256"],  # the HIT's trials are this build's
                })
    return pd.DataFrame(records, columns=list(RESPONSE_COLUMNS))


def _mturk_time(moment: dt.datetime) -> str:
    return moment.strftime("%a %b %d %H:%M:%S UTC %Y")


def _id(*parts: object, length: int = 30) -> str:
    return hashlib.sha1("/".join(map(str, parts)).encode()).hexdigest()[:length].upper()


def simulate_results(
    study_dir: Path, batch_input: Path, out: Path, participants: int, seed: int = 0, careless_fraction: float = 0.0
) -> Path:
    """Answer the HITs of ``batch_input.csv`` with simulated observers (``observer.observer_factory``)
    and write the batch results CSV MTurk would give: participant i takes HIT i mod (number of HITs),
    so each HIT gets its assignments from distinct workers. Marked simulated (``Keywords`` =
    ``SIMULATED_KEYWORDS``, WorkerIds ``SIM-...``), so it imports as source "simulated-mturk"."""
    if participants < 1:
        raise CrnError("--participants: must be >= 1")
    manifest = load_manifest(study_dir)
    trials = trials_by_key(manifest)
    batch_input = Path(batch_input)
    if not batch_input.is_file():
        raise CrnError(f"{batch_input}: missing; run `crn-repro study export-mturk {study_dir} <out dir> --base-url URL` first")
    with batch_input.open(newline="", encoding="utf-8") as f:
        hits = list(csv.DictReader(f))
    if not hits or list(hits[0]) != list(HIT_VARIABLES):
        raise CrnError(f"{batch_input}: not a batch input CSV of `crn-repro study export-mturk` (header {', '.join(HIT_VARIABLES)})")
    make_observer = observer_factory(seed, careless_fraction)
    start = dt.datetime(2017, 10, 22, 12, 0, 0)  # a fixed clock: the output is deterministic for a seed
    header = list(RESULT_COLUMNS_BEFORE_INPUT) + [f"Input.{v}" for v in HIT_VARIABLES] + ["Answer.responses", "Approve", "Reject"]
    rows = []
    for p in range(participants):
        hit = hits[p % len(hits)]
        observer = make_observer(p)
        answers, elapsed_ms = [], 0.0
        for index, duration, _, _ in decode_trials(hit["trials"]):
            trial = trials.get((hit["job"], index))
            if trial is None:
                raise CrnError(f"{batch_input}: {hit['job']} trial {index} is not in the study; export again")
            response = observer.response_ms() + (duration or 0)
            elapsed_ms += response + 500.0  # answer, then the next trial's onset
            answers.append([index, observer.choose(trial, duration), duration, round(response, 1), round(1000 / 60, 2)])
        accept = start + dt.timedelta(minutes=7 * p)
        submit = accept + dt.timedelta(milliseconds=elapsed_ms)
        meta = {
            "HITId": _id("hit", hit["study_id"], hit["job"]), "HITTypeId": _id("type", hit["study_id"]),
            "Title": "[simulated] " + manifest["question"],
            "Description": f"Simulated participants (crn-repro study simulate) compare pairs of {manifest.get('scenes', 'images')}",
            "Keywords": SIMULATED_KEYWORDS, "Reward": "$0.00", "CreationTime": _mturk_time(start),
            "MaxAssignments": str(-(-participants // len(hits))), "RequesterAnnotation": "BatchId:0;",
            "AssignmentDurationInSeconds": "3600", "AutoApprovalDelayInSeconds": "259200",
            "Expiration": _mturk_time(start + dt.timedelta(days=7)), "NumberOfSimilarHITs": "",
            "LifetimeInSeconds": "", "AssignmentId": _id("assignment", hit["study_id"], hit["job"], p),
            "WorkerId": SIMULATED_WORKER_PREFIX + _id("worker", seed, p, length=13), "AssignmentStatus": "Submitted",
            "AcceptTime": _mturk_time(accept), "SubmitTime": _mturk_time(submit),
            "AutoApprovalTime": _mturk_time(submit + dt.timedelta(days=3)), "ApprovalTime": "", "RejectionTime": "",
            "RequesterFeedback": "", "WorkTimeInSeconds": str(round(elapsed_ms / 1000)),
            "LifetimeApprovalRate": "0% (0/0)", "Last30DaysApprovalRate": "0% (0/0)", "Last7DaysApprovalRate": "0% (0/0)",
        }
        row = [meta[c] for c in RESULT_COLUMNS_BEFORE_INPUT] + [hit[v] for v in HIT_VARIABLES]
        rows.append(row + [json.dumps(answers, separators=(",", ":")), "", ""])
    atomic_write_text(Path(out), _csv_text(header, rows, quote_all=True))
    return Path(out)
