"""Durable response store of the study web app: `<study>/responses.sqlite` (paper Sec. 5.1, docs/facts.md §6).

Every answer is one committed SQLite transaction (WAL journal, ``synchronous=FULL``) before the server
replies, so a reload, a crashed browser or a restarted server loses nothing; UNIQUE(participant, trial)
makes a double submission impossible. Participants get a server-made random id and a secret token (only
its SHA-256 is stored). The database remembers the SHA-1 of the manifest it was recorded against and
refuses to mix answers from two different studies. `read_responses` turns the stored answers into the
canonical response records (`crn_repro.study.records.RESPONSE_COLUMNS` + `WEB_COLUMNS`, source="web").

Prolific participants (`join(prolific=...)`) are stored with their pseudonymous PROLIFIC_PID, STUDY_ID
and SESSION_ID; one PROLIFIC_PID is one participant: joining again resumes the same session (a fresh
token, the same job and answers). Declined consent is recorded without taking a job. When the manifest's
``prolific.abandon_after_minutes`` is set, a job whose participant has not answered for that long goes
back to the pool (so are jobs whose participant finished but failed the attention rule): new
participants get the job with the fewest complete, attentive or still active sessions.

A store opened with ``simulated=True`` (only by `crn-repro study simulate --via web`, through
`crn_repro.study.server.make_server`; no HTTP request can ask for it) records every participant who
joins as simulated: id ``sim-...`` and ``participants.simulated = 1``; `read_responses` gives their
answers source="simulated-web", so they never pass as a person's.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import os
import secrets
import sqlite3
import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from crn_repro.errors import CrnError, one_line
from crn_repro.files import write_error
from crn_repro.study.manifest import load_manifest
from crn_repro.study.records import RESPONSE_COLUMNS, check_responses

DB_NAME = "responses.sqlite"
HYPE = "hype"  # the single-image design: one image per trial, answered "real" or "fake"
ANSWERS = {"pair": ("left", "right"), "single": ("real", "fake")}
PROLIFIC_KEYS = ("prolific_pid", "prolific_study_id", "prolific_session_id")
# what the web app's records carry beyond RESPONSE_COLUMNS (crn-repro-study/2): the display's frame interval,
# the hashes of the images shown (hype: the one image's in left_sha256, right_sha256 empty) and the Prolific ids
WEB_COLUMNS = ("frame_ms", "left_sha256", "right_sha256", *PROLIFIC_KEYS)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS participants (
    participant TEXT PRIMARY KEY,
    token_sha256 TEXT NOT NULL,
    job TEXT NOT NULL,
    joined_utc TEXT NOT NULL,
    simulated INTEGER NOT NULL DEFAULT 0 CHECK (simulated IN (0, 1))
);
CREATE TABLE IF NOT EXISTS answers (
    participant TEXT NOT NULL REFERENCES participants(participant),
    trial INTEGER NOT NULL CHECK (trial >= 0),
    chosen_side TEXT NOT NULL CHECK (chosen_side IN ('left', 'right', 'real', 'fake')),
    measured_ms REAL,
    response_ms REAL,
    frame_ms REAL,
    answered_utc TEXT NOT NULL,
    UNIQUE (participant, trial)
);
CREATE TABLE IF NOT EXISTS tokens (
    participant TEXT NOT NULL REFERENCES participants(participant),
    token_sha256 TEXT NOT NULL,
    issued_utc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS declines (
    prolific_pid TEXT, prolific_study_id TEXT, prolific_session_id TEXT, declined_utc TEXT NOT NULL
);
"""
# columns added to participants since the first schema (a database from before gets them on opening)
_ADDED = {
    "simulated": "INTEGER NOT NULL DEFAULT 0 CHECK (simulated IN (0, 1))",
    "prolific_pid": "TEXT", "prolific_study_id": "TEXT", "prolific_session_id": "TEXT",
    "last_seen_utc": "TEXT",  # join, resume or answer: what abandonment is measured from
    "finished_utc": "TEXT",  # when the last trial was answered
    "passed_attention": "INTEGER",  # 1/0 once finished: sentinel accuracy >= attention.min_sentinel_accuracy
}


