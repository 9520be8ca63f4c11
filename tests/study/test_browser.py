"""The study web app in a real browser: headless Chromium (Debian's `chromium`) driven by Playwright.

Checks the frame-accurate timed presentation (at the browser's 60 Hz, and at 120 and 144 Hz frame
timestamps injected into the page, ``FRAME_CLOCK``), resuming after a server restart, that markup from the
manifest or a forged participant id never runs as HTML, that requests forged in the page (a forged id, a
trial out of range, markup in any field, a path outside the study's images) are refused, a simulated
observer completing a study through the page, the consent page (pay, duration, ethics approval, contact;
declining sends a Prolific participant back with the declined code), practice trials with feedback and the
redirect to Prolific only once the last answer is saved, single-image (hype) trials, and a refused join
that waits and retries by itself; and the exported MTurk HIT page (``hit.html``): its timing at 125 ms,
that its submission carries the ``responses`` field, and its preview mode (instructions only, nothing to
start or submit). Skipped when chromium or Playwright is missing, unless CRN_REQUIRE_BROWSER=1 (set by
.ci/run), which turns that into a failure. The same page through a real HTTPS proxy: test_proxy.py.

Timing is checked by a probe the test installs in the page (``PRESENTATION_PROBE``), independent of the
page's own bookkeeping: it watches the DOM for the moments a stimulus image becomes visible and stops being
visible; the on-screen time it sees must be within one frame of the target *and* agree with the
``measured_ms`` the page recorded. ``test_the_probe_catches_a_mask_one_frame_late`` shows that it catches a
mask swapped in one frame late, which the page's own ``measured_ms`` does not reveal.
"""

from __future__ import annotations

import csv
import json
import sqlite3
from importlib import resources
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from study_web import PHASE_TIMEOUT_MS, PROLIFIC, catch_prolific, chromium, prolific_ids, take_part, wait_phase, write_study

from crn_repro.study.manifest import load_manifest
from crn_repro.study.mturk import decode_trials, export_mturk, import_results
from crn_repro.study.observer import Observer
from crn_repro.study.server import make_server
from crn_repro.study.store import read_responses

TIMESTAMP_SLACK_MS = 1.0  # rAF timestamps are coarsened to ~0.1 ms; allow for rounding on both ends

# Installed with page.add_init_script, before any page script runs. Whenever a DOM mutation changes whether
# a stimulus (an <img> in one of the panels that is not the mask) is rendered visible, it logs
# performance.now() and document.timeline.currentTime, the timestamp of the animation frame the mutation was
# made in, which is the frame that paints it (the pages mutate in requestAnimationFrame callbacks), or, where
# a test replaces the display's frame timestamps (FRAME_CLOCK), that clock's current frame. It reads only the
# DOM and the browser's clocks, never the page's variables or data-* attributes.
PRESENTATION_PROBE = """
(() => {
  const config = __CONFIG__;
  const log = [];
  window.__presentations = log;
  let visible = false;
  function stimulusVisible() {
    return config.panels.some((id) => {
      const panel = document.getElementById(id);
      return panel !== null && [...panel.querySelectorAll("img")].some((img) =>
        img.src !== config.mask && img.getClientRects().length > 0 && getComputedStyle(img).visibility === "visible");
    });
  }
  new MutationObserver(() => {
    const now = performance.now(), frame = window.__frameTime ?? document.timeline.currentTime;
    const shown = stimulusVisible();
    if (shown !== visible) log.push({ visible: (visible = shown), now, frame });
  }).observe(document, { subtree: true, childList: true, attributes: true,
                         attributeFilter: ["class", "hidden", "style", "src"] });
})();
"""


def probe_presentations(page, panels: list[str], mask_url: str) -> None:
    """Install ``PRESENTATION_PROBE`` on ``page``, watching the elements ``panels`` (ids); ``mask_url`` is the
    mask image's absolute URL (an <img> showing it is no stimulus)."""
    page.add_init_script(PRESENTATION_PROBE.replace("__CONFIG__", json.dumps({"panels": panels, "mask": mask_url})))


