"""The web app's SQLite response store and its canonical records (crn_repro/study/store.py)."""

from __future__ import annotations

import json
import sqlite3
import threading
from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest
from study_web import PROLIFIC, write_study

from crn_repro.errors import CrnError
from crn_repro.study import store as store_module
from crn_repro.study.records import RESPONSE_COLUMNS
from crn_repro.study.store import WEB_COLUMNS, AlreadyAnswered, ResponseStore, read_responses, study_manifest

COLUMNS = list(RESPONSE_COLUMNS) + [c for c in WEB_COLUMNS if c not in RESPONSE_COLUMNS]


@pytest.fixture
def timed_study(tmp_path):
    """Two jobs of 5 test trials (125/250/500 ms) + 1 sentinel (4 s)."""
    return write_study(tmp_path / "timed")


@pytest.fixture
def unlimited_study(tmp_path):
    return write_study(tmp_path / "unlimited", design="unlimited")


def open_store(study, **kwargs):
    return ResponseStore(study, study_manifest(study), **kwargs)


def test_jobs_assigned_least_used_first(timed_study):
    store = open_store(timed_study)
    assert [store.join().job for _ in range(5)] == ["job-000", "job-001", "job-000", "job-001", "job-000"]
    store.close()


def test_tokens_authenticate_and_are_not_stored(timed_study):
    store = open_store(timed_study)
    alice, alice_token, job, _ = store.join()
    _, bob_token, _, _ = store.join()
    assert store.authenticate(alice, alice_token) == job
    assert store.authenticate(alice, bob_token) is None
    assert store.authenticate("p-0000000000000000", alice_token) is None
    store.close()
    for path in timed_study.glob(store_module.DB_NAME + "*"):  # the database and any WAL left beside it
        assert alice_token.encode() not in path.read_bytes()


