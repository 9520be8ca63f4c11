// Lab web app of the human perceptual study (paper Sec. 5.1, docs/facts.md §6): consent, then one pairwise
// "which is more realistic?" trial at a time, timed on requestAnimationFrame. The JSON API is documented
// in crn_repro/study/server.py. Only the study's trusted instructions_html is inserted as HTML; every
// other value reaches the page through textContent.
// The trial itself (fixation, timed presentation, answer) is trial.js's CrnTrial, which the MTurk HIT shares.
"use strict";

const $ = (id) => document.getElementById(id);
let study = null;
let storageKey = null;
let trials = null; // CrnTrial presenter of this page

// The page's phase, for people reading the DOM and for the browser tests.
function setPhase(phase, extra = {}) {
  Object.assign(document.body.dataset, extra, { phase });
}

function show(sectionId) {
  for (const id of ["consent", "trial", "done"]) $(id).hidden = id !== sectionId;
}

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
    throw error;
  }
  return data;
}

function fail(text) {
  $("message").textContent = text;
  setPhase("error");
}

function showProgress(progress) {
  $("progress-bar").style.width = `${(100 * progress.answered) / progress.total}%`;
  $("progress-text").textContent = `Trial ${progress.answered + 1} of ${progress.total}`;
}

async function runTrial(state, creds) {
  const trial = state.trial;
  showProgress(state.progress);
  $("prompt").textContent = "";
  setPhase("loading", { job: state.job, trial: String(trial.index) });
  const shown = await trials.present(trial.left, trial.right, trial.duration_ms);
  setPhase("answer", { measured: shown.measured === null ? "" : shown.measured.toFixed(1) });
  $("prompt").textContent = "Left: F or \u2190 \u00a0\u00a0 Right: J or \u2192 \u00a0\u00a0 (or click an image)";
  const answer = await trials.awaitAnswer();
  setPhase("saving");
  const body = {
    ...creds,
    trial: trial.index,
    chosen_side: answer.side,
    measured_ms: shown.measured,
    response_ms: answer.at - shown.onset,
    frame_ms: shown.frameMs,
  };
  try {
    return await api("POST", "/api/answer", body);
  } catch (error) {
    if (error.status === 409) return api("GET", "/api/state?" + new URLSearchParams(creds));
    throw error;
  }
}

async function run(state, creds) {
  show("trial");
  $("question").textContent = study.question;
  while (state.status === "trial") state = await runTrial(state, creds);
  show("done");
  $("code").textContent = state.completion_code;
  setPhase("done");
}

function storedCredentials() {
  try {
    const creds = JSON.parse(localStorage.getItem(storageKey));
    if (creds && typeof creds.participant === "string" && typeof creds.token === "string") {
      return { participant: creds.participant, token: creds.token };
    }
  } catch (error) {
    // unreadable: start afresh
  }
  localStorage.removeItem(storageKey);
  return null;
}

async function main() {
  study = await api("GET", "/api/study");
  trials = CrnTrial.presenter({
    stage: $("stage"), left: $("left"), right: $("right"), fixation: $("fixation"), blankClass: "blank",
    blankMaskClass: "blank-mask", maskUrl: study.mask, width: 400, height: 200, setPhase,
  });
  storageKey = `crn-study:${study.study_id}`;
  document.title = study.question;
  const creds = storedCredentials();
  if (creds) {
    try {
      return await run(await api("GET", "/api/state?" + new URLSearchParams(creds)), creds);
    } catch (error) {
      if (error.status !== 400 && error.status !== 403) throw error;
      localStorage.removeItem(storageKey); // not a participant of this study (any more): start afresh
    }
  }
  $("instructions").innerHTML = study.instructions_html; // trusted: written by `crn-repro study make`
  $("consent-question").textContent = study.question;
  show("consent");
  setPhase("consent");
  $("agree").addEventListener("click", async () => {
    $("agree").disabled = true;
    try {
      const joined = await api("POST", "/api/join", { consent: true });
      const fresh = { participant: joined.participant, token: joined.token };
      localStorage.setItem(storageKey, JSON.stringify(fresh));
      await run(joined.state, fresh);
    } catch (error) {
      fail(`${error.message}. Your answers so far are saved: reload the page to continue.`);
    }
  }, { once: true });
}

main().catch((error) => fail(`${error.message}. Your answers so far are saved: reload the page to continue.`));
