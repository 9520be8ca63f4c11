"""`study make` (paper Sec. 5.1): a self-contained, validated, byte-deterministic study folder whose
pairs show the same layout, and the manifest checks that guard the web app."""

import hashlib
import json
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from study_data import MODELS, SCORES, fake_image, fake_pipeline

from crn_repro.datasets import PreparedSplit
from crn_repro.errors import CrnError
from crn_repro.synthesize import output_names
from crn_repro.study.make import REAL_SCORE_MARGIN, _png_bytes, make_study
from crn_repro.study.records import real_image_sha256
from crn_repro.study.manifest import load_manifest


@pytest.fixture
def params(tmp_path, tiny_raw, prepared_tiny):
    _, prepared_params = prepared_tiny
    return fake_pipeline(tmp_path / "run", tiny_raw, prepared_params.paths.prepared)


def _expected_name(params, model, layout, u=0):
    """The file name the stimulus of (model, layout) must have: hash of its resized PNG."""
    val = PreparedSplit(params.paths.prepared, "val")
    real = np.asarray(val.images[val.names.index(layout)])
    pixels = real if model == "real" else fake_image(real, model, u)
    return f"images/{hashlib.sha1(_png_bytes(pixels, params.study.image_size_wh)).hexdigest()[:16]}.png"


def test_paper_study_shows_the_right_images(params):
    manifest = make_study(params)
    study = load_manifest(params.study.dir)  # validates every key and image path
    assert study == manifest
    assert manifest["design"] == "paper" and manifest["mask"] is None and manifest["format"] == "crn-repro-study/2"
    # 5 layouts, jobs of 4 test pairs: 2 jobs per baseline
    assert [j["job"] for j in manifest["jobs"]] == ["crn-diverse-000", "crn-diverse-001", "pix2pix-000", "pix2pix-001",
                                                    "image-space-000", "image-space-001"]  # in the order of `models`
    val = PreparedSplit(params.paths.prepared, "val")
    for trial in manifest["jobs"][0]["trials"]:
        for side in ("left", "right"):
            entry = trial[side]
            assert entry["image"] == _expected_name(params, entry["model"], trial["layout"])  # same layout, right model
            data = (Path(params.study.dir) / entry["image"]).read_bytes()
            assert entry["sha256"] == hashlib.sha256(data).hexdigest()  # bound to the file shown
            with Image.open(f"{params.study.dir}/{entry['image']}") as image:
                assert image.size == (64, 32)
            source = manifest["sources"][entry["sha256"]]  # and to what it was made from
            if entry["model"] == "real":
                assert source == real_image_sha256(np.asarray(val.images[val.names.index(trial["layout"])]))
            else:
                k = 2 if entry["model"] == "crn-diverse" else 1
                synthesized = Path(params.paths.synth) / entry["model"] / output_names(trial["layout"], k)[0]
                assert source == hashlib.sha256(synthesized.read_bytes()).hexdigest()
    scores = {t[s]["model"]: t[s]["score"] for j in manifest["jobs"] for t in j["trials"] for s in ("left", "right")}
    assert scores["real"] == pytest.approx(max(SCORES[m] for m in MODELS) + 0.01 * 4 + REAL_SCORE_MARGIN)
    assert set(scores) == {"real", *MODELS}


