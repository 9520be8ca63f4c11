"""The MTurk round trip (paper Sec. 5.1): HIT template and batch input out, batch results in, and
every malformed results file refused with a one-line error."""

import csv
import json
import re
from pathlib import Path

import pytest
from study_data import fake_pipeline

from crn_repro.errors import CrnError
from crn_repro.study.make import make_study
from crn_repro.study.manifest import load_manifest
from crn_repro.study.mturk import (
    HIT_VARIABLES,
    RESULT_COLUMNS_BEFORE_INPUT,
    SIMULATED_KEYWORDS,
    decode_trials,
    encode_trials,
    export_mturk,
    import_results,
    simulate_results,
)
from crn_repro.study.records import RESPONSE_COLUMNS, check_responses


@pytest.fixture
def exported(tmp_path, tiny_raw, prepared_tiny):
    params = fake_pipeline(tmp_path / "run", tiny_raw, prepared_tiny[1].paths.prepared)
    make_study(params, design="timed")
    study = params.study.dir
    paths = export_mturk(study, tmp_path / "mturk", "https://example.org/study/")
    results = simulate_results(study, paths["batch_input"], tmp_path / "results.csv", participants=5, seed=1)
    return study, paths, results


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _write(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), quoting=csv.QUOTE_ALL)
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_template_variables_match_the_batch_input(exported):
    study, paths, _ = exported
    html = paths["hit"].read_text()
    assert set(re.findall(r"\$\{([^}]*)\}", html)) == set(HIT_VARIABLES)
    assert "crowd-form" in html and "requestAnimationFrame" in html and 'name="responses"' in html
    assert "ASSIGNMENT_ID_NOT_AVAILABLE" in html and "Accept the HIT to begin" in html  # MTurk's preview
    rows = _rows(paths["batch_input"])
    manifest = load_manifest(study)
    assert [r["job"] for r in rows] == [j["job"] for j in manifest["jobs"]]
    assert rows[0]["image_base_url"] == "https://example.org/study/images/"
    assert rows[0]["mask_url"] == "https://example.org/study/images/mask.png"
    decoded = decode_trials(rows[0]["trials"])
    job = manifest["jobs"][0]
    assert len(decoded) == len(job["trials"]) and encode_trials(job) == rows[0]["trials"]
    index, duration, left, right = decoded[0]
    assert (index, duration, "images/" + left, "images/" + right) == (
        0, job["trials"][0]["duration_ms"], job["trials"][0]["left"]["image"], job["trials"][0]["right"]["image"])


def test_bad_base_url_is_refused(exported, tmp_path):
    with pytest.raises(CrnError, match="--base-url"):
        export_mturk(exported[0], tmp_path / "x", "javascript:alert(1)")


def test_simulated_results_have_mturks_columns(exported):
    _, _, results = exported
    with open(results, newline="") as f:
        header = next(csv.reader(f))
    assert header == (list(RESULT_COLUMNS_BEFORE_INPUT) + [f"Input.{v}" for v in HIT_VARIABLES]
                      + ["Answer.responses", "Approve", "Reject"])
    assert results.read_text().startswith('"HITId","HITTypeId"')  # MTurk quotes every field
    rows = _rows(results)
    assert len(rows) == 5 and len({r["WorkerId"] for r in rows}) == 5
    assert [r["Input.job"] for r in rows] == ["job-000", "job-001", "job-002", "job-000", "job-001"]


def test_import_gives_canonical_records(exported):
    study, _, results = exported
    records = check_responses(import_results(study, [results]), "imported")
    manifest = load_manifest(study)
    per_job = {j["job"]: len(j["trials"]) for j in manifest["jobs"]}
    assert list(records.columns) == list(RESPONSE_COLUMNS)
    assert len(records) == 2 * per_job["job-000"] + 2 * per_job["job-001"] + per_job["job-002"]
    assert set(records.source) == {"simulated-mturk"} and records.participant.nunique() == 5
    assert (records.measured_ms == records.duration_ms).all() and records.answered_utc.str.endswith("Z").all()
    first = records.iloc[0]
    trial = manifest["jobs"][0]["trials"][first.trial]
    assert (first.layout, first.left_model, first.kind) == (trial["layout"], trial["left"]["model"], trial["kind"])


def _as_real_export(rows):
    """The simulated rows with the marks a real MTurk export never has replaced by real-looking values."""
    for i, row in enumerate(rows):
        row.update(Keywords="image, realism, comparison", WorkerId=f"A1B2C3D4E5F6G{i}")
    return rows


def test_simulated_results_are_marked_and_real_ones_import_as_mturk(exported, tmp_path):
    study, _, results = exported
    rows = _rows(results)
    assert {r["Keywords"] for r in rows} == {SIMULATED_KEYWORDS} and all(r["WorkerId"].startswith("SIM-") for r in rows)
    real = import_results(study, [_write(tmp_path / "real.csv", _as_real_export(_rows(results)))])
    assert set(real.source) == {"mturk"} and real.participant.nunique() == 5
    for keep, erase in (("Keywords", "WorkerId"), ("WorkerId", "Keywords")):  # either mark alone says simulated
        rows = _rows(results)
        for row, real_row in zip(rows, _as_real_export(_rows(results))):
            row[erase] = real_row[erase]
        assert set(import_results(study, [_write(tmp_path / f"{keep}.csv", rows)]).source) == {"simulated-mturk"}
    mixed = import_results(study, [results, tmp_path / "real.csv"])
    assert mixed.groupby("source").participant.nunique().to_dict() == {"mturk": 5, "simulated-mturk": 5}


