// Web app of the human perceptual study (paper Sec. 5.1, docs/facts.md §6): consent (pay, duration, ethics
// approval, contact; "I agree" / "I do not agree"), practice trials with feedback, then one trial at a time,
// pairwise "which is more realistic?" or, for the hype design, one image answered "real" or "fake", timed on
// requestAnimationFrame. Participants from Prolific arrive with PROLIFIC_PID, STUDY_ID and SESSION_ID in the
// URL and are sent back to Prolific's completion URL once their last answer is saved. The JSON API is
// documented in crn_repro/study/server.py. Only the study's trusted HTML (instructions, consent text) is
// inserted as HTML; every other value reaches the page through textContent.
// The trial itself (fixation, timed presentation, answer) is trial.js's CrnTrial, which the MTurk HIT shares.
"use strict";

const $ = (id) => document.getElementById(id);
const PROLIFIC_PARAMS = ["PROLIFIC_PID", "STUDY_ID", "SESSION_ID"];
const PROLIFIC_ID = /^[0-9a-f]{24}$/i;
const TRANSIENT = new Set([502, 503, 504]); // a proxy or server restarting: try again
const REDIRECT_DELAY_MS = 1500; // long enough to see the code, short enough not to wait for
let study = null;
let storageKey = null;
let trials = null; // CrnTrial presenter of this page

// The page's phase, for people reading the DOM and for the browser tests.
function setPhase(phase, extra = {}) {
  Object.assign(document.body.dataset, extra, { phase });
}

function show(sectionId) {
  for (const id of ["consent", "trial", "declined", "done"]) $(id).hidden = id !== sectionId;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function api(method, path, body) {
  const init = { method, cache: "no-store", headers: {} };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = new Error(data.error || `HTTP ${response.status}`);
    error.status = response.status;
    error.retryAfter = Number(response.headers.get("Retry-After")) || data.retry_after_s || null;
    throw error;
  }
  return data;
}

// api() that waits and tries again while the server asks it to (429 + Retry-After: many people joining from
// one address) or is briefly unreachable (a network error, 502-504), telling the participant meanwhile.
async function patiently(method, path, body) {
  for (let attempt = 1; ; attempt++) {
    try {
      const data = await api(method, path, body);
      $("message").textContent = "";
      return data;
    } catch (error) {
      const busy = error.status === 429;
      const transient = error.status === undefined || TRANSIENT.has(error.status);
      if (!busy && !(transient && attempt < 6)) throw error;
      const seconds = busy ? error.retryAfter || 5 : 2 ** attempt;
      $("message").textContent = busy
        ? `Many people are starting at the same time; trying again in ${seconds} s.`
        : `The server did not answer; trying again in ${seconds} s.`;
      setPhase("waiting", { retryAfter: String(seconds) });
      await sleep(seconds * 1000 + Math.random() * 500);
    }
  }
}

function fail(text) {
  $("message").textContent = text;
  setPhase("error");
}

// The Prolific ids of the page's URL, or null if it has none. Prolific can end up writing a parameter twice
// (the study URL's own placeholder and its appended ids): take the first value of the right form.
function prolificIds() {
  const query = new URLSearchParams(window.location.search);
  if (!PROLIFIC_PARAMS.some((name) => query.has(name))) return null;
  const ids = {};
  for (const name of PROLIFIC_PARAMS) {
    const values = query.getAll(name);
    ids[name] = values.find((value) => PROLIFIC_ID.test(value)) ?? values[0] ?? "";
  }
  return ids;
}

function showProgress(progress) {
  const practice = progress.answered < progress.practice;
  const [done, total] = practice
    ? [progress.answered, progress.practice]
    : [progress.answered - progress.practice, progress.total - progress.practice];
  $("progress-bar").style.width = `${(100 * done) / total}%`;
  $("progress-text").textContent = `${practice ? "Practice" : "Trial"} ${done + 1} of ${total}`;
}