def test_consent_and_attention_come_from_the_params(tmp_path, tiny_raw, prepared_tiny):
    tiny_raw["study"]["consent"].update(ethics_approval="IRB-2026-042", contact="Ada <ada@example.org>", reward=2.5,
                                        currency="GBP", duration_minutes=12)
    tiny_raw["study"]["prolific"].update(enabled=True, completion_code="C0MPL3TE", abandon_after_minutes=30)
    tiny_raw["study"]["min_sentinel_accuracy"] = 0.8
    params = fake_pipeline(tmp_path / "run", tiny_raw, prepared_tiny[1].paths.prepared)
    manifest = make_study(params)
    consent = manifest["consent"]
    assert {k: consent[k] for k in ("ethics_approval", "contact", "pay", "duration_minutes")} == {
        "ethics_approval": "IRB-2026-042", "contact": "Ada <ada@example.org>", "pay": "£2.50", "duration_minutes": 12}
    text = consent["text_html"]
    assert "about 12 minutes" in text and "£2.50" in text and "IRB-2026-042" in text and "return the submission" in text
    assert "Ada &lt;ada@example.org&gt;" in text and "<ada@" not in text  # escaped
    assert manifest["prolific"] == {"completion_code": "C0MPL3TE", "declined_code": "DECLINED1",
                                    "failed_attention_code": "ATTENTION1", "abandon_after_minutes": 30}
    assert manifest["attention"] == {"min_sentinel_accuracy": 0.8}
    assert "The first 3 pairs are practice" in manifest["instructions_html"]

    tiny_raw["study"]["consent"]["text"] = "Takes {duration_minutes} min, pays {pay}.\n\n<b>Ask</b> {contact}; approval {ethics_approval}."
    tiny_raw["study"]["prolific"]["enabled"] = False
    tiny_raw["study"]["practice_trials"] = 1
    manifest = make_study(fake_pipeline(tmp_path / "run2", tiny_raw, prepared_tiny[1].paths.prepared))
    assert manifest["consent"]["text_html"] == ("<p>Takes 12 min, pays £2.50.</p><p>&lt;b&gt;Ask&lt;/b&gt; Ada &lt;ada@example.org&gt;; "
                                                "approval IRB-2026-042.</p>")
    assert manifest["prolific"] is None and "The first pair is practice" in manifest["instructions_html"]


def test_practice_trials_come_first_with_their_answer(params):
    manifest = make_study(params, design="mixed")
    for job in manifest["jobs"]:
        practice = job["trials"][:3]
        assert [t["kind"] for t in practice] == ["practice"] * 3 and all(t["kind"] != "practice" for t in job["trials"][3:])
        assert all(t[t["correct"]]["model"] == "real" for t in practice)


def test_hype_study_shows_one_image_per_trial(params):
    manifest = make_study(params, design="hype")
    assert manifest["design"] == "hype" and manifest["question"].startswith("Is this image a real photograph")
    assert "one at a time" in manifest["instructions_html"] and "Real" in manifest["instructions_html"]
    for job in manifest["jobs"]:
        for trial in job["trials"]:
            assert "left" not in trial and set(trial["image"]) == {"model", "image", "score", "sha256"}
            assert trial["truth"] == ("real" if trial["image"]["model"] == "real" else "fake")
    assert load_manifest(params.study.dir) == manifest


def test_an_older_manifest_says_to_rebuild(params):
    make_study(params)
    _edit(Path(params.study.dir), lambda m: m.update(format="crn-repro-study/1"))
    with pytest.raises(CrnError, match=r"made by an older crn-repro: rebuild it with `crn-repro study make --force`"):
        load_manifest(Path(params.study.dir))


def test_collections_show_their_first_output(params):
    manifest = make_study(params)
    diverse = [(t["layout"], t[s]["image"]) for j in manifest["jobs"] for t in j["trials"] for s in ("left", "right")
               if t[s]["model"] == "crn-diverse"]
    assert diverse and all(image == _expected_name(params, "crn-diverse", layout, u=0) for layout, image in diverse)


def test_timed_study_has_mask_and_durations(params):
    manifest = make_study(params, design="timed")
    assert manifest["mask"] == "images/mask.png"
    with Image.open(f"{params.study.dir}/images/mask.png") as mask:
        assert mask.size == (64, 32) and np.asarray(mask).std() > 30
    durations = {t["duration_ms"] for j in manifest["jobs"] for t in j["trials"] if t["kind"] == "test"}
    assert durations == {125, 1000}
    assert "from 0.125 to 1 seconds" in manifest["instructions_html"]
    sentinels = [t for j in manifest["jobs"] for t in j["trials"] if t["kind"] == "sentinel"]
    assert {t["duration_ms"] for t in sentinels} == {4000} and all(t[t["correct"]]["model"] == "real" for t in sentinels)


def test_byte_identical_for_a_seed(params, tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1500000000")
    a, b = tmp_path / "a" / "study", tmp_path / "b" / "study"
    make_study(params, out=a)
    make_study(params, out=b)
    files = sorted(p.relative_to(a) for p in a.rglob("*"))
    assert files == sorted(p.relative_to(b) for p in b.rglob("*"))
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files if (a / f).is_file())
    assert json.loads((a / "manifest.json").read_text())["created_utc"] == "2017-07-14T02:40:00Z"


