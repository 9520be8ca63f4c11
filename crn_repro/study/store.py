"""Durable response store of the lab web app: `<study>/responses.sqlite` (paper Sec. 5.1, docs/facts.md §6).

Every answer is one committed SQLite transaction (WAL journal, ``synchronous=FULL``) before the server
replies, so a reload, a crashed browser or a restarted server loses nothing; UNIQUE(participant, trial)
makes a double submission impossible. Participants get a server-made random id and a secret token (only
its SHA-256 is stored). The database remembers the SHA-1 of the manifest it was recorded against and
refuses to mix answers from two different studies. `read_responses` turns the stored answers into the
canonical response records (`crn_repro.study.records.RESPONSE_COLUMNS`, source="web").

A store opened with ``simulated=True`` (only by `crn-repro study simulate --via web`, through
`crn_repro.study.server.make_server`; no HTTP request can ask for it) records every participant who
joins as simulated: id ``sim-...`` and ``participants.simulated = 1``; `read_responses` gives their
answers source="simulated-web", so they never pass as a person's.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
import threading
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from crn_repro.errors import CrnError, one_line
from crn_repro.study.manifest import load_manifest
from crn_repro.study.records import RESPONSE_COLUMNS, check_responses, empty_responses

DB_NAME = "responses.sqlite"

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
    chosen_side TEXT NOT NULL CHECK (chosen_side IN ('left', 'right')),
    measured_ms REAL,
    response_ms REAL,
    frame_ms REAL,
    answered_utc TEXT NOT NULL,
    UNIQUE (participant, trial)
);
"""


class AlreadyAnswered(Exception):
    """The trial was answered before (a second tab, a retried request): the caller re-reads the state."""


def utc_now() -> str:
    """ISO 8601 UTC timestamp with milliseconds, e.g. 2026-01-31T12:00:00.123Z."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def manifest_sha1(study_dir: Path) -> str:
    return hashlib.sha1((Path(study_dir) / "manifest.json").read_bytes()).hexdigest()


def _columns(con: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in con.execute(f"PRAGMA table_info({table})")}


def _connect(path: Path) -> sqlite3.Connection:
    try:
        con = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=FULL")  # WAL + FULL: a committed answer survives a power cut
        con.execute("PRAGMA foreign_keys=ON")
        con.executescript(_SCHEMA)
        if "simulated" not in _columns(con, "participants"):  # a database from before simulated participants
            con.execute("ALTER TABLE participants ADD COLUMN simulated INTEGER NOT NULL DEFAULT 0 CHECK (simulated IN (0, 1))")
    except sqlite3.Error as e:
        raise CrnError(f"{path}: cannot open the responses database ({one_line(e)}); check the file and its folder") from e
    return con


class ResponseStore:
    """The responses database of one study folder; thread-safe (one connection behind a lock).
    With ``simulated=True`` every participant who joins is recorded as simulated."""

    def __init__(self, study_dir: Path, manifest: dict, *, simulated: bool = False):
        self.path = Path(study_dir) / DB_NAME
        self.simulated = bool(simulated)
        self.jobs = [job["job"] for job in manifest["jobs"]]
        self._lock = threading.Lock()
        self._con = _connect(self.path)
        sha1 = manifest_sha1(study_dir)
        with self._lock, self._con:
            self._con.execute("BEGIN IMMEDIATE")
            self._con.execute("INSERT OR IGNORE INTO meta VALUES ('manifest_sha1', ?)", (sha1,))
            self._con.execute("INSERT OR IGNORE INTO meta VALUES ('study_id', ?)", (manifest["study_id"],))
            self._con.execute("INSERT OR IGNORE INTO meta VALUES ('secret', ?)", (secrets.token_hex(32),))
            meta = dict(self._con.execute("SELECT key, value FROM meta"))
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

    def join(self) -> tuple[str, str, str]:
        """A new participant (random id, secret token) on the least-used job (ties: manifest order);
        simulated (id ``sim-...``) when the store was opened with ``simulated=True``."""
        prefix = "sim-" if self.simulated else "p-"
        participant, token = prefix + secrets.token_hex(8), secrets.token_urlsafe(24)
        with self._lock, self._con:
            self._con.execute("BEGIN IMMEDIATE")
            used = dict(self._con.execute("SELECT job, COUNT(*) FROM participants GROUP BY job"))
            job = min(self.jobs, key=lambda j: used.get(j, 0))
            self._con.execute(
                "INSERT INTO participants (participant, token_sha256, job, joined_utc, simulated) VALUES (?, ?, ?, ?, ?)",
                (participant, _token_hash(token), job, utc_now(), int(self.simulated)),
            )
        return participant, token, job

    def authenticate(self, participant: str, token: str) -> str | None:
        """The participant's job if the token is theirs, else None (unknown id or wrong token alike)."""
        with self._lock:
            row = self._con.execute(
                "SELECT token_sha256, job FROM participants WHERE participant = ?", (participant,)
            ).fetchone()
        if row is None or not hmac.compare_digest(row[0], _token_hash(token)):
            return None
        return row[1]

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
        """Commit one answer; AlreadyAnswered unless ``trial`` is the participant's next unanswered one."""
        with self._lock, self._con:
            self._con.execute("BEGIN IMMEDIATE")
            done = self._con.execute("SELECT COUNT(*) FROM answers WHERE participant = ?", (participant,)).fetchone()[0]
            if trial != done:
                raise AlreadyAnswered(f"trial {trial} is not the next one ({done})")
            self._con.execute(
                "INSERT INTO answers VALUES (?, ?, ?, ?, ?, ?, ?)",
                (participant, trial, chosen_side, measured_ms, response_ms, frame_ms, utc_now()),
            )

    def completion_code(self, participant: str) -> str:
        """A code the participant reports to get paid; reproducible from the database, unguessable without it."""
        digest = hmac.new(self._secret.encode(), participant.encode(), hashlib.sha256).hexdigest()
        return digest[:10].upper()


