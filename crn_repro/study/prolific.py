"""Prolific's submission export, and who to pay (docs/facts.md §6): `crn-repro study analyze STUDY
--prolific EXPORT.csv`.

The export (Prolific's "Download demographic data" / submissions CSV) has one row per submission:
``Submission id``, ``Participant id`` (the PROLIFIC_PID the study URL carried), ``Status``
(APPROVED, AWAITING REVIEW, REJECTED, RETURNED, TIMED-OUT, ACTIVE, SCREENED OUT), ``Completion
code``, times; older exports name them ``session_id``, ``participant_id``, ``status``,
``entered_code``. Both are read.

The payment decision is separate from the analysis' exclusions (``study.min_sentinel_accuracy``),
and follows Prolific's attention-check policy: a submission may be rejected only for failed *fair*
attention checks, and only after two or more (``study.prolific.reject_min_failed_sentinels``);
a participant who did not consent, or did not finish, is asked to return the submission, never
rejected. The sentinels are our attention checks: a real photograph against an obviously synthesized
image (the paper's weakest baseline), stated in the instructions. So, per submission AWAITING REVIEW:

- every trial answered and fewer failed sentinels than the threshold: ``approve``;
- every trial answered and at least that many failed: ``reject``, with the rule and the evidence (which
  sentinels, what was chosen);
- no answer recorded, or not every trial: ``review`` (ask them to return it; the evidence says what
  was recorded, and whether they entered the declined-consent code);

and ``none`` for submissions already reviewed, returned, timed out, still active or screened out,
and for answers whose PROLIFIC_PID is not in the export.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from crn_repro.errors import CrnError
from crn_repro.study.records import HYPE_ANSWERS, REAL, read_external_csv

EXPORT_COLUMNS = {  # our name -> the export's column names, newest first
    "prolific_pid": ("Participant id", "participant_id"),
    "status": ("Status", "status"),
    "submission_id": ("Submission id", "session_id"),
    "completion_code": ("Completion code", "entered_code"),
    "time_taken": ("Time taken", "time_taken"),
}
STATUSES = ("APPROVED", "AWAITING REVIEW", "REJECTED", "RETURNED", "TIMED-OUT", "ACTIVE", "SCREENED OUT")
WITHDRAWN = ("RETURNED",)  # a returned submission withdraws: its answers are not analysed
PAYMENT_COLUMNS = ["prolific_pid", "submission_id", "status", "participant", "job", "answered", "trials", "sentinels",
                   "sentinels_failed", "decision", "rule", "evidence"]
_PID = re.compile(r"^[A-Za-z0-9]{1,64}$")


def _status(text: str) -> str:
    return re.sub(r"[\s_-]+", " ", str(text).strip().upper()).replace("TIMED OUT", "TIMED-OUT")


def read_prolific_export(path: Path) -> pd.DataFrame:
    """The export's submissions: ``prolific_pid``, ``status`` (upper case, as ``STATUSES``),
    ``submission_id``, ``completion_code``, ``time_taken``. One-line CrnError on a file that is not
    such an export (missing columns, an unknown status, a malformed id)."""
    header, rows = read_external_csv(path, "Prolific export")
    found = {}
    for ours, names in EXPORT_COLUMNS.items():
        found[ours] = next((n for n in names if n in header), None)
    missing = [names[0] for ours, names in EXPORT_COLUMNS.items() if found[ours] is None and ours in ("prolific_pid", "status")]
    if missing:
        raise CrnError(f"{path}: missing columns {', '.join(missing)}; expected Prolific's submissions export (the study's "
                       "'Download' of its submissions)")
    out = []
    for line, row in enumerate(rows, start=2):
        record = {ours: (row.get(name) or "").strip() if name else "" for ours, name in found.items()}
        record["status"] = _status(record["status"])
        if record["status"] not in STATUSES:
            raise CrnError(f"{path}: line {line}: status {record['status']!r} is not one of {', '.join(STATUSES)}")
        if not _PID.match(record["prolific_pid"]):
            raise CrnError(f"{path}: line {line}: participant id {record['prolific_pid']!r} is not a Prolific id")
        out.append(record)
    return pd.DataFrame(out, columns=list(EXPORT_COLUMNS))


def _sentinel_evidence(sentinels: pd.DataFrame) -> tuple[int, str]:
    """How many sentinels were failed, and which (job, trial, what was chosen)."""
    hype = sentinels.chosen_side.isin(HYPE_ANSWERS)
    failed = sentinels[(hype & (sentinels.chosen_side != "fake")) | (~hype & (sentinels.chosen_model != REAL))]
    picks = "; ".join(f"{r.job} trial {r.trial}: called a {r.left_model} image real" if r.chosen_side == "real"
                      else f"{r.job} trial {r.trial}: chose {r.chosen_model} over the real image" for r in failed.itertuples())
    return len(failed), picks


def _decide(submission: dict, answers: pd.DataFrame, trials_in_job: int, declined_code: str | None,
            reject_min_failed: int) -> dict:
    """One submission's decision (see the module docstring)."""
    status = submission["status"]
    if status != "AWAITING REVIEW":
        rule = {"RETURNED": "returned the submission (withdrew): nothing to pay, answers not analysed",
                "TIMED-OUT": "timed out on Prolific: Prolific does not pay it"}.get(status, f"{status} on Prolific: nothing to decide")
        return {"decision": "none", "rule": rule, "evidence": ""}
    if not len(answers):
        declined = declined_code and submission.get("completion_code") == declined_code
        return {"decision": "review",
                "rule": "no answers: ask them to return the submission (Prolific: never reject for not taking part)",
                "evidence": "entered the declined-consent code" if declined else "no answer recorded for this PROLIFIC_PID"}
    if len(answers) < trials_in_job:
        return {"decision": "review", "rule": "did not finish: ask them to return the submission, or approve",
                "evidence": f"answered {len(answers)} of {trials_in_job} trials"}
    failed, picks = _sentinel_evidence(answers[answers.kind == "sentinel"])
    if failed >= reject_min_failed:
        return {"decision": "reject",
                "rule": f"failed {failed} attention checks (>= {reject_min_failed}; Prolific allows rejecting after two or more "
                        "failed fair attention checks)", "evidence": picks}
    return {"decision": "approve", "rule": f"finished, {failed} failed attention checks (< {reject_min_failed})", "evidence": picks}


