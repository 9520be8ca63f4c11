"""Trial lists (paper Sec. 5.1): cells, balance, sides, order, determinism, and the layout limit."""

from collections import Counter

import pytest

from crn_repro.errors import CrnError
from crn_repro.params import parse_params
from crn_repro.study.design import _counts_per_cell, build_jobs, study_design

LAYOUTS = [f"frame_{i:02d}" for i in range(16)]


@pytest.fixture
def study(tiny_raw):
    return parse_params(tiny_raw, "params").study


def test_unlimited_jobs_follow_the_paper_shape(study):
    design = study_design(study, "unlimited", ("crn", "image-space", "fullres", "unet", "pix2pix", "gan-semseg"))
    assert [c.second for c in design.test_cells] == ["image-space", "fullres", "unet", "pix2pix", "gan-semseg"]
    jobs = build_jobs(design, LAYOUTS, 4, seed=0)
    assert [j["job"] for j in jobs] == ["job-000", "job-001", "job-002", "job-003"]
    for job in jobs:
        trials = job["trials"]
        assert [t["index"] for t in trials] == list(range(len(trials)))
        tests = [t for t in trials if t["kind"] == "test"]
        sentinels = [t for t in trials if t["kind"] == "sentinel"]
        assert len(tests) == study.unlimited.test_pairs_per_job and len(sentinels) == study.unlimited.sentinels_per_job
        per_cell = Counter(frozenset((t["left"]["model"], t["right"]["model"])) for t in tests)
        assert max(per_cell.values()) - min(per_cell.values()) <= 1  # spread evenly over the comparisons
        for cell in per_cell:  # a layout at most once per comparison in a job
            layouts = [t["layout"] for t in tests if frozenset((t["left"]["model"], t["right"]["model"])) == cell]
            assert len(layouts) == len(set(layouts))
        for t in sentinels:
            assert {t["left"]["model"], t["right"]["model"]} == {"real", "image-space"}
            assert t[t["correct"]]["model"] == "real"
        assert all(t["correct"] is None and "crn" in (t["left"]["model"], t["right"]["model"]) for t in tests)
        assert all(t["duration_ms"] is None for t in trials)


def test_sides_and_order_are_random_but_seeded(study):
    design = study_design(study, "unlimited", ("crn", "image-space", "pix2pix", "unet", "fullres"))
    jobs = build_jobs(design, LAYOUTS, 6, seed=3)
    assert jobs == build_jobs(design, LAYOUTS, 6, seed=3)
    assert jobs != build_jobs(design, LAYOUTS, 6, seed=4)
    trials = [t for j in jobs for t in j["trials"]]
    crn_left = sum(t["left"]["model"] == "crn" for t in trials if t["kind"] == "test")
    tests = sum(t["kind"] == "test" for t in trials)
    assert 0.3 < crn_left / tests < 0.7
    kinds = [t["kind"] for t in jobs[0]["trials"]]
    assert kinds != sorted(kinds)  # sentinels are mixed in, not appended


def test_timed_design_crosses_pairs_and_durations(study):
    design = study_design(study, "timed", ("crn", "pix2pix"))
    timed = study.timed
    assert len(design.test_cells) == len(timed.pairs) * len(timed.durations_ms)
    job = build_jobs(design, LAYOUTS, 1, seed=0)[0]
    tests = [t for t in job["trials"] if t["kind"] == "test"]
    cells = Counter((frozenset((t["left"]["model"], t["right"]["model"])), t["duration_ms"]) for t in tests)
    assert len(cells) == 21 and set(cells.values()) == {5}  # paper: 105 = 3 pair types x 7 durations x 5
    sentinels = [t for t in job["trials"] if t["kind"] == "sentinel"]
    assert len(sentinels) == 5 and {t["duration_ms"] for t in sentinels} == {4000}
    assert design.models == ["crn", "image-space", "pix2pix"]


def test_layouts_are_used_evenly_across_jobs(study):
    design = study_design(study, "unlimited", ("crn", "image-space", "pix2pix", "unet", "fullres"))
    jobs = build_jobs(design, LAYOUTS, 8, seed=0)
    uses = Counter(t["layout"] for j in jobs for t in j["trials"] if "unet" in (t["left"]["model"], t["right"]["model"]))
    assert set(uses) == set(LAYOUTS) and max(uses.values()) - min(uses.values()) <= 1


def test_too_many_pairs_for_the_layouts_names_the_limit(study):
    design = study_design(study, "unlimited", ("crn", "image-space", "pix2pix"))
    with pytest.raises(CrnError, match=r"study.unlimited.test_pairs_per_job: .* use at most 8"):
        build_jobs(design, LAYOUTS[:4], 1, seed=0)


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
        (lambda s: s["unlimited"].update(sentinel_model="nope"), "study.unlimited.sentinel_model: unknown model"),
        (lambda s: s.update(design="fast"), "study.design: 'fast' is not one of"),
        (lambda s: s.update(min_sentinel_accuracy=1.5), "study.min_sentinel_accuracy: 1.5 is out of range: must be in [0, 1]"),
        (lambda s: s.update(timing_tolerance_ms=0), "study.timing_tolerance_ms: 0.0 is out of range: must be in (0, 10000]"),
        (lambda s: s.pop("timing_tolerance_ms"), "study.timing_tolerance_ms: missing key"),
        (lambda s: s.pop("jobs"), "study.jobs: missing key"),
        # the exclusion rule depends on sentinels: without them `study analyze` would exclude everyone
        (lambda s: s["unlimited"].update(sentinels_per_job=0), "study.unlimited.sentinels_per_job: 0 is out of range: must be in "
         "[1, 100000]: `study analyze` excludes participants by their sentinel answers"),
        (lambda s: s["timed"].update(sentinels_per_job=0), "study.timed.sentinels_per_job: 0 is out of range"),
    ],
)
def test_bad_study_params_name_the_key(tiny_raw, mutate, needle):
    mutate(tiny_raw["study"])
    with pytest.raises(CrnError) as error:
        parse_params(tiny_raw, "params")
    assert needle in str(error.value)
