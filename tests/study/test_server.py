"""The study web app over plain HTTP (crn_repro/study/server.py, client.py): the JSON API, resuming across a
server restart, and refusal (always 4xx + JSON, never 5xx) of every kind of untrusted input."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import urllib.request

import pytest
from study_web import PROLIFIC, write_study

from crn_repro.errors import CrnError
from crn_repro.study.client import simulate_web_participants
from crn_repro.study.manifest import load_manifest
from crn_repro.study.server import is_loopback, make_server
from crn_repro.study.store import read_responses


@pytest.fixture
def timed_study(tmp_path):
    """Two jobs of 5 test trials (125/250/500 ms) + 1 sentinel (4 s)."""
    return write_study(tmp_path / "timed")


@pytest.fixture
def unlimited_study(tmp_path):
    return write_study(tmp_path / "unlimited", design="unlimited")


class HigherScore:
    """Chooses the side with the higher realism score (the observer model without noise)."""

    def choose(self, trial: dict, shown_ms: float | None) -> str:
        return "left" if trial["left"]["score"] > trial["right"]["score"] else "right"

    def response_ms(self) -> float:
        return 800.0


def request(server, method: str, path: str, body=None, headers: dict | None = None,
            source: str | None = None) -> tuple[int, dict, bytes]:
    """A raw request (path sent verbatim, no client-side normalisation): (status, headers, body); ``source``:
    the loopback address to send from (127.0.0.0/8 is all this machine's)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10,
                                            source_address=(source, 0) if source else None)
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    all_headers = {"Content-Type": "application/json"} if data is not None else {}
    all_headers.update(headers or {})
    connection.request(method, path, body=data, headers=all_headers)
    response = connection.getresponse()
    result = response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    connection.close()
    return result


def api(server, method: str, path: str, body=None, headers=None, source=None) -> tuple[int, dict]:
    status, response_headers, data = request(server, method, path, body, headers, source)
    assert response_headers["content-type"] == "application/json"
    return status, json.loads(data)


def refused(server, method, path, body=None, headers=None, status=None, source=None) -> str:
    """Assert the request is refused with a 4xx JSON error (``status`` if given); returns the message."""
    got, data = api(server, method, path, body, headers, source)
    assert 400 <= got < 500 and (status is None or got == status), (got, data)
    return data["error"]


@pytest.fixture
def server(timed_study):
    with make_server(timed_study, port=0) as running:
        yield running


def join(server, **extra) -> tuple[dict, dict]:
    status, joined = api(server, "POST", "/api/join", {"consent": True, **extra})
    assert status == 201 and joined["resumed"] is False, (status, joined)
    return {"participant": joined["participant"], "token": joined["token"]}, joined["state"]


def answer(creds, state, side="left", measured_ms=None, **extra) -> dict:
    trial = state["trial"]
    measured = trial["duration_ms"] if measured_ms is None else measured_ms
    return {**creds, "trial": trial["index"], "chosen_side": side, "measured_ms": measured, "response_ms": 700.0, **extra}


def test_page_assets_and_security_headers(server):
    for path, ctype in (("/", "text/html"), ("/static/app.js", "text/javascript"), ("/static/style.css", "text/css")):
        status, headers, body = request(server, "GET", path)
        assert status == 200 and headers["content-type"].startswith(ctype) and body
        csp = headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert headers["x-content-type-options"] == "nosniff"
    status, headers, page = request(server, "GET", "/")
    assert b"<script>" not in page and b"onclick" not in page and b"style=" not in page  # CSP-clean page


def test_study_info_hides_models_and_scores(server, timed_study):
    status, study = api(server, "GET", "/api/study")
    assert status == 200 and study["question"] == "Which image is more realistic?"
    assert study["mask"] == "/images/mask.png" and study["design"] == "timed"
    _, state = join(server)
    assert set(state["trial"]) == {"index", "practice", "duration_ms", "left", "right"} and not state["trial"]["practice"]
    assert study["presentation"] == "pair" and study["answers"] == ["left", "right"] and study["prolific"] is False
    assert study["consent"]["pay"] == "£1.80" and study["consent"]["duration_minutes"] == 12
    text = json.dumps([study, state])
    assert not any(model in text for model in ("crn", "pix2pix", "imgloss")) and "score" not in text
    status, headers, png = request(server, "GET", state["trial"]["left"])
    assert status == 200 and headers["content-type"] == "image/png" and png.startswith(b"\x89PNG")