def payments(export: pd.DataFrame, responses: pd.DataFrame, manifest: dict, reject_min_failed: int) -> pd.DataFrame:
    """One row per submission of the export, and one per PROLIFIC_PID that answered but is not in it
    (``PAYMENT_COLUMNS``). ``responses`` are the study's canonical records of people (not simulated)."""
    trials_in_job = {job["job"]: len(job["trials"]) for job in manifest["jobs"]}
    declined = (manifest.get("prolific") or {}).get("declined_code")
    by_pid = responses[responses.prolific_pid.notna()].groupby("prolific_pid") if len(responses) else {}
    answered = {pid: g for pid, g in by_pid} if len(responses) else {}
    rows = []
    for submission in export.to_dict("records"):
        answers = answered.get(submission["prolific_pid"], responses.iloc[:0])
        job = answers.job.iloc[0] if len(answers) else ""
        decision = _decide(submission, answers, trials_in_job.get(job, 0), declined, reject_min_failed)
        rows.append({**{k: submission[k] for k in ("prolific_pid", "submission_id", "status")},
                     "participant": answers.participant.iloc[0] if len(answers) else "", "job": job, "answered": len(answers),
                     "trials": trials_in_job.get(job, 0), "sentinels": int((answers.kind == "sentinel").sum()),
                     "sentinels_failed": _sentinel_evidence(answers[answers.kind == "sentinel"])[0] if len(answers) else 0,
                     **decision})
    for pid, answers in answered.items():
        if pid not in set(export.prolific_pid):
            rows.append({"prolific_pid": pid, "submission_id": "", "status": "", "participant": answers.participant.iloc[0],
                         "job": answers.job.iloc[0], "answered": len(answers), "trials": trials_in_job.get(answers.job.iloc[0], 0),
                         "sentinels": int((answers.kind == "sentinel").sum()),
                         "sentinels_failed": _sentinel_evidence(answers[answers.kind == "sentinel"])[0], "decision": "none",
                         "rule": "answered, but not in the Prolific export (another study's export, or a test session?)",
                         "evidence": ""})
    return pd.DataFrame(rows, columns=PAYMENT_COLUMNS)


def withdrawn(export: pd.DataFrame) -> dict[str, str]:
    """PROLIFIC_PID -> status for the submissions whose answers are not analysed (returned: withdrawn)."""
    return {r.prolific_pid: r.status for r in export.itertuples() if r.status in WITHDRAWN}
