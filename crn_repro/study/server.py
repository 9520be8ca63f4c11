"""Web app of the human perceptual study: pairwise "which is more realistic?" trials (paper Sec. 5.1,
docs/facts.md §6) or single images answered "real"/"fake" (the hype design), served from a study folder
written by `crn-repro study make`, to a lab or, behind an HTTPS reverse proxy, to Prolific participants
(docs/study-deployment.md).

Standard library only (`http.server` + `sqlite3`, see `store.py`). Bound to 127.0.0.1 unless told
otherwise. The page (`static/`) shows the study's instructions and consent (pay, duration, ethics
approval, contact) with "I agree" / "I do not agree", then practice trials with feedback and one trial at
a time: fixation, the images at 400x200, and for timed trials the mask after the target duration
(presentation and measurement on requestAnimationFrame timestamps), an answer by key or click, a
progress bar, and a completion code (Prolific participants are sent back to Prolific with it). Each
answer is committed before the reply, so a reload or a server restart resumes the participant at their
first unanswered trial.

JSON API (the page and `crn_repro.study.client` use exactly this; bodies are JSON objects of at most
4 KiB, POSTs need ``Content-Type: application/json``; every error is a 4xx ``{"error": "..."}``):

- ``GET /api/study`` -> ``{study_id, design, presentation, answers, question, instructions_html, consent,
  prolific, mask, simulated}``: what the consent page needs (``presentation``: "pair" or "single" (hype);
  ``answers``: ["left", "right"] or ["real", "fake"]; ``consent``: ``{ethics_approval, contact, pay,
  duration_minutes, text_html}`` or null; ``prolific``: whether participants come from Prolific (then
  joining needs the Prolific ids); ``mask``: an image URL or null; ``simulated``: see below).
- ``POST /api/join`` ``{"consent": true[, "PROLIFIC_PID", "STUDY_ID", "SESSION_ID"]}`` -> 201
  ``{participant, token, resumed: false, state}``: a new participant with a server-made id and secret
  token, on the least-used job; or 200 with ``resumed: true``: a PROLIFIC_PID that joined before gets its
  own session back (a new token, the same job and answers). The three Prolific ids (24 hex digits each,
  as Prolific writes them into the study URL) are required where the study takes Prolific participants
  and refused where it does not. At most ``joins_per_minute`` joins from one client address at once, then
  that many a minute (429 beyond, with ``Retry-After`` seconds and ``{error, retry_after_s}``; not for
  simulated servers); the client address is the peer's, or, for requests from a ``trusted_proxies``
  address, the one its X-Forwarded-For names. A failed save (full or read-only disk) answers 503 and is
  logged in one line.
- ``POST /api/decline`` ``{[PROLIFIC_PID, STUDY_ID, SESSION_ID]}`` -> ``{completion_code, redirect}``:
  records that consent was declined (no job is taken); for Prolific participants the manifest's
  ``prolific.declined_code`` and its Prolific completion URL, else nulls. Counts against the join limit.
- ``GET /api/state?participant=..&token=..`` -> a state: ``{status: "trial", job, progress: {answered,
  total, practice}, trial: {index, practice, duration_ms, left, right | image}}`` (image URLs;
  ``practice``: a practice trial, answered with feedback; ``duration_ms`` null = unlimited time) or
  ``{status: "done", job, progress, completion_code, redirect}``: the lab's completion code, or for a
  Prolific participant the manifest's ``prolific.completion_code`` (``failed_attention_code`` where the
  sentinel accuracy is below ``attention.min_sentinel_accuracy``) and ``redirect`` =
  ``https://app.prolific.com/submissions/complete?cc=<code>``, given only once the last answer is committed.
- ``POST /api/answer`` ``{participant, token, trial, chosen_side, measured_ms, response_ms[, frame_ms]}``
  -> the next state, with ``feedback: {correct, answer}`` after a practice trial. ``trial`` must be the
  next unanswered index (409 otherwise: re-read the state); ``chosen_side`` is "left" or "right" (pairs)
  or "real" or "fake" (hype); ``measured_ms`` is the measured on-screen duration (required for timed
  trials, null for unlimited ones); ``response_ms`` the time from stimulus onset to the answer (or null);
  ``frame_ms`` the display's frame interval the page measured (optional).
- ``GET /``, ``/static/trial.js``, ``/static/app.js``, ``/static/style.css``: the page; ``GET /images/...``:
  only the image files the manifest names, checked to lie inside the study folder.

Simulated participants: `make_server(..., simulated=True)` (used only by `crn-repro study simulate
--via web`, which runs its own in-process server) records everyone who joins as simulated (ids
``sim-...``, see `crn_repro.study.store`). Whether a server is simulated is fixed when it is made; no
request can set or change it, and `crn-repro study serve` never makes one.

Refused with 4xx: unknown ids or wrong tokens (403), trials out of range (400) or out of turn (409),
strings holding markup or control characters, malformed Prolific ids, non-numeric or absurd times,
unknown keys, oversized bodies (413), cross-origin POSTs and, on a loopback binding, foreign Host headers
(DNS rebinding) except on requests a trusted proxy forwarded.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
import math
import re
import signal
import socket
import socketserver
import sqlite3
import sys
import threading
from collections.abc import Iterable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, quote, unquote, urlsplit

from rich.console import Console

from crn_repro.errors import CrnError, one_line
from crn_repro.files import require_writable
from crn_repro.study.access import DEFAULT_JOINS_PER_MINUTE, Client, JoinLimiter, client_of, retry_after, trusted_networks
from crn_repro.study.manifest import resolve_image
from crn_repro.study.store import ANSWERS, PROLIFIC_KEYS, AlreadyAnswered, ResponseStore, correct_answer, disk_errno, study_manifest, trial_images

if TYPE_CHECKING:
    from typing_extensions import Self

MAX_BODY_BYTES = 4096
MAX_MEASURED_MS = 60_000.0  # a timed trial never lasts a minute; more means a hidden tab or a forged value
MAX_RESPONSE_MS = 3_600_000.0
PARTICIPANT_RE = re.compile(r"(?:p|sim)-[0-9a-f]{16}")  # sim-: a simulated participant (see ResponseStore)
TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{32}")
UNSAFE_RE = re.compile(r"[<>\x00-\x1f\x7f]")
# Prolific's ids (participant, study, session) are 24 hex digits; the page sends them under their URL names
PROLIFIC_ID_RE = re.compile(r"[0-9a-fA-F]{24}")
PROLIFIC_PARAMS = dict(zip(("PROLIFIC_PID", "STUDY_ID", "SESSION_ID"), PROLIFIC_KEYS))
PROLIFIC_COMPLETE = "https://app.prolific.com/submissions/complete?cc="
PROLIFIC_URL_PARAMS = "PROLIFIC_PID={{%PROLIFIC_PID%}}&STUDY_ID={{%STUDY_ID%}}&SESSION_ID={{%SESSION_ID%}}"
STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/trial.js": ("trial.js", "text/javascript; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/style.css": ("style.css", "text/css; charset=utf-8"),
}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-origin",
}
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")


class ApiError(Exception):
    """A refused request: HTTP status + a message for the JSON body (never echoes the input)."""

    def __init__(self, status: HTTPStatus, message: str, headers: dict | None = None, **extra):
        super().__init__(message)
        self.status = status
        self.headers = headers or {}
        self.extra = extra


class Study:
    """What the server needs from a study folder, checked once at start-up."""

    def __init__(self, study_dir: Path, simulated: bool = False):
        self.dir = Path(study_dir).resolve()
        self.simulated = bool(simulated)
        manifest = study_manifest(self.dir)
        self.manifest = manifest
        self.trials = {job["job"]: job["trials"] for job in manifest["jobs"]}
        self.practice = {job: sum(t["kind"] == "practice" for t in trials) for job, trials in self.trials.items()}
        self.answers = ANSWERS[manifest["presentation"]]
        self.prolific = manifest["prolific"]
        self.images_dir = (self.dir / "images").resolve()
        # URL path -> file: the only files ever served from the study folder (load_manifest checked them)
        rels = [side["image"] for trials in self.trials.values() for trial in trials for side in trial_images(trial)]
        self.files = {"/" + rel: resolve_image(self.dir, rel) for rel in rels + [manifest["mask"]] if rel}
        self.public = {
            "study_id": manifest["study_id"],
            "design": manifest["design"],
            "presentation": manifest["presentation"],
            "answers": list(self.answers),
            "question": manifest["question"],
            "instructions_html": manifest["instructions_html"],
            "consent": manifest["consent"],
            "prolific": self.prolific is not None,
            "mask": "/" + manifest["mask"] if manifest["mask"] else None,
            "simulated": bool(simulated),
        }

    def shown(self, job: str, index: int) -> dict:
        """A trial as the page sees it: no models, scores, kinds (beyond practice) or answers."""
        trial = self.trials[job][index]
        images = {"image": "/" + trial["image"]["image"]} if "image" in trial else {
            "left": "/" + trial["left"]["image"], "right": "/" + trial["right"]["image"]}
        return {"index": index, "practice": trial["kind"] == "practice", "duration_ms": trial["duration_ms"], **images}


DISCONNECTS = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)


class StudyServer(ThreadingHTTPServer):
    """The study's HTTP server. `start()` runs it in a background thread (tests, simulations), `stop()`
    ends it; `serve_forever()` blocks (the CLI). Usable as a context manager that starts and stops it.
    ``trusted_proxies``: addresses or networks of reverse proxies whose X-Forwarded-For / -Proto name the
    client; ``joins_per_minute``: the per-client-address limit on joins (0: none)."""

    daemon_threads = True
    request_queue_size = 256  # listen backlog: socketserver's 5 resets connections when many people join at once

    def __init__(self, study_dir: Path, host: str = "127.0.0.1", port: int = 8000, *, quiet: bool = False,
                 simulated: bool = False, trusted_proxies: Iterable[str] = (),
                 joins_per_minute: int = DEFAULT_JOINS_PER_MINUTE):
        self.study = Study(study_dir, simulated)
        self.quiet = quiet
        self.trusted = trusted_networks(trusted_proxies)
        self.limiter = JoinLimiter(joins_per_minute)
        self.static = {route: (resources.files("crn_repro.study").joinpath("static", name).read_bytes(), ctype)
                       for route, (name, ctype) in STATIC.items()}
        self.store = ResponseStore(self.study.dir, self.study.manifest, simulated=simulated)
        try:
            super().__init__((host, port), _Handler)
        except OSError as e:
            self.store.close()
            raise CrnError(f"cannot listen on {host}:{port} ({one_line(e)}); pick another --port or --host") from e
        self.loopback = is_loopback(host)
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()  # open keep-alive connections, closed by stop()
        self._connections_lock = threading.Lock()

    def handle_error(self, request, client_address) -> None:
        """A client that went away mid-answer is normal, not a traceback; anything else is logged in full."""
        error = sys.exc_info()[1]
        if isinstance(error, DISCONNECTS):
            if not self.quiet:
                sys.stderr.write(f"{client_address[0]} disconnected early ({type(error).__name__})\n")
            return
        super().handle_error(request, client_address)

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # not HTTPServer's: its reverse-DNS lookup can stall start-up
        self.server_name, self.host_port = self.server_address[:2]

    @property
    def url(self) -> str:
        host = self.server_address[0]
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        return f"http://{'[' + host + ']' if ':' in host else host}:{self.host_port}"

    def start(self) -> Self:
        # a short poll interval lets stop() return at once (tests start and stop many servers)
        self._thread = threading.Thread(target=self.serve_forever, args=(0.05,), name="crn-study-server", daemon=True)
        self._thread.start()
        return self

    def process_request(self, request, client_address) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def stop(self) -> None:
        """Stop serving and drop open connections (as a restarted process would), then close the store."""
        if self._thread is not None:
            self.shutdown()
            self._thread.join()
            self._thread = None
        with self._connections_lock:
            for connection in self._connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
        self.server_close()
        self.store.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def state(self, participant: str, job: str) -> dict:
        """What the participant sees next: their first unanswered trial, or how to finish."""
        trials = self.study.trials[job]
        answered = self.store.answered(participant)
        progress = {"answered": answered, "total": len(trials), "practice": self.study.practice[job]}
        if answered < len(trials):
            return {"status": "trial", "job": job, "progress": progress, "trial": self.study.shown(job, answered)}
        return {"status": "done", "job": job, "progress": progress, **self.finish(participant)}

    def finish(self, participant: str) -> dict:
        """The code of a finished participant: Prolific's completion code (or the failed-attention one) with
        its redirect for a Prolific participant, the lab's own code for anyone else."""
        session = self.store.session(participant)
        if session["prolific"] and self.study.prolific is not None:
            key = "failed_attention_code" if session["passed_attention"] is False else "completion_code"
            return prolific_exit(self.study.prolific[key])
        return {"completion_code": self.store.completion_code(participant), "redirect": None}