def test_participant_completes_the_job_and_resumes_after_restart(timed_study):
    with make_server(timed_study, port=0) as server:
        port = server.server_address[1]
        creds, state = join(server)
        for _ in range(2):
            status, state = api(server, "POST", "/api/answer", answer(creds, state))
            assert status == 200
        assert state["progress"] == {"answered": 2, "total": 6, "practice": 0}
    assert len(read_responses(timed_study)) == 2  # on disk while no server runs

    with make_server(timed_study, port=port) as server:
        status, resumed = api(server, "GET", "/api/state?" + "&".join(f"{k}={v}" for k, v in creds.items()))
        assert status == 200 and resumed == state and resumed["trial"]["index"] == 2
        while state["status"] == "trial":
            status, state = api(server, "POST", "/api/answer", answer(creds, state, side="right"))
            assert status == 200
        assert state["status"] == "done" and len(state["completion_code"]) == 10 and state["redirect"] is None
        assert server.store.completion_code(creds["participant"]) == state["completion_code"]
    df = read_responses(timed_study)
    assert len(df) == 6 and df.trial.tolist() == list(range(6)) and df.participant.nunique() == 1
    assert df.chosen_side.tolist() == ["left"] * 2 + ["right"] * 4


def test_unlimited_trials_take_no_measured_time(unlimited_study):
    with make_server(unlimited_study, port=0) as server:
        assert api(server, "GET", "/api/study")[1]["mask"] is None
        creds, state = join(server)
        assert state["trial"]["duration_ms"] is None
        refused(server, "POST", "/api/answer", answer(creds, state, measured_ms=2000.0), status=400)
        status, state = api(server, "POST", "/api/answer", answer(creds, state))
        assert status == 200 and state["trial"]["index"] == 1


def test_simulated_participants_over_http(timed_study, tmp_path):
    with make_server(timed_study, port=0, simulated=True) as server:
        ids = simulate_web_participants(server.url, lambda i: HigherScore(), 3, timed_study)
        other = write_study(tmp_path / "other", design="unlimited")
        with pytest.raises(CrnError, match="different study"):
            simulate_web_participants(server.url, lambda i: HigherScore(), 1, other)
    with pytest.raises(CrnError, match="cannot reach the study server"):
        simulate_web_participants(server.url, lambda i: HigherScore(), 1, timed_study)  # stopped
    df = read_responses(timed_study)
    assert sorted(df.participant.unique()) == sorted(ids) and len(df) == 18
    assert set(df.source) == {"simulated-web"} and all(i.startswith("sim-") for i in ids)  # never stored as people
    assert (df.chosen_model == "real").sum() == (df.left_model.eq("real") | df.right_model.eq("real")).sum()
    assert (df.measured_ms == df.duration_ms).all() and (df.response_ms == df.duration_ms + 800.0).all()
    sentinels = df[df.kind == "sentinel"]
    manifest = load_manifest(timed_study)
    correct = {(j["job"], t["index"]): t["correct"] for j in manifest["jobs"] for t in j["trials"]}
    assert len(sentinels) == 3 and all(correct[(r.job, r.trial)] == r.chosen_side for r in sentinels.itertuples())


def test_simulated_participants_never_pass_as_people(timed_study):
    """Only a server made with simulated=True records simulated participants; no request can ask for it,
    and simulated participants refuse to answer a server that would store them as people."""
    with make_server(timed_study, port=0) as lab:
        assert api(lab, "GET", "/api/study")[1]["simulated"] is False
        with pytest.raises(CrnError, match="records its participants as people"):
            simulate_web_participants(lab.url, lambda i: HigherScore(), 1, timed_study)
        refused(lab, "POST", "/api/join", {"consent": True, "simulated": True}, status=400)
        person, state = join(lab)
        assert person["participant"].startswith("p-")
        assert api(lab, "POST", "/api/answer", answer(person, state))[0] == 200
    with make_server(timed_study, port=0, simulated=True) as sim:
        assert api(sim, "GET", "/api/study")[1]["simulated"] is True
        ids = simulate_web_participants(sim.url, lambda i: HigherScore(), 1, timed_study)
        joined, joined_state = join(sim)  # e.g. a browser on a simulated server
        assert joined["participant"].startswith("sim-")
    with make_server(timed_study, port=0) as lab:  # a simulated participant stays simulated on a lab server
        assert api(lab, "POST", "/api/answer", answer(joined, joined_state))[0] == 200
    df = read_responses(timed_study)
    sources = df.groupby("participant").source.first()
    assert sources[person["participant"]] == "web"
    assert sources[ids[0]] == sources[joined["participant"]] == "simulated-web"
    with sqlite3.connect(timed_study / "responses.sqlite") as con:
        assert dict(con.execute("SELECT participant, simulated FROM participants")) == {
            person["participant"]: 0, ids[0]: 1, joined["participant"]: 1}