def test_responses_are_never_replaced_silently(params, tmp_path):
    make_study(params)
    study = params.study.dir
    make_study(params)  # no responses yet: rebuilding is fine
    open(f"{study}/responses.sqlite", "wb").close()
    with pytest.raises(CrnError, match="already holds responses; pass --force"):
        make_study(params)
    make_study(params, force=True)
    assert not (tmp_path / "run/studies/demo/responses.sqlite").exists()
    assert not (tmp_path / "run/studies/demo.partial").exists() and not (tmp_path / "run/studies/demo.old").exists()
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(CrnError, match="is not a study folder"):
        make_study(params, out=other)
    assert (other / "notes.txt").read_text() == "keep me"


def test_an_mturk_export_is_never_replaced_silently(params, tmp_path):
    from crn_repro.study.mturk import export_mturk

    make_study(params)
    study = Path(params.study.dir)
    export_mturk(study, study / "mturk", "https://example.org/demo")
    with pytest.raises(CrnError) as error:
        make_study(params)
    assert f"has an MTurk export ({(study / 'mturk' / 'batch_input.csv').resolve()})" in str(error.value)
    assert "pass --force" in str(error.value)
    assert "\n" not in str(error.value) and (study / "mturk" / "batch_input.csv").is_file()
    make_study(params, force=True)
    assert not (study / "mturk").exists()


def test_an_mturk_export_elsewhere_is_logged_and_guards_the_study(params, tmp_path):
    from crn_repro.study.mturk import export_mturk, mturk_exports

    make_study(params)
    study = Path(params.study.dir)
    paths = export_mturk(study, tmp_path / "published", "https://example.org/demo")
    assert mturk_exports(study) == [str(paths["batch_input"].resolve())]
    manifest_before = (study / "manifest.json").read_bytes()
    with pytest.raises(CrnError, match=r"has an MTurk export \(.*published/batch_input.csv\)"):
        make_study(params)
    assert (study / "manifest.json").read_bytes() == manifest_before

    (study / "mturk" / "exports.json").write_text("{not json")
    with pytest.raises(CrnError, match=r"exports.json: unreadable export log"):
        make_study(params)
    with pytest.raises(CrnError, match=r"exports.json: unreadable export log"):
        export_mturk(study, tmp_path / "again", "https://example.org/demo")
    assert not (tmp_path / "again").exists()


@pytest.mark.parametrize("dataset,scenes", [("synthetic", "street scenes"), ("cityscapes", "street scenes"),
                                            ("nyu", "indoor rooms")])
@pytest.mark.parametrize("design", ["paper", "timed", "hype"])
def test_instructions_name_what_the_dataset_shows(params, dataset, scenes, design):
    meta_path = Path(params.paths.prepared) / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps(dict(meta, dataset=dataset)))
    manifest = make_study(params, design=design)
    what = f"see {scenes}, one at a time" if design == "hype" else f"pairs of {scenes}"
    assert what in manifest["instructions_html"] and manifest["scenes"] == scenes
    assert ("street" in manifest["instructions_html"]) == (scenes == "street scenes")
    if design == "timed":  # the exposure range the participant is told is the design's own
        durations = params.study.timed.durations_ms
        assert f"from {min(durations) / 1000:g} to {max(durations) / 1000:g} seconds" in manifest["instructions_html"]


def test_missing_scores_say_to_run_evaluate(params):
    shutil.rmtree(f"{params.paths.reports}/per_image")
    with pytest.raises(CrnError, match="run `crn-repro evaluate` first"):
        make_study(params)