const PROMPTS = {
  pair: "Left: F or \u2190 \u00a0\u00a0 Right: J or \u2192 \u00a0\u00a0 (or click an image)",
  single: "Real: R or \u2190 \u00a0\u00a0 Fake: F or \u2192 \u00a0\u00a0 (or click a button)",
};

async function presentAndAnswer(trial) {
  if (study.presentation === "single") {
    const shown = await trials.presentOne(trial.image, trial.duration_ms);
    $("verdict").hidden = false;
    setPhase("answer", { measured: shown.measured === null ? "" : shown.measured.toFixed(1) });
    $("prompt").textContent = PROMPTS.single;
    const answer = await trials.awaitVerdict([$("answer-real"), $("answer-fake")]);
    $("verdict").hidden = true;
    return [shown, answer];
  }
  const shown = await trials.present(trial.left, trial.right, trial.duration_ms);
  setPhase("answer", { measured: shown.measured === null ? "" : shown.measured.toFixed(1) });
  $("prompt").textContent = PROMPTS.pair;
  return [shown, await trials.awaitAnswer()];
}

// Practice feedback: the images again (the real or more realistic one outlined; one image: outlined green
// if answered right, red if not), the answer it should have had, and a Continue button (or Enter).
async function showFeedback(trial, feedback, last) {
  const single = study.presentation === "single";
  const panels = single ? [[$("single"), trial.image]] : [[$("left"), trial.left], [$("right"), trial.right]];
  for (const [panel, url] of panels) {
    panel.replaceChildren(await trials.decoded(url));
    panel.classList.toggle("correct", single ? feedback.correct : panel.dataset.side === feedback.answer);
    panel.classList.toggle("wrong", single && !feedback.correct);
  }
  const what = study.presentation === "single"
    ? (feedback.answer === "real" ? "this is a real photograph" : "this image was made by a computer")
    : `the real photograph (or the more realistic image) was on the ${feedback.answer}`;
  const next = last ? " That was the last practice trial; the study begins now." : "";
  $("feedback-text").textContent = `${feedback.correct ? "Correct" : "Not quite"}: ${what}.${next}`;
  $("feedback").className = feedback.correct ? "right" : "wrong";
  $("feedback").hidden = false;
  setPhase("feedback", { correct: String(feedback.correct) });
  await new Promise((resolve) => {
    const onKey = (event) => { if (event.key === "Enter" || event.key === " ") { event.preventDefault(); finish(); } };
    function finish() {
      document.removeEventListener("keydown", onKey);
      resolve();
    }
    document.addEventListener("keydown", onKey);
    $("continue").addEventListener("click", finish, { once: true });
  });
  $("feedback").hidden = true;
  for (const [panel] of panels) panel.classList.remove("correct", "wrong");
}

async function runTrial(state, creds) {
  const trial = state.trial;
  showProgress(state.progress);
  $("prompt").textContent = "";
  setPhase("loading", { job: state.job, trial: String(trial.index) });
  const [shown, answer] = await presentAndAnswer(trial);
  $("prompt").textContent = "";
  setPhase("saving");
  const body = {
    ...creds,
    trial: trial.index,
    chosen_side: answer.side,
    measured_ms: shown.measured,
    response_ms: answer.at - shown.onset,
    frame_ms: shown.frameMs,
  };
  let next;
  try {
    next = await patiently("POST", "/api/answer", body);
  } catch (error) {
    if (error.status === 409) return api("GET", "/api/state?" + new URLSearchParams(creds));
    throw error;
  }
  if (next.feedback) await showFeedback(trial, next.feedback, next.status !== "trial" || !next.trial.practice);
  return next;
}

function leave(section, codeElement, linkElement, exit) {
  show(section);
  if (exit.completion_code) codeElement.textContent = exit.completion_code;
  if (exit.redirect) {
    linkElement.querySelector("a").href = exit.redirect;
    linkElement.hidden = false;
    setTimeout(() => window.location.assign(exit.redirect), REDIRECT_DELAY_MS);
  }
}

