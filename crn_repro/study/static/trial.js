// One trial of the human perceptual study (paper Sec. 5.1, docs/facts.md §6), shared by the study web app
// (app.js, which loads this file) and the MTurk HIT page (hit.html, into which `crn-repro study export-mturk`
// copies this file): a fixation cross, the stimulus (a pair, or one image for the hype design) swapped in on
// a requestAnimationFrame, for timed trials the mask swapped in on the first frame where the elapsed time
// reaches the target minus half a frame, and the answer by key or click.
// Timing is per frame at any refresh rate: the frame interval is measured from rAF timestamps during the
// fixation, the mask rule is expressed in frames (EARLY_FRAMES), and the page reports frame_ms with each answer.
// MTurk substitutes every dollar sign followed by a brace in a HIT, so this file never writes one (no template
// literals).
"use strict";

var CrnTrial = (function () {
  var FIXATION_MS = 500;
  // The mask goes up on the first frame whose timestamp is at least this many frames short of the target:
  // the on-screen time is then the whole number of frames nearest the target (within half a frame).
  var EARLY_FRAMES = 0.5;
  var PAIR_KEYS = { f: "left", F: "left", ArrowLeft: "left", j: "right", J: "right", ArrowRight: "right" };
  var VERDICT_KEYS = { r: "real", R: "real", ArrowLeft: "real", f: "fake", F: "fake", ArrowRight: "fake" };

  function nextFrame() {
    return new Promise(function (resolve) { requestAnimationFrame(resolve); });
  }

  function median(values) {
    var sorted = values.slice().sort(function (a, b) { return a - b; });
    return sorted[Math.floor(sorted.length / 2)];
  }

  // Fixation cross for FIXATION_MS, measuring the display's frame interval from rAF timestamps meanwhile.
  async function fixation() {
    var deltas = [];
    var previous = await nextFrame();
    var start = previous;
    while (previous - start < FIXATION_MS || deltas.length < 3) {
      var now = await nextFrame();
      deltas.push(now - previous);
      previous = now;
    }
    return median(deltas);
  }

  // A presenter for one page. view: { stage, left, right, single (optional: the panel of a one-image trial),
  // fixation (elements), blankClass (the stage's class while the stimulus is hidden), blankMaskClass (the class
  // of the grey mask drawn when the study has no mask image), maskUrl (or null), width, height,
  // setPhase (function (phase) {...}) }.
  function presenter(view) {
    // A fully decoded, fresh image, so showing it costs no fetch or decode on the onset frame.
    function decoded(url) {
      var img = new Image(view.width, view.height);
      img.alt = "";
      img.src = url;
      return img.decode().then(function () { return img; });
    }

    function maskElement() {
      if (view.maskUrl) return decoded(view.maskUrl);
      var blank = document.createElement("div");
      blank.className = view.blankMaskClass;
      return Promise.resolve(blank);
    }

    // Show the images in the panels on a frame boundary; for a timed trial (durationMs not null) replace them
    // by the mask on the first frame where elapsed >= target - EARLY_FRAMES frames. measured = rAF timestamp
    // of that frame - timestamp of the onset frame. Returns { onset, measured (null: untimed), frameMs }.
    async function show(panels, urls, durationMs) {
      var images = await Promise.all(urls.map(decoded));
      var masks = durationMs === null ? null : await Promise.all(panels.map(maskElement));
      view.stage.classList.add(view.blankClass);
      panels.forEach(function (panel, i) { panel.replaceChildren(images[i]); });
      view.fixation.hidden = false;
      view.setPhase("fixation");
      var frameMs = await fixation();
      var onset = await nextFrame();
      view.fixation.hidden = true;
      view.stage.classList.remove(view.blankClass);
      view.setPhase("stimulus");
      if (masks === null) return { onset: onset, measured: null, frameMs: frameMs };
      var now = onset;
      while (now - onset < durationMs - EARLY_FRAMES * frameMs) now = await nextFrame();
      panels.forEach(function (panel, i) { panel.replaceChildren(masks[i]); });
      return { onset: onset, measured: now - onset, frameMs: frameMs };
    }

    function present(leftUrl, rightUrl, durationMs) {
      return show([view.left, view.right], [leftUrl, rightUrl], durationMs);
    }

    function presentOne(url, durationMs) {
      return show([view.single], [url], durationMs);
    }

    // Resolves with { side, at } on the first key in `keys` or click on an element of `targets` (the answer is
    // the element's data-side or data-answer).
    function awaitChoice(keys, targets) {
      return new Promise(function (resolve) {
        function finish(side) {
          document.removeEventListener("keydown", onKey);
          targets.forEach(function (target) { target.onclick = null; });
          resolve({ side: side, at: performance.now() });
        }
        function onKey(event) {
          if (event.repeat || event.ctrlKey || event.metaKey || event.altKey || !(event.key in keys)) return;
          event.preventDefault();
          finish(keys[event.key]);
        }
        document.addEventListener("keydown", onKey);
        targets.forEach(function (target) {
          target.onclick = function () { finish(target.dataset.side || target.dataset.answer); };
        });
      });
    }

    // The participant's choice of a pair's side: F or the left arrow, J or the right arrow, or a click on a side.
    function awaitAnswer() {
      return awaitChoice(PAIR_KEYS, [view.left, view.right]);
    }

    // The participant's verdict on one image: R or the left arrow (real), F or the right arrow (fake), or a click
    // on one of `buttons` (elements with data-answer "real" / "fake").
    function awaitVerdict(buttons) {
      return awaitChoice(VERDICT_KEYS, buttons);
    }

    return { decoded: decoded, present: present, presentOne: presentOne, awaitAnswer: awaitAnswer,
             awaitVerdict: awaitVerdict };
  }

  return { presenter: presenter, EARLY_FRAMES: EARLY_FRAMES };
})();
