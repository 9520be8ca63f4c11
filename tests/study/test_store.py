"""The web app's SQLite response store and its canonical records (crn_repro/study/store.py)."""

from __future__ import annotations

import json
import sqlite3
import threading

import pandas as pd
import pytest
from study_web import write_study

from crn_repro.errors import CrnError
from crn_repro.study import store as store_module
from crn_repro.study.manifest import load_manifest
from crn_repro.study.records import RESPONSE_COLUMNS
from crn_repro.study.store import AlreadyAnswered, ResponseStore, read_responses


@pytest.fixture
def timed_study(tmp_path):
    """Two jobs of 5 test trials (125/250/500 ms) + 1 sentinel (4 s)."""
    return write_study(tmp_path / "timed")


@pytest.fixture
def unlimited_study(tmp_path):
    return write_study(tmp_path / "unlimited", design="unlimited")


def open_store(study):
    return ResponseStore(study, load_manifest(study))


def test_jobs_assigned_least_used_first(timed_study):
    store = open_store(timed_study)
    assert [store.join()[2] for _ in range(5)] == ["job-000", "job-001", "job-000", "job-001", "job-000"]
    store.close()


def test_tokens_authenticate_and_are_not_stored(timed_study):
    store = open_store(timed_study)
    alice, alice_token, job = store.join()
    _, bob_token, _ = store.join()
    assert store.authenticate(alice, alice_token) == job
    assert store.authenticate(alice, bob_token) is None
    assert store.authenticate("p-0000000000000000", alice_token) is None
    store.close()
    for path in timed_study.glob(store_module.DB_NAME + "*"):  # the database and any WAL left beside it
        assert alice_token.encode() not in path.read_bytes()


def test_answers_in_order_once_and_survive_reopening(timed_study):
    store = open_store(timed_study)
    participant, token, _ = store.join()
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
            participant, _, _ = store.join()
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
    assert list(read_responses(timed_study).columns) == list(RESPONSE_COLUMNS)  # nobody answered yet
    manifest = load_manifest(timed_study)
    store = open_store(timed_study)
    participant, _, job = store.join()
    trials = manifest["jobs"][0]["trials"]
    for trial in trials:
        store.record(participant, trial["index"], "left" if trial["index"] % 2 else "right", 130.5, 800.0, 16.7)
    store.close()
    df = read_responses(timed_study)
    assert list(df.columns) == list(RESPONSE_COLUMNS) and len(df) == len(trials)
    assert (df.source == "web").all() and (df.participant == participant).all() and (df.job == job).all()
    for row, trial in zip(df.itertuples(), trials):
        assert row.trial == trial["index"] and row.kind == trial["kind"] and row.layout == trial["layout"]
        assert (row.left_model, row.right_model) == (trial["left"]["model"], trial["right"]["model"])
        assert row.chosen_model == trial[row.chosen_side]["model"]
        assert row.duration_ms == trial["duration_ms"] and row.measured_ms == 130.5 and row.response_ms == 800.0
    assert set(df.kind) == {"test", "sentinel"}


def test_unlimited_trials_have_empty_durations(unlimited_study):
    store = open_store(unlimited_study)
    participant, _, _ = store.join()
    store.record(participant, 0, "left", None, 2500.0, None)
    store.close()
    row = read_responses(unlimited_study).iloc[0]
    assert pd.isna(row.duration_ms) and pd.isna(row.measured_ms) and row.response_ms == 2500.0


def test_a_changed_manifest_is_refused(timed_study):
    store = open_store(timed_study)
    participant, _, _ = store.join()
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
    sim = ResponseStore(timed_study, load_manifest(timed_study), simulated=True)
    bot, token, _ = sim.join()
    sim.record(bot, 0, "left", 125.0, 900.0, 16.7)
    sim.close()
    store = open_store(timed_study)
    person, _, _ = store.join()
    store.record(person, 0, "right", 125.0, 900.0, 16.7)
    assert store.authenticate(bot, token) is not None  # the same database, whichever store opened it
    store.close()
    df = read_responses(timed_study).set_index("participant")
    assert bot.startswith("sim-") and person.startswith("p-")
    assert (df.loc[bot, "source"], df.loc[person, "source"]) == ("simulated-web", "web")


def test_a_database_from_before_simulated_participants_reads_and_upgrades(timed_study):
    """Its participants were all people: read as "web"; opening it for serving adds the column."""
    store = open_store(timed_study)
    person, _, _ = store.join()
    store.record(person, 0, "left", 125.0, 900.0, 16.7)
    store.close()
    with sqlite3.connect(timed_study / store_module.DB_NAME) as con:  # back to the old schema
        con.execute("ALTER TABLE participants DROP COLUMN simulated")
    assert read_responses(timed_study).source.tolist() == ["web"]
    sim = ResponseStore(timed_study, load_manifest(timed_study), simulated=True)
    bot, _, _ = sim.join()
    sim.record(bot, 0, "left", 125.0, 900.0, 16.7)
    sim.close()
    assert read_responses(timed_study).set_index("participant").source.to_dict() == {person: "web", bot: "simulated-web"}