def _edit(study, change):
    path = study / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    "change,needle",
    [
        (lambda m: m.update(format="other/1"), "is not 'crn-repro-study/2'"),
        (lambda m: m.pop("consent"), "missing keys consent"),
        (lambda m: m["consent"].pop("text_html"), "consent must be {contact, duration_minutes, ethics_approval, pay, text_html}"),
        (lambda m: m.update(prolific={"completion_code": "X"}), "prolific must be null or"),
        (lambda m: m["jobs"][0]["trials"][0]["left"].update(sha256="abc"), "left.sha256: expected the image file's SHA-256"),
        (lambda m: m["jobs"][0]["trials"][0]["left"].pop("sha256"), "expected {model, image, score, sha256}"),
        (lambda m: next(t for t in m["jobs"][0]["trials"] if t["kind"] == "sentinel").update(kind="practice"),
         "practice trials come first in a job"),
        (lambda m: m["jobs"][0]["trials"][0].update(correct=None), "a practice pair needs the real image's side"),
        (lambda m: m.pop("jobs"), "missing keys jobs"),
        (lambda m: m["jobs"][0]["trials"][1].update(index=7), "trials[1].index: expected 1"),
        (lambda m: m["jobs"][0]["trials"][0]["left"].update(image="../../etc/passwd"), "is not images/<name>.png"),
        (lambda m: m["jobs"][0]["trials"][0]["left"].update(image="/etc/passwd.png"), "is not images/<name>.png"),
        (lambda m: m["jobs"][0]["trials"][0]["left"].update(image="images/0000000000000000.png"), "is missing from the study"),
        (lambda m: m["jobs"][0]["trials"][0].update(duration_ms=100), "the paper design needs null"),
        (lambda m: m["jobs"][1].update(job=m["jobs"][0]["job"]), "appears twice"),
    ],
)
def test_manifest_problems_are_one_line_errors(params, change, needle):
    make_study(params)
    study = params.study.dir
    _edit(Path(study), change)
    with pytest.raises(CrnError) as error:
        load_manifest(Path(study))
    assert needle in str(error.value) and "\n" not in str(error.value)


def test_an_image_link_leading_outside_is_refused(params, tmp_path):
    make_study(params)
    study = Path(params.study.dir)
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"not yours")
    (study / "images/link.png").symlink_to(secret)
    _edit(study, lambda m: m["jobs"][0]["trials"][0]["left"].update(image="images/link.png"))
    with pytest.raises(CrnError, match="leads outside the study folder"):
        load_manifest(study)


# ---------------------------------------------------------------- the authors' design (docs/facts.md §6.1)


def _authors_facts() -> dict[str, dict[str, str]]:
    """docs/facts.md §6.1's table of the authors' MTurk scripts: {fact: {"unlimited": ..., "timed": ...}}."""
    from conftest import REPO

    text = (REPO / "docs" / "facts.md").read_text()
    section = text[text.index("### 6.1 The authors' MTurk scripts"):text.index("### 6.2")]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| fact")]
    facts = {}
    for line in rows:
        fact, unlimited, timed = (cell.strip() for cell in line.strip("|").split("|"))
        facts[fact] = {"unlimited": unlimited, "timed": timed}
    return facts


def _number(text: str) -> int:
    return int(re.match(r"\d+", text).group())


@pytest.fixture(scope="module")
def authors_scale(tmp_path_factory):
    """The paper's scale: 500 validation layouts, CRN and the five baselines (fake outputs)."""
    from conftest import tiny_raw_params

    from crn_repro.params import parse_params
    from crn_repro.prepare import prepare

    facts = _authors_facts()
    root = tmp_path_factory.mktemp("authors")
    raw = tiny_raw_params(root / "prep")
    raw["synthetic"].update(num_train=2, num_val=_number(facts["validation layouts"]["unlimited"]))
    prepared = parse_params(raw, "params")
    prepare(prepared)
    def paper_numbers(study):
        study.update(practice_trials=0, jobs=_number(facts["jobs"]["timed"]), image_size_wh=[32, 16])  # the authors: no practice
        study["paper"].update(test_pairs_per_job=_number(facts["test pairs per job"]["unlimited"]),
                              sentinels_per_job=_number(facts["sentinels per job"]["unlimited"]), jobs_per_model=None,
                              models=None)
        study["timed"].update(test_pairs_per_job=_number(facts["test pairs per job"]["timed"]),
                              sentinels_per_job=_number(facts["sentinels per job"]["timed"]),
                              sentinel_duration_ms=_number(facts["sentinel time ms"]["timed"]), layouts="random",
                              durations_ms=[125, 250, 500, 1000, 2000, 4000, 8000], pairs=[["real", "crn"], ["real", "pix2pix"],
                                                                                             ["crn", "pix2pix"]])

    models = ("crn", "image-space", "gan-semseg", "pix2pix", "unet", "fullres")
    params = fake_pipeline(root / "run", tiny_raw_params(root / "unused"), prepared.paths.prepared, models=models,
                           adjust=paper_numbers)
    return facts, params


