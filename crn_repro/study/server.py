"""Lab web app of the human perceptual study: pairwise "which is more realistic?" trials (paper Sec. 5.1,
docs/facts.md §6), served from a study folder written by `crn-repro study make`.

Standard library only (`http.server` + `sqlite3`, see `store.py`). Bound to 127.0.0.1 unless told
otherwise. The page (`static/`) shows the study's instructions and a consent button, then one trial at a
time: fixation, both images at 400x200, and for timed trials the mask after the target duration
(presentation and measurement on requestAnimationFrame timestamps), an answer by key or click, a
progress bar, and a completion code. Each answer is committed before the reply, so a reload or a server
restart resumes the participant at their first unanswered trial.

JSON API (the page and `crn_repro.study.client` use exactly this; bodies are JSON objects of at most
4 KiB, POSTs need ``Content-Type: application/json``; every error is a 4xx ``{"error": "..."}``):

- ``GET /api/study`` -> ``{study_id, design, question, instructions_html, mask, simulated}``: what the
  consent page needs (``mask``: an image URL or null; ``simulated``: whether this server records its
  participants as simulated, see below).
- ``POST /api/join`` ``{"consent": true}`` -> 201 ``{participant, token, state}``: a new participant
  with a server-made id and secret token, on the least-used job. Keep both (the page keeps them in
  localStorage) to resume. At most 30 joins a minute from one address (429 beyond; not for simulated
  servers). A failed save (full or read-only disk) answers 503 and is logged in one line.
- ``GET /api/state?participant=..&token=..`` -> a state: ``{status: "trial", job, progress: {answered,
  total}, trial: {index, duration_ms, left, right}}`` (``left``/``right``: image URLs; ``duration_ms``
  null = unlimited time) or ``{status: "done", job, progress, completion_code}``.
- ``POST /api/answer`` ``{participant, token, trial, chosen_side, measured_ms, response_ms[, frame_ms]}``
  -> the next state. ``trial`` must be the next unanswered index (409 otherwise: re-read the state);
  ``chosen_side`` is "left" or "right"; ``measured_ms`` is the measured on-screen duration (required
  for timed trials, null for unlimited ones); ``response_ms`` the time from stimulus onset to the answer
  (or null); ``frame_ms`` the display's frame interval the page measured (optional).
- ``GET /``, ``/static/trial.js``, ``/static/app.js``, ``/static/style.css``: the page; ``GET /images/...``: only the image
  files the manifest names, checked to lie inside the study folder.

Simulated participants: `make_server(..., simulated=True)` (used only by `crn-repro study simulate
--via web`, which runs its own in-process server) records everyone who joins as simulated (ids
``sim-...``, see `crn_repro.study.store`). Whether a server is simulated is fixed when it is made; no
request can set or change it, and `crn-repro study serve` never makes one.

Refused with 4xx: unknown ids or wrong tokens (403), trials out of range (400) or out of turn (409),
strings holding markup or control characters, non-numeric or absurd times, unknown keys, oversized
bodies (413), cross-origin POSTs and, on a loopback binding, foreign Host headers (DNS rebinding).
"""

from __future__ import annotations

import collections
import contextlib
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
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, unquote, urlsplit

from rich.console import Console

from crn_repro.errors import CrnError, one_line
from crn_repro.study.manifest import load_manifest, resolve_image
from crn_repro.study.store import AlreadyAnswered, ResponseStore

if TYPE_CHECKING:
    from typing_extensions import Self

MAX_BODY_BYTES = 4096
MAX_MEASURED_MS = 60_000.0  # a timed trial never lasts a minute; more means a hidden tab or a forged value
MAX_RESPONSE_MS = 3_600_000.0
PARTICIPANT_RE = re.compile(r"(?:p|sim)-[0-9a-f]{16}")  # sim-: a simulated participant (see ResponseStore)
TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{32}")
UNSAFE_RE = re.compile(r"[<>\x00-\x1f\x7f]")
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

    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


