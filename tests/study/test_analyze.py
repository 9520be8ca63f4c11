"""`study analyze` (paper Table 1, Fig. 3): sentinel exclusion, mistimed trials left out, judgments for
evaluate, and per comparison rates with Wilson interval, binomial p and bootstrap over workers and images."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from study_data import fake_pipeline

from crn_repro import stats
from crn_repro.errors import CrnError
from crn_repro.judgments import ranking
from crn_repro.study.analyze import (
    analyze_study,
    mistimed_trials,
    sentinel_exclusions,
    summarize,
    to_judgments,
)
from crn_repro.study.make import make_study
from crn_repro.study.manifest import load_manifest
from crn_repro.study.mturk import export_mturk, simulate_results
from crn_repro.study.records import RESPONSE_COLUMNS, check_responses


def _record(source, participant, trial, kind, left, right, side, duration=None, layout="f0", measured="target"):
    """One canonical record; a timed one is measured exactly on target unless ``measured`` says otherwise."""
    return {"source": source, "participant": participant, "job": "job-000", "trial": trial, "kind": kind,
            "layout": layout, "left_model": left, "right_model": right, "chosen_side": side,
            "chosen_model": left if side == "left" else right, "duration_ms": duration,
            "measured_ms": duration if measured == "target" else measured,
            "response_ms": 700.0, "answered_utc": "2026-01-01T00:00:00Z"}


@pytest.fixture
def study(tmp_path, tiny_raw, prepared_tiny):
    """A built study folder (the analysis needs its manifest); tests hand their own records to the analysis."""
    params = fake_pipeline(tmp_path / "run", tiny_raw, prepared_tiny[1].paths.prepared)
    make_study(params)
    return Path(params.study.dir)


@pytest.fixture
def responses():
    rows = []
    # p1 and p2 (web) get both sentinels right; p3 misses one; "p1" on MTurk is another person with none.
    for source, who, sentinel_sides in (("web", "p1", "LL"), ("web", "p2", "LL"), ("web", "p3", "LR"), ("mturk", "p1", "")):
        for i, side in enumerate(sentinel_sides):
            rows.append(_record(source, who, 100 + i, "sentinel", "real", "image-space", "left" if side == "L" else "right"))
        for i in range(10):  # crn wins 7 of 10 for everyone, over 5 layouts
            side = "left" if i < 7 else "right"
            rows.append(_record(source, who, i, "test", "crn", "pix2pix", side, layout=f"f{i % 5}"))
        for i in range(4):  # timed: real > crn at 125 ms, 3 of 4
            rows.append(_record(source, who, 20 + i, "test", "crn", "real", "right" if i else "left", duration=125))
    return check_responses(pd.DataFrame(rows, columns=list(RESPONSE_COLUMNS)), "test")


def test_exclusion_by_sentinel_accuracy(responses):
    ex = sentinel_exclusions(responses, 1.0).set_index(["source", "participant"])
    assert list(ex.excluded) == [True, False, False, True]  # mturk:p1, web:p1, web:p2, web:p3
    assert ex.loc[("web", "p3"), "accuracy"] == 0.5 and "50% < 100%" in ex.loc[("web", "p3"), "reason"]
    assert ex.loc[("mturk", "p1"), "reason"] == "answered no sentinel"
    assert not sentinel_exclusions(responses, 0.5).set_index(["source", "participant"]).loc[("web", "p3"), "excluded"]


def test_judgments_keep_included_test_trials(responses):
    judgments = to_judgments(responses, sentinel_exclusions(responses, 1.0))
    assert set(judgments.participant) == {"web:p1", "web:p2"}  # source-qualified: mturk:p1 is someone else
    assert (judgments.kind == "test").sum() == 2 * 14 and set(judgments.winner) <= {"crn", "pix2pix", "real"}
    assert (judgments.kind == "sentinel").sum() == 2 * 2  # kept for the ranking; Table 1 counts the tests
    assert list(judgments.columns[:6]) == ["model_a", "model_b", "winner", "duration_ms", "participant", "layout"]


def test_summary_per_comparison(responses):
    judgments = to_judgments(responses, sentinel_exclusions(responses, 1.0))
    summary = summarize(judgments, num_resamples=200, seed=0).set_index(["first", "second"])
    unlimited = summary.loc[("crn", "pix2pix")]
    expected = stats.preference_summary(14, 20)
    assert (unlimited.wins, unlimited.n) == (14, 20) and pd.isna(unlimited.duration_ms)
    assert unlimited.p_value == pytest.approx(expected["p_value"]) and unlimited.ci_low == pytest.approx(expected["ci_low"])
    assert (unlimited.participants, unlimited.layouts) == (2, 5)
    # two workers are too few to resample (stats.MIN_BOOTSTRAP_CLUSTERS = 5): no interval rather than a
    # zero-width one; five images are enough
    assert pd.isna(unlimited.boot_workers_low) and pd.isna(unlimited.boot_workers_high)
    assert unlimited.boot_images_low < 0.7 < unlimited.boot_images_high
    timed = summary.loc[("real", "crn")]  # real first (Fig. 3's "Real > CRN")
    assert (timed.duration_ms, timed.wins, timed.n) == (125, 6, 8)


def test_end_to_end_from_mturk_results(tmp_path, tiny_raw, prepared_tiny):
    params = fake_pipeline(tmp_path / "run", tiny_raw, prepared_tiny[1].paths.prepared)
    make_study(params, design="timed")
    study = params.study.dir
    with pytest.raises(CrnError, match="no responses yet"):
        analyze_study(study)
    paths = export_mturk(study, tmp_path / "mturk", "https://example.org/s")
    results = simulate_results(study, paths["batch_input"], tmp_path / "results.csv", participants=10, seed=0,
                               careless_fraction=0.3)
    out = analyze_study(study, [results], num_resamples=50)
    assert set(out["paths"]) == {"responses", "exclusions", "mistimed", "judgments", "summary", "time_curves", "ranking",
                                 "registration"}
    assert all(p.is_file() for p in out["paths"].values())
    assert set(pd.read_csv(out["paths"]["ranking"]).item) == {"real", "crn", "pix2pix", "image-space"}  # sentinels link real
    responses = pd.read_csv(out["paths"]["responses"])
    assert (responses.kind == "practice").sum() == 10 * 3  # recorded, never analysed
    assert responses.left_sha256.str.fullmatch("[0-9a-f]{64}").all()  # bound to the images shown
    assert not len(out["mistimed"])  # simulated MTurk answers report the target as measured
    excluded = out["exclusions"].set_index("participant").excluded
    assert excluded.sum() >= 2  # 3 careless workers answer at random: most miss a sentinel
    curves = pd.read_csv(out["paths"]["time_curves"])
    assert set(curves.duration_ms) == {125, 1000} and {("real", "crn"), ("crn", "pix2pix")} == set(zip(curves["first"], curves["second"]))
    judgments = pd.read_csv(out["paths"]["judgments"])
    assert judgments.participant.str.startswith("simulated-mturk:").all() and set(judgments.source) == {"simulated-mturk"}
    assert out["simulated"] and out["note"].startswith("only simulated participants answered")


def test_evaluate_bootstraps_only_what_the_judgments_name():
    from crn_repro.judgments import judgment_summary, time_curves

    plain = pd.DataFrame({"model_a": ["crn"] * 4, "model_b": ["pix2pix"] * 4, "winner": ["crn", "crn", "crn", "pix2pix"]})
    row = judgment_summary(plain, "crn", num_resamples=50)
    assert (row["wins"], row["n"]) == (3, 4) and pd.isna(row["boot_workers_low"]) and pd.isna(row["boot_images_low"])
    # five workers (each 2 of 2 right but the last, 0 of 2) over two layouts
    winners = ["real"] * 8 + ["pix2pix"] * 2
    named = pd.DataFrame({"model_a": "pix2pix", "model_b": "real", "winner": winners, "duration_ms": 125,
                          "participant": [w for w in "abcde" for _ in range(2)], "layout": ["x", "y"] * 5})
    curves = time_curves(named, 200)
    assert list(curves[["first", "second", "wins", "n"]].iloc[0]) == ["real", "pix2pix", 8, 10]
    assert curves.boot_workers_low[0] == 0.4 and curves.boot_workers_high[0] == 1.0  # 0..5 workers of 5 right
    assert pd.isna(curves.boot_images_low[0])  # two layouts: too few to resample


def test_bootstrap_is_not_estimable_with_one_worker():
    """A single worker (or image) gives every bootstrap resample the same rate: NaN, not a zero-width interval."""
    from crn_repro.judgments import judgment_summary

    one = pd.DataFrame({"model_a": "crn", "model_b": "pix2pix", "winner": ["crn"] * 7 + ["pix2pix"] * 3,
                        "participant": "only", "layout": [f"f{i}" for i in range(10)]})
    row = judgment_summary(one, "crn", num_resamples=100)
    assert pd.isna(row["boot_workers_low"]) and pd.isna(row["boot_workers_high"])
    assert row["boot_images_low"] < 0.7 < row["boot_images_high"]  # ten images: an interval
    assert row["ci_low"] < 0.7 < row["ci_high"]  # the Wilson interval does not depend on clusters


def test_mistimed_trials_are_left_out_and_counted(responses, study, monkeypatch):
    import crn_repro.study.analyze as analyze
    from crn_repro.judgments import human_source, read_judgments

    # web:p1's 125 ms trials: on target, 10 ms over, 20 ms under, not measured; a sentinel 30 ms over
    timing = {20: 125.0, 21: 135.0, 22: 105.0, 23: None}
    extra = [_record("web", "p1", 200, "sentinel", "real", "image-space", "left", duration=4000, measured=4030.0)]
    rows = responses.copy()
    is_p1 = (rows.source == "web") & (rows.participant == "p1")
    for trial, measured in timing.items():
        rows.loc[is_p1 & (rows.trial == trial), "measured_ms"] = measured
    rows = check_responses(pd.concat([rows, pd.DataFrame(extra)], ignore_index=True), "test")

    exclusions = sentinel_exclusions(rows, 1.0)
    assert not exclusions.set_index(["source", "participant"]).loc[("web", "p1"), "excluded"]  # its late sentinel counts
    mistimed = mistimed_trials(rows, exclusions, 1.0)  # no frame_ms recorded: one frame of an assumed 60 Hz display
    assert list(mistimed.trial) == [22, 23] and set(mistimed.participant) == {"p1"}
    assert mistimed.error_ms.iloc[0] == -20.0
    assert "-20.0 ms from the target (tolerance 1 frame = 16.7 ms at an assumed 60 Hz)" in mistimed.reason.iloc[0]
    assert mistimed.reason.iloc[1] == "no measured on-screen time"
    assert list(mistimed_trials(rows, exclusions, 1.5).trial) == [23]  # 25 ms
    # the participant's own frames: at 120 Hz (8.33 ms) the 10 ms-late trial is a frame and more off too
    at_120 = mistimed_trials(rows.assign(frame_ms=1000 / 120), exclusions, 1.0)
    assert list(at_120.trial) == [21, 22, 23] and "tolerance 1 frame = 8.3 ms)" in at_120.reason.iloc[0]
    assert list(mistimed_trials(rows.assign(frame_ms=1000 / 144), exclusions, 2.0).trial) == [22, 23]  # 13.9 ms
    # an excluded participant's trials are gone with them, and are not counted twice
    assert "p3" not in set(mistimed_trials(rows.assign(measured_ms=None), exclusions, 1.0).participant)

    monkeypatch.setattr(analyze, "gather_responses", lambda *a, **k: rows)
    out = analyze_study(study, num_resamples=20, timing_tolerance_frames=1.0)
    assert len(out["mistimed"]) == 2 and len(pd.read_csv(out["paths"]["mistimed"])) == 2
    judgments = pd.read_csv(out["paths"]["judgments"])
    tests = judgments[judgments.kind == "test"]
    assert len(tests) == 2 * 14 - 2 and tests.measured_ms.notna().sum() == 8 - 2
    summary = pd.read_csv(out["paths"]["summary"]).set_index(["first", "second"])
    timed, unlimited = summary.loc[("real", "crn")], summary.loc[("crn", "pix2pix")]
    assert (timed.n, timed.mistimed) == (6, 2) and (unlimited.n, unlimited.mistimed) == (20, 0)  # unlimited: untouched
    assert pd.read_csv(out["paths"]["time_curves"]).mistimed.tolist() == [2]
    path = out["paths"]["judgments"]
    assert human_source(read_judgments([path]), [path]) == "human judgments (2 participants, 2 excluded, 2 mistimed trials left out)"

    # a comparison whose every trial was mistimed still gets a row, with n = 0
    none_left = mistimed_trials(rows.assign(measured_ms=rows.measured_ms + 100), exclusions, 1.0)
    kept = to_judgments(rows, exclusions, none_left)
    row = summarize(kept, 20, 0, none_left).set_index(["first", "second"]).loc[("real", "crn")]
    assert (row.n, row.mistimed) == (0, 8) and pd.isna(row.rate)


def _simulated_copy(responses, prefix="sim-"):
    """The same answers as if given by simulated participants (web and MTurk)."""
    return responses.assign(source="simulated-" + responses.source, participant=prefix + responses.participant)


def test_simulated_answers_are_dropped_where_real_ones_exist(responses, study, monkeypatch):
    import crn_repro.study.analyze as analyze

    both = check_responses(pd.concat([responses, _simulated_copy(responses)], ignore_index=True), "both")
    monkeypatch.setattr(analyze, "gather_responses", lambda *a, **k: both)
    out = analyze_study(study, num_resamples=20)
    assert not out["simulated"] and len(out["analysed"]) == len(responses)
    assert out["note"] == ("dropped 62 answers of 4 simulated participants (`study simulate`): "
                           "real participants answered, and only their answers are analysed")
    assert "\n" not in out["note"]
    judgments = pd.read_csv(out["paths"]["judgments"])
    assert set(judgments.source) == {"web"} and set(out["exclusions"].source) == {"web", "mturk"}
    assert set(pd.read_csv(out["paths"]["responses"]).source) == {"web", "mturk", "simulated-web", "simulated-mturk"}


def test_only_simulated_answers_are_analysed_and_labelled_so(responses, study, tmp_path, monkeypatch):
    import crn_repro.study.analyze as analyze
    from crn_repro.judgments import human_source, read_judgments

    monkeypatch.setattr(analyze, "gather_responses", lambda *a, **k: _simulated_copy(responses))
    out = analyze_study(study, num_resamples=20)
    assert out["simulated"] and out["note"].startswith("only simulated participants answered (62 answers of 4 simulated")
    path = out["paths"]["judgments"]
    judgments = read_judgments([path])
    assert set(judgments.source) == {"simulated-web"} and (judgments.kind == "test").sum() == 2 * 14
    assert human_source(judgments, [path]) == "simulated participants (2, 2 excluded), not human judgments"

    # a real study beside it: the simulated judgments are dropped, and only real exclusions are counted
    real_dir = tmp_path / "real"
    shutil.copytree(study, real_dir, ignore=shutil.ignore_patterns("analysis"))
    monkeypatch.setattr(analyze, "gather_responses", lambda *a, **k: responses)
    real = analyze_study(real_dir, num_resamples=20)["paths"]["judgments"]
    mixed = read_judgments([real, path])
    assert set(mixed.source) == {"web"} and (mixed.kind == "test").sum() == 2 * 14
    assert human_source(mixed, [real, path]) == "human judgments (2 participants, 2 excluded)"
    assert human_source(read_judgments([real]), [real]) == "human judgments (2 participants, 2 excluded)"


def test_an_all_excluded_simulated_study_is_still_not_human(responses, study, monkeypatch):
    import crn_repro.study.analyze as analyze
    from crn_repro.judgments import human_source, read_judgments

    monkeypatch.setattr(analyze, "gather_responses", lambda *a, **k: _simulated_copy(responses[responses.kind == "test"]))
    path = analyze_study(study, num_resamples=20)["paths"]["judgments"]  # nobody answered a sentinel
    assert human_source(read_judgments([path]), [path]) == "simulated participants (0, 4 excluded), not human judgments"


# ---------------------------------------------------------------- crossed analyses, ranking, HYPE, Prolific, registration


def _answers(manifest, job_index, choose, participant, source="web", pid=None, upto=None):
    """Canonical records of one participant answering job ``job_index`` (its first ``upto`` trials) with
    ``choose(trial) -> side``."""
    job = manifest["jobs"][job_index]
    rows = []
    for t in job["trials"][:upto]:
        side = choose(t)
        hype = "image" in t
        left = t["image"] if hype else t["left"]
        rows.append({"source": source, "participant": participant, "job": job["job"], "trial": t["index"], "kind": t["kind"],
                     "layout": t["layout"], "left_model": left["model"], "right_model": None if hype else t["right"]["model"],
                     "chosen_side": side, "chosen_model": (left["model"] if side == "real" else None) if hype else t[side]["model"],
                     "duration_ms": t["duration_ms"],
                     "measured_ms": t["duration_ms"], "response_ms": 800.0, "answered_utc": f"2026-02-01T10:{len(rows):02d}:00Z",
                     "prolific_pid": pid, "prolific_study_id": "S" * 24 if pid else None,
                     "prolific_session_id": f"SESSION{participant}" if pid else None})
    return rows


def _right(t):
    """The attentive answer: the real image of a sentinel or practice pair, the truth of a HYPE image."""
    return t["truth"] if "truth" in t else t["correct"] or "left"


def test_summary_reports_the_mixed_model_and_the_crossed_bootstrap():
    from crn_repro import stats
    from crn_repro.study.observer import CrossedPopulation

    data = CrossedPopulation(0.9).sample(np.random.default_rng(1), participants=30, layouts=40, jobs=2)
    won = data["outcome"].astype(bool)
    judgments = pd.DataFrame({"model_a": "crn", "model_b": "pix2pix", "winner": np.where(won, "crn", "pix2pix"),
                              "duration_ms": np.nan, "participant": [f"web:p{i}" for i in data["participant"]],
                              "layout": [f"f{j}" for j in data["layout"]]})
    row = summarize(judgments, num_resamples=200, seed=0, alpha=1e-3).iloc[0]
    fit = stats.crossed_logit(won.astype(float), judgments.participant, judgments.layout)
    assert row.odds_ratio == pytest.approx(fit["odds_ratio"]) and row.mixed_rate == pytest.approx(fit["rate"])
    assert row.odds_ratio_low < row.odds_ratio < row.odds_ratio_high and row.mixed_low < row.mixed_rate < row.mixed_high
    assert row.participant_sd == pytest.approx(fit["participant_sd"]) and row.layout_sd == pytest.approx(fit["layout_sd"])
    assert row.crossed_low < row.rate < row.crossed_high
    assert row.crossed_high - row.crossed_low > row.ci_high - row.ci_low  # wider than Wilson's, which ignores the clusters
    assert row.significant == (row.mixed_p_value < 1e-3)


def test_ranking_needs_a_connected_comparison_graph():
    judgments = pd.DataFrame({"participant": ["a", "b", "c", "d"], "model_a": ["crn", "pix2pix", "real", "unet"],
                              "model_b": ["pix2pix", "crn", "unet", "real"], "winner": ["crn", "crn", "real", "real"]})
    with pytest.raises(ValueError, match=r"no Bradley-Terry ranking: no chain of compared pairs links \{real, unet\} and "
                                         r"\{crn, pix2pix\}, so they have no common scale"):
        ranking(judgments, num_resamples=20, seed=0)


def test_hype_study_reports_fool_rates(tmp_path, tiny_raw, prepared_tiny, monkeypatch):
    import crn_repro.study.analyze as analyze

    params = fake_pipeline(tmp_path / "run", tiny_raw, prepared_tiny[1].paths.prepared)
    manifest = make_study(params, design="hype")
    study = Path(params.study.dir)
    rng = np.random.default_rng(0)
    fooled = {"crn": 0.5, "pix2pix": 0.1}  # how often each model's images pass as real

    def judge(t):
        model = t["image"]["model"]
        if t["kind"] != "test":
            return _right(t)
        return ("real" if rng.random() < 0.9 else "fake") if model == "real" else ("real" if rng.random() < fooled[model] else "fake")

    rows = [r for p in range(24) for r in _answers(manifest, p % len(manifest["jobs"]), judge, f"p{p}")]
    monkeypatch.setattr(analyze, "gather_responses", lambda *a, **k: check_responses(pd.DataFrame(rows), "test"))
    out = analyze_study(study, num_resamples=100)
    hype = out["hype"].set_index("model")
    assert list(hype.index) == ["crn", "pix2pix"] and out["paths"]["hype"].is_file()
    assert hype.loc["crn", "fool_rate"] > hype.loc["pix2pix", "fool_rate"]
    assert hype.loc["crn", "fakes"] == 12 * 3 and hype.loc["crn", "reals"] == 12 * 3  # 12 participants per model, 3 + 3 each
    assert hype.loc["crn", "boot_workers_low"] <= hype.loc["crn", "fool_rate"] <= hype.loc["crn", "boot_workers_high"]
    assert hype.loc["crn", "hype_low"] <= hype.loc["crn", "hype_score"] <= hype.loc["crn", "hype_high"]
    assert out["ranking_note"].startswith("no Bradley-Terry ranking: the hype design shows no pairs")
    assert out["judgments"].empty and "ranking" not in out


def test_prolific_payments_follow_the_attention_check_policy(tmp_path, tiny_raw, prepared_tiny, monkeypatch):
    import crn_repro.study.analyze as analyze

    tiny_raw["study"]["prolific"]["enabled"] = True
    tiny_raw["study"]["consent"].update(reward=1.5, duration_minutes=10)
    params = fake_pipeline(tmp_path / "run", tiny_raw, prepared_tiny[1].paths.prepared)
    manifest = make_study(params)
    study = Path(params.study.dir)
    wrong = lambda t: ("right" if t["correct"] == "left" else "left") if t["kind"] == "sentinel" else _right(t)  # noqa: E731
    one_wrong = {"n": 0}

    def slip(t):
        if t["kind"] == "sentinel" and not one_wrong["n"]:
            one_wrong["n"] += 1
            return "right" if t["correct"] == "left" else "left"
        return _right(t)

    rows = (_answers(manifest, 0, _right, "p-good", pid="PIDGOOD") + _answers(manifest, 1, wrong, "p-bad", pid="PIDBAD")
            + _answers(manifest, 2, slip, "p-slip", pid="PIDSLIP") + _answers(manifest, 3, _right, "p-half", pid="PIDHALF", upto=3)
            + _answers(manifest, 4, _right, "p-gone", pid="PIDGONE") + _answers(manifest, 5, _right, "p-extra", pid="PIDEXTRA"))
    monkeypatch.setattr(analyze, "gather_responses", lambda *a, **k: check_responses(pd.DataFrame(rows), "test"))
    export = tmp_path / "prolific_export.csv"
    export.write_text(
        "Submission id,Participant id,Status,Started at,Completed at,Time taken,Completion code\n"
        "s1,PIDGOOD,AWAITING REVIEW,,,300,COMPLETE1\ns2,PIDBAD,AWAITING REVIEW,,,200,ATTENTION1\n"
        "s3,PIDSLIP,AWAITING REVIEW,,,250,COMPLETE1\ns4,PIDHALF,AWAITING REVIEW,,,40,\ns5,PIDGONE,RETURNED,,,100,\n"
        "s6,PIDNONE,AWAITING REVIEW,,,10,DECLINED1\ns7,PIDLATE,TIMED-OUT,,,,\n", encoding="utf-8-sig")  # a BOM, as spreadsheets write
    out = analyze_study(study, num_resamples=20, prolific_csv=export, reject_min_failed_sentinels=2)
    pay = out["payments"].set_index("prolific_pid")
    assert pay.decision.to_dict() == {"PIDGOOD": "approve", "PIDBAD": "reject", "PIDSLIP": "approve", "PIDHALF": "review",
                                      "PIDGONE": "none", "PIDNONE": "review", "PIDLATE": "none", "PIDEXTRA": "none"}
    assert "failed 2 attention checks (>= 2" in pay.loc["PIDBAD", "rule"] and "chose" in pay.loc["PIDBAD", "evidence"]
    assert pay.loc["PIDBAD", "evidence"].count("over the real image") == 2
    assert pay.loc["PIDSLIP", "sentinels_failed"] == 1  # one failed check is no ground for rejection on Prolific
    assert pay.loc["PIDHALF", "evidence"] == f"answered 3 of {len(manifest['jobs'][3]['trials'])} trials"
    assert pay.loc["PIDNONE", "evidence"] == "entered the declined-consent code"
    assert "not in the Prolific export" in pay.loc["PIDEXTRA", "rule"]
    exclusions = out["exclusions"].set_index("participant")
    assert exclusions.loc["p-gone", "excluded"] and exclusions.loc["p-gone", "reason"] == "Prolific submission RETURNED (withdrawn)"
    # the analysis' own rule (study.min_sentinel_accuracy 1.0) excludes p-slip, whom the payment rule approves: two rules
    assert exclusions.loc["p-bad", "excluded"] and exclusions.loc["p-slip", "excluded"] and not exclusions.loc["p-good", "excluded"]
    assert out["paths"]["payments"].is_file()


def test_exports_in_another_encoding_say_how_to_convert(study, tmp_path):
    latin = tmp_path / "export.csv"
    latin.write_bytes("Participant id,Status\nPIDÉ,APPROVED\n".encode("latin-1"))
    with pytest.raises(CrnError) as error:
        analyze_study(study, prolific_csv=latin)  # the export is read before anything else is written
    message = str(error.value)
    assert "not UTF-8 (byte 0xc9 on line 2" in message and "iconv -f WINDOWS-1252 -t UTF-8" in message and "\n" not in message
    utf16 = tmp_path / "results.csv"
    utf16.write_text("HITId,WorkerId\n", encoding="utf-16")
    with pytest.raises(CrnError, match=r"UTF-16 text .* iconv -f UTF-16 -t UTF-8"):
        analyze_study(study, [utf16])


def test_answers_bound_to_other_images_are_refused(study):
    from crn_repro.study.analyze import bind_images

    manifest = load_manifest(study)
    rows = check_responses(pd.DataFrame(_answers(manifest, 0, _right, "p1")), "test")
    bound = bind_images(rows, manifest, "here")
    assert (bound.left_sha256 == [t["left"]["sha256"] for t in manifest["jobs"][0]["trials"]]).all()
    rows.loc[4, "right_sha256"] = "0" * 64
    with pytest.raises(CrnError, match=r"judged an image with right_sha256 000000000000\.\.\., which is not this manifest's"):
        bind_images(rows, manifest, "here")


def test_preregistration_freezes_the_analysis(study, tiny_raw, monkeypatch):
    import crn_repro.study.analyze as analyze
    from crn_repro.config import to_dict
    from crn_repro.params import parse_params
    from crn_repro.study.registration import preregister

    settings = to_dict(parse_params(tiny_raw, "params").study)
    record = preregister(study, settings)
    assert record["params"]["min_sentinel_accuracy"] == 1.0 and record["alpha"] == settings["alpha"] and "dir" not in record["params"]
    assert "(1 | participant) + (1 | layout)" in record["model"] and "fewer than 2 sentinels" in record["payment_rule"]
    with pytest.raises(CrnError, match="already registered; pass --force"):
        preregister(study, settings)
    manifest = load_manifest(study)
    rows = check_responses(pd.DataFrame(_answers(manifest, 0, _right, "p1")), "test")
    rows["answered_utc"] = "2999-01-01T00:00:00Z"  # after the registration
    monkeypatch.setattr(analyze, "gather_responses", lambda *a, **k: rows)
    out = analyze_study(study, num_resamples=20, study_params=dict(settings, dir="elsewhere"))  # a moved folder is no deviation
    assert out["registration"]["as_registered"] and out["registration"]["deviations"] == []
    changed = dict(settings, min_sentinel_accuracy=0.5, alpha=0.05)
    rows["answered_utc"] = "2000-01-01T00:00:00Z"
    out = analyze_study(study, num_resamples=20, study_params=changed)
    assert not out["registration"]["as_registered"]
    assert out["registration"]["deviations"] == [
        "study.alpha: registered 0.001, analysed with 0.05", "study.min_sentinel_accuracy: registered 1.0, analysed with 0.5",
        f"{len(rows)} answers were given before the registration ({record['registered_utc']}), the first at 2000-01-01T00:00:00Z"]
    assert json.loads(out["paths"]["registration"].read_text())["deviations"] == out["registration"]["deviations"]


def test_registration_is_refused_after_people_answered(study, tiny_raw):
    from crn_repro.config import to_dict
    from crn_repro.params import parse_params
    from crn_repro.study.records import write_responses_csv
    from crn_repro.study.registration import preregister

    manifest = load_manifest(study)
    write_responses_csv(check_responses(pd.DataFrame(_answers(manifest, 0, _right, "p1")), "t"), study / "analysis" / "responses.csv")
    with pytest.raises(CrnError, match=r"people have already answered \(\d+ answers, the first at 2026-02-01T10:00:00Z\)"):
        preregister(study, to_dict(parse_params(tiny_raw, "params").study), force=True)


def test_judgments_count_only_where_their_images_are_still_the_synthesized_ones(study, monkeypatch):
    import crn_repro.study.analyze as analyze
    from crn_repro.judgments import bind_to_current, preference_tables, read_judgments

    manifest = load_manifest(study)
    rows = [r for p in range(6) for r in _answers(manifest, p % len(manifest["jobs"]), _right, f"p{p}")]
    bound = analyze.bind_images(check_responses(pd.DataFrame(rows), "test"), manifest, "test")  # as gather_responses does
    monkeypatch.setattr(analyze, "gather_responses", lambda *a, **k: bound)
    path = analyze_study(study, num_resamples=20)["paths"]["judgments"]
    judgments = read_judgments([path])
    source_of = {}  # (model, layout) -> the source hash the study recorded
    for job in manifest["jobs"]:
        for t in job["trials"]:
            for side in ("left", "right"):
                source_of[(t[side]["model"], t["layout"])] = manifest["sources"][t[side]["sha256"]]
    kept, binding = bind_to_current(judgments, lambda m, layout: source_of.get((m, layout)), "here", "rerun it")
    assert len(kept) == len(judgments) and binding["dropped"] == 0 and binding["builds"] == [judgments.study_build[0]]
    assert binding["builds"][0].startswith("demo@") and binding["unbound"] == 0

    retrained = lambda m, layout: "f" * 64 if m == "pix2pix" else source_of.get((m, layout))  # noqa: E731
    kept, binding = bind_to_current(judgments, retrained, "here", "rerun it")
    involved = (judgments.model_a == "pix2pix") | (judgments.model_b == "pix2pix")
    assert binding["dropped"] == involved.sum() > 0 and len(kept) == (~involved).sum()
    with pytest.raises(CrnError, match=rf"here: all {len(judgments)} judgments judged images that are no longer the synthesized "
                                       r"ones .*; rerun it"):
        bind_to_current(judgments, lambda m, layout: "0" * 64, "here", "rerun it")
    plain = judgments.drop(columns=["source_a", "source_b"])  # judgments from elsewhere: kept, marked unbound
    assert bind_to_current(plain, retrained, "here", "x")[1] == {"dropped": 0, "unbound": len(plain), "builds": []}

    tables = preference_tables("crn", ["pix2pix", "image-space"], {}, (str(path),), 20, 0, retrained, "rerun it")
    preference = tables["preference"].set_index("baseline")
    assert preference.loc["pix2pix", "n"] == 0 and preference.loc["image-space", "n"] > 0
    assert (preference.dropped == involved.sum()).all()
    assert preference.study_build.iloc[0] == judgments.study_build[0]
    assert set(tables["ranking"].item) == {"real", "crn", "image-space", "crn-diverse"}  # sentinels link real
