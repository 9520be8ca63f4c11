"""Trial lists (paper Sec. 5.1, docs/facts.md §6): the authors' per-baseline design, the timed and mixed
designs, HYPE; practice first; balance, sides, order, determinism, and the layout limits."""

from collections import Counter

import pytest

from crn_repro.errors import CrnError
from crn_repro.params import parse_params
from crn_repro.study.design import _counts_per_cell, study_plan

LAYOUTS = [f"frame_{i:02d}" for i in range(16)]
BASELINES = ("image-space", "fullres", "unet", "pix2pix", "gan-semseg")


@pytest.fixture
def study(tiny_raw):
    return parse_params(tiny_raw, "params").study


def _models(trial):
    return frozenset((trial["left"]["model"], trial["right"]["model"]))


def test_paper_design_has_one_baseline_per_job(study):
    plan = study_plan(study, "paper", ("crn", *BASELINES), LAYOUTS)
    d = study.paper
    assert len(plan.jobs) == len(BASELINES) * -(-len(LAYOUTS) // d.test_pairs_per_job)
    for job in plan.jobs:
        baseline = job["job"].rsplit("-", 1)[0]
        trials = job["trials"]
        assert [t["index"] for t in trials] == list(range(len(trials)))
        kinds = [t["kind"] for t in trials]
        assert kinds[: study.practice_trials] == ["practice"] * study.practice_trials
        assert "practice" not in kinds[study.practice_trials:]
        tests = [t for t in trials if t["kind"] == "test"]
        assert len(tests) == d.test_pairs_per_job and kinds.count("sentinel") == d.sentinels_per_job
        assert {_models(t) for t in tests} == {frozenset(("crn", baseline))}
        assert len({t["layout"] for t in tests}) == len(tests)  # each layout once per job
        for t in trials:
            if t["kind"] != "test":  # sentinels and practice: real against the job's baseline, the real side right
                assert _models(t) == frozenset(("real", baseline)) and t[t["correct"]]["model"] == "real"
            assert t["duration_ms"] is None
        body = kinds[study.practice_trials:]
        assert body[0] == "test" and all(not (a == b == "sentinel") for a, b in zip(body, body[1:]))  # a sentinel follows a test
    assert plan.models == sorted(("crn", *BASELINES))


def test_paper_design_shows_every_layout_once_per_baseline(study):
    plan = study_plan(study, "paper", ("crn", *BASELINES), LAYOUTS)
    for baseline in BASELINES:
        uses = Counter(t["layout"] for j in plan.jobs if j["job"].startswith(baseline + "-") for t in j["trials"] if t["kind"] == "test")
        assert set(uses) == set(LAYOUTS) and set(uses.values()) == {1}


def test_sides_and_order_are_random_but_seeded(study):
    plan = study_plan(study, "paper", ("crn", *BASELINES), LAYOUTS)
    assert plan.jobs == study_plan(study, "paper", ("crn", *BASELINES), LAYOUTS).jobs
    tests = [t for j in plan.jobs for t in j["trials"] if t["kind"] == "test"]
    crn_left = sum(t["left"]["model"] == "crn" for t in tests)
    assert 0.35 < crn_left / len(tests) < 0.65


def test_another_seed_gives_other_jobs(tiny_raw):
    a = parse_params(tiny_raw, "params").study
    tiny_raw["study"]["seed"] = 4
    b = parse_params(tiny_raw, "params").study
    assert study_plan(a, "mixed", ("crn", *BASELINES), LAYOUTS).jobs != study_plan(b, "mixed", ("crn", *BASELINES), LAYOUTS).jobs


def test_mixed_design_spreads_every_comparison_over_each_job(study):
    plan = study_plan(study, "mixed", ("crn", *BASELINES), LAYOUTS)
    assert len(plan.jobs) == study.jobs
    for job in plan.jobs:
        tests = [t for t in job["trials"] if t["kind"] == "test"]
        per_cell = Counter(_models(t) for t in tests)
        assert len(tests) == study.mixed.test_pairs_per_job and max(per_cell.values()) - min(per_cell.values()) <= 1
        for cell in per_cell:  # a layout at most once per comparison in a job
            layouts = [t["layout"] for t in tests if _models(t) == cell]
            assert len(layouts) == len(set(layouts))
        sentinels = [t for t in job["trials"] if t["kind"] == "sentinel"]
        assert len(sentinels) == study.mixed.sentinels_per_job
        assert all(_models(t) == {"real", "image-space"} for t in sentinels)
        kinds = [t["kind"] for t in job["trials"]]
        assert kinds[study.practice_trials:] != sorted(kinds[study.practice_trials:])  # sentinels are mixed in


def test_timed_design_crosses_pairs_and_durations(study):
    plan = study_plan(study, "timed", ("crn", "pix2pix"), LAYOUTS)
    job = plan.jobs[0]
    tests = [t for t in job["trials"] if t["kind"] == "test"]
    cells = Counter((_models(t), t["duration_ms"]) for t in tests)
    assert len(cells) == 21 and set(cells.values()) == {5}  # paper: 105 = 3 pair types x 7 durations x 5
    sentinels = [t for t in job["trials"] if t["kind"] == "sentinel"]
    assert len(sentinels) == 5 and {t["duration_ms"] for t in sentinels} == {4000}
    practice = [t for t in job["trials"] if t["kind"] == "practice"]
    assert [t["duration_ms"] for t in practice] == [8000, 4000, 2000]  # from the longest exposure down
    assert plan.models == ["crn", "image-space", "pix2pix"]
    # the paper's rule draws each pair's layout at random: with 105 pairs from 16 layouts, some repeat in a cell
    assert any(len({t["layout"] for t in tests if (_models(t), t["duration_ms"]) == c}) < 5 for c in cells)


def test_balanced_timed_layouts_walk_a_permutation(tiny_raw):
    tiny_raw["study"]["timed"]["layouts"] = "balanced"
    study = parse_params(tiny_raw, "params").study
    plan = study_plan(study, "timed", ("crn", "pix2pix"), LAYOUTS)
    for job in plan.jobs:
        tests = [t for t in job["trials"] if t["kind"] == "test"]
        for cell in {(_models(t), t["duration_ms"]) for t in tests}:
            layouts = [t["layout"] for t in tests if (_models(t), t["duration_ms"]) == cell]
            assert len(layouts) == len(set(layouts))


def test_hype_design_shows_one_image_at_a_time(tiny_raw):
    tiny_raw["study"]["hype"].update(models=["crn", "pix2pix"], real_per_job=8, fake_per_job=8, sentinels_per_job=2)
    study = parse_params(tiny_raw, "params").study
    plan = study_plan(study, "hype", ("crn", "pix2pix"), LAYOUTS)
    assert [j["job"] for j in plan.jobs] == ["crn-000", "crn-001", "pix2pix-000", "pix2pix-001"]
    for job in plan.jobs:
        model = job["job"].rsplit("-", 1)[0]
        trials = job["trials"]
        assert all(set(t) == {"index", "kind", "layout", "duration_ms", "image", "truth"} for t in trials)
        assert all(t["truth"] == ("real" if t["image"]["model"] == "real" else "fake") for t in trials)
        tests = [t for t in trials if t["kind"] == "test"]
        assert Counter(t["image"]["model"] for t in tests) == {model: 8, "real": 8}
        assert all(t["image"]["model"] == "image-space" for t in trials if t["kind"] == "sentinel")
        assert [t["kind"] for t in trials[:3]] == ["practice"] * 3
    fakes = Counter(t["layout"] for j in plan.jobs if j["job"].startswith("crn") for t in j["trials"]
                    if t["kind"] == "test" and t["image"]["model"] == "crn")
    assert set(fakes) == set(LAYOUTS) and set(fakes.values()) == {1}


def test_jobs_a_comparison_needs(study):
    timed = study_plan(study, "timed", ("crn", "pix2pix"), LAYOUTS)  # 105 pairs over 21 cells: 5 per cell and job
    assert timed.jobs_for(25) == 5 and timed.jobs_for(26) == 6
    paper = study_plan(study, "paper", ("crn", *BASELINES), LAYOUTS)  # 16 pairs per job, one baseline per job
    assert paper.jobs_for(16) == 5 and paper.jobs_for(17) == 10


@pytest.mark.parametrize(
    "design,change,needle",
    [
        ("paper", {"test_pairs_per_job": 17}, "study.paper.test_pairs_per_job: 17 test pairs per job, but there are only 16"),
        ("paper", {"test_pairs_per_job": 4, "sentinels_per_job": 5}, "study.paper.sentinels_per_job: 5 sentinels follow distinct"),
        ("mixed", {"models": ["image-space", "pix2pix"], "test_pairs_per_job": 40}, "use at most 32"),
        ("hype", {"fake_per_job": 20}, "study.hype.fake_per_job: 20 synthesized images per job"),
    ],
)
def test_more_than_the_layouts_allow_names_the_limit(tiny_raw, design, change, needle):
    tiny_raw["study"][design].update(change)
    study = parse_params(tiny_raw, "params").study
    with pytest.raises(CrnError) as error:
        study_plan(study, design, ("crn", *BASELINES), LAYOUTS)
    assert needle in str(error.value)


@pytest.mark.parametrize("total,cells", [(105, 21), (100, 6), (7, 3), (2, 5)])
def test_counts_per_cell_balance_and_rotate(total, cells):
    rows = [_counts_per_cell(total, cells, job) for job in range(cells)]
    assert all(sum(r) == total and max(r) - min(r) <= 1 for r in rows)
    totals = [sum(r[c] for r in rows) for c in range(cells)]
    assert max(totals) - min(totals) <= 1  # over jobs, every cell gets its share


@pytest.mark.parametrize(
    "mutate,needle",
    [
        (lambda s: s["timed"].update(durations_ms=[125, 0]), "study.timed.durations_ms: 0 is out of range: must be in [1, 600000]"),
        (lambda s: s["timed"].update(pairs=[["real", "crnn"]]), "study.timed.pairs: unknown model 'crnn'"),
        (lambda s: s["timed"].update(pairs=[["crn", "crn"]]), "two different models"),
        (lambda s: s["timed"].update(layouts="even"), "study.timed.layouts: 'even' is not one of"),
        (lambda s: s["mixed"].update(sentinel_model="nope"), "study.mixed.sentinel_model: unknown model"),
        (lambda s: s["paper"].update(models=["crn", "nope"]), "study.paper.models: unknown model 'nope'"),
        (lambda s: s.update(design="unlimited"), "study.design: 'unlimited' is not one of"),
        (lambda s: s.update(min_sentinel_accuracy=1.5), "study.min_sentinel_accuracy: 1.5 is out of range: must be in [0, 1]"),
        (lambda s: s.update(timing_tolerance_frames=0), "study.timing_tolerance_frames: 0.0 is out of range: must be in (0, 100]"),
        (lambda s: s.update(alpha=0), "study.alpha: 0.0 is out of range: must be in (0, 1)"),
        (lambda s: s.update(practice_trials=-1), "study.practice_trials: -1 is out of range"),
        (lambda s: s.pop("timing_tolerance_frames"), "study.timing_tolerance_frames: missing key"),
        (lambda s: s.pop("jobs"), "study.jobs: missing key"),
        # the exclusion rule depends on sentinels: without them `study analyze` would exclude everyone
        (lambda s: s["paper"].update(sentinels_per_job=0), "study.paper.sentinels_per_job: 0 is out of range: must be in "
         "[1, 100000]: `study analyze` excludes participants by their sentinel answers"),
        (lambda s: s["timed"].update(sentinels_per_job=0), "study.timed.sentinels_per_job: 0 is out of range"),
        (lambda s: s["hype"].update(sentinels_per_job=0), "study.hype.sentinels_per_job: 0 is out of range"),
        (lambda s: s["consent"].update(contact=" "), "study.consent.contact: must say whom participants can contact"),
        (lambda s: s["consent"].update(text="Pay: {money}"), "study.consent.text: not a valid template"),
        (lambda s: s["prolific"].update(completion_code="abc"), "study.prolific.completion_code: 'abc' is not a Prolific code"),
        (lambda s: s["prolific"].update(declined_code="COMPLETE1"), "the three codes must differ"),
        # Prolific's minimum pay, checked against the consent page's reward and duration
        (lambda s: (s["prolific"].update(enabled=True), s["consent"].update(reward=None)),
         "study.consent.reward: Prolific participants are paid"),
        (lambda s: (s["prolific"].update(enabled=True), s["consent"].update(reward=0.5, duration_minutes=10, currency="GBP")),
         "study.consent.reward: £0.50 for 10 minutes is 3.00 GBP/h, below Prolific's minimum of 6.00 GBP/h"),
    ],
)
def test_bad_study_params_name_the_key(tiny_raw, mutate, needle):
    mutate(tiny_raw["study"])
    with pytest.raises(CrnError) as error:
        parse_params(tiny_raw, "params")
    assert needle in str(error.value)


def test_prolific_pay_at_the_minimum_is_accepted(tiny_raw):
    tiny_raw["study"]["prolific"]["enabled"] = True
    tiny_raw["study"]["consent"].update(reward=1.0, duration_minutes=10, currency="GBP")  # 6.00 GBP/h
    assert parse_params(tiny_raw, "params").study.consent.pay == "£1.00"