class AlreadyAnswered(Exception):
    """The trial was answered before (a second tab, a retried request): the caller re-reads the state."""


class Seat(NamedTuple):
    """A participant's place in the study, from `ResponseStore.join`."""

    participant: str
    token: str
    job: str
    resumed: bool  # True: a Prolific participant who had joined before (same PROLIFIC_PID)


def utc_iso(moment: datetime) -> str:
    """ISO 8601 UTC timestamp with milliseconds, e.g. 2026-01-31T12:00:00.123Z (sorts as it reads)."""
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def manifest_sha1(study_dir: Path) -> str:
    return hashlib.sha1((Path(study_dir) / "manifest.json").read_bytes()).hexdigest()


def study_manifest(study_dir: Path) -> dict:
    """The study's manifest as the web app uses it: validated by `load_manifest` (crn-repro-study/1 or /2),
    with the v2 sections a v1 manifest lacks filled in (no consent facts, no Prolific, no attention rule)
    and ``presentation``: "single" for the hype design (one image, real/fake), "pair" for every other."""
    manifest = dict(load_manifest(Path(study_dir)))
    manifest.setdefault("consent", None)
    manifest.setdefault("prolific", None)
    manifest.setdefault("attention", None)
    manifest["presentation"] = "single" if manifest["design"] == HYPE else "pair"
    return manifest


def trial_images(trial: dict) -> list[dict]:
    """The sides a trial shows, in screen order: [image] for a hype trial, [left, right] for a pair."""
    return [trial["image"]] if "image" in trial else [trial["left"], trial["right"]]


def correct_answer(trial: dict) -> str | None:
    """What a sentinel or practice trial must be answered: "left"/"right" (pairs) or "real"/"fake" (hype)."""
    return trial.get("truth") if "image" in trial else trial.get("correct")


def _columns(con: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in con.execute(f"PRAGMA table_info({table})")}


def disk_errno(error: BaseException) -> int | None:
    """ENOSPC or EROFS where ``error`` (an OSError, or SQLite's, which carries no errno) says the disk is
    full or read-only; else the OSError's errno, or None."""
    text = str(error).lower()
    if "readonly" in text or "read-only" in text:
        return errno.EROFS
    if "disk is full" in text or "database or disk is full" in text:
        return errno.ENOSPC
    return getattr(error, "errno", None)


def storage_error(path: Path, error: BaseException) -> CrnError:
    """The one line for a responses database that cannot be opened or written: a full or read-only
    disk as every other failed write says it (``files.write_error``), else what SQLite said."""
    code = disk_errno(error)
    if code in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT):
        return write_error(path, OSError(code, os.strerror(code)))
    return CrnError(f"{path}: cannot open the responses database ({one_line(error)}); check the file and its folder")


def _connect(path: Path) -> sqlite3.Connection:
    try:
        con = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=FULL")  # WAL + FULL: a committed answer survives a power cut
        con.execute("PRAGMA foreign_keys=ON")
        con.executescript(_SCHEMA)
        have = _columns(con, "participants")
        for column, declaration in _ADDED.items():  # a database from an earlier version
            if column not in have:
                con.execute(f"ALTER TABLE participants ADD COLUMN {column} {declaration}")
        con.execute("CREATE UNIQUE INDEX IF NOT EXISTS participants_prolific_pid ON participants (prolific_pid)")
    except sqlite3.Error as e:
        raise storage_error(path, e) from None
    return con