def test_answers_in_order_once_and_survive_reopening(timed_study):
    store = open_store(timed_study)
    participant, token, _, _ = store.join()
    with pytest.raises(AlreadyAnswered):
        store.record(participant, 1, "left", 125.0, 900.0, 16.7)  # skips trial 0
    store.record(participant, 0, "left", 125.0, 900.0, 16.7)
    with pytest.raises(AlreadyAnswered):
        store.record(participant, 0, "right", 125.0, 900.0, 16.7)  # a second answer to trial 0
    code = store.completion_code(participant)
    store.close()

    store = open_store(timed_study)
    assert store.answered(participant) == 1
    assert store.authenticate(participant, token) == "job-000"
    assert store.completion_code(participant) == code != store.completion_code("p-0000000000000000")
    store.close()
    mode = sqlite3.connect(timed_study / store_module.DB_NAME).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_concurrent_joins_and_answers(timed_study):
    store = open_store(timed_study)
    errors = []

    def participant_run():
        try:
            participant = store.join().participant
            for trial in range(6):
                store.record(participant, trial, "right", 250.0, None, None)
        except (AlreadyAnswered, sqlite3.Error) as e:  # surfaced by the assert below
            errors.append(e)

    threads = [threading.Thread(target=participant_run) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store.close()
    assert errors == []
    df = read_responses(timed_study)
    assert len(df) == 48 and df.groupby("job").participant.nunique().to_dict() == {"job-000": 4, "job-001": 4}


def test_read_responses_gives_canonical_records(timed_study):
    assert list(read_responses(timed_study).columns) == COLUMNS  # nobody answered yet
    manifest = study_manifest(timed_study)
    store = open_store(timed_study)
    participant, _, job, _ = store.join()
    trials = manifest["jobs"][0]["trials"]
    for trial in trials:
        store.record(participant, trial["index"], "left" if trial["index"] % 2 else "right", 130.5, 800.0, 16.7)
    store.close()
    df = read_responses(timed_study)
    assert list(df.columns) == COLUMNS and len(df) == len(trials)
    assert (df.source == "web").all() and (df.participant == participant).all() and (df.job == job).all()
    for row, trial in zip(df.itertuples(), trials):
        assert row.trial == trial["index"] and row.kind == trial["kind"] and row.layout == trial["layout"]
        assert (row.left_model, row.right_model) == (trial["left"]["model"], trial["right"]["model"])
        assert row.chosen_model == trial[row.chosen_side]["model"]
        assert row.duration_ms == trial["duration_ms"] and row.measured_ms == 130.5 and row.response_ms == 800.0
        assert (row.left_sha256, row.right_sha256) == (trial["left"]["sha256"], trial["right"]["sha256"])
        assert row.frame_ms == 16.7 and pd.isna(row.prolific_pid) and pd.isna(row.prolific_session_id)
    assert set(df.kind) == {"test", "sentinel"}


def test_unlimited_trials_have_empty_durations(unlimited_study):
    store = open_store(unlimited_study)
    participant = store.join().participant
    store.record(participant, 0, "left", None, 2500.0, None)
    store.close()
    row = read_responses(unlimited_study).iloc[0]
    assert pd.isna(row.duration_ms) and pd.isna(row.measured_ms) and row.response_ms == 2500.0


def test_a_changed_manifest_is_refused(timed_study):
    store = open_store(timed_study)
    participant = store.join().participant
    store.record(participant, 0, "left", 125.0, None, None)
    store.close()
    path = timed_study / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["question"] = "Which image is sharper?"
    path.write_text(json.dumps(manifest))
    with pytest.raises(CrnError, match="different manifest.json"):
        open_store(timed_study)
    with pytest.raises(CrnError, match="different manifest.json"):
        read_responses(timed_study)


def test_simulated_store_marks_its_participants(timed_study):
    sim = ResponseStore(timed_study, study_manifest(timed_study), simulated=True)
    bot, token, _, _ = sim.join()
    sim.record(bot, 0, "left", 125.0, 900.0, 16.7)
    sim.close()
    store = open_store(timed_study)
    person = store.join().participant
    store.record(person, 0, "right", 125.0, 900.0, 16.7)
    assert store.authenticate(bot, token) is not None  # the same database, whichever store opened it
    store.close()
    df = read_responses(timed_study).set_index("participant")
    assert bot.startswith("sim-") and person.startswith("p-")
    assert (df.loc[bot, "source"], df.loc[person, "source"]) == ("simulated-web", "web")


def test_a_database_from_before_simulated_participants_reads_and_upgrades(timed_study):
    """Its participants were all people: read as "web"; opening it for serving adds the later columns."""
    store = open_store(timed_study)
    person = store.join().participant
    store.record(person, 0, "left", 125.0, 900.0, 16.7)
    store.close()
    with sqlite3.connect(timed_study / store_module.DB_NAME) as con:  # back to the first schema
        con.execute("DROP INDEX participants_prolific_pid")
        for column in store_module._ADDED:
            con.execute(f"ALTER TABLE participants DROP COLUMN {column}")
    assert read_responses(timed_study).source.tolist() == ["web"]
    sim = ResponseStore(timed_study, study_manifest(timed_study), simulated=True)
    bot = sim.join().participant
    sim.record(bot, 0, "left", 125.0, 900.0, 16.7)
    sim.close()
    assert read_responses(timed_study).set_index("participant").source.to_dict() == {person: "web", bot: "simulated-web"}


PID, STUDY, SESSION = "5a9d64f5f6dfdd0001eaa73d", "66a1b2c3d4e5f60718293a4b", "66a2b3c4d5e6f708192a3b4c"


def ids(pid=PID, session=SESSION) -> dict:
    return {"prolific_pid": pid, "prolific_study_id": STUDY, "prolific_session_id": session}


class Clock:
    """A settable UTC clock for abandonment."""

    def __init__(self):
        self.now = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now


def answer_all(store, participant, trials, side_of=lambda trial: "left") -> None:
    for trial in trials:
        store.record(participant, trial["index"], side_of(trial), trial["duration_ms"], 900.0, 8.3)


def test_one_prolific_pid_is_one_participant(tmp_path):
    """Joining again with the same PROLIFIC_PID resumes the session (same id, job and answers, a new token
    beside the old one, the latest SESSION_ID) instead of taking a second job."""
    study = write_study(tmp_path / "p", jobs=2, prolific=PROLIFIC)
    store = open_store(study)
    first = store.join(ids())
    store.record(first.participant, 0, "left", 125.0, 900.0, 16.7)
    again = store.join(ids(session="66a2b3c4d5e6f708192a3bff"))
    other = store.join(ids(pid="5a9d64f5f6dfdd0001eaa7ff"))
    assert not first.resumed and again.resumed and not other.resumed
    assert (again.participant, again.job) == (first.participant, first.job) and again.token != first.token
    assert other.job != first.job  # the resumed session took no second job
    assert store.authenticate(first.participant, first.token) == store.authenticate(first.participant, again.token) == first.job
    assert store.answered(again.participant) == 1
    store.close()
    row = read_responses(study).iloc[0]
    assert (row.prolific_pid, row.prolific_study_id, row.prolific_session_id) == (PID, STUDY, "66a2b3c4d5e6f708192a3bff")
    with sqlite3.connect(study / store_module.DB_NAME) as con:
        assert con.execute("SELECT COUNT(*) FROM participants").fetchone()[0] == 2
        with pytest.raises(sqlite3.IntegrityError):  # the database itself keeps one participant per PROLIFIC_PID
            con.execute("UPDATE participants SET prolific_pid = ? WHERE prolific_pid != ?", (PID, PID))


def test_declines_are_recorded_without_taking_a_job(tmp_path):
    study = write_study(tmp_path / "d", jobs=2, prolific=PROLIFIC)
    store = open_store(study)
    store.decline(ids())
    store.decline(None)
    assert store.join(ids(pid="5a9d64f5f6dfdd0001eaa7ff")).job == "job-000"
    store.close()
    with sqlite3.connect(study / store_module.DB_NAME) as con:
        assert con.execute("SELECT prolific_pid, prolific_session_id FROM declines").fetchall() == [(PID, SESSION), (None, None)]


def test_an_abandoned_job_returns_to_the_pool(tmp_path):
    """With prolific.abandon_after_minutes (30), a job whose participant has not answered for 30 minutes
    counts no more; active and finished (attentive) sessions do, and so does a session that resumes."""
    study = write_study(tmp_path / "a", jobs=2, tests_per_job=2, sentinels_per_job=1, prolific=PROLIFIC)
    clock = Clock()
    store = open_store(study, clock=clock)
    pid = iter(f"{i:024x}" for i in range(100))
    a = store.join(ids(pid=next(pid)))
    b = store.join(ids(pid=next(pid)))
    assert (a.job, b.job) == ("job-000", "job-001")
    store.record(a.participant, 0, "left", 125.0, 900.0, 16.7)
    clock.now += timedelta(minutes=20)
    store.record(b.participant, 0, "left", 125.0, 900.0, 16.7)
    clock.now += timedelta(minutes=15)  # a: 35 minutes without an answer; b: 15
    c = store.join(ids(pid=next(pid)))
    assert c.job == "job-000"  # a's job went back to the pool
    clock.now += timedelta(minutes=31)  # now b and c are idle too; a's session resumes
    assert store.join(ids(pid=store_pid(store, a.participant))).resumed
    assert store.join(ids(pid=next(pid))).job == "job-001"  # job-000 holds a's resumed session
    store.close()


def store_pid(store, participant) -> str:
    return store._con.execute("SELECT prolific_pid FROM participants WHERE participant = ?", (participant,)).fetchone()[0]


def test_finished_sessions_record_the_attention_rule(tmp_path):
    """The last answer records whether the sentinel accuracy reached attention.min_sentinel_accuracy; a
    finished inattentive session's job goes back to the pool, an attentive one's stays taken."""
    study = write_study(tmp_path / "att", jobs=2, tests_per_job=2, sentinels_per_job=2, prolific=PROLIFIC,
                        min_sentinel_accuracy=1.0)
    store = open_store(study)
    trials = {job["job"]: job["trials"] for job in study_manifest(study)["jobs"]}
    good = store.join(ids(pid="0" * 24))
    bad = store.join(ids(pid="1" * 24))
    assert store.session(good.participant) == {"prolific": True, "passed_attention": None}  # not finished yet
    answer_all(store, good.participant, trials[good.job], lambda t: t["correct"] or "left")
    answer_all(store, bad.participant, trials[bad.job], lambda t: {"left": "right", "right": "left"}.get(t["correct"], "left"))
    assert store.session(good.participant)["passed_attention"] is True
    assert store.session(bad.participant)["passed_attention"] is False
    assert store.join(ids(pid="2" * 24)).job == bad.job
    store.close()
    lab = write_study(tmp_path / "lab", jobs=1)
    store = open_store(lab)
    person = store.join()
    assert store.session(person.participant) == {"prolific": False, "passed_attention": None}
    store.close()


def test_practice_and_hype_answers_become_records(tmp_path):
    """Practice answers are stored with kind "practice"; a hype trial's record describes its one image as the
    left side (left_sha256; right_* empty), chosen_side is real/fake, chosen_model the image's model if
    called real; the attention rule checks hype sentinels against their truth."""
    study = write_study(tmp_path / "hype", design="hype", jobs=1, tests_per_job=3, sentinels_per_job=1, practice_per_job=2)
    trials = study_manifest(study)["jobs"][0]["trials"]
    assert [t["kind"] for t in trials][:2] == ["practice", "practice"] and "left" not in trials[0]
    store = open_store(study)
    seat = store.join()
    answers = ["real", "fake", "real", "real", "fake", "fake"]
    for trial, side in zip(trials, answers):
        store.record(seat.participant, trial["index"], side, None, 1500.0, 16.7)
    sentinel = next(t for t in trials if t["kind"] == "sentinel")
    assert store.session(seat.participant)["passed_attention"] is (answers[sentinel["index"]] == sentinel["truth"])
    store.close()
    df = read_responses(study)
    assert df.kind.tolist()[:2] == ["practice", "practice"] and df.chosen_side.tolist() == answers
    for row, trial in zip(df.itertuples(), trials):
        assert (row.left_model, row.left_sha256) == (trial["image"]["model"], trial["image"]["sha256"])
        assert pd.isna(row.right_model) and pd.isna(row.right_sha256)
        assert (row.chosen_model == trial["image"]["model"]) if row.chosen_side == "real" else pd.isna(row.chosen_model)
