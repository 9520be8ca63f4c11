"""The study hosted as docs/study-deployment.md says, end to end: Debian's nginx with the page's own site
configuration and a self-signed certificate made by the page's openssl command, on 127.0.0.1 (free ports),
in front of the study server bound to loopback and trusting nginx (the page's `crn-repro study serve`
command, run as written but for the folder and port).

- headless Chromium participants arrive through HTTPS with Prolific URL parameters, take practice trials
  and trials, are sent back to Prolific with their code, one of them resumes from a second browser, and
  every answer lands with its participant's PROLIFIC_PID, STUDY_ID and SESSION_ID;
- 100 participants joining within seconds all get in under the default limit, from 100 addresses through
  the proxy (the limit applies to each real client) and from one address (a NAT) alike;
- a forged X-Forwarded-For is ignored from an untrusted peer, and nginx overwrites it on the way in.

Skipped when nginx or openssl (or, for the browser test, chromium) is missing, unless CRN_REQUIRE_PROXY=1
(set by .ci/run, which installs them), which turns that into a failure. Network traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shlex
import shutil
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlencode

import pytest
from study_web import PHASE_TIMEOUT_MS, PROLIFIC, catch_prolific, chromium, prolific_ids, require, take_part, wait_phase, write_study

from crn_repro.study.manifest import load_manifest
from crn_repro.study.server import make_server
from crn_repro.study.store import read_responses

REPO = Path(__file__).resolve().parents[2]
DEPLOYMENT = REPO / "docs" / "study-deployment.md"
NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.path.exists(p)), None)
OPENSSL = shutil.which("openssl")


def documented(name: str) -> str:
    """The code block marked ``<!-- deployment:NAME -->`` in docs/study-deployment.md."""
    text = DEPLOYMENT.read_text()
    match = re.search(rf"<!-- deployment:{name} -->\n```\w*\n(.*?)```", text, flags=re.S)
    assert match, f"docs/study-deployment.md has no block marked deployment:{name}"
    return match.group(1)


def substitute(text: str, replacements: dict[str, str]) -> str:
    """Replace each key once; a key the text does not hold exactly once fails (the page changed)."""
    for old, new in replacements.items():
        assert text.count(old) == 1, f"docs/study-deployment.md: expected {old!r} once in the block"
        text = text.replace(old, new)
    return text


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_listening(port: int, process: subprocess.Popen, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{what} exited with {process.returncode}: {log.read_text() if log else ''}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} is not listening on 127.0.0.1:{port} after 30 s")


def stop(process: subprocess.Popen, sig=signal.SIGTERM) -> int:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    """nginx with the documented site on free ports, its certificate from the documented openssl command;
    ``backend``: the port the study server must listen on."""
    require({"nginx (apt-get install nginx)": NGINX is not None, "openssl (apt-get install openssl)": OPENSSL is not None},
            "the reverse-proxy tests")
    root = tmp_path_factory.mktemp("proxy")
    subprocess.run(shlex.split(documented("openssl")), cwd=root, check=True, capture_output=True, timeout=60)
    ports = SimpleNamespace(https=free_port(), http=free_port(), backend=free_port())
    site = substitute(documented("nginx"), {
        "listen 80;": f"listen 127.0.0.1:{ports.http};",
        "listen 443 ssl;": f"listen 127.0.0.1:{ports.https} ssl;",
        "/etc/letsencrypt/live/study.example.org/fullchain.pem": str(root / "fullchain.pem"),
        "/etc/letsencrypt/live/study.example.org/privkey.pem": str(root / "privkey.pem"),
        "http://127.0.0.1:8000": f"http://127.0.0.1:{ports.backend}",
    })
    temp = "\n".join(f"  {kind}_temp_path {root / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (root / "nginx.conf").write_text(
        ("user root;\n" if os.geteuid() == 0 else "")  # workers must read this test's private folder
        + f"daemon off;\nworker_processes 1;\npid {root / 'nginx.pid'};\nerror_log {root / 'error.log'} warn;\n"
        + "events { worker_connections 1024; }\n"
        + f"http {{\n  access_log {root / 'access.log'};\n{temp}\n{site}\n}}\n")
    command = [NGINX, "-p", str(root), "-c", str(root / "nginx.conf"), "-e", str(root / "error.log")]
    checked = subprocess.run([*command, "-t"], capture_output=True, text=True, timeout=60)  # `nginx -t`
    assert checked.returncode == 0, checked.stderr
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(ports.https, process, "nginx", root / "error.log")
        ports.tls = ssl.create_default_context(cafile=str(root / "fullchain.pem"))  # verifies the certificate for 127.0.0.1
        ports.root = root
        yield ports
    finally:
        stop(process, signal.SIGQUIT)  # nginx's graceful shutdown


def https(proxy, method: str, path: str, body=None, headers: dict | None = None, source: str | None = None):
    """A request through nginx (certificate verified): (status, headers, parsed JSON or raw body)."""
    connection = http.client.HTTPSConnection("127.0.0.1", proxy.https, context=proxy.tls, timeout=30,
                                             source_address=(source, 0) if source else None)
    data = None if body is None else json.dumps(body).encode()
    all_headers = {"Content-Type": "application/json", "Origin": f"https://127.0.0.1:{proxy.https}"} if data else {}
    connection.request(method, path, body=data, headers={**all_headers, **(headers or {})})
    response = connection.getresponse()
    raw = response.read()
    connection.close()
    parsed = json.loads(raw) if response.getheader("Content-Type") == "application/json" else raw
    return response.status, {k.lower(): v for k, v in response.getheaders()}, parsed


def test_the_documented_proxy_serves_the_study_over_https_only(proxy, tmp_path):
    study = write_study(tmp_path / "s", design="unlimited", jobs=1, tests_per_job=1, prolific=PROLIFIC)
    with make_server(study, port=proxy.backend, trusted_proxies=["127.0.0.1"]):
        status, headers, info = https(proxy, "GET", "/api/study")
        assert status == 200 and info["study_id"] == "test-unlimited" and info["prolific"] is True
        assert headers["strict-transport-security"] == "max-age=31536000"
        assert "script-src 'self'" in headers["content-security-policy"]  # the study server's own headers pass through
        plain = http.client.HTTPConnection("127.0.0.1", proxy.http, timeout=10)
        plain.request("GET", "/?PROLIFIC_PID=x")
        response = plain.getresponse()
        assert response.status == 301 and response.getheader("Location") == "https://127.0.0.1/?PROLIFIC_PID=x"
        plain.close()
        # a POST through the proxy from another site's page is still cross-origin
        status, _, data = https(proxy, "POST", "/api/join", {"consent": True, **prolific_ids(1)},
                                {"Origin": "https://evil.example"})
        assert status == 403 and "cross-origin" in data["error"]


def test_prolific_participants_in_chromium_through_the_https_proxy(proxy, tmp_path):
    """Three participants open the study URL Prolific would give them; one leaves after two trials and comes
    back from another browser. Every answer lands with its participant's ids; each is sent to Prolific's
    completion URL with the right code (one fails the attention check)."""
    study = write_study(tmp_path / "prolific", design="unlimited", jobs=2, tests_per_job=2, sentinels_per_job=1,
                        practice_per_job=1, prolific=PROLIFIC)
    trials = {job["job"]: job["trials"] for job in load_manifest(study)["jobs"]}
    command = substitute(documented("serve"), {"studies/demo": shlex.quote(str(study)), "--port 8000": f"--port {proxy.backend}"})
    argv = shlex.split(command)
    assert argv[:3] == ["crn-repro", "study", "serve"]
    log = tmp_path / "serve.log"
    with open(log, "w") as err:
        server = subprocess.Popen([sys.executable, "-m", "crn_repro", *argv[1:]], stderr=err, text=True)
    base = f"https://127.0.0.1:{proxy.https}/"
    sent = {}
    try:
        wait_listening(proxy.backend, server, "study serve", log)
        with chromium() as browser:
            for i in (1, 2, 3):
                context = browser.new_context(ignore_https_errors=True)  # the self-signed certificate
                sent[i] = catch_prolific(context)
                page = context.new_page()
                page.goto(base + "?" + urlencode(prolific_ids(i)))
                wait_phase(page, "consent")
                page.click("#agree")
                wait_phase(page, "answer", 0)
                job = trials[page.get_attribute("body", "data-job")]
                wrong = {"left": "right", "right": "left"}
                if i == 3:  # leaves after the practice trial and one more; comes back from another browser
                    take_part(page, job[:2])
                    wait_phase(page, "answer", 2)
                    context.close()
                    context = browser.new_context(ignore_https_errors=True)
                    sent[i] = catch_prolific(context)
                    page = context.new_page()
                    page.goto(base + "?" + urlencode(prolific_ids(i)))
                    wait_phase(page, "consent")
                    page.click("#agree")
                    wait_phase(page, "answer", 2)  # its own session, where it stopped
                    take_part(page, job, lambda t: wrong[t["correct"]] if t["kind"] == "sentinel" else "left", start=2)
                else:
                    take_part(page, job)
                page.wait_for_url("https://app.prolific.com/**", timeout=PHASE_TIMEOUT_MS)
                context.close()
    finally:
        assert stop(server) == 0
    completion = "https://app.prolific.com/submissions/complete?cc="
    assert sent == {1: [completion + "C1A2B3C4"], 2: [completion + "C1A2B3C4"], 3: [completion + "CATTFAIL"]}
    df = read_responses(study)
    assert len(df) == 3 * 4 and df.participant.nunique() == 3
    for i in (1, 2, 3):
        ids = prolific_ids(i)
        mine = df[df.prolific_pid == ids["PROLIFIC_PID"]]
        assert len(mine) == 4 and mine.trial.tolist() == [0, 1, 2, 3] and mine.participant.nunique() == 1
        assert set(mine.prolific_study_id) == {ids["STUDY_ID"]} and set(mine.prolific_session_id) == {ids["SESSION_ID"]}
        assert mine.kind.iloc[0] == "practice" and set(mine.source) == {"web"}
    assert "127.0.0.1 POST /api/answer 200" in log.read_text()  # the server logs the client nginx named


def join_many(proxy, sources: list[str], first: int) -> list[int]:
    """New participants (Prolific ids ``first``, ``first + 1``, ...) joining all at once through nginx, one
    from each loopback source address in ``sources``; their HTTP statuses."""
    def one(i):
        return https(proxy, "POST", "/api/join", {"consent": True, **prolific_ids(first + i)}, source=sources[i])[0]

    with ThreadPoolExecutor(32) as pool:
        return list(pool.map(one, range(len(sources))))


def test_a_hundred_participants_joining_within_seconds_all_get_in(proxy, tmp_path):
    """Issue 19's case: under the default limit, 100 joins at once through the proxy from 100 addresses (the
    limit counts each real client, not the proxy) and 100 from one address (a NAT) all get in."""
    study = write_study(tmp_path / "many", design="unlimited", jobs=4, tests_per_job=1, prolific=PROLIFIC)
    with make_server(study, port=proxy.backend, trusted_proxies=["127.0.0.1"]) as server:
        started = time.monotonic()
        spread = join_many(proxy, [f"127.0.1.{i + 1}" for i in range(100)], first=0)
        nat = join_many(proxy, ["127.0.2.1"] * 100, first=100)
        elapsed = time.monotonic() - started
        assert spread == [201] * 100 and nat == [201] * 100
        assert {f"127.0.1.{i + 1}" for i in range(100)} | {"127.0.2.1"} <= set(server.limiter._buckets)
        assert "127.0.0.1" not in server.limiter._buckets  # nginx's own address never counted
    with sqlite3.connect(study / "responses.sqlite") as con:  # 200 people, jobs balanced
        assert dict(con.execute("SELECT job, COUNT(DISTINCT prolific_pid) FROM participants GROUP BY job")) == {
            f"job-{j:03d}": 50 for j in range(4)}
    print(f"200 joins through nginx in {elapsed:.1f} s")


def test_a_forged_forwarded_for_never_earns_another_address(proxy, tmp_path):
    """With 2 joins a minute: a peer that is not the trusted proxy cannot pose as other clients with
    X-Forwarded-For (the header is ignored), nor can a participant through nginx (which overwrites it); a
    refused join is told when to retry."""
    study = write_study(tmp_path / "forged", design="unlimited", jobs=2, tests_per_job=1)
    with make_server(study, port=proxy.backend, trusted_proxies=["127.0.0.1"], joins_per_minute=2) as server:
        def direct(i):
            connection = http.client.HTTPConnection("127.0.0.1", proxy.backend, timeout=10, source_address=("127.0.4.1", 0))
            connection.request("POST", "/api/join", json.dumps({"consent": True}), {
                "Content-Type": "application/json", "X-Forwarded-For": f"198.51.100.{i}", "X-Forwarded-Proto": "https"})
            response = connection.getresponse()
            result = response.status, response.getheader("Retry-After"), json.loads(response.read())
            connection.close()
            return result

        assert [direct(i)[0] for i in range(2)] == [201, 201]
        status, retry, data = direct(3)
        assert (status, retry, data["retry_after_s"]) == (429, "30", 30)
        through = [https(proxy, "POST", "/api/join", {"consent": True}, {"X-Forwarded-For": f"198.51.100.{i}"},
                         source="127.0.4.2")[0] for i in range(3)]
        assert through == [201, 201, 429]
        assert https(proxy, "POST", "/api/join", {"consent": True}, source="127.0.4.3")[0] == 201
        assert not any(key.startswith("198.51.100.") for key in server.limiter._buckets)