def test_forged_or_foreign_credentials_are_refused(server):
    alice, alice_state = join(server)
    bob, _ = join(server)
    forged = {"participant": "p-0123456789abcdef", "token": alice["token"]}
    stolen = {"participant": alice["participant"], "token": bob["token"]}
    for creds in (forged, stolen, {"participant": alice["participant"], "token": "x" * 32}):
        refused(server, "POST", "/api/answer", answer(creds, alice_state), status=403)
        refused(server, "GET", f"/api/state?participant={creds['participant']}&token={creds['token']}", status=403)
    refused(server, "POST", "/api/answer", {k: v for k, v in answer(alice, alice_state).items() if k != "token"})
    refused(server, "GET", f"/api/state?participant={alice['participant']}", status=400)
    refused(server, "GET", f"/api/state?participant={alice['participant']}&token={alice['token']}&token=x")
    assert read_responses(server.study.dir).empty


@pytest.mark.parametrize("trial", [-1, 6, 10**12, "0", True, 1.5, None])
def test_trial_index_out_of_range_is_refused(server, trial):
    creds, state = join(server)
    refused(server, "POST", "/api/answer", dict(answer(creds, state), trial=trial), status=400)


def test_trial_out_of_turn_is_refused(server):
    creds, state = join(server)
    refused(server, "POST", "/api/answer", dict(answer(creds, state), trial=1), status=409)  # skipping ahead
    assert api(server, "POST", "/api/answer", answer(creds, state))[0] == 200
    refused(server, "POST", "/api/answer", answer(creds, state), status=409)  # answering trial 0 twice
    assert len(read_responses(server.study.dir)) == 1


MARKUP = ["<script>alert(1)</script>", "<img src=x onerror=alert(1)>", "left>", "left\x00", "left\n", "p-\x1b[31m"]


@pytest.mark.parametrize("field", ["participant", "token", "chosen_side"])
@pytest.mark.parametrize("value", MARKUP)
def test_markup_or_control_characters_are_refused(server, field, value):
    creds, state = join(server)
    message = refused(server, "POST", "/api/answer", dict(answer(creds, state), **{field: value}), status=400)
    assert "<" not in message  # the error never echoes the input


@pytest.mark.parametrize("body", [
    {"consent": True, "name": "<script>alert(1)</script>"},  # an unexpected field
    {"consent": "<b>yes</b>"}, {"consent": False}, {}, [], "consent", b"{not json", b"\xff\xfe",
])
def test_bad_join_bodies_are_refused(server, body):
    refused(server, "POST", "/api/join", body, status=400)


def test_markup_in_query_and_extra_fields_is_refused(server):
    creds, state = join(server)
    refused(server, "GET", "/api/state?participant=%3Cscript%3E&token=" + creds["token"], status=400)
    refused(server, "GET", "/api/state?participant=" + creds["participant"] + "&token=" + creds["token"] + "&x=%3Cb%3E")
    refused(server, "POST", "/api/answer", dict(answer(creds, state), comment="<img src=x onerror=alert(1)>"), status=400)


@pytest.mark.parametrize("key,value", [
    ("measured_ms", "125"), ("measured_ms", None), ("measured_ms", -5), ("measured_ms", 0), ("measured_ms", 1e12),
    ("measured_ms", True), ("measured_ms", [125]), ("response_ms", -1), ("response_ms", 1e15), ("response_ms", "fast"),
    ("frame_ms", 0), ("frame_ms", 1e6),
])
def test_absurd_times_are_refused(server, key, value):
    creds, state = join(server)
    refused(server, "POST", "/api/answer", dict(answer(creds, state), **{key: value}), status=400)