# Tolerances, measured over 5 runs of 4-10 trials at 125 ms (headless chromium at 60 Hz on 2 CPU cores, idle
# and with both cores busy): the probe's on-screen time equalled the page's measured_ms to within 0.1 ms and
# lay between 116.6 and 133.4 ms (half a frame around 125); its performance.now() durations were within
# 1 ms of its frame durations. A mask one frame late then shows as a 16.7 ms disagreement with measured_ms;
# three frames late, also as 42-58 ms past the target. The limits allow a dropped frame at the end of a
# presentation (within one frame of the target) but not a frame of disagreement (half a frame).
def presentation_errors(log: list[dict], trials: list[tuple[int, float, float, float]], check_clock: bool = True) -> list[str]:
    """What the probe saw (``log``: its ``window.__presentations``, read before the page navigates away) that
    a correct presentation would not give. ``trials``: (index, target_ms,
    measured_ms the page recorded, frame_ms the page measured) in the order shown. Expects one onset and one
    offset per trial, an on-screen time within one frame of the target that agrees with measured_ms to half a
    frame, and (``check_clock``: not where FRAME_CLOCK replaces the frame timestamps) the probe's
    performance.now() duration agreeing with its frame duration to half a frame."""
    if [entry["visible"] for entry in log] != [True, False] * len(trials):
        return [f"expected {len(trials)} onsets and offsets, the probe saw {[entry['visible'] for entry in log]}"]
    errors = []
    for (index, target, measured, frame_ms), on, off in zip(trials, log[0::2], log[1::2]):
        on_screen, by_clock = off["frame"] - on["frame"], off["now"] - on["now"]
        seen = (f"trial {index}: target {target} ms, on screen {on_screen:.1f} ms, page measured {measured:.1f} ms, "
                f"frame {frame_ms:.1f} ms")
        if not 4.0 <= frame_ms <= 50.0:
            errors.append(f"{seen}: implausible frame interval")
        if abs(on_screen - target) > frame_ms + TIMESTAMP_SLACK_MS:
            errors.append(f"{seen}: more than a frame off the target")
        if abs(on_screen - measured) > frame_ms / 2:
            errors.append(f"{seen}: measured_ms disagrees with the screen")
        if check_clock and abs(by_clock - on_screen) > frame_ms / 2:
            errors.append(f"{seen}: performance.now() gives {by_clock:.1f} ms")
    return errors


@pytest.fixture(scope="module")
def browser():
    with chromium() as launched:
        yield launched


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1000, "height": 700})
    yield context.new_page()
    context.close()


def agree(page, url: str, query: dict | None = None) -> None:
    page.goto(url + "/" + ("?" + urlencode(query) if query else ""))
    wait_phase(page, "consent")
    page.click("#agree")


def press_through(page, trials: int, key: str = "f") -> None:
    """Answer the first ``trials`` trials with ``key`` as each comes up, then wait for the end."""
    for i in range(trials):
        wait_phase(page, "answer", i)
        page.keyboard.press(key)
    wait_phase(page, "done")


def stored(study) -> list[tuple]:
    """(trial, measured_ms, frame_ms) of every stored answer, straight from the database."""
    with sqlite3.connect(study / "responses.sqlite") as con:
        return con.execute("SELECT trial, measured_ms, frame_ms FROM answers ORDER BY trial").fetchall()


def test_timed_trials_answered_by_key_are_shown_within_a_frame_of_target(page, tmp_path):
    study = write_study(tmp_path / "timing", jobs=1, tests_per_job=4, sentinels_per_job=0, durations=(125, 250, 500))
    keys = {"f": "left", "ArrowRight": "right", "j": "right", "ArrowLeft": "left"}
    pressed = ["f", "ArrowRight", "j", "ArrowLeft"]
    with make_server(study, port=0) as server:
        probe_presentations(page, ["left", "right"], server.url + "/images/mask.png")
        agree(page, server.url)
        for i, key in enumerate(pressed):
            wait_phase(page, "answer", i)
            assert page.inner_text("#progress-text") == f"Trial {i + 1} of 4"
            assert page.get_attribute("#left img", "src") == "/images/mask.png"  # the mask replaced the pair
            page.keyboard.press(key)
        wait_phase(page, "done")
        participant = read_responses(study).participant.iloc[0]
        assert page.inner_text("#code") == server.store.completion_code(participant)
    df = read_responses(study)
    assert df.chosen_side.tolist() == [keys[k] for k in pressed]
    assert sorted(df.duration_ms.unique()) == [125, 250, 500] and df.duration_ms.iloc[0] == 125
    # the mask goes up on the first frame at or after target - half a frame: on screen within half a frame of
    # the target when no frame is dropped, as the probe sees it and as the page recorded it
    shown = [(trial, target, measured, frame_ms) for (trial, measured, frame_ms), target in zip(stored(study), df.duration_ms)]
    assert presentation_errors(page.evaluate("window.__presentations"), shown) == []
    assert (df.response_ms > df.measured_ms).all()