def test_rejected_assignments_are_skipped_and_crowd_form_answers_read(exported, tmp_path):
    study, _, results = exported
    rows = _rows(results)
    rows[0]["AssignmentStatus"] = "Rejected"
    for row in rows:  # crowd-form's JSON answer column instead of a plain field
        row["Answer.taskAnswers"] = json.dumps([{"responses": row.pop("Answer.responses")}])
    records = import_results(study, [_write(tmp_path / "crowd.csv", rows)])
    assert records.participant.nunique() == 4


@pytest.mark.parametrize(
    "change,needle",
    [
        (lambda rows: [r.pop("WorkerId") for r in rows], "missing columns WorkerId"),
        (lambda rows: rows[1].update({"Input.job": "job-999"}), "Input.job 'job-999' is not a job"),
        (lambda rows: rows[1].update({"Input.trials": rows[2]["Input.trials"]}), "trials differ from job-001"),
        (lambda rows: rows[0].update({"Answer.responses": '[[999, "left", null, 800]]'}), "trial 999 is not in job-000"),
        (lambda rows: rows[0].update({"Answer.responses": '[[0, "up", null, 800]]'}), "answer 'up' is not left or right"),
        (lambda rows: rows[0].update({"Answer.responses": '[[0, "<script>", null, 800]]'}), "is not left or right"),
        (lambda rows: rows[0].update({"Answer.responses": '[[0, "left", 125, 800], [0, "right", 125, 900]]'}),
         "answered job-000 trial 0 twice"),
        (lambda rows: rows[3].update({"WorkerId": rows[0]["WorkerId"]}), "answered job-000 trial"),
        (lambda rows: rows[0].update({"Answer.responses": "not json"}), "is not JSON"),
        (lambda rows: rows[0].update({"Answer.responses": '[[0, "left", -5, 800]]'}), "is not a duration in ms"),
        (lambda rows: rows[0].update({"WorkerId": "<b>x</b>"}), "is not an MTurk worker id"),
    ],
)
def test_bad_results_are_refused(exported, tmp_path, change, needle):
    study, _, results = exported
    rows = _rows(results)
    change(rows)
    with pytest.raises(CrnError) as error:
        import_results(study, [_write(tmp_path / "bad.csv", rows)])
    assert needle in str(error.value) and "\n" not in str(error.value)


def test_simulation_needs_an_export(exported, tmp_path):
    with pytest.raises(CrnError, match="run `crn-repro study export-mturk"):
        simulate_results(exported[0], tmp_path / "nothing.csv", tmp_path / "out.csv", participants=1)



def test_an_nyu_study_speaks_of_indoor_rooms_on_mturk(tmp_path, tiny_raw, prepared_tiny):
    params = fake_pipeline(tmp_path / "run", tiny_raw, prepared_tiny[1].paths.prepared)
    meta_path = Path(params.paths.prepared) / "meta.json"
    meta_path.write_text(json.dumps(dict(json.loads(meta_path.read_text()), dataset="nyu")))
    make_study(params, design="timed")
    paths = export_mturk(params.study.dir, tmp_path / "mturk", "https://example.org/s")
    html = paths["hit"].read_text()
    assert "pairs of indoor rooms" in html and "street" not in html
    results = simulate_results(params.study.dir, paths["batch_input"], tmp_path / "results.csv", participants=1)
    assert "street" not in results.read_text() and "indoor rooms" in _rows(results)[0]["Description"]


def test_practice_trials_carry_their_answer_for_the_page(exported):
    study, paths, results = exported
    manifest = load_manifest(study)
    job = manifest["jobs"][0]
    parts = encode_trials(job).split(";")
    for trial, part in zip(job["trials"], parts):
        fields = part.split("|")
        assert len(fields) == (5 if trial["kind"] == "practice" else 4)
        if trial["kind"] == "practice":
            assert fields[4] == trial["correct"]
    assert [d[0] for d in decode_trials(encode_trials(job))] == [t["index"] for t in job["trials"]]
    records = import_results(study, [results])
    assert set(records.kind) == {"practice", "test", "sentinel"}  # imported; the analysis drops practice
    assert records.left_sha256.str.fullmatch("[0-9a-f]{64}").all()


def test_results_in_other_encodings(exported, tmp_path):
    study, _, results = exported
    with_bom = tmp_path / "bom.csv"
    with_bom.write_bytes(b"\xef\xbb\xbf" + results.read_bytes())  # a spreadsheet's "CSV UTF-8"
    assert len(import_results(study, [with_bom])) == len(import_results(study, [results]))
    latin = tmp_path / "latin1.csv"
    latin.write_bytes(results.read_text().replace("[simulated]", "[simulé]").encode("latin-1"))
    with pytest.raises(CrnError) as error:
        import_results(study, [latin])
    message = str(error.value)
    assert message.startswith(f"{latin}: not UTF-8 (byte 0xe9 on line 2; probably Latin-1/Windows-1252")
    assert f"iconv -f WINDOWS-1252 -t UTF-8 '{latin}' > " in message and "'CSV UTF-8'" in message and "\n" not in message


def test_the_hype_design_is_not_exported_to_mturk(tmp_path, tiny_raw, prepared_tiny):
    params = fake_pipeline(tmp_path / "run", tiny_raw, prepared_tiny[1].paths.prepared)
    make_study(params, design="hype")
    with pytest.raises(CrnError, match="shows one image at a time, which the MTurk HIT does not; run it in the web app"):
        export_mturk(params.study.dir, tmp_path / "out", "https://example.org/s")
    assert not (tmp_path / "out").exists()
