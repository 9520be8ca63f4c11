"""The MTurk round trip of the perceptual study (paper Sec. 5.1: "Each MTurk job involves a batch of
roughly 100 pairwise comparisons, along with sentinel pairs").

Design: **one HIT per job**, as in the paper. A job's trials travel in one batch-input variable,
``${trials}``, compactly encoded (``index|duration_ms|left image|right image`` joined by ``;``; an
empty duration means unlimited time), and its images are loaded from ``${image_base_url}``, where
the user hosts the study folder's ``images/``. One HIT per trial would need ~110 HITs per session
and lose the job's sentinel check; one variable per trial would need hundreds of columns.

- ``export_mturk`` writes ``hit.html`` (an HTMLQuestion body with crowd-form; the page presents the
  trials as the web app does: fixation, freshly decoded images swapped in on a requestAnimationFrame,
  the mask swapped in on the frame where the target is reached, the on-screen time measured from rAF
  timestamps; it submits one hidden field ``responses``: a JSON list of ``[trial index,
  "left"|"right", measured_ms, response_ms]``; in MTurk's preview, assignmentId
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
from pathlib import Path

import pandas as pd

from crn_repro.checkpoint import atomic_write_json, atomic_write_text
from crn_repro.errors import CrnError
from crn_repro.study.manifest import load_manifest, trials_by_key
from crn_repro.study.observer import observer_factory
from crn_repro.study.records import RESPONSE_COLUMNS, SIDES

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
    """The ``${trials}`` value of a job: ``index|duration_ms|left|right;...`` (image names in images/)."""
    parts = []
    for t in job["trials"]:
        duration = "" if t["duration_ms"] is None else str(t["duration_ms"])
        parts.append(f"{t['index']}|{duration}|{t['left']['image'].removeprefix('images/')}|{t['right']['image'].removeprefix('images/')}")
    return ";".join(parts)


def decode_trials(text: str) -> list[tuple[int, int | None, str, str]]:
    """Inverse of ``encode_trials``: (index, duration_ms or None, left image, right image) per trial."""
    out = []
    for part in text.split(";"):
        index, duration, left, right = part.split("|")
        out.append((int(index), int(duration) if duration else None, left, right))
    return out


def _csv_text(header: list[str], rows: list[list], quote_all: bool = False) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, quoting=csv.QUOTE_ALL if quote_all else csv.QUOTE_MINIMAL, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def hit_html(manifest: dict) -> str:
    """The HIT template: the study's trusted instructions and question, and ``${...}`` variables."""
    w, h = manifest["image_size_wh"]
    return (
        _HIT_TEMPLATE.replace("@@QUESTION@@", manifest["question"])
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
    if not isinstance(answers, list) or not all(isinstance(a, list) and len(a) == 4 for a in answers):
        raise CrnError(f"{where}: Answer.responses must be a list of [trial, side, measured_ms, response_ms]")
    return answers


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
        if not path.is_file():
            raise CrnError(f"{path}: MTurk results file not found")
        try:
            with path.open(newline="", encoding="utf-8-sig") as f:
                reader = csv.DictReader(f)
                table = list(reader)
                header = reader.fieldnames or []
        except (UnicodeDecodeError, csv.Error) as error:
            raise CrnError(f"{path}: not a readable CSV ({error})") from None
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
                index, side, measured, response = answer
                if not isinstance(index, int) or isinstance(index, bool) or (job, index) not in trials:
                    raise CrnError(f"{where}: trial {index!r} is not in {job} (0..{len(jobs[job]['trials']) - 1})")
                if side not in SIDES:
                    raise CrnError(f"{where}: trial {index}: answer {side!r} is not left or right")
                try:
                    measured, response = _number(measured), _number(response)
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
                    "measured_ms": measured, "response_ms": response, "answered_utc": answered,
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
            answers.append([index, observer.choose(trial, duration), duration, round(response, 1)])
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


# The HIT page. MTurk substitutes ${variables} everywhere in it, so its script never writes "${".
# Presentation as in the web app (crn_repro/study/static/app.js): every image is fetched before the first
# trial; each trial decodes fresh <img> elements, puts them in place hidden during a 0.5 s fixation cross
# (which also measures the display's frame interval from rAF timestamps), reveals them in a
# requestAnimationFrame callback (onset = that frame's timestamp) and, for timed trials, swaps in the
# decoded mask in the callback of the first frame at or after target - half a frame; measured_ms is the
# difference of the two frame timestamps. #crn's data-phase/-trial/-measured/-frame attributes let people
# (and the browser tests) follow it.
# Preview: before a worker accepts the HIT, MTurk opens the page with assignmentId=ASSIGNMENT_ID_NOT_AVAILABLE
# in the frame's URL. The page then shows the instructions and the example (a sketch of a trial, no study
# image: a worker who previews and then accepts must not have seen any pair without its time limit) and
# "Accept the HIT to begin"; it loads no images, has no consent or Start control and cancels any submission.
_HIT_TEMPLATE = """<!-- crn-repro perceptual study HIT (paper Sec. 5.1): one HIT = one job. Variables: ${study_id} ${job} -->
<script src="https://assets.crowd.aws/crowd-html-elements.js"></script>
<style>
  #crn { font-family: system-ui, sans-serif; max-width: 900px; margin: 1em auto; }
  #crn [hidden] { display: none !important; }
  #crn-stage { display: none; position: relative; gap: 16px; justify-content: center; background: #808080; padding: 16px; }
  #crn-stage.crn-running { display: flex; }
  .crn-panel { width: @@W@@px; height: @@H@@px; background: #808080; cursor: pointer; }
  .crn-panel img, .crn-panel .crn-blank-mask { display: block; width: @@W@@px; height: @@H@@px; }
  #crn-stage.crn-blank .crn-panel { visibility: hidden; }
  #crn-fixation { position: absolute; inset: 0; display: flex; align-items: center; justify-content: center;
    font-size: 40px; color: #000; pointer-events: none; }
  #crn-bar { height: 8px; background: #ddd; margin: 8px 0; } #crn-fill { height: 8px; width: 0; background: #4c72b0; }
  #crn-progress, #crn-prompt { text-align: center; min-height: 1.4em; }
  #crn-prompt { font-size: 1.2em; }
  #crn-example { margin: 1em 0; } #crn-example figcaption { font-size: 0.95em; }
  .crn-example-pair { display: flex; gap: 8px; background: #808080; padding: 8px; width: max-content; }
  .crn-example-pair div { width: 200px; height: 100px; display: flex; align-items: center; justify-content: center;
    background: #a0a0a0; color: #222; }
  #crn-preview { font-size: 1.2em; }
</style>
<crowd-form>
  <div id="crn" data-phase="intro" data-trials="${trials}" data-base="${image_base_url}" data-mask="${mask_url}">
    <h2>@@QUESTION@@</h2>
    <div id="crn-intro">
      @@INSTRUCTIONS@@
      <figure id="crn-example">
        <div class="crn-example-pair"><div>left photograph</div><div>right photograph</div></div>
        <figcaption>Example of one pair: a + for half a second, then two photographs of the same scene side by
          side.<span id="crn-example-timing"></span> Answer with F or the left arrow key for the left photograph,
          J or the right arrow key for the right one, or click it.</figcaption>
      </figure>
      <p id="crn-preview" hidden><strong>Accept the HIT to begin.</strong> This is a preview: the pairs are shown
        only once you have accepted the HIT.</p>
      <div id="crn-begin">
        <p><label><input type="checkbox" id="crn-consent"> I agree to take part in this study; my answers are recorded
          anonymously together with my worker id.</label></p>
        <p><button type="button" id="crn-start" disabled>Start</button> <span id="crn-loading">Loading images...</span></p>
      </div>
    </div>
    <div id="crn-bar"><div id="crn-fill"></div></div>
    <p id="crn-progress"></p>
    <div id="crn-stage" class="crn-blank">
      <div id="crn-left" class="crn-panel" data-side="left"></div>
      <div id="crn-right" class="crn-panel" data-side="right"></div>
      <div id="crn-fixation" hidden>+</div>
    </div>
    <p id="crn-prompt"></p>
    <input type="hidden" name="responses" id="crn-responses" value="[]">
  </div>
</crowd-form>
<script>
(function () {
  "use strict";
  var FIXATION_MS = 500, W = @@W@@, H = @@H@@;
  var KEYS = { f: "left", F: "left", ArrowLeft: "left", j: "right", J: "right", ArrowRight: "right" };
  function $(id) { return document.getElementById(id); }
  function nextFrame() { return new Promise(function (resolve) { requestAnimationFrame(resolve); }); }
  var root = $("crn"), stage = $("crn-stage"), prompt = $("crn-prompt");
  var trials = root.dataset.trials.split(";").map(function (part) {
    var f = part.split("|");
    return { index: parseInt(f[0], 10), duration: f[1] === "" ? null : parseInt(f[1], 10),
             left: root.dataset.base + f[2], right: root.dataset.base + f[3] };
  });
  var mask = root.dataset.mask;
  var answers = [], loaded = false, finished = false, preloaded = [];
  // MTurk shows a HIT before it is accepted with assignmentId=ASSIGNMENT_ID_NOT_AVAILABLE in the frame's URL.
  var preview = new URLSearchParams(window.location.search).get("assignmentId") === "ASSIGNMENT_ID_NOT_AVAILABLE";
  var timed = trials.some(function (t) { return t.duration !== null; });
  $("crn-example-timing").textContent = timed
    ? " Some pairs stay up only for a fraction of a second; then noise covers them, and you answer from what you saw."
    : " They stay up until you answer.";

  function setPhase(phase, extra) { Object.assign(root.dataset, extra || {}, { phase: phase }); }
  function fail(text) { prompt.textContent = text; setPhase("error"); }

  // A fully decoded, fresh image, so showing it costs no fetch or decode on the onset frame.
  function decoded(url) {
    var img = new Image(W, H);
    img.alt = "";
    img.src = url;
    return img.decode().then(function () { return img; });
  }
  function maskElement() {
    if (mask) { return decoded(mask); }
    var blank = document.createElement("div");
    blank.className = "crn-blank-mask";
    return Promise.resolve(blank);
  }
  function median(values) {
    var sorted = values.slice().sort(function (a, b) { return a - b; });
    return sorted[Math.floor(sorted.length / 2)];
  }
  // Fixation cross for FIXATION_MS, measuring the display's frame interval from rAF timestamps meanwhile.
  async function fixation() {
    var deltas = [], previous = await nextFrame(), start = previous;
    while (previous - start < FIXATION_MS || deltas.length < 3) {
      var now = await nextFrame();
      deltas.push(now - previous);
      previous = now;
    }
    return median(deltas);
  }
  // Show the pair on a frame boundary; for timed trials replace it by the mask on the first frame where
  // elapsed >= target - half a frame. measured = rAF timestamp of that frame - timestamp of the onset frame.
  async function present(t) {
    var pair = await Promise.all([decoded(t.left), decoded(t.right)]);
    var masks = t.duration === null ? null : await Promise.all([maskElement(), maskElement()]);
    stage.classList.add("crn-blank");
    $("crn-left").replaceChildren(pair[0]);
    $("crn-right").replaceChildren(pair[1]);
    $("crn-fixation").hidden = false;
    setPhase("fixation");
    var frameMs = await fixation();
    var onset = await nextFrame();
    $("crn-fixation").hidden = true;
    stage.classList.remove("crn-blank");
    setPhase("stimulus");
    if (masks === null) { return { onset: onset, measured: null, frameMs: frameMs }; }
    var now = onset;
    while (now - onset < t.duration - frameMs / 2) { now = await nextFrame(); }
    $("crn-left").replaceChildren(masks[0]);
    $("crn-right").replaceChildren(masks[1]);
    return { onset: onset, measured: now - onset, frameMs: frameMs };
  }
  function awaitAnswer() {
    return new Promise(function (resolve) {
      var panels = [$("crn-left"), $("crn-right")];
      function finish(side) {
        document.removeEventListener("keydown", onKey);
        panels.forEach(function (panel) { panel.onclick = null; });
        resolve({ side: side, at: performance.now() });
      }
      function onKey(e) {
        if (e.repeat || e.ctrlKey || e.metaKey || e.altKey || !(e.key in KEYS)) { return; }
        e.preventDefault();
        finish(KEYS[e.key]);
      }
      document.addEventListener("keydown", onKey);
      panels.forEach(function (panel) { panel.onclick = function () { finish(panel.dataset.side); }; });
    });
  }
  async function run() {
    $("crn-intro").hidden = true;
    stage.classList.add("crn-running");
    for (var i = 0; i < trials.length; i++) {
      var t = trials[i];
      $("crn-progress").textContent = "Pair " + (i + 1) + " of " + trials.length;
      prompt.textContent = "";
      setPhase("loading", { trial: String(t.index) });
      var shown = await present(t);
      setPhase("answer", { measured: shown.measured === null ? "" : shown.measured.toFixed(1), frame: shown.frameMs.toFixed(2) });
      prompt.textContent = (t.duration === null ? "Which image is more realistic?" : "Which image was more realistic?")
        + " Left: F or \\u2190, right: J or \\u2192 (or click a side)";
      var answer = await awaitAnswer();
      answers.push([t.index, answer.side, shown.measured === null ? null : Math.round(shown.measured * 10) / 10,
                    Math.round((answer.at - shown.onset) * 10) / 10]);
      $("crn-responses").value = JSON.stringify(answers);
      $("crn-fill").style.width = (100 * answers.length / trials.length) + "%";
    }
    finished = true;
    stage.classList.remove("crn-running");
    $("crn-progress").textContent = "";
    prompt.textContent = "Done, thank you! Please submit.";
    setPhase("done");
  }
  function updateStart() { $("crn-start").disabled = preview || !loaded || !$("crn-consent").checked; }
  document.querySelector("crowd-form").addEventListener("submit", function (e) {
    if (preview) { e.preventDefault(); prompt.textContent = "Accept the HIT to begin."; }
    else if (!finished) { e.preventDefault(); prompt.textContent = "Please answer every pair first, then submit."; }
  });
  if (preview) {  // instructions and the example only: no pair is loaded, nothing can start or be submitted
    $("crn-begin").hidden = true;
    $("crn-bar").hidden = true;
    $("crn-preview").hidden = false;
    setPhase("preview");
    return;
  }
  var urls = [];
  trials.forEach(function (t) { urls.push(t.left, t.right); });
  if (mask) { urls.push(mask); }
  Promise.all(urls.map(decoded)).then(function (images) {  // fetch every image once, before the first trial
    preloaded = images;
    loaded = true;
    $("crn-loading").textContent = "";
    updateStart();
  }, function () {
    $("crn-loading").textContent = "An image failed to load; please return this HIT.";
  });
  $("crn-consent").addEventListener("change", updateStart);
  $("crn-start").addEventListener("click", function () {
    $("crn-start").disabled = true;
    run().catch(function (error) { fail("Something went wrong (" + error.message + "); please return this HIT."); });
  }, { once: true });
})();
</script>
"""