def test_the_probe_catches_a_mask_one_frame_late(page, tmp_path):
    """trial.js with the mask swapped in one frame after the frame it measures: measured_ms still lies within a
    frame of the target, so only the probe can tell."""
    trial_js = (resources.files("crn_repro.study") / "static" / "trial.js").read_text()
    swap = "      panels.forEach(function (panel, i) { panel.replaceChildren(masks[i]); });"
    assert trial_js.count(swap) == 1
    late = trial_js.replace(swap, "      await nextFrame();\n" + swap)
    study = write_study(tmp_path / "late", jobs=1, tests_per_job=2, sentinels_per_job=0, durations=(125,))
    with make_server(study, port=0) as server:
        page.route(server.url + "/static/trial.js", lambda route: route.fulfill(body=late, content_type="text/javascript"))
        probe_presentations(page, ["left", "right"], server.url + "/images/mask.png")
        agree(page, server.url)
        press_through(page, 2)
    shown = [(trial, 125, measured, frame_ms) for trial, measured, frame_ms in stored(study)]
    assert all(abs(measured - 125) <= frame_ms for _, _, measured, frame_ms in shown)  # the page's record looks fine
    errors = presentation_errors(page.evaluate("window.__presentations"), shown)
    assert [e.split(":")[0] for e in errors if e.endswith("measured_ms disagrees with the screen")] == ["trial 0", "trial 1"], errors


# Installed before any page script: the display's frame timestamps at another refresh rate. Every callback
# batch of requestAnimationFrame runs in one real frame (the browser's own, 60 Hz headless) but receives a
# timestamp one frame of the target rate after the previous batch's, so the page's own code (trial.js) sees a
# 120 or 144 Hz display; window.__frameTime is the current frame's timestamp, which the probe reads.
FRAME_CLOCK = """
(() => {
  const frameMs = 1000 / __HZ__;
  const realFrame = window.requestAnimationFrame.bind(window);
  let queue = [], time = null;
  function tick(real) {
    time = time === null ? real : time + frameMs;
    window.__frameTime = time;
    const callbacks = queue;
    queue = [];
    for (const callback of callbacks) callback(time);
  }
  window.requestAnimationFrame = (callback) => {
    queue.push(callback);
    if (queue.length === 1) realFrame(tick);
    return queue.length;
  };
})();
"""


@pytest.mark.parametrize("hz", [120, 144])
def test_timing_is_per_frame_at_120_and_144_hz(page, tmp_path, hz):
    """With the display's frame timestamps at 120 or 144 Hz the page measures that frame interval, masks each
    pair on the frame nearest the target (within half a frame: 100 ms at 144 Hz is 14 frames, 97.2 ms) and
    records measured_ms and frame_ms, which read_responses exports; the probe sees the same on-screen times."""
    study = write_study(tmp_path / f"hz{hz}", jobs=1, tests_per_job=3, sentinels_per_job=0, durations=(100, 125, 250))
    frame = 1000 / hz
    with make_server(study, port=0) as server:
        page.add_init_script(FRAME_CLOCK.replace("__HZ__", str(hz)))
        probe_presentations(page, ["left", "right"], server.url + "/images/mask.png")
        agree(page, server.url)
        press_through(page, 3)
        log = page.evaluate("window.__presentations")
    df = read_responses(study)
    assert df.frame_ms.tolist() == pytest.approx([frame] * 3, abs=1e-6)
    frames = {100: round(100 / frame), 125: round(125 / frame), 250: round(250 / frame)}
    assert frames == ({100: 12, 125: 15, 250: 30} if hz == 120 else {100: 14, 125: 18, 250: 36})
    for row in df.itertuples():  # a whole number of frames, the one nearest the target
        assert row.measured_ms == pytest.approx(frames[row.duration_ms] * frame, abs=1e-6)
        assert abs(row.measured_ms - row.duration_ms) <= frame / 2 + 1e-6
    shown = [(r.trial, r.duration_ms, r.measured_ms, r.frame_ms) for r in df.itertuples()]
    assert presentation_errors(log, shown, check_clock=False) == []


def test_consent_states_pay_duration_ethics_and_contact_and_declining_returns_to_prolific(page, tmp_path):
    study = write_study(tmp_path / "consent", design="unlimited", jobs=1, tests_per_job=1, prolific=PROLIFIC)
    sent = catch_prolific(page)
    with make_server(study, port=0) as server:
        page.goto(server.url + "/")
        wait_phase(page, "error")  # a Prolific study opened without Prolific's ids: nothing to agree to
        assert "open it from the study's page on Prolific" in page.inner_text("#message")
        # Prolific may write a parameter twice (the URL's own placeholder and its appended id): the id counts
        duplicated = urlencode([("PROLIFIC_PID", "{{%PROLIFIC_PID%}}"), *prolific_ids(1).items()])
        page.goto(server.url + "/?" + duplicated)
        wait_phase(page, "consent")
        facts = page.inner_text("#consent-facts")
        for fact in ("Pay", "£1.80", "About 12 minutes", "approval ERB-2026-014", "study@example.org"):
            assert fact in facts
        assert "Taking part is voluntary" in page.inner_text("#consent-text")
        assert page.inner_text("#agree") == "I agree" and page.inner_text("#decline") == "I do not agree"
        page.click("#decline")
        page.wait_for_url(PROLIFIC_URL + "?cc=CDECLINE", timeout=PHASE_TIMEOUT_MS)
    assert sent == [PROLIFIC_URL + "?cc=CDECLINE"]
    with sqlite3.connect(study / "responses.sqlite") as con:
        assert con.execute("SELECT prolific_pid FROM declines").fetchall() == [(prolific_ids(1)["PROLIFIC_PID"],)]
        assert con.execute("SELECT COUNT(*) FROM participants").fetchone()[0] == 0