def test_non_finite_times_are_refused(server):
    creds, state = join(server)
    for literal in (b"NaN", b"Infinity", b"-Infinity", b"1e999"):
        body = json.dumps(dict(answer(creds, state), measured_ms=0)).encode().replace(b'"measured_ms": 0', b'"measured_ms": ' + literal)
        refused(server, "POST", "/api/answer", body, status=400)


def test_malformed_requests_are_refused(server):
    refused(server, "POST", "/api/join", b"{" + b" " * 5000 + b"}", status=413)
    refused(server, "POST", "/api/join", {"consent": True}, headers={"Content-Type": "text/plain"}, status=415)
    refused(server, "POST", "/api/join", {"consent": True}, headers={"Content-Length": "-1"})
    refused(server, "POST", "/api/join", {"consent": True}, headers={"Origin": "http://evil.example"}, status=403)
    refused(server, "GET", "/api/study", headers={"Host": "evil.example:80"}, status=403)  # DNS rebinding
    refused(server, "POST", "/api/nothing", {"consent": True}, status=404)
    for method in ("PUT", "DELETE", "PATCH", "HEAD", "BREW"):
        status, _, _ = request(server, method, "/api/join")
        assert status == 405


def test_paths_outside_the_study_images_are_refused(server, timed_study, tmp_path):
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"\x89PNG top secret")
    (timed_study / "images" / "link.png").symlink_to(secret)  # a link out, not in the manifest
    _, state = join(server)
    listed = timed_study / state["trial"]["left"].lstrip("/")
    for path in (
        "/images/../../etc/passwd", "/images/%2e%2e/%2e%2e/etc/passwd", "/images/..%2f..%2fmanifest.json",
        "/images/%252e%252e/manifest.json", "/manifest.json", "/responses.sqlite", "/static/../manifest.json",
        "//etc/passwd", "/%2Fetc%2Fpasswd", "/etc/passwd", "/images/", "/images/link.png", f"/images/..%2F{secret.name}",
        "/images/mask.png%00.txt", "/images\\..\\manifest.json", "/static/app.js/../../manifest.json",
    ):
        status, _, body = request(server, "GET", path)
        assert status in (400, 404), path
        assert b"top secret" not in body and b"root:" not in body and b"crn-repro-study" not in body
    listed.unlink()
    listed.symlink_to(secret)  # a listed image swapped for a link out after start-up
    refused(server, "GET", state["trial"]["left"], status=404)


def test_a_manifest_image_linking_outside_stops_start_up(timed_study, tmp_path):
    outside = tmp_path / "outside.png"
    outside.write_bytes(b"\x89PNG")
    image = timed_study / "images" / "mask.png"
    image.unlink()
    image.symlink_to(outside)
    with pytest.raises(CrnError, match="outside the study folder"):
        make_server(timed_study, port=0)


def test_binding_and_port_errors():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.20")


def test_port_in_use_is_a_crn_error(timed_study):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(CrnError, match="pick another --port"):
            make_server(timed_study, port=taken.getsockname()[1])


def test_responses_database_lives_in_the_study(server, timed_study):
    creds, state = join(server)
    api(server, "POST", "/api/answer", answer(creds, state))
    assert os.path.exists(timed_study / "responses.sqlite")


def test_cli_serve_runs_until_ctrl_c(timed_study):
    process = subprocess.Popen(
        [sys.executable, "-m", "crn_repro", "study", "serve", str(timed_study), "--port", "0"],
        stderr=subprocess.PIPE, text=True,
    )
    try:
        banner = process.stderr.readline()
        url = re.search(r"open (http://127\.0\.0\.1:\d+)/", banner).group(1)
        with urllib.request.urlopen(url + "/api/study", timeout=10) as response:
            assert json.loads(response.read())["study_id"] == "test-timed"
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0
        assert "every answer given so far is saved" in process.stderr.read()
    finally:
        process.kill()
        process.stderr.close()


