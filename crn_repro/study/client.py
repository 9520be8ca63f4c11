"""Simulated participants over plain HTTP (paper Sec. 5.1, docs/facts.md §6): they join, read each trial and
answer through exactly the JSON API the browser page uses (see `crn_repro.study.server`), so the
server's validation and storage are exercised end to end. `crn-repro study simulate --via web` runs
them against its own in-process server made with ``make_server(..., simulated=True)``, which records
them as simulated participants; they refuse to answer a server that would record them as people.
"""

from __future__ import annotations

import json
import secrets
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from rich.console import Console
from rich.progress import track

from crn_repro.errors import CrnError
from crn_repro.study.manifest import trials_by_key
from crn_repro.study.store import study_manifest


class Chooser(Protocol):
    """A simulated participant's decision rule (`crn_repro.study.observer.Observer` is one)."""

    def choose(self, trial: dict, shown_ms: float | None) -> str: ...

    def response_ms(self) -> float:
        """Time from the end of the presentation (onset, for unlimited time) to the answer."""
        ...


def _call(base_url: str, method: str, path: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base_url.rstrip("/") + path, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as e:
        try:
            detail = json.loads(e.read()).get("error", "")
        except ValueError:
            detail = e.reason
        raise CrnError(f"{base_url}{path}: the study server refused the request ({e.code} {detail})") from None
    except urllib.error.URLError as e:
        raise CrnError(f"{base_url}: cannot reach the study server ({e.reason}); is it running?") from None


def simulate_web_participants(
    base_url: str, observer_factory: Callable[[int], Chooser], n: int, study_dir: Path
) -> list[str]:
    """Run ``n`` simulated participants to completion; returns their participant ids.

    The server must be a simulated one (``make_server(..., simulated=True)``), so the answers are
    stored as simulated. Participant ``i`` is ``observer_factory(i)`` (a `Chooser`, e.g. `crn_repro.study.observer.Observer`).
    The server never reveals models or realism scores, so the observer looks each trial up in
    ``study_dir``'s manifest by the job and index the server assigned; it answers practice trials too, and
    its answer must be one the design takes ("left"/"right", or "real"/"fake" for hype trials).
    Each timed trial is reported as shown for exactly its target duration; the response time is that
    duration plus the observer's ``response_ms()``.
    """
    manifest = study_manifest(Path(study_dir))
    info = _call(base_url, "GET", "/api/study")
    if info["study_id"] != manifest["study_id"]:
        raise CrnError(f"{base_url} serves a different study than {study_dir}; point both at the same folder")
    if info.get("simulated") is not True:
        raise CrnError(f"{base_url} records its participants as people; simulated ones only answer a server made with "
                       "make_server(..., simulated=True), as `crn-repro study simulate --via web` does")
    trials = trials_by_key(manifest)
    participants = []
    for i in track(range(n), description="simulated participants", console=Console(stderr=True), transient=True):
        observer = observer_factory(i)
        # a study on Prolific takes participants with Prolific ids: simulated ones get made-up ids of that form
        ids = {name: secrets.token_hex(12) for name in ("PROLIFIC_PID", "STUDY_ID", "SESSION_ID")} if info.get("prolific") else {}
        joined = _call(base_url, "POST", "/api/join", {"consent": True, **ids})
        creds = {"participant": joined["participant"], "token": joined["token"]}
        state = joined["state"]
        while state["status"] == "trial":
            shown = state["trial"]
            trial = trials.get((state["job"], shown["index"]))
            if trial is None or any("/" + trial[key]["image"] != shown.get(key) for key in ("image", "left", "right") if key in trial):
                raise CrnError(f"{base_url} serves a different study than {study_dir}; point both at the same folder")
            shown_ms = trial["duration_ms"]
            side = observer.choose(trial, shown_ms)
            state = _call(base_url, "POST", "/api/answer", {
                **creds, "trial": shown["index"], "chosen_side": side,
                "measured_ms": None if shown_ms is None else float(shown_ms),
                "response_ms": round((shown_ms or 0) + observer.response_ms(), 1),
            })
        participants.append(creds["participant"])
    return participants
