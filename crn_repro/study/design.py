"""Trial lists of the perceptual study (paper Sec. 5.1, docs/facts.md §6): which images each job shows,
on which side, in which order. Pure: names and a seed in, plain dicts out (``make`` adds the images).

A job is one participant's session (one MTurk HIT). Every job starts with ``study.practice_trials``
practice trials (an easy pair, or for HYPE an easy image, whose answer is shown after it; never
analysed), then its test trials and sentinels (attention checks whose right answer is known):

- ``paper`` (the authors' ``automate.m``): one baseline per job. Per baseline a seeded permutation of
  the layouts is cut into consecutive jobs of ``test_pairs_per_job`` (the reference model against the
  baseline, a fair coin for the sides), so each layout appears once per baseline before any appears
  twice; ``sentinels_per_job`` distinct test pairs are drawn, and right after each comes a sentinel:
  a real image against the same baseline on a layout drawn at random (with replacement).
- ``timed`` (``automate_timed.m``): test pairs spread evenly over pair types x durations, plus
  sentinels (real vs ``sentinel_model`` at ``sentinel_duration_ms``), all in a random order; each
  pair's layout drawn at random with replacement (``layouts: random``, the script's rule) or walking
  through a per-cell permutation (``balanced``).
- ``mixed``: the reference model against every other model in each job (cells as in ``timed``,
  balanced layouts), sentinels against one fixed model, all in a random order.
- ``hype`` (HYPE-infinity, Zhou et al. 2019): one model per job; ``fake_per_job`` of its images and
  ``real_per_job`` real ones (each layout at most once per kind and job), plus sentinels (images of
  ``sentinel_model``, to be called fake), one image at a time in a random order.

Within a job a test cell never shows a layout twice except where the ``random`` rule draws with
replacement; asking for more than the layouts allow is an error naming the limit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from crn_repro.errors import CrnError
from crn_repro.study.manifest import TIMED_DESIGNS
from crn_repro.study.params import StudyParams
from crn_repro.study.records import REAL


@dataclass(frozen=True)
class Cell:
    """One condition: ``first`` vs ``second`` shown for ``duration_ms`` (None: unlimited)."""

    first: str
    second: str
    duration_ms: int | None
    kind: str  # "test" | "sentinel" | "practice"


@dataclass(frozen=True)
class Plan:
    """A design resolved against the params: its jobs' trial lists (models only, no images yet), the
    synthesized models they show, and how one job feeds a comparison."""

    design: str
    jobs: list[dict]
    models: list[str]
    sentinel_rule: str
    comparisons: int  # test comparisons (cells) of the whole design
    judgments_per_job: float  # judgments one job gives each comparison it serves
    jobs_per_comparison: bool  # each job serves one comparison (paper, hype) or all of them (mixed, timed)

    def jobs_for(self, judgments: int) -> int:
        """Jobs (participant sessions) for ``judgments`` judgments in every comparison."""
        per = math.ceil(judgments / self.judgments_per_job)
        return per * self.comparisons if self.jobs_per_comparison else per


def _side(rng: np.random.Generator, first: str, second: str) -> tuple[str, str]:
    return (first, second) if rng.random() < 0.5 else (second, first)


def pair_trial(kind: str, layout: str, duration_ms: int | None, left: str, right: str) -> dict:
    """A pair trial without images; a sentinel or practice pair's ``correct`` side is the real image's."""
    correct = None if kind == "test" else ("left" if left == REAL else "right")
    return {"kind": kind, "layout": layout, "duration_ms": duration_ms, "left": {"model": left}, "right": {"model": right},
            "correct": correct}


def hype_trial(kind: str, layout: str, model: str) -> dict:
    """A HYPE trial without its image: one image, real or synthesized, and which it is."""
    return {"kind": kind, "layout": layout, "duration_ms": None, "image": {"model": model},
            "truth": "real" if model == REAL else "fake"}


def _numbered(job: str, practice: list[dict], trials: list[dict]) -> dict:
    return {"job": job, "trials": [dict(t, index=i) for i, t in enumerate(practice + trials)]}


class _LayoutStream:
    """Layouts in the cyclic order of one seeded permutation: every layout once before any twice, and
    any ``len(layouts)`` consecutive ones distinct."""

    def __init__(self, rng: np.random.Generator, layouts: list[str]):
        self.layouts, self.order, self.cursor = layouts, rng.permutation(len(layouts)), 0

    def take(self, count: int) -> list[str]:
        out = [self.layouts[self.order[(self.cursor + i) % len(self.layouts)]] for i in range(count)]
        self.cursor += count
        return out


def _practice_pairs(rng, study: StudyParams, layouts: list[str], fake: str, durations: list[int | None]) -> list[dict]:
    """``study.practice_trials`` easy pairs (real vs ``fake``), durations cycling from the longest."""
    order = sorted(durations, key=lambda d: -(d or 0))
    return [pair_trial("practice", layouts[int(rng.integers(len(layouts)))], order[i % len(order)], *_side(rng, REAL, fake))
            for i in range(study.practice_trials)]


def _check_at_most(key: str, count: int, layouts: list[str], what: str) -> None:
    if count > len(layouts):
        raise CrnError(f"{key}: {count} {what} per job, but there are only {len(layouts)} validation layouts and a job shows each "
                       f"at most once; use at most {len(layouts)}")


def _compared(study: StudyParams, listed: tuple[str, ...] | None, models: tuple[str, ...], key: str) -> list[str]:
    others = [m for m in (listed or models) if m != study.reference_model]
    if not others:
        raise CrnError(f"{key}: no model besides the reference model to compare against")
    return others


def check_design(study: StudyParams, design: str, models: tuple[str, ...]) -> None:
    """The checks of ``design`` that need no layouts (its name, and a model to compare against), so
    that `study make` reports them before it reads any data."""
    if design not in ("paper", "timed", "mixed", "hype"):
        raise CrnError(f"study.design: {design!r} is not one of paper, timed, mixed, hype")
    if design in ("paper", "mixed"):
        _compared(study, getattr(study, design).models, models, f"study.{design}.models")


def paper_plan(study: StudyParams, models: tuple[str, ...], layouts: list[str]) -> Plan:
    """The authors' unlimited-time design: per baseline, jobs of test pairs with sentinels after random test pairs."""
    d = study.paper
    baselines = _compared(study, d.models, models, "study.paper.models")
    _check_at_most("study.paper.test_pairs_per_job", d.test_pairs_per_job, layouts, "test pairs")
    if d.sentinels_per_job > d.test_pairs_per_job:
        raise CrnError(f"study.paper.sentinels_per_job: {d.sentinels_per_job} sentinels follow distinct test pairs, but a job "
                       f"has only {d.test_pairs_per_job}; use at most {d.test_pairs_per_job}")
    per_model = d.jobs_per_model or math.ceil(len(layouts) / d.test_pairs_per_job)
    jobs = []
    for number, baseline in enumerate(baselines):
        rng = np.random.default_rng([study.seed, number])
        stream = _LayoutStream(rng, layouts)
        for k in range(per_model):
            tests = [pair_trial("test", layout, None, *_side(rng, study.reference_model, baseline))
                     for layout in stream.take(d.test_pairs_per_job)]
            followed = set(rng.choice(d.test_pairs_per_job, d.sentinels_per_job, replace=False).tolist())
            trials = []
            for i, test in enumerate(tests):
                trials.append(test)
                if i in followed:
                    trials.append(pair_trial("sentinel", layouts[int(rng.integers(len(layouts)))], None,
                                             *_side(rng, REAL, baseline)))
            jobs.append(_numbered(f"{baseline}-{k:03d}", _practice_pairs(rng, study, layouts, baseline, [None]), trials))
    rule = (f"{d.sentinels_per_job} sentinel pairs per job, each right after a test pair drawn at random: a real image "
            f"against the job's baseline (unlimited time); the real image is the right answer")
    return Plan("paper", jobs, sorted({study.reference_model, *baselines}), rule, len(baselines), d.test_pairs_per_job, True)


