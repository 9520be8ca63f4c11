"""The study web app in a real browser: headless Chromium (Debian's `chromium`) driven by Playwright.

Checks the frame-accurate timed presentation (measured on-screen time within one frame of the target),
resuming after a server restart, that markup from the manifest or a forged participant id never runs as
HTML, and a simulated observer completing a study through the page; and the exported MTurk HIT page
(``hit.html``): its timing at 125 ms and that its submission carries the ``responses`` field. Skipped when chromium or Playwright
is missing, unless CRN_REQUIRE_BROWSER=1 (set by .ci/run), which turns that into a failure.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import sqlite3
from urllib.parse import parse_qs, urlsplit

import pytest
from study_web import write_study

from crn_repro.study.manifest import load_manifest
from crn_repro.study.mturk import decode_trials, export_mturk, import_results
from crn_repro.study.observer import Observer
from crn_repro.study.server import make_server
from crn_repro.study.store import read_responses

CHROMIUM = shutil.which("chromium")
PHASE_TIMEOUT_MS = 15_000
TIMESTAMP_SLACK_MS = 1.0  # rAF timestamps are coarsened to ~0.1 ms; allow for rounding on both ends


@pytest.fixture(scope="module")
def browser():
    missing = [what for what, absent in (
        ("Playwright for Python (pip install -e '.[test]')", importlib.util.find_spec("playwright") is None),
        ("the chromium executable (apt-get install chromium)", CHROMIUM is None),
    ) if absent]
    if missing:
        reason = f"browser tests need {' and '.join(missing)}"
        if os.environ.get("CRN_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{reason}; CRN_REQUIRE_BROWSER=1 forbids skipping them")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1000, "height": 700})
    yield context.new_page()
    context.close()


def wait_phase(page, phase: str, trial: int | None = None) -> None:
    selector = f'body[data-phase="{phase}"]' + ("" if trial is None else f'[data-trial="{trial}"]')
    page.wait_for_selector(selector, state="attached", timeout=PHASE_TIMEOUT_MS)


def agree(page, url: str) -> None:
    page.goto(url + "/")
    wait_phase(page, "consent")
    page.click("#agree")


def stored(study) -> list[tuple]:
    """(trial, measured_ms, frame_ms) of every stored answer, straight from the database."""
    with sqlite3.connect(study / "responses.sqlite") as con:
        return con.execute("SELECT trial, measured_ms, frame_ms FROM answers ORDER BY trial").fetchall()


def test_timed_trials_answered_by_key_are_shown_within_a_frame_of_target(page, tmp_path):
    study = write_study(tmp_path / "timing", jobs=1, tests_per_job=4, sentinels_per_job=0, durations=(125, 250, 500))
    keys = {"f": "left", "ArrowRight": "right", "j": "right", "ArrowLeft": "left"}
    pressed = ["f", "ArrowRight", "j", "ArrowLeft"]
    with make_server(study, port=0) as server:
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
    for (trial, measured_ms, frame_ms), target in zip(stored(study), df.duration_ms):
        # the mask goes up on the first frame at or after target - half a frame, so the on-screen time is
        # within half a frame of the target when no frame is dropped; allow one whole measured frame
        assert 4.0 <= frame_ms <= 50.0, f"implausible frame interval {frame_ms} ms"
        assert abs(measured_ms - target) <= frame_ms + TIMESTAMP_SLACK_MS, (trial, target, measured_ms, frame_ms)
    assert (df.response_ms > df.measured_ms).all()


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
        assert page.inner_text("#consent-question") == question  # everything else is shown as text
        page.click("#agree")
        wait_phase(page, "answer", 0)
        assert page.inner_text("#question") == question
        page.keyboard.press("j")
        wait_phase(page, "done")
        assert page.evaluate("window.__xss") is None
        assert page.locator('img[src="x"]').count() == 0
    assert blocked, "the CSP should have reported blocking the inline handler"
    assert len(read_responses(study)) == 1


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


def test_exported_hit_page_times_like_the_web_app_and_submits_its_responses(page, tmp_path):
    """hit.html from `study export-mturk`, with MTurk's ${...} substitution done as MTurk does: the pairs
    are masked within one frame of 125 ms (measured from rAF timestamps), and the submission carries the
    `responses` field, which imports as canonical records."""
    study = write_study(tmp_path / "hit", jobs=1, tests_per_job=3, sentinels_per_job=1, durations=(125,), sentinel_ms=250)
    paths = export_mturk(study, tmp_path / "mturk", HIT_ORIGIN)
    with open(paths["batch_input"], newline="") as f:
        row = next(csv.DictReader(f))
    html = paths["hit"].read_text()
    for key, value in row.items():
        html = html.replace("${" + key + "}", value)
    assert "${" not in html
    document = f"<!doctype html><html><head><meta charset='utf-8'></head><body>{html}</body></html>"
    submitted, errors = [], []

    def serve(route, request):
        path = urlsplit(request.url).path
        if request.url == CROWD_ELEMENTS:
            route.fulfill(body=CROWD_FORM_STUB, content_type="text/javascript")
        elif request.url == HIT_ORIGIN + "/hit.html":
            route.fulfill(body=document, content_type="text/html; charset=utf-8")
        elif request.url.startswith(HIT_ORIGIN + "/images/") and (study / path.lstrip("/")).is_file():
            route.fulfill(path=study / path.lstrip("/"), content_type="image/png")
        elif request.url == HIT_ORIGIN + "/submit" and request.method == "POST":
            submitted.append(request.post_data)
            route.fulfill(body="<p id='thanks'>submitted</p>", content_type="text/html")
        else:
            route.abort()

    page.route("**/*", serve)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(HIT_ORIGIN + "/hit.html")
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
    in_page = json.loads(page.eval_on_selector("#crn-responses", "e => e.value"))
    with page.expect_request(HIT_ORIGIN + "/submit"):
        page.click("#crowd-submit")
    page.wait_for_selector("#thanks", timeout=PHASE_TIMEOUT_MS)
    assert not errors

    assert len(submitted) == 1
    answers = json.loads(parse_qs(submitted[0])["responses"][0])  # the field MTurk records as Answer.responses
    assert answers == in_page
    assert [a[0] for a in answers] == list(range(4)) and [a[1] for a in answers] == ["left", "right", "right", "right"]
    for (index, _, measured, response), (page_measured, frame_ms) in zip(answers, shown):
        # masked on the first frame at or after target - half a frame: within one measured frame of the target
        assert 4.0 <= frame_ms <= 50.0, f"implausible frame interval {frame_ms} ms"
        assert abs(measured - targets[index]) <= frame_ms + TIMESTAMP_SLACK_MS, (index, targets[index], measured, frame_ms)
        assert abs(measured - page_measured) <= 0.1 and response > measured
    assert [a[2] for a in answers if targets[a[0]] == 125], "no 125 ms trial measured"
    records = import_results(study, [_results_csv(tmp_path / "results.csv", row, answers)])
    assert len(records) == 4 and set(records.source) == {"mturk"} and records.measured_ms.notna().all()


def _results_csv(path, row, answers):
    """A minimal MTurk batch results CSV with this one assignment."""
    fields = {"HITId": "H1", "WorkerId": "ABROWSER1", "AssignmentId": "X1", "AssignmentStatus": "Submitted",
              **{f"Input.{k}": v for k, v in row.items()}, "Answer.responses": json.dumps(answers)}
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields), quoting=csv.QUOTE_ALL)
        writer.writeheader()
        writer.writerow(fields)
    return path