PROLIFIC_URL = "https://app.prolific.com/submissions/complete"


def test_practice_with_feedback_then_back_to_prolific_once_the_last_answer_is_saved(page, tmp_path):
    study = write_study(tmp_path / "practice", durations=(250,), jobs=1, tests_per_job=2, sentinels_per_job=1,
                        practice_per_job=2, prolific=PROLIFIC)
    trials = load_manifest(study)["jobs"][0]["trials"]
    saved_at_redirect = []

    def back_on_prolific(route, request):
        with sqlite3.connect(study / "responses.sqlite") as con:  # what was committed when the page left
            saved_at_redirect.append(con.execute("SELECT COUNT(*) FROM answers").fetchone()[0])
        route.fulfill(body="<p>back on Prolific</p>", content_type="text/html")

    page.route(PROLIFIC_URL + "*", back_on_prolific)
    with make_server(study, port=0) as server:
        agree(page, server.url, prolific_ids(2))
        wait_phase(page, "answer", 0)
        assert page.inner_text("#progress-text") == "Practice 1 of 2"
        wrong = {"left": "j", "right": "f"}[trials[0]["correct"]]
        page.keyboard.press(wrong)
        wait_phase(page, "feedback")
        assert page.inner_text("#feedback-text") == f"Not quite: the real photograph (or the more realistic image) was on the {trials[0]['correct']}."
        assert page.locator(f"#{trials[0]['correct']}.correct img").count() == 1  # the right one outlined
        page.keyboard.press("Enter")
        wait_phase(page, "answer", 1)
        page.keyboard.press({"left": "f", "right": "j"}[trials[1]["correct"]])
        wait_phase(page, "feedback")
        assert page.inner_text("#feedback-text").startswith("Correct:")
        assert page.inner_text("#feedback-text").endswith("That was the last practice trial; the study begins now.")
        page.click("#continue")
        wait_phase(page, "answer", 2)
        assert page.inner_text("#progress-text") == "Trial 1 of 3"
        take_part(page, trials, start=2)
        page.wait_for_url(PROLIFIC_URL + "?cc=C1A2B3C4", timeout=PHASE_TIMEOUT_MS)
    assert saved_at_redirect == [len(trials)]
    df = read_responses(study)
    assert df.kind.tolist() == [t["kind"] for t in trials] and set(df.prolific_pid) == {prolific_ids(2)["PROLIFIC_PID"]}


def test_hype_trials_show_one_image_answered_by_key_or_click(page, tmp_path):
    study = write_study(tmp_path / "hype", design="hype", jobs=1, tests_per_job=3, sentinels_per_job=1, practice_per_job=1)
    trials = load_manifest(study)["jobs"][0]["trials"]
    with make_server(study, port=0) as server:
        agree(page, server.url)
        wait_phase(page, "answer", 0)
        assert page.locator("#single img").count() == 1 and not page.is_visible("#left") and not page.is_visible("#right")
        assert page.is_visible("#answer-real") and page.is_visible("#answer-fake")
        assert "Real: R or" in page.inner_text("#prompt")
        page.keyboard.press("r")
        wait_phase(page, "feedback")
        page.click("#continue")
        answers = []
        for trial in trials[1:]:
            wait_phase(page, "answer", trial["index"])
            if trial["index"] % 2:
                page.click("#answer-fake")
                answers.append("fake")
            else:
                page.keyboard.press("r")
                answers.append("real")
        wait_phase(page, "done")
    df = read_responses(study)
    assert df.chosen_side.tolist() == ["real", *answers] and df.kind.iloc[0] == "practice"
    assert df.left_sha256.tolist() == [t["image"]["sha256"] for t in trials]