class ResponseStore:
    """The responses database of one study folder; thread-safe (one connection behind a lock).
    ``manifest``: `study_manifest`'s view. With ``simulated=True`` every participant who joins is recorded
    as simulated. ``clock`` (tests): returns the current UTC datetime."""

    def __init__(self, study_dir: Path, manifest: dict, *, simulated: bool = False,
                 clock: Callable[[], datetime] | None = None):
        self.path = Path(study_dir) / DB_NAME
        self.simulated = bool(simulated)
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        self.jobs = [job["job"] for job in manifest["jobs"]]
        self.trials = {job["job"]: job["trials"] for job in manifest["jobs"]}
        attention = manifest.get("attention") or {}
        self.min_sentinel_accuracy = attention.get("min_sentinel_accuracy")
        prolific = manifest.get("prolific") or {}
        minutes = prolific.get("abandon_after_minutes")
        self.abandon_after = None if minutes is None else timedelta(minutes=minutes)
        self._lock = threading.Lock()
        self._con = _connect(self.path)
        sha1 = manifest_sha1(study_dir)
        try:
            with self._lock, self._con:
                self._con.execute("BEGIN IMMEDIATE")
                self._con.execute("INSERT OR IGNORE INTO meta VALUES ('manifest_sha1', ?)", (sha1,))
                self._con.execute("INSERT OR IGNORE INTO meta VALUES ('study_id', ?)", (manifest["study_id"],))
                self._con.execute("INSERT OR IGNORE INTO meta VALUES ('secret', ?)", (secrets.token_hex(32),))
                meta = dict(self._con.execute("SELECT key, value FROM meta"))
        except sqlite3.Error as e:
            self._con.close()
            raise storage_error(self.path, e) from None
        self._secret = meta["secret"]
        if meta["manifest_sha1"] != sha1:
            self._con.close()
            raise CrnError(
                f"{self.path}: these responses were recorded against a different manifest.json; "
                "restore that manifest, or move responses.sqlite away to start a new study"
            )

    def close(self) -> None:
        with self._lock:
            self._con.close()


    def join(self, prolific: dict | None = None) -> Seat:
        """A new participant (random id, secret token) on the least-used job (ties: manifest order);
        simulated (id ``sim-...``) when the store was opened with ``simulated=True``. ``prolific``: the
        validated ``{prolific_pid, prolific_study_id, prolific_session_id}``; a PROLIFIC_PID seen before
        resumes its participant (a new token beside the old ones, the latest SESSION_ID kept)."""
        token = secrets.token_urlsafe(24)
        moment = self.clock()
        now = utc_iso(moment)
        with self._lock, self._con:
            self._con.execute("BEGIN IMMEDIATE")
            if prolific is not None:
                row = self._con.execute("SELECT participant, job FROM participants WHERE prolific_pid = ?",
                                        (prolific["prolific_pid"],)).fetchone()
                if row is not None:
                    self._con.execute("INSERT INTO tokens VALUES (?, ?, ?)", (row[0], _token_hash(token), now))
                    self._con.execute("UPDATE participants SET prolific_session_id = ?, last_seen_utc = ? WHERE participant = ?",
                                      (prolific["prolific_session_id"], now, row[0]))
                    return Seat(row[0], token, row[1], True)
            participant = ("sim-" if self.simulated else "p-") + secrets.token_hex(8)
            job = self._least_used_job(moment)
            ids = [prolific[key] for key in PROLIFIC_KEYS] if prolific else [None] * 3
            self._con.execute(
                "INSERT INTO participants (participant, token_sha256, job, joined_utc, simulated, prolific_pid, "
                "prolific_study_id, prolific_session_id, last_seen_utc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (participant, _token_hash(token), job, now, int(self.simulated), *ids, now),
            )
        return Seat(participant, token, job, False)

    def _least_used_job(self, now: datetime) -> str:
        """The job with the fewest sessions that count (call inside a transaction). Without an abandonment
        time every participant counts; with one, only sessions finished by an attentive participant and
        unfinished ones active within that time."""
        if self.abandon_after is None:
            used = dict(self._con.execute("SELECT job, COUNT(*) FROM participants GROUP BY job"))
        else:
            cutoff = utc_iso(now - self.abandon_after)
            used = dict(self._con.execute(
                "SELECT job, COUNT(*) FROM participants WHERE (finished_utc IS NOT NULL AND passed_attention IS NOT 0) "
                "OR (finished_utc IS NULL AND COALESCE(last_seen_utc, joined_utc) >= ?) GROUP BY job", (cutoff,)))
        return min(self.jobs, key=lambda j: used.get(j, 0))

    def decline(self, prolific: dict | None = None) -> None:
        """Record that someone declined consent (with their Prolific ids, if any); takes no job."""
        ids = [prolific[key] for key in PROLIFIC_KEYS] if prolific else [None] * 3
        with self._lock, self._con:
            self._con.execute("INSERT INTO declines VALUES (?, ?, ?, ?)", (*ids, utc_iso(self.clock())))

    def authenticate(self, participant: str, token: str) -> str | None:
        """The participant's job if the token is one of theirs, else None (unknown id or wrong token alike)."""
        digest = _token_hash(token)
        with self._lock:
            row = self._con.execute(
                "SELECT token_sha256, job FROM participants WHERE participant = ?", (participant,)
            ).fetchone()
            if row is None:
                return None
            later = [r[0] for r in self._con.execute("SELECT token_sha256 FROM tokens WHERE participant = ?", (participant,))]
        # compare with every token (no early exit on a match): the time taken does not depend on which one it is
        matches = [hmac.compare_digest(known, digest) for known in [row[0], *later]]
        return row[1] if any(matches) else None

    def answered(self, participant: str) -> int:
        """How many trials the participant has answered; they are always the first ones, in order."""
        with self._lock:
            return self._con.execute("SELECT COUNT(*) FROM answers WHERE participant = ?", (participant,)).fetchone()[0]

    def record(
        self,
        participant: str,
        trial: int,
        chosen_side: str,
        measured_ms: float | None,
        response_ms: float | None,
        frame_ms: float | None,
    ) -> None:
        """Commit one answer; AlreadyAnswered unless ``trial`` is the participant's next unanswered one. The
        last answer of a job also records that the session finished and whether it passed the attention rule."""
        now = utc_iso(self.clock())
        with self._lock, self._con:
            self._con.execute("BEGIN IMMEDIATE")
            done = self._con.execute("SELECT COUNT(*) FROM answers WHERE participant = ?", (participant,)).fetchone()[0]
            if trial != done:
                raise AlreadyAnswered(f"trial {trial} is not the next one ({done})")
            self._con.execute(
                "INSERT INTO answers VALUES (?, ?, ?, ?, ?, ?, ?)",
                (participant, trial, chosen_side, measured_ms, response_ms, frame_ms, now),
            )
            job = self._con.execute("SELECT job FROM participants WHERE participant = ?", (participant,)).fetchone()[0]
            finished = trial + 1 >= len(self.trials[job])
            passed = self._passes_attention(participant, job) if finished else None
            self._con.execute("UPDATE participants SET last_seen_utc = ?, finished_utc = ?, passed_attention = ? "
                              "WHERE participant = ?", (now, now if finished else None, passed, participant))

    def _passes_attention(self, participant: str, job: str) -> int | None:
        """1 if the participant's sentinel accuracy reaches the manifest's attention rule (or the job has no
        sentinels), 0 if not, None without a rule (call inside a transaction)."""
        if self.min_sentinel_accuracy is None:
            return None
        trials = self.trials[job]
        sentinels = [t["index"] for t in trials if t["kind"] == "sentinel"]
        if not sentinels:
            return 1
        answers = dict(self._con.execute("SELECT trial, chosen_side FROM answers WHERE participant = ?", (participant,)))
        right = sum(answers.get(i) == correct_answer(trials[i]) for i in sentinels)
        return int(right / len(sentinels) >= self.min_sentinel_accuracy)

    def session(self, participant: str) -> dict:
        """What the server needs to finish a participant's session: ``prolific`` (whether they came from
        Prolific) and ``passed_attention`` (True/False once finished under an attention rule, else None)."""
        with self._lock:
            pid, passed = self._con.execute(
                "SELECT prolific_pid, passed_attention FROM participants WHERE participant = ?", (participant,)).fetchone()
        return {"prolific": pid is not None, "passed_attention": None if passed is None else bool(passed)}

    def completion_code(self, participant: str) -> str:
        """A code the participant reports to get paid; reproducible from the database, unguessable without it."""
        digest = hmac.new(self._secret.encode(), participant.encode(), hashlib.sha256).hexdigest()
        return digest[:10].upper()