async function run(state, creds) {
  show("trial");
  $("question").textContent = study.question;
  $("stage").classList.toggle("single", study.presentation === "single");
  $("left").hidden = $("right").hidden = study.presentation === "single";
  $("single").hidden = study.presentation !== "single";
  while (state.status === "trial") state = await runTrial(state, creds);
  leave("done", $("code"), $("done-link"), state);
  setPhase("done", { redirect: state.redirect || "" });
}

function storedCredentials(ids) {
  try {
    const creds = JSON.parse(localStorage.getItem(storageKey));
    // another Prolific participant on this browser: not theirs to resume
    const samePerson = (creds && creds.pid) === (ids ? ids.PROLIFIC_PID : undefined);
    if (creds && samePerson && typeof creds.participant === "string" && typeof creds.token === "string") {
      return { participant: creds.participant, token: creds.token };
    }
  } catch (error) {
    // unreadable: start afresh
  }
  localStorage.removeItem(storageKey);
  return null;
}

function showConsent() {
  $("instructions").innerHTML = study.instructions_html; // trusted: written by `crn-repro study make`
  $("consent-task").textContent = study.presentation === "single"
    ? `In each trial you see one image and answer: ${study.question}`
    : `In each trial you see two images side by side and answer: ${study.question}`;
  const consent = study.consent;
  if (consent) {
    const facts = {
      "consent-pay": consent.pay,
      "consent-duration": consent.duration_minutes ? `About ${consent.duration_minutes} minutes` : null,
      "consent-ethics": consent.ethics_approval,
      "consent-contact": consent.contact,
    };
    for (const [id, value] of Object.entries(facts)) {
      $(id).textContent = value === null || value === undefined ? "" : String(value);
      $(id).hidden = $(id).previousElementSibling.hidden = !$(id).textContent;
    }
    $("consent-facts").hidden = false;
    $("consent-text").innerHTML = consent.text_html; // trusted: rendered and escaped by `crn-repro study make`
  }
  show("consent");
  setPhase("consent");
}

async function main() {
  study = await api("GET", "/api/study");
  trials = CrnTrial.presenter({
    stage: $("stage"), left: $("left"), right: $("right"), single: $("single"), fixation: $("fixation"),
    blankClass: "blank", blankMaskClass: "blank-mask", maskUrl: study.mask, width: 400, height: 200, setPhase,
  });
  storageKey = `crn-study:${study.study_id}`;
  document.title = study.question;
  const ids = prolificIds();
  const creds = storedCredentials(ids);
  if (creds) {
    try {
      return await run(await api("GET", "/api/state?" + new URLSearchParams(creds)), creds);
    } catch (error) {
      if (error.status !== 400 && error.status !== 403) throw error;
      localStorage.removeItem(storageKey); // not a participant of this study (any more): start afresh
    }
  }
  if (study.prolific && !ids) {
    return fail("This study takes part through Prolific: please open it from the study's page on Prolific.");
  }
  showConsent();
  $("agree").addEventListener("click", async () => {
    $("agree").disabled = $("decline").disabled = true;
    try {
      const joined = await patiently("POST", "/api/join", { consent: true, ...(ids || {}) });
      const fresh = { participant: joined.participant, token: joined.token };
      localStorage.setItem(storageKey, JSON.stringify({ ...fresh, pid: ids ? ids.PROLIFIC_PID : undefined }));
      await run(joined.state, fresh);
    } catch (error) {
      fail(`${error.message}. Your answers so far are saved: reload the page to continue.`);
    }
  }, { once: true });
  $("decline").addEventListener("click", async () => {
    $("agree").disabled = $("decline").disabled = true;
    try {
      const exit = await patiently("POST", "/api/decline", ids || {});
      leave("declined", $("declined-code").querySelector("code"), $("declined-link"), exit);
      $("declined-code").hidden = !exit.completion_code;
      setPhase("declined", { redirect: exit.redirect || "" });
    } catch (error) {
      fail(`${error.message}. Please close this page.`);
    }
  }, { once: true });
}

main().catch((error) => fail(`${error.message}. Your answers so far are saved: reload the page to continue.`));
