// Lab web app of the human perceptual study (paper Sec. 5.1, crn-facts §6): consent, then one pairwise
// "which is more realistic?" trial at a time, timed on requestAnimationFrame. The JSON API is documented
// in crn_repro/study/server.py. Only the study's trusted instructions_html is inserted as HTML; every
// other value reaches the page through textContent.
"use strict";

const FIXATION_MS = 500;
const KEYS = { f: "left", F: "left", ArrowLeft: "left", j: "right", J: "right", ArrowRight: "right" };
const $ = (id) => document.getElementById(id);
const nextFrame = () => new Promise((resolve) => requestAnimationFrame(resolve));
let study = null;
let storageKey = null;

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

// A fully decoded image, so showing it costs no decode time on the onset frame.
async function decoded(url) {
  const img = new Image(400, 200);
  img.alt = "";
  img.src = url;
  await img.decode();
  return img;
}

async function maskElement() {
  if (study.mask) return decoded(study.mask);
  const blank = document.createElement("div");
  blank.className = "blank-mask";
  return blank;
}

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

// Fixation cross for FIXATION_MS, measuring the display's frame interval from rAF timestamps meanwhile.
async function fixation() {
  const deltas = [];
  let previous = await nextFrame();
  const start = previous;
  while (previous - start < FIXATION_MS || deltas.length < 3) {
    const now = await nextFrame();
    deltas.push(now - previous);
    previous = now;
  }
  return median(deltas);
}

// Show the pair on a frame boundary; for timed trials replace it by the mask on the first frame where
// elapsed >= target - half a frame. measured = rAF timestamp of that frame - timestamp of the onset frame.
async function present(trial) {
  const [left, right] = await Promise.all([decoded(trial.left), decoded(trial.right)]);
  const masks = trial.duration_ms === null ? null : await Promise.all([maskElement(), maskElement()]);
  $("stage").classList.add("blank");
  $("left").replaceChildren(left);
  $("right").replaceChildren(right);
  $("fixation").hidden = false;
  setPhase("fixation");
  const frameMs = await fixation();
  const onset = await nextFrame();
  $("fixation").hidden = true;
  $("stage").classList.remove("blank");
  setPhase("stimulus");
  if (masks === null) return { onset, measured: null, frameMs };
  let now = onset;
  while (now - onset < trial.duration_ms - frameMs / 2) now = await nextFrame();
  $("left").replaceChildren(masks[0]);
  $("right").replaceChildren(masks[1]);
  return { onset, measured: now - onset, frameMs };
}

function awaitAnswer() {
  return new Promise((resolve) => {
    const panels = [$("left"), $("right")];
    const finish = (side) => {
      document.removeEventListener("keydown", onKey);
      for (const panel of panels) panel.onclick = null;
      resolve({ side, at: performance.now() });
    };
    const onKey = (event) => {
      if (event.repeat || event.ctrlKey || event.metaKey || event.altKey || !(event.key in KEYS)) return;
      event.preventDefault();
      finish(KEYS[event.key]);
    };
    document.addEventListener("keydown", onKey);
    for (const panel of panels) panel.onclick = () => finish(panel.dataset.side);
  });
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
  const shown = await present(trial);
  setPhase("answer", { measured: shown.measured === null ? "" : shown.measured.toFixed(1) });
  $("prompt").textContent = "Left: F or \u2190 \u00a0\u00a0 Right: J or \u2192 \u00a0\u00a0 (or click an image)";
  const answer = await awaitAnswer();
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