def test_a_full_disk_answers_503_in_one_logged_line(server, monkeypatch, capsys):
    import sqlite3

    creds, state = join(server)

    def full(*args, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(server.store, "record", full)
    status, data = api(server, "POST", "/api/answer", answer(creds, state))
    assert status == 503 and "cannot save answers" in data["error"]
    err = capsys.readouterr().err
    assert "database or disk is full" in err and "Traceback" not in err


def test_a_client_leaving_mid_request_is_no_traceback(server, capsys):
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=5) as sock:
            sock.sendall(b"POST /api/join HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 500\r\n\r\n{\"cons" % server.server_address[1])
            sock.shutdown(socket.SHUT_WR)
    status, _ = api(server, "GET", "/api/study", headers={"Host": f"127.0.0.1:{server.server_address[1]}"})
    assert status == 200  # still serving
    assert "Traceback" not in capsys.readouterr().err


# -- Prolific, practice, hype (issue 22) ---------------------------------------------------------------

PROLIFIC_IDS = {"PROLIFIC_PID": "5a9d64f5f6dfdd0001eaa73d", "STUDY_ID": "66a1b2c3d4e5f60718293a4b",
                "SESSION_ID": "66a2b3c4d5e6f708192a3b4c"}


@pytest.fixture
def prolific_study(tmp_path):
    """A Prolific study: two jobs of 2 practice + 3 test + 2 sentinel trials, unlimited time."""
    return write_study(tmp_path / "prolific", design="unlimited", tests_per_job=3, sentinels_per_job=2, practice_per_job=2,
                       prolific=PROLIFIC)


def finish(server, creds, state, manifest_trials, sentinel_side=lambda trial: trial["correct"]) -> dict:
    """Answer every remaining trial (sentinels by ``sentinel_side``, the rest "left"); the final state."""
    while state["status"] == "trial":
        trial = manifest_trials[state["trial"]["index"]]
        side = sentinel_side(trial) if trial["kind"] == "sentinel" else "left"
        status, state = api(server, "POST", "/api/answer", answer(creds, state, side=side))
        assert status == 200, state
    return state


def test_prolific_participants_resume_and_leave_with_their_code(prolific_study):
    """The Prolific ids are stored with the participant; the same PROLIFIC_PID resumes its session; the
    completion URL comes only with the state after the last answer; a participant below the attention rule
    gets the failed-attention code instead."""
    manifest = load_manifest(prolific_study)
    trials = {job["job"]: job["trials"] for job in manifest["jobs"]}
    with make_server(prolific_study, port=0) as server:
        assert api(server, "GET", "/api/study")[1]["prolific"] is True
        creds, state = join(server, **PROLIFIC_IDS)
        status, state = api(server, "POST", "/api/answer", answer(creds, state))
        status, again = api(server, "POST", "/api/join", {"consent": True, **PROLIFIC_IDS})
        assert status == 200 and again["resumed"] is True and again["participant"] == creds["participant"]
        state.pop("feedback")  # the first trial was a practice one
        assert again["state"] == state and again["token"] != creds["token"]
        fresh = {"participant": again["participant"], "token": again["token"]}
        job = state["job"]
        last = None
        while state["status"] == "trial":
            assert "redirect" not in state  # no way back to Prolific before the last answer is saved
            last = state
            trial = trials[job][state["trial"]["index"]]
            status, state = api(server, "POST", "/api/answer", answer(fresh, state, side=trial["correct"] or "left"))
        assert state == {"status": "done", "job": job, "progress": {"answered": 7, "total": 7, "practice": 2},
                         "completion_code": "C1A2B3C4",
                         "redirect": "https://app.prolific.com/submissions/complete?cc=C1A2B3C4"}
        assert last["trial"]["index"] == 6
        status, resumed = api(server, "GET", "/api/state?" + "&".join(f"{k}={v}" for k, v in creds.items()))
        assert resumed == state  # the old token still works, and a finished session shows the same exit

        careless, state = join(server, **dict(PROLIFIC_IDS, PROLIFIC_PID="5a9d64f5f6dfdd0001eaa7ff"))
        wrong = {"left": "right", "right": "left"}
        state = finish(server, careless, state, trials[state["job"]], lambda trial: wrong[trial["correct"]])
        assert (state["completion_code"], state["redirect"]) == (
            "CATTFAIL", "https://app.prolific.com/submissions/complete?cc=CATTFAIL")
    df = read_responses(prolific_study)
    mine = df[df.participant == creds["participant"]]
    assert set(mine.prolific_pid) == {PROLIFIC_IDS["PROLIFIC_PID"]} and set(mine.prolific_study_id) == {PROLIFIC_IDS["STUDY_ID"]}
    assert set(mine.prolific_session_id) == {PROLIFIC_IDS["SESSION_ID"]} and len(mine) == 7
    assert mine.kind.tolist()[:2] == ["practice", "practice"]