def prolific_exit(code: str) -> dict:
    return {"completion_code": code, "redirect": PROLIFIC_COMPLETE + quote(code, safe="")}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def make_server(
    study_dir: Path, host: str = "127.0.0.1", port: int = 8000, *, quiet: bool = True, simulated: bool = False,
    trusted_proxies: Iterable[str] = (), joins_per_minute: int = DEFAULT_JOINS_PER_MINUTE,
) -> StudyServer:
    """A study server bound to ``host:port`` (port 0 = a free one), not yet running: call `.start()`
    (background thread) or `.serve_forever()`, and `.stop()` when done; ``.url`` is its base URL.
    ``simulated=True``: everyone who joins is recorded as a simulated participant (`study simulate`).
    ``trusted_proxies``, ``joins_per_minute``: see `StudyServer`."""
    return StudyServer(Path(study_dir), host, port, quiet=quiet, simulated=simulated, trusted_proxies=trusted_proxies,
                       joins_per_minute=joins_per_minute)


def serve(study_dir: Path, host: str = "127.0.0.1", port: int = 8000, *, quiet: bool = False,
          trusted_proxies: Iterable[str] = (), joins_per_minute: int = DEFAULT_JOINS_PER_MINUTE,
          public_url: str | None = None) -> None:
    """Serve the study until Ctrl-C (`crn-repro study serve`). ``public_url``: the address participants
    open (behind a reverse proxy), used in the printed study URL."""
    if public_url is not None and not re.fullmatch(r"https?://[^\s/?#<>]+/?", public_url):
        raise CrnError(f"--public-url {public_url!r}: expected the site's base URL, e.g. https://study.example.org")
    console = Console(stderr=True, soft_wrap=True)  # keep URLs on one line
    if Path(study_dir).is_dir():  # (a missing study: make_server says what to do)
        require_writable(Path(study_dir))  # a full or read-only disk: refuse now, not answer 503 to every participant
    server = make_server(study_dir, host, port, quiet=quiet, trusted_proxies=trusted_proxies,
                         joins_per_minute=joins_per_minute)

    def stop(number, frame):
        raise KeyboardInterrupt

    # Ctrl-C and SIGTERM stop the server, also where SIGINT is ignored (nohup, a service manager); installed
    # before the address is printed, so that a signal sent as soon as it appears stops the server cleanly
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        _banner(console, server, host, public_url)
        server.serve_forever()
    except KeyboardInterrupt:
        console.print("stopped; every answer given so far is saved")
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _banner(console: Console, server: StudyServer, host: str, public_url: str | None) -> None:
    """What `study serve` prints at start-up: where to open the study, and where participants come in."""
    if not server.loopback:
        console.print(f"[yellow]warning:[/] listening on {host}:{server.host_port}, reachable from other machines; "
                      "use it on a trusted lab network only (participants open http://<this machine's address>:"
                      f"{server.host_port}/), or bind 127.0.0.1 behind an HTTPS reverse proxy (docs/study-deployment.md)")
    where = server.url if server.loopback or host in ("0.0.0.0", "::") else f"http://{host}:{server.host_port}"
    console.print(f"study {server.study.public['study_id']!r}: open {where}/ in a browser "
                  f"(answers go to {server.store.path}); Ctrl-C stops")
    limit = server.limiter.per_minute
    proxies = ", ".join(map(str, server.trusted)) or "none (the peer's address is the client's)"
    console.print(f"joins: at most {limit} at once, then {limit} a minute, per client address" if limit else
                  "joins: no limit per client address", f"; trusted proxies: {proxies}", sep="")
    if server.study.prolific is not None:
        base = (public_url or "https://<your site>").rstrip("/")
        console.print(f"Prolific study URL (paste into Prolific): {base}/?{PROLIFIC_URL_PARAMS}")