def read_responses(study_dir: Path) -> pd.DataFrame:
    """The web answers of a study as canonical response records (RESPONSE_COLUMNS, source="web", or
    "simulated-web" for simulated participants), one row per answered trial, ordered by participant
    then trial; empty if nobody answered yet."""
    study_dir = Path(study_dir)
    manifest = load_manifest(study_dir)
    path = study_dir / DB_NAME
    if not path.exists():
        return empty_responses()
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            meta = dict(con.execute("SELECT key, value FROM meta"))
            # a database from before simulated participants has no such column: all its participants were people
            simulated = "p.simulated" if "simulated" in _columns(con, "participants") else "0"
            rows = con.execute(
                f"SELECT a.participant, p.job, a.trial, a.chosen_side, a.measured_ms, a.response_ms, a.answered_utc, {simulated} "
                "FROM answers a JOIN participants p USING (participant) ORDER BY p.joined_utc, a.participant, a.trial"
            ).fetchall()
        finally:
            con.close()
    except sqlite3.Error as e:
        raise CrnError(f"{path}: cannot read the responses database ({one_line(e)})") from e
    if meta.get("manifest_sha1") != manifest_sha1(study_dir):
        raise CrnError(f"{path}: recorded against a different manifest.json; restore the manifest it was made with")
    trials = {job["job"]: job["trials"] for job in manifest["jobs"]}
    records = []
    for participant, job, index, side, measured_ms, response_ms, answered_utc, simulated in rows:
        if job not in trials or not 0 <= index < len(trials[job]):
            raise CrnError(f"{path}: answer to {job} trial {index} which manifest.json does not have")
        simulated = bool(simulated) or participant.startswith("sim-")  # either mark makes it simulated
        trial = trials[job][index]
        records.append(
            {
                "source": "simulated-web" if simulated else "web",
                "participant": participant,
                "job": job,
                "trial": index,
                "kind": trial["kind"],
                "layout": trial["layout"],
                "left_model": trial["left"]["model"],
                "right_model": trial["right"]["model"],
                "chosen_side": side,
                "chosen_model": trial[side]["model"],
                "duration_ms": trial["duration_ms"],
                "measured_ms": measured_ms,
                "response_ms": response_ms,
                "answered_utc": answered_utc,
            }
        )
    return check_responses(pd.DataFrame(records, columns=list(RESPONSE_COLUMNS)), str(path))