def test_simulated_participants_take_part_in_a_prolific_study(prolific_study):
    with make_server(prolific_study, port=0, simulated=True) as server:
        ids = simulate_web_participants(server.url, lambda i: HigherScore(), 2, prolific_study)
    df = read_responses(prolific_study)
    assert sorted(df.participant.unique()) == sorted(ids) and set(df.source) == {"simulated-web"}
    assert df.groupby("participant").prolific_pid.nunique().tolist() == [1, 1]
    assert df.prolific_pid.str.fullmatch(r"[0-9a-f]{24}").all() and (df.kind == "practice").sum() == 4


def test_declining_consent_gives_the_declined_code_and_takes_no_job(prolific_study):
    with make_server(prolific_study, port=0) as server:
        status, exit_ = api(server, "POST", "/api/decline", PROLIFIC_IDS)
        assert status == 200 and exit_ == {"completion_code": "CDECLINE",
                                           "redirect": "https://app.prolific.com/submissions/complete?cc=CDECLINE"}
        assert api(server, "POST", "/api/decline", {}) == (200, {"completion_code": None, "redirect": None})
        _, state = join(server, **dict(PROLIFIC_IDS, PROLIFIC_PID="5a9d64f5f6dfdd0001eaa7ff"))
        assert state["job"] == "job-000"
        refused(server, "POST", "/api/decline", {"comment": "<b>no</b>"}, status=400)
    with sqlite3.connect(prolific_study / "responses.sqlite") as con:
        assert con.execute("SELECT COUNT(*) FROM declines").fetchone()[0] == 2


def test_the_redirect_waits_for_the_last_answer_to_be_saved(prolific_study, monkeypatch):
    """If the last answer cannot be committed the participant gets a 503, no code and no redirect; once it is
    saved they get both."""
    trials = {job["job"]: job["trials"] for job in load_manifest(prolific_study)["jobs"]}
    with make_server(prolific_study, port=0) as server:
        creds, state = join(server, **PROLIFIC_IDS)
        while state["progress"]["answered"] < state["progress"]["total"] - 1:
            trial = trials[state["job"]][state["trial"]["index"]]
            state = api(server, "POST", "/api/answer", answer(creds, state, side=trial["correct"] or "left"))[1]
        record = server.store.record

        def full(*args, **kwargs):
            raise sqlite3.OperationalError("database or disk is full")

        monkeypatch.setattr(server.store, "record", full)
        status, data = api(server, "POST", "/api/answer", answer(creds, state))
        assert status == 503 and "completion_code" not in data and "redirect" not in data
        assert api(server, "GET", "/api/state?" + "&".join(f"{k}={v}" for k, v in creds.items()))[1]["status"] == "trial"
        monkeypatch.setattr(server.store, "record", record)
        trial = trials[state["job"]][state["trial"]["index"]]
        status, done = api(server, "POST", "/api/answer", answer(creds, state, side=trial["correct"] or "left"))
        assert status == 200 and done["redirect"].endswith("?cc=C1A2B3C4")


@pytest.mark.parametrize("ids", [
    {},  # a Prolific study opened without the ids
    dict(PROLIFIC_IDS, PROLIFIC_PID="5a9d64f5f6dfdd0001eaa73"),  # 23 digits
    dict(PROLIFIC_IDS, STUDY_ID="66a1b2c3d4e5f60718293a4g"),  # not hex
    dict(PROLIFIC_IDS, SESSION_ID="<script>alert(1)</script>"),
    dict(PROLIFIC_IDS, PROLIFIC_PID=12345),
    {"PROLIFIC_PID": PROLIFIC_IDS["PROLIFIC_PID"]},  # one id of three
    {"{{%PROLIFIC_PID%}}": "x"},  # an unknown key
])
def test_malformed_or_missing_prolific_ids_are_refused(prolific_study, ids):
    with make_server(prolific_study, port=0) as server:
        message = refused(server, "POST", "/api/join", {"consent": True, **ids}, status=400)
        assert "<" not in message
    assert read_responses(prolific_study).empty


