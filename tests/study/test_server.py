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
from study_web import write_study

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


def request(server, method: str, path: str, body=None, headers: dict | None = None) -> tuple[int, dict, bytes]:
    """A raw request (path sent verbatim, no client-side normalisation): (status, headers, body)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    all_headers = {"Content-Type": "application/json"} if data is not None else {}
    all_headers.update(headers or {})
    connection.request(method, path, body=data, headers=all_headers)
    response = connection.getresponse()
    result = response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    connection.close()
    return result


def api(server, method: str, path: str, body=None, headers=None) -> tuple[int, dict]:
    status, response_headers, data = request(server, method, path, body, headers)
    assert response_headers["content-type"] == "application/json"
    return status, json.loads(data)


def refused(server, method, path, body=None, headers=None, status=None) -> str:
    """Assert the request is refused with a 4xx JSON error (``status`` if given); returns the message."""
    got, data = api(server, method, path, body, headers)
    assert 400 <= got < 500 and (status is None or got == status), (got, data)
    return data["error"]


@pytest.fixture
def server(timed_study):
    with make_server(timed_study, port=0) as running:
        yield running


def join(server) -> tuple[dict, dict]:
    status, joined = api(server, "POST", "/api/join", {"consent": True})
    assert status == 201
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
    assert set(state["trial"]) == {"index", "duration_ms", "left", "right"}
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
        assert state["progress"] == {"answered": 2, "total": 6}
    assert len(read_responses(timed_study)) == 2  # on disk while no server runs

    with make_server(timed_study, port=port) as server:
        status, resumed = api(server, "GET", "/api/state?" + "&".join(f"{k}={v}" for k, v in creds.items()))
        assert status == 200 and resumed == state and resumed["trial"]["index"] == 2
        while state["status"] == "trial":
            status, state = api(server, "POST", "/api/answer", answer(creds, state, side="right"))
            assert status == 200
        assert state["status"] == "done" and len(state["completion_code"]) == 10
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


def test_joins_are_rate_limited_per_address(server):
    from crn_repro.study.server import JOINS_PER_MINUTE

    for _ in range(JOINS_PER_MINUTE):
        join(server)
    message = refused(server, "POST", "/api/join", {"consent": True}, status=429)
    assert "joins a minute" in message
    assert server.allow_join("10.0.0.9")  # another address is not held back
    assert server.allow_join("127.0.0.1", now=10**9)  # a minute later the address may join again


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