class Study:
    """What the server needs from a study folder, checked once at start-up."""

    def __init__(self, study_dir: Path, simulated: bool = False):
        self.dir = Path(study_dir).resolve()
        self.simulated = bool(simulated)
        manifest = load_manifest(self.dir)
        self.manifest = manifest
        self.trials = {job["job"]: job["trials"] for job in manifest["jobs"]}
        self.images_dir = (self.dir / "images").resolve()
        # URL path -> file: the only files ever served from the study folder (load_manifest checked them)
        rels = [trial[side]["image"] for trials in self.trials.values() for trial in trials for side in ("left", "right")]
        self.files = {"/" + rel: resolve_image(self.dir, rel) for rel in rels + [manifest["mask"]] if rel}
        self.public = {
            "study_id": manifest["study_id"],
            "design": manifest["design"],
            "question": manifest["question"],
            "instructions_html": manifest["instructions_html"],
            "mask": "/" + manifest["mask"] if manifest["mask"] else None,
            "simulated": bool(simulated),
        }


JOINS_PER_MINUTE = 30  # per client address: a lab seats a new participant every few minutes, a script thousands

DISCONNECTS = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)


class StudyServer(ThreadingHTTPServer):
    """The study's HTTP server. `start()` runs it in a background thread (tests, simulations), `stop()`
    ends it; `serve_forever()` blocks (the CLI). Usable as a context manager that starts and stops it."""

    daemon_threads = True

    def __init__(self, study_dir: Path, host: str = "127.0.0.1", port: int = 8000, *, quiet: bool = False,
                 simulated: bool = False):
        self.study = Study(study_dir, simulated)
        self.quiet = quiet
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
        self._joins: dict[str, collections.deque] = {}  # client address -> times of its recent joins
        self._joins_lock = threading.Lock()

    def allow_join(self, address: str, now: float | None = None) -> bool:
        """Whether ``address`` may join now: at most JOINS_PER_MINUTE joins in any 60 s from one address."""
        now = time.monotonic() if now is None else now
        with self._joins_lock:
            recent = self._joins.setdefault(address, collections.deque())
            while recent and now - recent[0] >= 60:
                recent.popleft()
            if len(recent) >= JOINS_PER_MINUTE:
                return False
            recent.append(now)
            return True

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
        """What the participant sees next: their first unanswered trial, or the completion code."""
        trials = self.study.trials[job]
        answered = self.store.answered(participant)
        progress = {"answered": answered, "total": len(trials)}
        if answered >= len(trials):
            return {"status": "done", "job": job, "progress": progress,
                    "completion_code": self.store.completion_code(participant)}
        trial = trials[answered]
        return {"status": "trial", "job": job, "progress": progress,
                "trial": {"index": answered, "duration_ms": trial["duration_ms"],
                          "left": "/" + trial["left"]["image"], "right": "/" + trial["right"]["image"]}}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def make_server(
    study_dir: Path, host: str = "127.0.0.1", port: int = 8000, *, quiet: bool = True, simulated: bool = False
) -> StudyServer:
    """A study server bound to ``host:port`` (port 0 = a free one), not yet running: call `.start()`
    (background thread) or `.serve_forever()`, and `.stop()` when done; ``.url`` is its base URL.
    ``simulated=True``: everyone who joins is recorded as a simulated participant (`study simulate`)."""
    return StudyServer(Path(study_dir), host, port, quiet=quiet, simulated=simulated)


def serve(study_dir: Path, host: str = "127.0.0.1", port: int = 8000, *, quiet: bool = False) -> None:
    """Serve the study until Ctrl-C (`crn-repro study serve`)."""
    console = Console(stderr=True, soft_wrap=True)  # keep URLs on one line
    server = make_server(study_dir, host, port, quiet=quiet)

    def stop(number, frame):
        raise KeyboardInterrupt

    # Ctrl-C and SIGTERM stop the server, also where SIGINT is ignored (nohup, a service manager); installed
    # before the address is printed, so that a signal sent as soon as it appears stops the server cleanly
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if not server.loopback:
            console.print(f"[yellow]warning:[/] listening on {host}:{server.host_port}, reachable from other machines; "
                          "use it on a trusted lab network only (participants open http://<this machine's address>:"
                          f"{server.host_port}/)")
        where = server.url if server.loopback or host in ("0.0.0.0", "::") else f"http://{host}:{server.host_port}"
        console.print(f"study {server.study.public['study_id']!r}: open {where}/ in a browser "
                      f"(answers go to {server.store.path}); Ctrl-C stops")
        server.serve_forever()
    except KeyboardInterrupt:
        console.print("stopped; every answer given so far is saved")
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


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