def test_a_refused_join_waits_and_retries_by_itself(page, tmp_path):
    study = write_study(tmp_path / "busy", design="unlimited", jobs=1, tests_per_job=1, sentinels_per_job=0)
    with make_server(study, port=0, joins_per_minute=60) as server:
        while server.limiter.wait("127.0.0.1") == 0:  # this address used up its burst
            pass
        agree(page, server.url)
        wait_phase(page, "waiting")
        assert page.get_attribute("body", "data-retry-after") == "1"
        assert "trying again in 1 s" in page.inner_text("#message")
        wait_phase(page, "answer", 0)  # joined on its own
        assert page.inner_text("#message") == ""
        page.keyboard.press("f")
        wait_phase(page, "done")
    assert len(read_responses(study)) == 1


def test_reload_after_server_restart_resumes_at_next_unanswered_trial(page, tmp_path):
    study = write_study(tmp_path / "resume", jobs=1, tests_per_job=4, sentinels_per_job=0, durations=(125,))
    server = make_server(study, port=0).start()
    port = server.server_address[1]
    try:
        agree(page, server.url)
        for i, key in enumerate(["f", "j"]):
            wait_phase(page, "answer", i)
            page.keyboard.press(key)
        wait_phase(page, "answer", 2)
    finally:
        server.stop()
    assert [row[0] for row in stored(study)] == [0, 1]  # saved while no server runs

    with make_server(study, port=port) as server:
        page.reload()
        wait_phase(page, "answer", 2)
        assert page.inner_text("#progress-text") == "Trial 3 of 4"
        for i, key in enumerate(["ArrowLeft", "ArrowRight"], start=2):
            wait_phase(page, "answer", i)
            page.keyboard.press(key)
        wait_phase(page, "done")
    df = read_responses(study)
    assert df.trial.tolist() == [0, 1, 2, 3] and df.participant.nunique() == 1  # one id for the whole session
    assert df.chosen_side.tolist() == ["left", "right", "left", "right"]


def test_markup_from_the_manifest_or_a_forged_id_never_runs(page, tmp_path):
    question = '<img src="x" onerror="window.__xss = 1">Which image is more realistic?'
    instructions = ('<p id="trusted">Pick the <b>real</b> photo.</p>'
                    '<img src="/none.png" onerror="window.__xss = 2"><script>window.__xss = 3</script>')
    study = write_study(tmp_path / "xss", jobs=1, tests_per_job=1, sentinels_per_job=0, question=question,
                          instructions_html=instructions)
    blocked = []
    page.on("console", lambda message: blocked.append(message.text) if "Content Security Policy" in message.text else None)
    with make_server(study, port=0) as server:
        page.goto(server.url + "/")
        forged = '{"participant": "<img src=x onerror=window.__xss=4>", "token": "<script>window.__xss=5</script>"}'
        page.evaluate("creds => localStorage.setItem('crn-study:test-timed', creds)", forged)
        page.reload()
        wait_phase(page, "consent")  # the forged id was refused and forgotten: a fresh start
        assert page.evaluate("localStorage.getItem('crn-study:test-timed')") is None
        assert page.inner_text("#trusted") == "Pick the real photo."  # the trusted instructions render as HTML
        assert page.inner_text("#consent-task").endswith(question)  # everything else is shown as text
        page.click("#agree")
        wait_phase(page, "answer", 0)
        assert page.inner_text("#question") == question
        page.keyboard.press("j")
        wait_phase(page, "done")
        assert page.evaluate("window.__xss") is None
        assert page.locator('img[src="x"]').count() == 0
    assert blocked, "the CSP should have reported blocking the inline handler"
    assert len(read_responses(study)) == 1


SEND = """async ([path, body]) => {
  const init = body === null ? {} : {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)};
  const response = await fetch(path, init);
  return [response.status, response.headers.get("content-type"), await response.text()];
}"""


def test_requests_forged_in_the_page_are_refused(page, tmp_path):
    """What a participant's own page can send by hand (devtools, a script): an answer under a forged id, a
    trial index out of range, markup or script in any field, and paths outside the study's images. Each is
    refused with a 4xx JSON error, nothing is stored, and the genuine answer still goes through."""
    study = write_study(tmp_path / "forge", jobs=1, tests_per_job=2, sentinels_per_job=0, durations=(125,))
    (tmp_path / "secret.png").write_bytes(b"\x89PNG top secret")
    with make_server(study, port=0) as server:
        agree(page, server.url)
        wait_phase(page, "answer", 0)
        creds = json.loads(page.evaluate("localStorage.getItem('crn-study:test-timed')"))
        genuine = {**creds, "trial": 0, "chosen_side": "left", "measured_ms": 125.0, "response_ms": 600.0}
        script = "<script>window.__xss = 1</script>"
        forged = {
            "a forged participant id": {**genuine, "participant": "p-0123456789abcdef"},
            "markup as participant id": {**genuine, "participant": "<img src=x onerror=window.__xss=2>"},
            "markup as token": {**genuine, "token": script},
            "a trial index past the end": {**genuine, "trial": 2},
            "a negative trial index": {**genuine, "trial": -1},
            "a trial index as text": {**genuine, "trial": "0"},
            "markup as chosen side": {**genuine, "chosen_side": script},
            "markup as measured time": {**genuine, "measured_ms": script},
            "markup as response time": {**genuine, "response_ms": script},
            "markup in an extra field": {**genuine, "comment": script},
        }
        for what, body in forged.items():
            status, content_type, text = page.evaluate(SEND, ["/api/answer", body])
            assert 400 <= status < 500 and content_type == "application/json", (what, status, text)
            assert "error" in json.loads(text), what
        for path in ("/images/..%2f..%2fsecret.png", "/images/%2e%2e/%2e%2e/secret.png", "/..%2fsecret.png",
                     "/images/..%2fmanifest.json", "/manifest.json", "/responses.sqlite", "/images/"):
            status, content_type, text = page.evaluate(SEND, [path, None])
            assert status == 404 and content_type == "application/json" and "secret" not in text, (path, status)
        assert stored(study) == []
        assert page.evaluate(SEND, ["/api/answer", genuine])[0] == 200  # the same request, untampered
        assert page.evaluate("window.__xss") is None
    assert [row[0] for row in stored(study)] == [0]


