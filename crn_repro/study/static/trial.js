// One pairwise trial of the human perceptual study (paper Sec. 5.1, docs/facts.md §6), shared by the lab
// web app (app.js, which loads this file) and the MTurk HIT page (hit.html, into which
// `crn-repro study export-mturk` copies this file): a fixation cross, the pair swapped in on a
// requestAnimationFrame, for timed trials the mask swapped in on the first frame where the elapsed time
// reaches the target minus half a frame, and the answer by key or click.
// MTurk substitutes every dollar sign followed by a brace in a HIT, so this file never writes one (no template
// literals).
"use strict";

var CrnTrial = (function () {
  var FIXATION_MS = 500;
  var KEYS = { f: "left", F: "left", ArrowLeft: "left", j: "right", J: "right", ArrowRight: "right" };

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

  // A presenter for one page. view: { stage, left, right, fixation (elements), blankClass (the stage's class
  // while the pair is hidden), blankMaskClass (the class of the grey mask drawn when the study has no mask
  // image), maskUrl (or null), width, height, setPhase (function (phase) {...}) }.
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

    // Show the pair on a frame boundary; for a timed trial (durationMs not null) replace it by the mask on the
    // first frame where elapsed >= target - half a frame. measured = rAF timestamp of that frame - timestamp
    // of the onset frame. Returns { onset, measured (null: untimed), frameMs }.
    async function present(leftUrl, rightUrl, durationMs) {
      var pair = await Promise.all([decoded(leftUrl), decoded(rightUrl)]);
      var masks = durationMs === null ? null : await Promise.all([maskElement(), maskElement()]);
      view.stage.classList.add(view.blankClass);
      view.left.replaceChildren(pair[0]);
      view.right.replaceChildren(pair[1]);
      view.fixation.hidden = false;
      view.setPhase("fixation");
      var frameMs = await fixation();
      var onset = await nextFrame();
      view.fixation.hidden = true;
      view.stage.classList.remove(view.blankClass);
      view.setPhase("stimulus");
      if (masks === null) return { onset: onset, measured: null, frameMs: frameMs };
      var now = onset;
      while (now - onset < durationMs - frameMs / 2) now = await nextFrame();
      view.left.replaceChildren(masks[0]);
      view.right.replaceChildren(masks[1]);
      return { onset: onset, measured: now - onset, frameMs: frameMs };
    }

    // The participant's choice: F or the left arrow, J or the right arrow, or a click on a side.
    function awaitAnswer() {
      return new Promise(function (resolve) {
        var panels = [view.left, view.right];
        function finish(side) {
          document.removeEventListener("keydown", onKey);
          panels.forEach(function (panel) { panel.onclick = null; });
          resolve({ side: side, at: performance.now() });
        }
        function onKey(event) {
          if (event.repeat || event.ctrlKey || event.metaKey || event.altKey || !(event.key in KEYS)) return;
          event.preventDefault();
          finish(KEYS[event.key]);
        }
        document.addEventListener("keydown", onKey);
        panels.forEach(function (panel) { panel.onclick = function () { finish(panel.dataset.side); }; });
      });
    }

    return { decoded: decoded, present: present, awaitAnswer: awaitAnswer };
  }

  return { presenter: presenter };
})();