def test_a_lab_study_refuses_prolific_participants(server):
    message = refused(server, "POST", "/api/join", {"consent": True, **PROLIFIC_IDS}, status=400)
    assert "not set up for Prolific" in message
    refused(server, "POST", "/api/decline", PROLIFIC_IDS, status=400)


def test_practice_trials_come_first_with_feedback(prolific_study):
    trials = {job["job"]: job["trials"] for job in load_manifest(prolific_study)["jobs"]}
    with make_server(prolific_study, port=0) as server:
        creds, state = join(server, **PROLIFIC_IDS)
        job = trials[state["job"]]
        assert [state["trial"]["practice"], job[0]["kind"]] == [True, "practice"]
        wrong = {"left": "right", "right": "left"}[job[0]["correct"]]
        status, state = api(server, "POST", "/api/answer", answer(creds, state, side=wrong))
        assert state["feedback"] == {"correct": False, "answer": job[0]["correct"]} and state["trial"]["practice"]
        status, state = api(server, "POST", "/api/answer", answer(creds, state, side=job[1]["correct"]))
        assert state["feedback"] == {"correct": True, "answer": job[1]["correct"]} and not state["trial"]["practice"]
        while state["status"] == "trial":  # no feedback outside practice, sentinels included
            status, state = api(server, "POST", "/api/answer", answer(creds, state))
            assert "feedback" not in state
    assert read_responses(prolific_study).kind.tolist()[:2] == ["practice", "practice"]


def test_hype_trials_show_one_image_answered_real_or_fake(tmp_path):
    study = write_study(tmp_path / "hype", design="hype", jobs=1, tests_per_job=3, sentinels_per_job=1, practice_per_job=1)
    trials = load_manifest(study)["jobs"][0]["trials"]
    with make_server(study, port=0) as server:
        info = api(server, "GET", "/api/study")[1]
        assert info["presentation"] == "single" and info["answers"] == ["real", "fake"] and info["design"] == "hype"
        creds, state = join(server)
        assert set(state["trial"]) == {"index", "practice", "duration_ms", "image"}
        assert state["trial"]["image"] == "/" + trials[0]["image"]["image"]
        assert "truth" not in json.dumps(state) and "real" not in json.dumps(state["trial"])
        status, png = request(server, "GET", state["trial"]["image"])[::2]
        assert status == 200 and png.startswith(b"\x89PNG")
        refused(server, "POST", "/api/answer", answer(creds, state, side="left"), status=400)
        status, state = api(server, "POST", "/api/answer", answer(creds, state, side="fake"))
        assert state["feedback"] == {"correct": trials[0]["truth"] == "fake", "answer": trials[0]["truth"]}
        while state["status"] == "trial":
            status, state = api(server, "POST", "/api/answer", answer(creds, state, side="real"))
            assert status == 200
    df = read_responses(study)
    assert df.chosen_side.tolist() == ["fake", "real", "real", "real", "real"]
    assert df.left_sha256.tolist() == [t["image"]["sha256"] for t in trials] and df.right_sha256.isna().all()


def test_a_pair_study_refuses_hype_answers(server):
    creds, state = join(server)
    refused(server, "POST", "/api/answer", answer(creds, state, side="real"), status=400)


# -- who may join how often: issue 19 ("one address, many people") --------------------------------------

def test_a_refused_join_says_when_to_retry(timed_study):
    with make_server(timed_study, port=0, joins_per_minute=3) as server:
        for _ in range(3):
            join(server)
        status, headers, body = request(server, "POST", "/api/join", {"consent": True})
        data = json.loads(body)
        assert status == 429 and headers["retry-after"] == "20" and data["retry_after_s"] == 20  # 3 a minute: one per 20 s
        assert "retry in 20 s" in data["error"]
        refused(server, "POST", "/api/join", {"consent": True}, status=429)
        assert api(server, "POST", "/api/join", {"consent": True}, source="127.0.0.2")[0] == 201  # another address