def _credential(payload: dict, key: str, pattern: re.Pattern) -> str:
    value = payload.get(key)
    if not isinstance(value, str) or len(value) > 64 or UNSAFE_RE.search(value):
        raise ApiError(HTTPStatus.BAD_REQUEST, f"{key}: expected a short plain-text string")
    if not pattern.fullmatch(value):
        raise ApiError(HTTPStatus.FORBIDDEN, "unknown participant or wrong token")
    return value


def _number(payload: dict, key: str, low: float, high: float, *, required: bool) -> float | None:
    value = payload.get(key)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not low <= value <= high:
        raise ApiError(HTTPStatus.BAD_REQUEST, f"{key}: expected a number of milliseconds in [{low:g}, {high:g}]")
    return float(value)


def _prolific_ids(payload: dict, study: Study, *, required: bool) -> dict | None:
    """The Prolific ids of a join or decline (validated), None if it carries none. Where the study takes
    Prolific participants a join must carry them (``required``); where it does not, none may be sent."""
    given = {name: payload[name] for name in PROLIFIC_PARAMS if name in payload}
    if not given:
        if required and study.prolific is not None:
            raise ApiError(HTTPStatus.BAD_REQUEST, "this study takes participants from Prolific: open it from the study's "
                                                   "link on Prolific (it carries PROLIFIC_PID, STUDY_ID and SESSION_ID)")
        return None
    if study.prolific is None:
        raise ApiError(HTTPStatus.BAD_REQUEST, "this study is not set up for Prolific (its manifest has no prolific section)")
    for name in PROLIFIC_PARAMS:
        value = given.get(name)
        if not isinstance(value, str) or not PROLIFIC_ID_RE.fullmatch(value):
            raise ApiError(HTTPStatus.BAD_REQUEST, f"{name}: expected the 24 hex digits Prolific puts in the study link")
    return {key: given[name] for name, key in PROLIFIC_PARAMS.items()}


