"""Trial lists of the perceptual study (paper Sec. 5.1, docs/facts.md §6): which pairs each job shows,
on which side, in which order. Pure: names and a seed in, plain dicts out (``make`` adds images).

A job is one participant's session (one MTurk HIT). Its test pairs are spread evenly over *cells*
(unlimited: one per comparison "reference vs model"; timed: pair type x duration), plus sentinel
pairs (a real image against a weak baseline, whose right answer is known). Both images of a pair
show the same layout. Within a job a cell never shows a layout twice; across jobs each cell walks
through its own seeded permutation of the layouts, so every layout is used about equally. When a
job needs more pairs in one cell than there are layouts, that is an error naming the limit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from crn_repro.errors import CrnError
from crn_repro.study.params import StudyParams
from crn_repro.study.records import REAL


@dataclass(frozen=True)
class Cell:
    """One condition: ``first`` vs ``second`` shown for ``duration_ms`` (None: unlimited)."""

    first: str
    second: str
    duration_ms: int | None
    kind: str  # "test" | "sentinel"


@dataclass(frozen=True)
class Design:
    design: str
    test_cells: tuple[Cell, ...]
    tests_per_job: int
    sentinel: Cell
    sentinels_per_job: int

    @property
    def models(self) -> list[str]:
        """The synthesized models the design shows (not `real`), sorted."""
        cells = self.test_cells + ((self.sentinel,) if self.sentinels_per_job else ())
        return sorted({m for c in cells for m in (c.first, c.second)} - {REAL})


def study_design(study: StudyParams, design: str, models: tuple[str, ...]) -> Design:
    """The cells of ``design`` ("unlimited" | "timed"); ``models`` is params' `models` (the default
    comparison set of the unlimited design)."""
    if design == "unlimited":
        d = study.unlimited
        others = [m for m in (d.models or models) if m != study.reference_model]
        if not others:
            raise CrnError("study.unlimited.models: no model besides the reference model to compare against")
        cells = tuple(Cell(study.reference_model, m, None, "test") for m in others)
        return Design(design, cells, d.test_pairs_per_job, Cell(REAL, d.sentinel_model, None, "sentinel"), d.sentinels_per_job)
    d = study.timed
    cells = tuple(Cell(a, b, t, "test") for a, b in d.pairs for t in d.durations_ms)
    sentinel = Cell(REAL, d.sentinel_model, d.sentinel_duration_ms, "sentinel")
    return Design(design, cells, d.test_pairs_per_job, sentinel, d.sentinels_per_job)


def _counts_per_cell(total: int, num_cells: int, job: int) -> list[int]:
    """``total`` pairs over ``num_cells`` cells as evenly as possible; the cells that get one more
    rotate from job to job."""
    base, extra = divmod(total, num_cells)
    counts = [base] * num_cells
    for i in range(extra):
        counts[(job * extra + i) % num_cells] += 1
    return counts


def build_jobs(design: Design, layouts: list[str], jobs: int, seed: int) -> list[dict]:
    """The trial lists of ``jobs`` jobs: ``[{"job", "trials": [{"index", "kind", "layout",
    "duration_ms", "left": {"model"}, "right": {"model"}, "correct"}]}]``, deterministic for a seed."""
    n = len(layouts)
    if n == 0:
        raise CrnError("study: no validation layouts to build pairs from")
    cells = list(design.test_cells) + [design.sentinel]
    worst = -(-design.tests_per_job // len(design.test_cells))  # the fullest cell of a job
    key = f"study.{design.design}"
    if worst > n:
        raise CrnError(
            f"{key}.test_pairs_per_job: {design.tests_per_job} pairs over {len(design.test_cells)} cells need {worst} layouts "
            f"per cell in a job, but there are only {n} validation layouts; use at most {n * len(design.test_cells)}"
        )
    if design.sentinels_per_job > n:
        raise CrnError(f"{key}.sentinels_per_job: {design.sentinels_per_job} exceeds the {n} validation layouts")
    rng = np.random.default_rng(seed)
    orders = [rng.permutation(n) for _ in cells]  # each cell walks through its own permutation
    cursor = [0] * len(cells)
    out = []
    for j in range(jobs):
        counts = _counts_per_cell(design.tests_per_job, len(design.test_cells), j) + [design.sentinels_per_job]
        pairs = []
        for c, (cell, count) in enumerate(zip(cells, counts)):
            for i in range(count):
                pairs.append((cell, layouts[orders[c][(cursor[c] + i) % n]]))
            cursor[c] += count
        trials = []
        for position, p in enumerate(rng.permutation(len(pairs))):
            cell, layout = pairs[p]
            first_left = bool(rng.random() < 0.5)
            left, right = (cell.first, cell.second) if first_left else (cell.second, cell.first)
            correct = None
            if cell.kind == "sentinel":
                correct = "left" if left == REAL else "right"
            trials.append({
                "index": position,
                "kind": cell.kind,
                "layout": layout,
                "duration_ms": cell.duration_ms,
                "left": {"model": left},
                "right": {"model": right},
                "correct": correct,
            })
        out.append({"job": f"job-{j:03d}", "trials": trials})
    return out