def _record(row: tuple, trial: dict) -> dict:
    """One canonical record from a stored answer (participant, job, trial, side, measured_ms, response_ms,
    frame_ms, answered_utc, simulated, pid, study, session) and its manifest trial."""
    participant, job, index, side, measured_ms, response_ms, frame_ms, answered_utc, simulated, *prolific = row
    simulated = bool(simulated) or participant.startswith("sim-")  # either mark makes it simulated
    if "image" in trial:  # hype: the one image is described as the left side; chosen = called real
        left, right = trial["image"], {}
        chosen_model = left["model"] if side == "real" else None
    else:
        left, right = trial["left"], trial["right"]
        chosen_model = trial[side]["model"]
    return {
        "source": "simulated-web" if simulated else "web", "participant": participant, "job": job, "trial": index,
        "kind": trial["kind"], "layout": trial["layout"], "left_model": left["model"], "right_model": right.get("model"),
        "chosen_side": side, "chosen_model": chosen_model, "duration_ms": trial["duration_ms"],
        "measured_ms": measured_ms, "response_ms": response_ms, "answered_utc": answered_utc, "frame_ms": frame_ms,
        "left_sha256": left.get("sha256"), "right_sha256": right.get("sha256"), **dict(zip(PROLIFIC_KEYS, prolific)),
    }