class _Handler(BaseHTTPRequestHandler):
    server: StudyServer
    protocol_version = "HTTP/1.1"
    server_version = "crn-repro-study"
    sys_version = ""
    timeout = 30  # a stalled client frees its thread
    client: Client | None = None

    # -- plumbing ---------------------------------------------------------------------------------
    def end_headers(self) -> None:
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)
        super().end_headers()

    def address_string(self) -> str:  # logs name the real client where a trusted proxy says who it is
        return self.client.address if self.client else self.client_address[0]

    def log_request(self, code="-", size="-") -> None:  # the path only: queries hold tokens
        if not self.server.quiet:
            sys.stderr.write(f"{self.address_string()} {self.command} {urlsplit(self.path).path} {code}\n")

    def log_message(self, format, *args) -> None:
        if not self.server.quiet:
            super().log_message(format, *args)

    def log_error(self, format, *args) -> None:  # errors are logged even by a quiet server, one line each
        sys.stderr.write(f"{self.address_string()} error: {format % args}\n")

    def _send(self, status: HTTPStatus, body: bytes, content_type: str, cache: str = "no-store",
              headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", cache)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: HTTPStatus, obj: dict, headers: dict | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json", headers=headers)

    def _dispatch(self, routes: dict) -> None:
        try:
            self.client = client_of(self.client_address[0], self.headers.get_all("X-Forwarded-For") or [],
                                    self.headers.get_all("X-Forwarded-Proto") or [], self.server.trusted)
            self._check_host()
            path = urlsplit(self.path).path
            route = routes.get(path)
            if route is None:
                if self.command == "GET":
                    return self._file(unquote(path))
                raise ApiError(HTTPStatus.NOT_FOUND, "no such endpoint")
            route()
        except ApiError as e:
            self.close_connection = True  # a refused body may be unread; never parse it as the next request
            self._json(e.status, {"error": str(e), **e.extra}, e.headers)
        except DISCONNECTS:  # the client left; nothing to answer
            self.close_connection = True
        except (OSError, CrnError, sqlite3.OperationalError) as e:  # the disk (full, read-only): not saved; one line
            self.log_error("cannot save on %s %s: %s", self.command, urlsplit(self.path).path, one_line(e))
            self.close_connection = True
            with contextlib.suppress(*DISCONNECTS):
                why = {errno.ENOSPC: " (its disk is full)", errno.EROFS: " (its disk is read-only)"}.get(disk_errno(e), "")
                self._json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": f"the server cannot save answers right now{why}; tell the experimenter"})
        except Exception:  # a bug, not the client's fault: log it, answer in JSON, keep serving
            self.log_error("internal error on %s %s", self.command, urlsplit(self.path).path)
            self.close_connection = True
            self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error"})
            raise

    def _check_host(self) -> None:
        """On a loopback binding only local names may address us (a page elsewhere cannot rebind DNS onto
        it), except through a trusted proxy, which forwards the public name participants use."""
        host = self.headers.get("Host", "")
        if self.server.loopback and not self.client.proxied and host not in {
                f"{name}:{self.server.host_port}" for name in LOOPBACK_NAMES}:
            raise ApiError(HTTPStatus.FORBIDDEN, "unexpected Host header; open the study at its 127.0.0.1 URL")

    def __getattr__(self, name: str):
        if name.startswith("do_"):  # any other method (PUT, DELETE, made-up ones): 405, not the stdlib's 501
            return self._not_allowed
        raise AttributeError(name)

    def _not_allowed(self) -> None:
        self.close_connection = True
        self._json(HTTPStatus.METHOD_NOT_ALLOWED, {"error": "method not allowed"})

    # -- requests ---------------------------------------------------------------------------------
    def do_GET(self) -> None:
        self._dispatch({"/api/study": self._study, "/api/state": self._state})

    def do_POST(self) -> None:
        self._dispatch({"/api/join": self._join, "/api/decline": self._decline, "/api/answer": self._answer})

    def _file(self, path: str) -> None:
        if path in self.server.static:
            body, ctype = self.server.static[path]
            return self._send(HTTPStatus.OK, body, ctype)
        file = self.server.study.files.get(path)
        # resolve again: a file swapped for a symlink after start-up must not lead outside the folder
        if file is None or not file.resolve().is_relative_to(self.server.study.images_dir) or not file.is_file():
            raise ApiError(HTTPStatus.NOT_FOUND, "not found")
        self._send(HTTPStatus.OK, file.read_bytes(), "image/png", cache="private, max-age=86400, immutable")

    def _body(self) -> dict:
        origin = self.headers.get("Origin")
        if origin is not None and origin != f"{self.client.scheme}://{self.headers.get('Host', '')}":
            raise ApiError(HTTPStatus.FORBIDDEN, "cross-origin request refused")
        if self.headers.get("Content-Type", "").split(";")[0].strip().lower() != "application/json":
            raise ApiError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send Content-Type: application/json")
        if "Transfer-Encoding" in self.headers:
            raise ApiError(HTTPStatus.LENGTH_REQUIRED, "send a Content-Length, not a chunked body")
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise ApiError(HTTPStatus.LENGTH_REQUIRED, "Content-Length required") from None
        if not 0 <= length <= MAX_BODY_BYTES:
            raise ApiError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body over {MAX_BODY_BYTES} bytes")
        try:
            payload = json.loads(self.rfile.read(length).decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise ApiError(HTTPStatus.BAD_REQUEST, "body is not JSON") from None
        if not isinstance(payload, dict):
            raise ApiError(HTTPStatus.BAD_REQUEST, "body must be a JSON object")
        return payload

    def _query(self) -> dict:
        try:
            query = parse_qs(urlsplit(self.path).query, keep_blank_values=True, strict_parsing=True, max_num_fields=4)
        except ValueError:
            raise ApiError(HTTPStatus.BAD_REQUEST, "malformed query string") from None
        if any(len(values) != 1 for values in query.values()):
            raise ApiError(HTTPStatus.BAD_REQUEST, "each query parameter once")
        return {key: values[0] for key, values in query.items()}

    def _participant(self, payload: dict) -> tuple[str, str]:
        """The authenticated (participant, job); 403 for a forged id or a wrong token alike."""
        participant = _credential(payload, "participant", PARTICIPANT_RE)
        token = _credential(payload, "token", TOKEN_RE)
        job = self.server.store.authenticate(participant, token)
        if job is None:
            raise ApiError(HTTPStatus.FORBIDDEN, "unknown participant or wrong token")
        return participant, job

    @staticmethod
    def _only(payload: dict, allowed: set[str]) -> None:
        if set(payload) - allowed:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"unexpected keys; allowed: {', '.join(sorted(allowed))}")

    def _study(self) -> None:
        self._json(HTTPStatus.OK, self.server.study.public)

    def _state(self) -> None:
        query = self._query()
        self._only(query, {"participant", "token"})
        participant, job = self._participant(query)
        self._json(HTTPStatus.OK, self.server.state(participant, job))

    def _join(self) -> None:
        payload = self._body()
        self._only(payload, {"consent", *PROLIFIC_PARAMS})
        if payload.get("consent") is not True:
            raise ApiError(HTTPStatus.BAD_REQUEST, "consent must be true to take part")
        prolific = _prolific_ids(payload, self.server.study, required=True)
        self._limit()
        seat = self.server.store.join(prolific)
        self._json(HTTPStatus.OK if seat.resumed else HTTPStatus.CREATED, {
            "participant": seat.participant, "token": seat.token, "resumed": seat.resumed,
            "state": self.server.state(seat.participant, seat.job)})

    def _limit(self) -> None:
        """Joins and declines count against the client address's limit (429 + Retry-After beyond it)."""
        if self.server.study.simulated:
            return
        wait = self.server.limiter.wait(self.client.address)
        if wait > 0:
            seconds = retry_after(wait)
            raise ApiError(HTTPStatus.TOO_MANY_REQUESTS, f"many people are joining from this address; retry in {seconds} s",
                           {"Retry-After": str(seconds)}, retry_after_s=seconds)

    def _decline(self) -> None:
        payload = self._body()
        self._only(payload, set(PROLIFIC_PARAMS))
        prolific = _prolific_ids(payload, self.server.study, required=False)
        self._limit()
        self.server.store.decline(prolific)
        exit_ = prolific_exit(self.server.study.prolific["declined_code"]) if prolific else {"completion_code": None, "redirect": None}
        self._json(HTTPStatus.OK, exit_)

    def _answer(self) -> None:
        payload = self._body()
        self._only(payload, {"participant", "token", "trial", "chosen_side", "measured_ms", "response_ms", "frame_ms"})
        participant, job = self._participant(payload)
        trials = self.server.study.trials[job]
        index = payload.get("trial")
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(trials):
            raise ApiError(HTTPStatus.BAD_REQUEST, f"trial: expected an integer index in [0, {len(trials) - 1}]")
        side = payload.get("chosen_side")
        answers = self.server.study.answers
        if side not in answers:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"chosen_side: expected {answers[0]!r} or {answers[1]!r}")
        timed = trials[index]["duration_ms"] is not None
        if not timed and payload.get("measured_ms") is not None:
            raise ApiError(HTTPStatus.BAD_REQUEST, "measured_ms: must be null on an unlimited-time trial")
        measured_ms = _number(payload, "measured_ms", 1.0, MAX_MEASURED_MS, required=timed)
        response_ms = _number(payload, "response_ms", 0.0, MAX_RESPONSE_MS, required=False)
        frame_ms = _number(payload, "frame_ms", 1.0, 1000.0, required=False)
        try:
            self.server.store.record(participant, index, side, measured_ms, response_ms, frame_ms)
        except AlreadyAnswered:
            raise ApiError(HTTPStatus.CONFLICT, "not the next unanswered trial; GET /api/state for it") from None
        state = self.server.state(participant, job)
        if trials[index]["kind"] == "practice":  # practice only: the answer it should have had
            answer = correct_answer(trials[index])
            state["feedback"] = {"correct": side == answer, "answer": answer}
        self._json(HTTPStatus.OK, state)