def _counts_per_cell(total: int, num_cells: int, job: int) -> list[int]:
    """``total`` pairs over ``num_cells`` cells as evenly as possible; the cells that get one more
    rotate from job to job."""
    base, extra = divmod(total, num_cells)
    counts = [base] * num_cells
    for i in range(extra):
        counts[(job * extra + i) % num_cells] += 1
    return counts


def _cell_jobs(key: str, cells: list[Cell], sentinel: Cell, tests: int, sentinels: int, balanced: bool,
               layouts: list[str], jobs: int, rng: np.random.Generator, practice) -> list[dict]:
    """Jobs of ``tests`` pairs spread over ``cells`` plus ``sentinels``, all in a random order; layouts
    balanced (each cell walks its own permutation) or drawn at random with replacement."""
    n = len(layouts)
    worst = -(-tests // len(cells))  # the fullest cell of a job
    if balanced and worst > n:
        raise CrnError(f"{key}.test_pairs_per_job: {tests} pairs over {len(cells)} cells need {worst} layouts per cell in a "
                       f"job, but there are only {n} validation layouts; use at most {n * len(cells)}")
    if balanced:
        _check_at_most(f"{key}.sentinels_per_job", sentinels, layouts, "sentinels")
    streams = [_LayoutStream(rng, layouts) for _ in range(len(cells) + 1)]
    out = []
    for j in range(jobs):
        counts = _counts_per_cell(tests, len(cells), j) + [sentinels]
        items = [(cell, c) for c, (cell, count) in enumerate(zip([*cells, sentinel], counts)) for _ in range(count)]
        trials = []
        for p in rng.permutation(len(items)):
            cell, c = items[p]
            layout = streams[c].take(1)[0] if balanced else layouts[int(rng.integers(n))]
            trials.append(pair_trial(cell.kind, layout, cell.duration_ms, *_side(rng, cell.first, cell.second)))
        out.append(_numbered(f"job-{j:03d}", practice(), trials))
    return out


def timed_plan(study: StudyParams, layouts: list[str]) -> Plan:
    """Fig. 3: pair types x durations, sentinels at a fixed duration, all in a random order."""
    d = study.timed
    cells = [Cell(a, b, t, "test") for a, b in d.pairs for t in d.durations_ms]
    sentinel = Cell(REAL, d.sentinel_model, d.sentinel_duration_ms, "sentinel")
    rng = np.random.default_rng(study.seed)
    jobs = _cell_jobs("study.timed", cells, sentinel, d.test_pairs_per_job, d.sentinels_per_job, d.layouts == "balanced",
                      layouts, study.jobs, rng, lambda: _practice_pairs(rng, study, layouts, d.sentinel_model, list(d.durations_ms)))
    models = sorted({m for a, b in d.pairs for m in (a, b)} - {REAL} | {d.sentinel_model})
    rule = (f"{d.sentinels_per_job} sentinel pairs per job at random positions: a real image against {d.sentinel_model} "
            f"({d.sentinel_duration_ms} ms); the real image is the right answer")
    return Plan("timed", jobs, models, rule, len(cells), d.test_pairs_per_job / len(cells), False)


def mixed_plan(study: StudyParams, models: tuple[str, ...], layouts: list[str]) -> Plan:
    """The reference model against every other model in each job, balanced layouts."""
    d = study.mixed
    others = _compared(study, d.models, models, "study.mixed.models")
    cells = [Cell(study.reference_model, m, None, "test") for m in others]
    sentinel = Cell(REAL, d.sentinel_model, None, "sentinel")
    rng = np.random.default_rng(study.seed)
    jobs = _cell_jobs("study.mixed", cells, sentinel, d.test_pairs_per_job, d.sentinels_per_job, True, layouts, study.jobs,
                      rng, lambda: _practice_pairs(rng, study, layouts, d.sentinel_model, [None]))
    rule = (f"{d.sentinels_per_job} sentinel pairs per job at random positions: a real image against {d.sentinel_model} "
            f"(unlimited time); the real image is the right answer")
    return Plan("mixed", jobs, sorted({study.reference_model, *others, d.sentinel_model}), rule, len(cells),
                d.test_pairs_per_job / len(cells), False)


def hype_plan(study: StudyParams, models: tuple[str, ...], layouts: list[str]) -> Plan:
    """HYPE-infinity: per model, jobs of its images and real ones, one at a time, plus sentinels."""
    d = study.hype
    evaluated = list(d.models or models)
    _check_at_most("study.hype.fake_per_job", d.fake_per_job, layouts, "synthesized images")
    _check_at_most("study.hype.real_per_job", d.real_per_job, layouts, "real images")
    per_model = d.jobs_per_model or math.ceil(len(layouts) / d.fake_per_job)
    jobs = []
    for number, model in enumerate(evaluated):
        rng = np.random.default_rng([study.seed, number])
        fakes, reals = _LayoutStream(rng, layouts), _LayoutStream(rng, layouts)
        for k in range(per_model):
            items = ([hype_trial("test", layout, model) for layout in fakes.take(d.fake_per_job)]
                     + [hype_trial("test", layout, REAL) for layout in reals.take(d.real_per_job)]
                     + [hype_trial("sentinel", layouts[int(rng.integers(len(layouts)))], d.sentinel_model)
                        for _ in range(d.sentinels_per_job)])
            practice = [hype_trial("practice", layouts[int(rng.integers(len(layouts)))], REAL if i % 2 else d.sentinel_model)
                        for i in range(study.practice_trials)]
            jobs.append(_numbered(f"{model}-{k:03d}", practice, [items[p] for p in rng.permutation(len(items))]))
    rule = (f"{d.sentinels_per_job} sentinel images per job at random positions: images of {d.sentinel_model}; "
            f"'fake' is the right answer")
    return Plan("hype", jobs, sorted({*evaluated, d.sentinel_model}), rule, len(evaluated), d.fake_per_job, True)


def study_plan(study: StudyParams, design: str, models: tuple[str, ...], layouts: list[str]) -> Plan:
    """The jobs of ``design`` (paper | timed | mixed | hype) over ``layouts``; ``models`` is params'
    `models` (the default comparison set). Deterministic for ``study.seed``."""
    if not layouts:
        raise CrnError("study: no validation layouts to build trials from")
    if design == "paper":
        return paper_plan(study, models, layouts)
    if design in TIMED_DESIGNS:
        return timed_plan(study, layouts)
    if design == "mixed":
        return mixed_plan(study, models, layouts)
    if design == "hype":
        return hype_plan(study, models, layouts)
    raise CrnError(f"study.design: {design!r} is not one of paper, timed, mixed, hype")