def read_responses(study_dir: Path) -> pd.DataFrame:
    """The web answers of a study as canonical response records (RESPONSE_COLUMNS + WEB_COLUMNS,
    source="web", or "simulated-web" for simulated participants), one row per answered trial, practice
    trials included (kind "practice"), ordered by participant then trial; empty if nobody answered yet."""
    study_dir = Path(study_dir)
    manifest = study_manifest(study_dir)
    columns = list(RESPONSE_COLUMNS) + [c for c in WEB_COLUMNS if c not in RESPONSE_COLUMNS]
    path = study_dir / DB_NAME
    if not path.exists():
        return pd.DataFrame({c: pd.Series(dtype="object") for c in columns})
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            meta = dict(con.execute("SELECT key, value FROM meta"))
            have = _columns(con, "participants")  # a database from an earlier version lacks the later columns
            extra = ", ".join(f"p.{c}" if c in have else "NULL" for c in ("simulated", *PROLIFIC_KEYS))
            rows = con.execute(
                "SELECT a.participant, p.job, a.trial, a.chosen_side, a.measured_ms, a.response_ms, a.frame_ms, "
                f"a.answered_utc, {extra} FROM answers a JOIN participants p USING (participant) "
                "ORDER BY p.joined_utc, a.participant, a.trial"
            ).fetchall()
        finally:
            con.close()
    except sqlite3.Error as e:
        raise CrnError(f"{path}: cannot read the responses database ({one_line(e)})") from e
    if meta.get("manifest_sha1") != manifest_sha1(study_dir):
        raise CrnError(f"{path}: recorded against a different manifest.json; restore the manifest it was made with")
    trials = {job["job"]: job["trials"] for job in manifest["jobs"]}
    records = []
    for row in rows:
        job, index = row[1], row[2]
        if job not in trials or not 0 <= index < len(trials[job]):
            raise CrnError(f"{path}: answer to {job} trial {index} which manifest.json does not have")
        records.append(_record(row, trials[job][index]))
    raw = pd.DataFrame(records, columns=columns)
    df = check_responses(raw, str(path))
    for column in columns:  # the web columns, wherever the canonical check leaves them out
        if column not in df.columns:
            df[column] = raw[column].to_numpy()
    return df.loc[:, columns]