@pytest.mark.slow
def test_study_make_follows_the_authors_unlimited_design(authors_scale):
    facts, params = authors_scale
    f = {k: v["unlimited"] for k, v in facts.items()}
    manifest = make_study(params, design="paper", out=Path(params.study.dir) / "paper")
    layouts = set(PreparedSplit(params.paths.prepared, "val").names)
    baselines = ("image-space", "gan-semseg", "pix2pix", "unet", "fullres")
    per_baseline = _number(f["jobs"])
    assert len(manifest["jobs"]) == per_baseline * len(baselines)
    for baseline in baselines:
        jobs = [j for j in manifest["jobs"] if j["job"].rsplit("-", 1)[0] == baseline]
        assert len(jobs) == per_baseline
        shown = Counter()
        for job in jobs:
            trials, kinds = job["trials"], [t["kind"] for t in job["trials"]]
            tests = [t for t in trials if t["kind"] == "test"]
            assert len(tests) == _number(f["test pairs per job"]) == _number(f["test pairs per cell and job"])
            assert kinds.count("sentinel") == _number(f["sentinels per job"])
            assert len({frozenset((t["left"]["model"], t["right"]["model"])) for t in tests}) == _number(f["test cells per job"])
            assert all({t["left"]["model"], t["right"]["model"]} == {"crn", baseline} for t in tests)
            assert f["sentinel pair"] == "real vs the job's baseline"
            assert all({t["left"]["model"], t["right"]["model"]} == {"real", baseline} for t in trials if t["kind"] == "sentinel")
            assert f["sentinel time ms"] == "none" and all(t["duration_ms"] is None for t in trials)
            assert f["sentinel position"] == "after a test pair drawn at random"
            assert kinds[0] == "test" and all(kinds[i - 1] == "test" for i, k in enumerate(kinds) if k == "sentinel")
            assert {t["layout"] for t in trials if t["kind"] == "sentinel"} <= layouts
            shown.update(t["layout"] for t in tests)
        assert f["test layouts"] == "each once per baseline" and set(shown) == layouts and set(shown.values()) == {1}
    positions = {tuple(i for i, t in enumerate(j["trials"]) if t["kind"] == "sentinel") for j in manifest["jobs"]}
    assert len(positions) == len(manifest["jobs"])  # drawn at random for every job
    tests = [t for j in manifest["jobs"] for t in j["trials"] if t["kind"] == "test"]
    assert 0.45 < sum(t["left"]["model"] == "crn" for t in tests) / len(tests) < 0.55  # a fair coin per pair


@pytest.mark.slow
def test_study_make_follows_the_authors_timed_design(authors_scale):
    facts, params = authors_scale
    f = {k: v["timed"] for k, v in facts.items()}
    manifest = make_study(params, design="timed", out=Path(params.study.dir) / "timed")
    assert len(manifest["jobs"]) == _number(f["jobs"])
    for job in manifest["jobs"]:
        tests = [t for t in job["trials"] if t["kind"] == "test"]
        sentinels = [t for t in job["trials"] if t["kind"] == "sentinel"]
        assert len(tests) == _number(f["test pairs per job"]) and len(sentinels) == _number(f["sentinels per job"])
        cells = Counter((frozenset((t["left"]["model"], t["right"]["model"])), t["duration_ms"]) for t in tests)
        assert len(cells) == _number(f["test cells per job"]) and set(cells.values()) == {_number(f["test pairs per cell and job"])}
        assert f["sentinel pair"] == "real vs image-space"
        assert all({t["left"]["model"], t["right"]["model"]} == {"real", "image-space"} for t in sentinels)
        assert {t["duration_ms"] for t in sentinels} == {_number(f["sentinel time ms"])}
    assert f["sentinel position"] == "anywhere" and f["test layouts"] == "drawn with replacement"
    positions = [i for j in manifest["jobs"] for i, t in enumerate(j["trials"]) if t["kind"] == "sentinel"]
    assert min(positions) < 10 and max(positions) > 100  # the whole job, not after tests only
    used = [t["layout"] for j in manifest["jobs"] for t in j["trials"] if t["kind"] == "test"]
    assert any(len({t["layout"] for t in j["trials"]}) < len(j["trials"]) for j in manifest["jobs"])  # repeats allowed
    assert len(set(used)) > 0.8 * len(set(PreparedSplit(params.paths.prepared, "val").names))  # drawn from all 500