def test_simulated_observer_completes_the_study_in_the_browser(page, tmp_path):
    study = write_study(tmp_path / "observer", jobs=1, tests_per_job=5, sentinels_per_job=1, sentinel_ms=500,
                          durations=(125, 250))
    trials = load_manifest(study)["jobs"][0]["trials"]
    observer = Observer(seed=7)
    chosen = []
    with make_server(study, port=0, simulated=True) as server:  # the observer is no person: stored as simulated
        agree(page, server.url)
        for i, trial in enumerate(trials):
            wait_phase(page, "answer", i)
            shown_ms = float(page.get_attribute("body", "data-measured"))  # the exposure the page measured
            side = observer.choose(trial, shown_ms)
            if i % 2:
                page.click(f"#{side}")
            else:
                page.keyboard.press({"left": "f", "right": "j"}[side])
            chosen.append(side)
        wait_phase(page, "done")
    df = read_responses(study)
    assert df.chosen_side.tolist() == chosen and (df.kind == "sentinel").sum() == 1
    assert set(df.source) == {"simulated-web"} and df.participant.str.startswith("sim-").all()
    assert df.chosen_model.tolist() == [t[side]["model"] for t, side in zip(trials, chosen)]


HIT_ORIGIN = "https://hit.test"  # served by page.route below: nothing leaves the machine
# MTurk opens an HTMLQuestion in a frame whose URL carries these; a preview has no assignment yet.
ASSIGNED = {"assignmentId": "3ASSIGNMENT0EXAMPLE", "hitId": "3HIT0EXAMPLE", "turkSubmitTo": "https://www.mturk.com", "workerId": "AWORKER1"}
PREVIEW = {"assignmentId": "ASSIGNMENT_ID_NOT_AVAILABLE", "hitId": "3HIT0EXAMPLE"}
CROWD_ELEMENTS = "https://assets.crowd.aws/crowd-html-elements.js"
# crowd-html-elements.js cannot be fetched here. This stand-in gives <crowd-form> what the HIT relies on: a
# Submit button that fires a cancelable "submit" event on the element and, unless the page cancels it, posts
# the named fields inside it as a form (as MTurk records them: Answer.<name>).
CROWD_FORM_STUB = """
customElements.define("crowd-form", class extends HTMLElement {
  connectedCallback() {
    if (this.querySelector("#crowd-submit")) return;
    const button = document.createElement("button");
    button.type = "button";
    button.id = "crowd-submit";
    button.textContent = "Submit";
    button.addEventListener("click", () => {
      if (!this.dispatchEvent(new Event("submit", { cancelable: true }))) return;
      const form = document.createElement("form");
      form.method = "post";
      form.action = "https://hit.test/submit";
      for (const field of this.querySelectorAll("input[name]")) {
        const copy = document.createElement("input");
        copy.type = "hidden";
        copy.name = field.name;
        copy.value = field.value;
        form.append(copy);
      }
      document.body.append(form);
      form.submit();
    });
    this.append(button);
  }
});
"""


def hit_phase(page, phase: str, trial: int | None = None) -> None:
    selector = f'#crn[data-phase="{phase}"]' + ("" if trial is None else f'[data-trial="{trial}"]')
    page.wait_for_selector(selector, state="attached", timeout=PHASE_TIMEOUT_MS)


