"""`study make` (paper Sec. 5.1): a self-contained, validated, byte-deterministic study folder whose
pairs show the same layout, and the manifest checks that guard the web app."""

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from study_data import SCORES, fake_image, fake_pipeline

from crn_repro.datasets import PreparedSplit
from crn_repro.errors import CrnError
from crn_repro.study.make import REAL_SCORE_MARGIN, _png_bytes, make_study
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


def test_unlimited_study_shows_the_right_images(params):
    manifest = make_study(params)
    study = load_manifest(params.study.dir)  # validates every key and image path
    assert study == manifest
    assert manifest["design"] == "unlimited" and manifest["mask"] is None and len(manifest["jobs"]) == 3
    for trial in manifest["jobs"][0]["trials"]:
        for side in ("left", "right"):
            entry = trial[side]
            assert entry["image"] == _expected_name(params, entry["model"], trial["layout"])  # same layout, right model
            with Image.open(f"{params.study.dir}/{entry['image']}") as image:
                assert image.size == (64, 32)
    scores = {t[s]["model"]: t[s]["score"] for j in manifest["jobs"] for t in j["trials"] for s in ("left", "right")}
    assert scores["real"] == pytest.approx(max(SCORES.values()) + 0.01 * 4 + REAL_SCORE_MARGIN)
    assert set(scores) == {"real", *SCORES}


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
@pytest.mark.parametrize("design", ["unlimited", "timed"])
def test_instructions_name_what_the_dataset_shows(params, dataset, scenes, design):
    meta_path = Path(params.paths.prepared) / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps(dict(meta, dataset=dataset)))
    manifest = make_study(params, design=design)
    assert f"pairs of {scenes}" in manifest["instructions_html"] and manifest["scenes"] == scenes
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
        (lambda m: m.update(format="other/1"), "is not 'crn-repro-study/1'"),
        (lambda m: m.pop("jobs"), "missing keys jobs"),
        (lambda m: m["jobs"][0]["trials"][1].update(index=7), "trials[1].index: expected 1"),
        (lambda m: m["jobs"][0]["trials"][0]["left"].update(image="../../etc/passwd"), "is not images/<name>.png"),
        (lambda m: m["jobs"][0]["trials"][0]["left"].update(image="/etc/passwd.png"), "is not images/<name>.png"),
        (lambda m: m["jobs"][0]["trials"][0]["left"].update(image="images/0000000000000000.png"), "is missing from the study"),
        (lambda m: m["jobs"][0]["trials"][0].update(duration_ms=100), "the unlimited design needs null"),
        (lambda m: m["jobs"][1].update(job="job-000"), "appears twice"),
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