def test_many_participants_from_one_address_all_get_in_with_the_default(timed_study):
    """The NAT case, directly: 100 participants joining at once from one address (a lab behind one NAT)
    all get in under the default limit."""
    from concurrent.futures import ThreadPoolExecutor

    from crn_repro.study.access import DEFAULT_JOINS_PER_MINUTE

    assert DEFAULT_JOINS_PER_MINUTE >= 100
    with make_server(timed_study, port=0) as server:
        with ThreadPoolExecutor(16) as pool:
            statuses = list(pool.map(lambda _: api(server, "POST", "/api/join", {"consent": True})[0], range(100)))
    assert statuses == [201] * 100


def test_no_limit_with_zero(timed_study):
    with make_server(timed_study, port=0, joins_per_minute=0) as server:
        assert all(api(server, "POST", "/api/join", {"consent": True})[0] == 201 for _ in range(150))


FORGED = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"}


def test_forwarded_headers_count_only_from_a_trusted_proxy(timed_study):
    """From an untrusted peer X-Forwarded-For is ignored (the limit stays on the peer, forged addresses or
    not) and so are X-Forwarded-Proto and foreign Host names; from the trusted proxy they name the client."""
    with make_server(timed_study, port=0, joins_per_minute=2, trusted_proxies=["127.0.0.1"]) as server:
        for i in range(2):
            assert api(server, "POST", "/api/join", {"consent": True}, {"X-Forwarded-For": f"198.51.100.{i}"},
                       source="127.0.0.3")[0] == 201
        refused(server, "POST", "/api/join", {"consent": True}, {"X-Forwarded-For": "198.51.100.9"}, status=429,
                source="127.0.0.3")  # the forged addresses did not help
        host = {"Host": "study.example.org", **FORGED}
        refused(server, "GET", "/api/study", headers=host, status=403, source="127.0.0.3")  # DNS rebinding stays refused
        origin = {"Origin": "https://study.example.org", "Host": "study.example.org", **FORGED}
        refused(server, "POST", "/api/join", {"consent": True}, origin, status=403, source="127.0.0.3")

        for i in range(5):  # through the proxy: each real client has its own limit
            status, _ = api(server, "POST", "/api/join", {"consent": True},
                            {"Host": "study.example.org", "Origin": "https://study.example.org",
                             "X-Forwarded-For": f"10.9.9.9, 198.51.100.{i}", "X-Forwarded-Proto": "https"})
            assert status == 201
        assert {"198.51.100.0", "198.51.100.4"} <= set(server.limiter._buckets) and "10.9.9.9" not in server.limiter._buckets
        # an https page through the proxy posting with a plain-http origin is cross-origin
        refused(server, "POST", "/api/join", {"consent": True}, {"Host": "study.example.org", "Origin": "http://study.example.org",
                                                                 "X-Forwarded-For": "198.51.100.77", "X-Forwarded-Proto": "https"},
                status=403)


def test_cli_serve_options_and_banner(prolific_study):
    from typer.main import get_command

    from crn_repro.cli import app
    from crn_repro.study.access import DEFAULT_JOINS_PER_MINUTE

    serve = get_command(app).commands["study"].commands["serve"]
    assert {p.name: p.default for p in serve.params}["joins_per_minute"] == DEFAULT_JOINS_PER_MINUTE
    bad = subprocess.run([sys.executable, "-m", "crn_repro", "study", "serve", str(prolific_study), "--port", "0",
                          "--trusted-proxy", "proxy.example"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "--trusted-proxy 'proxy.example': expected an IP address" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    process = subprocess.Popen(
        [sys.executable, "-m", "crn_repro", "study", "serve", str(prolific_study), "--port", "0", "--trusted-proxy",
         "127.0.0.1", "--joins-per-minute", "40", "--public-url", "https://study.example.org"],
        stderr=subprocess.PIPE, text=True,
    )
    try:
        lines = [process.stderr.readline() for _ in range(3)]
        assert "joins: at most 40 at once, then 40 a minute, per client address; trusted proxies: 127.0.0.1/32" in lines[1]
        assert lines[2].strip() == ("Prolific study URL (paste into Prolific): https://study.example.org/?"
                                    "PROLIFIC_PID={{%PROLIFIC_PID%}}&STUDY_ID={{%STUDY_ID%}}&SESSION_ID={{%SESSION_ID%}}")
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0
    finally:
        process.kill()
        process.stderr.close()