def serve_hit(page, study, tmp_path) -> tuple[dict, list[str], list[str]]:
    """Export ``study`` for MTurk and serve its first HIT to ``page`` at HIT_ORIGIN/hit.html (any query), with
    MTurk's ${...} substitution done as MTurk does, the study's images, the crowd-form stand-in and a submit
    endpoint. Returns the HIT's batch-input row, the bodies posted to /submit and the image URLs requested."""
    paths = export_mturk(study, tmp_path / "mturk", HIT_ORIGIN)
    with open(paths["batch_input"], newline="") as f:
        row = next(csv.DictReader(f))
    html = paths["hit"].read_text()
    for key, value in row.items():
        html = html.replace("${" + key + "}", value)
    assert "${" not in html
    document = f"<!doctype html><html><head><meta charset='utf-8'></head><body>{html}</body></html>"
    submitted, images = [], []

    def serve(route, request):
        path = urlsplit(request.url).path
        if request.url == CROWD_ELEMENTS:
            route.fulfill(body=CROWD_FORM_STUB, content_type="text/javascript")
        elif request.url.split("?")[0] == HIT_ORIGIN + "/hit.html":
            route.fulfill(body=document, content_type="text/html; charset=utf-8")
        elif request.url.startswith(HIT_ORIGIN + "/images/") and (study / path.lstrip("/")).is_file():
            images.append(request.url)
            route.fulfill(path=study / path.lstrip("/"), content_type="image/png")
        elif request.url == HIT_ORIGIN + "/submit" and request.method == "POST":
            submitted.append(request.post_data)
            route.fulfill(body="<p id='thanks'>submitted</p>", content_type="text/html")
        else:
            route.abort()

    page.route("**/*", serve)
    return row, submitted, images


def test_exported_hit_page_times_like_the_web_app_and_submits_its_responses(page, tmp_path):
    """hit.html from `study export-mturk`, with MTurk's ${...} substitution done as MTurk does: the pairs
    are masked within one frame of 125 ms (measured from rAF timestamps), and the submission carries the
    `responses` field, which imports as canonical records."""
    study = write_study(tmp_path / "hit", jobs=1, tests_per_job=3, sentinels_per_job=1, durations=(125,), sentinel_ms=250)
    row, submitted, _ = serve_hit(page, study, tmp_path)
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    probe_presentations(page, ["crn-left", "crn-right"], row["mask_url"])
    page.goto(HIT_ORIGIN + "/hit.html?" + urlencode(ASSIGNED))
    page.wait_for_function("document.getElementById('crn-loading').textContent === ''", timeout=PHASE_TIMEOUT_MS)
    page.click("#crowd-submit")  # too early: the page cancels the submission
    assert "answer every pair first" in page.inner_text("#crn-prompt") and not submitted
    page.check("#crn-consent")
    page.click("#crn-start")

    targets = {index: duration for index, duration, _, _ in decode_trials(row["trials"])}
    assert sorted(set(targets.values())) == [125, 250]
    shown = []
    for i in range(len(targets)):
        hit_phase(page, "answer", i)
        assert page.get_attribute("#crn-left img", "src") == row["mask_url"]  # the mask replaced the pair
        shown.append((float(page.get_attribute("#crn", "data-measured")), float(page.get_attribute("#crn", "data-frame"))))
        if i == 3:
            page.click("#crn-right")
        else:
            page.keyboard.press(["f", "ArrowRight", "j"][i])
    hit_phase(page, "done")
    log = page.evaluate("window.__presentations")
    in_page = json.loads(page.eval_on_selector("#crn-responses", "e => e.value"))
    with page.expect_request(HIT_ORIGIN + "/submit"):
        page.click("#crowd-submit")
    page.wait_for_selector("#thanks", timeout=PHASE_TIMEOUT_MS)
    assert not errors

    assert len(submitted) == 1
    answers = json.loads(parse_qs(submitted[0])["responses"][0])  # the field MTurk records as Answer.responses
    assert answers == in_page
    assert [a[0] for a in answers] == list(range(4)) and [a[1] for a in answers] == ["left", "right", "right", "right"]
    for (index, _, measured, response, submitted_frame_ms), (page_measured, frame_ms) in zip(answers, shown):
        assert abs(measured - page_measured) <= 0.1 and response > measured
        assert abs(submitted_frame_ms - frame_ms) <= 0.01  # the display's frame interval travels with each answer
    # masked on the first frame at or after target - half a frame, as the probe sees it and as submitted
    assert presentation_errors(log, [(a[0], targets[a[0]], a[2], frame_ms) for a, (_, frame_ms) in zip(answers, shown)]) == []
    assert [a[2] for a in answers if targets[a[0]] == 125], "no 125 ms trial measured"
    records = import_results(study, [_results_csv(tmp_path / "results.csv", row, answers)])
    assert len(records) == 4 and set(records.source) == {"mturk"} and records.measured_ms.notna().all()
    assert records.frame_ms.notna().all()