class _Handler(BaseHTTPRequestHandler):
    server: StudyServer
    protocol_version = "HTTP/1.1"
    server_version = "crn-repro-study"
    sys_version = ""
    timeout = 30  # a stalled client frees its thread

    # -- plumbing ---------------------------------------------------------------------------------
    def end_headers(self) -> None:
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)
        super().end_headers()

    def log_request(self, code="-", size="-") -> None:  # the path only: queries hold tokens
        if not self.server.quiet:
            sys.stderr.write(f"{self.address_string()} {self.command} {urlsplit(self.path).path} {code}\n")

    def log_message(self, format, *args) -> None:
        if not self.server.quiet:
            super().log_message(format, *args)

    def log_error(self, format, *args) -> None:  # errors are logged even by a quiet server, one line each
        sys.stderr.write(f"{self.address_string()} error: {format % args}\n")

    def _send(self, status: HTTPStatus, body: bytes, content_type: str, cache: str = "no-store") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", cache)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: HTTPStatus, obj: dict) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _dispatch(self, routes: dict) -> None:
        try:
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
            self._json(e.status, {"error": str(e)})
        except DISCONNECTS:  # the client left; nothing to answer
            self.close_connection = True
        except (OSError, CrnError, sqlite3.OperationalError) as e:  # the disk (full, read-only): not saved; one line
            self.log_error("cannot save on %s %s: %s", self.command, urlsplit(self.path).path, one_line(e))
            self.close_connection = True
            with contextlib.suppress(*DISCONNECTS):
                self._json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "the server cannot save answers right now; tell the experimenter"})
        except Exception:  # a bug, not the client's fault: log it, answer in JSON, keep serving
            self.log_error("internal error on %s %s", self.command, urlsplit(self.path).path)
            self.close_connection = True
            self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error"})
            raise

    def _check_host(self) -> None:
        """On a loopback binding only local names may address us: a page elsewhere cannot rebind DNS onto it."""
        host = self.headers.get("Host", "")
        if self.server.loopback and host not in {f"{name}:{self.server.host_port}" for name in LOOPBACK_NAMES}:
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
        self._dispatch({"/api/join": self._join, "/api/answer": self._answer})

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
        if origin is not None and origin != f"http://{self.headers.get('Host', '')}":
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
        self._only(payload, {"consent"})
        if payload.get("consent") is not True:
            raise ApiError(HTTPStatus.BAD_REQUEST, "consent must be true to take part")
        if not self.server.study.simulated and not self.server.allow_join(self.client_address[0]):
            raise ApiError(HTTPStatus.TOO_MANY_REQUESTS, f"more than {JOINS_PER_MINUTE} joins a minute from this address; wait a minute")
        participant, token, job = self.server.store.join()
        self._json(HTTPStatus.CREATED, {"participant": participant, "token": token,
                                        "state": self.server.state(participant, job)})

    def _answer(self) -> None:
        payload = self._body()
        self._only(payload, {"participant", "token", "trial", "chosen_side", "measured_ms", "response_ms", "frame_ms"})
        participant, job = self._participant(payload)
        trials = self.server.study.trials[job]
        index = payload.get("trial")
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(trials):
            raise ApiError(HTTPStatus.BAD_REQUEST, f"trial: expected an integer index in [0, {len(trials) - 1}]")
        side = payload.get("chosen_side")
        if side not in ("left", "right"):
            raise ApiError(HTTPStatus.BAD_REQUEST, "chosen_side: expected 'left' or 'right'")
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
        self._json(HTTPStatus.OK, self.server.state(participant, job))
