"""params.yaml ``study``: the design of the human perceptual study (paper Sec. 5.1, docs/facts.md §6).

The paper's numbers: unlimited time, jobs of 100 test pairs + 10 sentinels (real vs the weakest
baseline); time-limited, 7 durations x 3 pair types, jobs of 105 test pairs + 5 sentinels (real vs
image-space loss shown 4 s); images shown at 400x200.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from crn_repro.config import SEED, doc
from crn_repro.registry import GENERATORS
from crn_repro.study.records import REAL

SENTINELS_WHY = "`study analyze` excludes participants by their sentinel answers, and one who answered no sentinel is excluded"
SENTINELS_NEEDED = f"must be >= 1: {SENTINELS_WHY}"


def _known(name: str) -> bool:
    return name == REAL or name in GENERATORS


@dataclass(frozen=True)
class UnlimitedDesignParams:
    """``study.unlimited``: Table 1, the reference model against each other model, no time limit."""

    models: tuple[str, ...] | None = doc("models compared with the reference model (null = every model of `models`)")
    test_pairs_per_job: int = doc("test pairs per job, spread evenly over the comparisons (paper: 100)", 1, 100_000)
    sentinels_per_job: int = doc("sentinel pairs per job, >= 1: a real image against `sentinel_model` (paper: 10)", 1, 100_000, why=SENTINELS_WHY)
    sentinel_model: str = doc("the weakest baseline, shown against real images as sentinels (paper: image-space)")

    def validate(self):
        for name in self.models or ():
            if name not in GENERATORS:
                yield "models", f"unknown model {name!r} (valid: {', '.join(GENERATORS)})"
        yield from _pairs_and_sentinels(self)


def _pairs_and_sentinels(design):
    """The checks both designs share: test pairs and sentinels per job, and the sentinel model."""
    if design.test_pairs_per_job < 1:
        yield "test_pairs_per_job", "must be >= 1"
    if design.sentinels_per_job < 1:
        yield "sentinels_per_job", SENTINELS_NEEDED
    if design.sentinel_model not in GENERATORS:
        yield "sentinel_model", f"unknown model {design.sentinel_model!r} (valid: {', '.join(GENERATORS)})"


@dataclass(frozen=True)
class TimedDesignParams:
    """``study.timed``: Fig. 3, pairs shown for a fixed duration and then masked."""

    durations_ms: tuple[int, ...] = doc("presentation times (paper: 125, 250, 500, 1000, 2000, 4000, 8000)", 1, 600_000)
    pairs: tuple[tuple[str, str], ...] = doc("pair types, model names or `real` (paper: real/crn, real/pix2pix, crn/pix2pix)")
    test_pairs_per_job: int = doc("test pairs per job, spread evenly over pair types x durations (paper: 105)", 1, 100_000)
    sentinels_per_job: int = doc("sentinel pairs per job, >= 1: a real image against `sentinel_model` (paper: 5)", 1, 100_000, why=SENTINELS_WHY)
    sentinel_model: str = doc("model shown against real images as sentinels (paper: image-space)")
    sentinel_duration_ms: int = doc("presentation time of the sentinels (paper: 4000)", 1, 600_000)

    def validate(self):
        if not self.durations_ms or min(self.durations_ms) <= 0 or len(set(self.durations_ms)) != len(self.durations_ms):
            yield "durations_ms", "must be distinct durations > 0"
        if not self.pairs:
            yield "pairs", "must list at least one pair type"
        for a, b in self.pairs:
            for name in (a, b):
                if not _known(name):
                    yield "pairs", f"unknown model {name!r} (valid: real, {', '.join(GENERATORS)})"
            if a == b:
                yield "pairs", f"a pair needs two different models, got {a!r} twice"
        if len({frozenset(p) for p in self.pairs}) != len(self.pairs):
            yield "pairs", "lists a pair type twice"
        yield from _pairs_and_sentinels(self)
        if self.sentinel_duration_ms <= 0:
            yield "sentinel_duration_ms", "must be > 0"


@dataclass(frozen=True)
class StudyParams:
    """params.yaml ``study``."""

    dir: str = doc("the study folder that `crn-repro study make` writes (manifest.json, images/)")
    design: Literal["unlimited", "timed"] = doc("unlimited: Table 1 | timed: Fig. 3 (`study make --design` overrides)")
    seed: int = doc("seed of the layouts, left/right sides and trial order", range=SEED)
    reference_model: str = doc("the model every other one is compared against (paper: crn)")
    jobs: int = doc("jobs (one participant's session, one MTurk HIT) to build", 1, 100_000)
    image_size_wh: tuple[int, int] = doc("stimulus size, width x height (paper: 400x200)", 16, 8192)
    min_sentinel_accuracy: float = doc("participants with a lower fraction of sentinels right are excluded (1.0 = all)", 0, 1)
    timing_tolerance_ms: float = doc(
        "timed test trials whose measured on-screen time is further than this from the target, or was not measured, are "
        "left out of the analysis (17 = one 60 Hz frame; sentinels are kept)", 0, 10_000, low_open=True
    )
    bootstrap_resamples: int = doc("resamples of the bootstrap over workers and over images", 10, 1_000_000)
    unlimited: UnlimitedDesignParams = doc("the unlimited-time design (Table 1)")  # noqa: RUF009 (doc() is a field)
    timed: TimedDesignParams = doc("the time-limited design (Fig. 3)")  # noqa: RUF009 (doc() is a field)

    def validate(self):
        if self.reference_model not in GENERATORS:
            yield "reference_model", f"unknown model {self.reference_model!r} (valid: {', '.join(GENERATORS)})"
        if self.jobs < 1:
            yield "jobs", "must be >= 1"
        if min(self.image_size_wh) < 16:
            yield "image_size_wh", "must be at least 16x16"
        if not 0.0 <= self.min_sentinel_accuracy <= 1.0:
            yield "min_sentinel_accuracy", "must lie in [0, 1]"
        if not self.timing_tolerance_ms > 0:
            yield "timing_tolerance_ms", "must be > 0 (ms); 17 is one frame at 60 Hz"
        if self.bootstrap_resamples < 10:
            yield "bootstrap_resamples", "must be >= 10"