def test_hit_practice_trials_give_feedback_and_import_as_practice(page, tmp_path):
    """A practice pair in the exported HIT is followed by feedback (which side was right) and a Continue
    button; the next pair waits for it, and its answer imports with kind `practice`, which analysis drops."""
    study = write_study(tmp_path / "hit", design="unlimited", jobs=1, tests_per_job=2, sentinels_per_job=1, practice_per_job=2)
    row, submitted, _ = serve_hit(page, study, tmp_path)
    page.goto(HIT_ORIGIN + "/hit.html?" + urlencode(ASSIGNED))
    page.wait_for_function("document.getElementById('crn-loading').textContent === ''", timeout=PHASE_TIMEOUT_MS)
    page.check("#crn-consent")
    page.click("#crn-start")
    manifest = json.loads((study / "manifest.json").read_text())
    practice = [t for t in manifest["jobs"][0]["trials"] if t["kind"] == "practice"]
    assert [t["index"] for t in practice] == [0, 1]
    hit_phase(page, "answer", 0)
    assert page.inner_text("#crn-progress") == "Practice 1 of 2"
    page.click("#crn-" + practice[0]["correct"])
    hit_phase(page, "feedback")
    assert page.get_attribute("#crn", "data-correct") == "true" and "Correct" in page.inner_text("#crn-feedback-text")
    page.click("#crn-continue")
    hit_phase(page, "answer", 1)
    wrong = "left" if practice[1]["correct"] == "right" else "right"
    page.click("#crn-" + wrong)
    hit_phase(page, "feedback")
    text = page.inner_text("#crn-feedback-text")
    assert text.startswith("Not quite") and f"on the {practice[1]['correct']}" in text and "the study begins now" in text
    page.keyboard.press("Enter")
    for i in range(2, len(manifest["jobs"][0]["trials"])):
        hit_phase(page, "answer", i)
        assert page.inner_text("#crn-progress").startswith("Pair ")
        page.keyboard.press("f")
    hit_phase(page, "done")
    answers = json.loads(page.eval_on_selector("#crn-responses", "e => e.value"))
    records = import_results(study, [_results_csv(tmp_path / "results.csv", row, answers)])
    assert list(records.kind[:2]) == ["practice", "practice"] and "practice" not in set(records.kind[2:])


def test_hit_preview_shows_the_instructions_but_nothing_to_start_or_submit(page, tmp_path):
    """MTurk's preview (assignmentId=ASSIGNMENT_ID_NOT_AVAILABLE): the instructions and the example are shown
    with "Accept the HIT to begin"; no pair is loaded, there is no consent or Start control, and a submission
    is cancelled."""
    instructions = '<p id="trusted">Pick the image that looks more like a <b>real photograph</b>.</p>'
    study = write_study(tmp_path / "preview", jobs=1, tests_per_job=3, sentinels_per_job=1, durations=(125,),
                        instructions_html=instructions)
    _, submitted, images = serve_hit(page, study, tmp_path)
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(HIT_ORIGIN + "/hit.html?" + urlencode(PREVIEW))
    hit_phase(page, "preview")
    assert page.inner_text("#trusted") == "Pick the image that looks more like a real photograph."
    assert page.is_visible("#crn-example") and "noise covers them" in page.inner_text("#crn-example")
    assert "Accept the HIT to begin" in page.inner_text("#crn-preview") and page.is_visible("#crn-preview")
    assert not page.is_visible("#crn-start") and not page.is_visible("#crn-consent") and page.is_disabled("#crn-start")
    page.click("#crowd-submit")
    assert page.inner_text("#crn-prompt") == "Accept the HIT to begin."
    page.eval_on_selector("#crn-start", "button => button.click()")  # even a scripted click starts nothing
    page.wait_for_timeout(300)
    assert page.get_attribute("#crn", "data-phase") == "preview" and page.locator("#crn-stage img").count() == 0
    assert not submitted and not images and not errors

    page.goto(HIT_ORIGIN + "/hit.html?" + urlencode(ASSIGNED))  # the same page once accepted
    page.wait_for_function("document.getElementById('crn-loading').textContent === ''", timeout=PHASE_TIMEOUT_MS)
    assert page.is_visible("#crn-start") and not page.is_visible("#crn-preview") and images


def _results_csv(path, row, answers):
    """A minimal MTurk batch results CSV with this one assignment."""
    fields = {"HITId": "H1", "WorkerId": "ABROWSER1", "AssignmentId": "X1", "AssignmentStatus": "Submitted",
              **{f"Input.{k}": v for k, v in row.items()}, "Answer.responses": json.dumps(answers)}
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields), quoting=csv.QUOTE_ALL)
        writer.writeheader()
        writer.writerow(fields)
    return path
