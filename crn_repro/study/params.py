"""params.yaml ``study``: the design of the human perceptual study (paper Sec. 5.1, docs/facts.md §6).

Designs (``study.design``, or `crn-repro study make --design`):

- ``paper``: the authors' unlimited-time design (Table 1; their ``mturk_scripts/automate.m``): one
  baseline per job, jobs of 100 test pairs (the reference model against that baseline) + 10 sentinels
  (a real image against that same baseline), each sentinel right after a test pair drawn at random.
- ``timed``: the authors' time-limited design (Fig. 3; ``automate_timed.m``): jobs of 105 test pairs
  (3 pair types x 7 durations x 5) + 5 sentinels (real vs image-space loss shown 4 s), all in a
  random order.
- ``mixed``: the suite's earlier unlimited-time design: every baseline in one job, sentinels against
  one fixed model.
- ``hype``: HYPE-infinity (Zhou et al. 2019): one image at a time, real or synthesized, unlimited
  time; the measure is how often synthesized images pass as real.

The web server's own settings (``study.server``) belong to the server's module.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from crn_repro.config import SEED, doc
from crn_repro.registry import GENERATORS
from crn_repro.study.records import REAL

SENTINELS_WHY = "`study analyze` excludes participants by their sentinel answers, and one who answered no sentinel is excluded"
SENTINELS_NEEDED = f"must be >= 1: {SENTINELS_WHY}"
# Prolific's minimum pay per hour (researcher help centre, "Prolific's payment principles"; the
# recommended rate is 9 GBP / 12 USD); checked against the consent page's pay and duration
PROLIFIC_MINIMUM_HOURLY = {"GBP": 6.00, "USD": 8.00}
CURRENCY_SYMBOLS = {"GBP": "£", "USD": "$", "EUR": "€"}
_CODE = re.compile(r"^[A-Z0-9]{4,32}$")


def _known(name: str) -> bool:
    return name == REAL or name in GENERATORS


def _models(key: str, models):
    for name in models or ():
        if name not in GENERATORS:
            yield key, f"unknown model {name!r} (valid: {', '.join(GENERATORS)})"


def _sentinel_model(design):
    if design.sentinel_model not in GENERATORS:
        yield "sentinel_model", f"unknown model {design.sentinel_model!r} (valid: {', '.join(GENERATORS)})"


@dataclass(frozen=True)
class PaperDesignParams:
    """``study.paper``: the authors' unlimited-time design (Table 1): one baseline per job."""

    models: tuple[str, ...] | None = doc("baselines compared with the reference model, one per job (null = every model of `models`)")
    test_pairs_per_job: int = doc("test pairs per job: the reference model against the job's baseline (paper: 100)", 1, 100_000)
    sentinels_per_job: int = doc("sentinel pairs per job: a real image against the job's baseline (paper: 10)", 1, 100_000,
                                 why=SENTINELS_WHY)
    jobs_per_model: int | None = doc(
        "jobs per baseline (null = enough to show every validation layout once per baseline: the paper's 500 / 100 = 5)",
        1, 100_000)

    def validate(self):
        yield from _models("models", self.models)


@dataclass(frozen=True)
class TimedDesignParams:
    """``study.timed``: Fig. 3, pairs shown for a fixed duration and then masked."""

    durations_ms: tuple[int, ...] = doc("presentation times (paper: 125, 250, 500, 1000, 2000, 4000, 8000)", 1, 600_000)
    pairs: tuple[tuple[str, str], ...] = doc("pair types, model names or `real` (paper: real/crn, real/pix2pix, crn/pix2pix)")
    test_pairs_per_job: int = doc("test pairs per job, spread evenly over pair types x durations (paper: 105)", 1, 100_000)
    sentinels_per_job: int = doc("sentinel pairs per job, >= 1: a real image against `sentinel_model` (paper: 5)", 1, 100_000, why=SENTINELS_WHY)
    sentinel_model: str = doc("model shown against real images as sentinels (paper: image-space)")
    sentinel_duration_ms: int = doc("presentation time of the sentinels (paper: 4000)", 1, 600_000)
    layouts: Literal["random", "balanced"] = doc(
        "random: each pair's layout drawn at random, with replacement (the paper's script) | balanced: each pair type x "
        "duration walks through its own permutation of the layouts")

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
        yield from _sentinel_model(self)


@dataclass(frozen=True)
class MixedDesignParams:
    """``study.mixed``: the reference model against every other model in each job, no time limit."""

    models: tuple[str, ...] | None = doc("models compared with the reference model (null = every model of `models`)")
    test_pairs_per_job: int = doc("test pairs per job, spread evenly over the comparisons", 1, 100_000)
    sentinels_per_job: int = doc("sentinel pairs per job, >= 1: a real image against `sentinel_model`", 1, 100_000, why=SENTINELS_WHY)
    sentinel_model: str = doc("the weakest baseline, shown against real images as sentinels")

    def validate(self):
        yield from _models("models", self.models)
        yield from _sentinel_model(self)


@dataclass(frozen=True)
class HypeDesignParams:
    """``study.hype``: HYPE-infinity (Zhou et al. 2019), one image at a time, "real or fake?"."""

    models: tuple[str, ...] | None = doc("models evaluated, one per job (null = every model of `models`)")
    real_per_job: int = doc("real images per job (HYPE: 50)", 1, 100_000)
    fake_per_job: int = doc("synthesized images of the job's model per job (HYPE: 50)", 1, 100_000)
    sentinels_per_job: int = doc("attention checks per job: images of `sentinel_model`, to be called fake (our choice)", 1, 100_000,
                                 why=SENTINELS_WHY)
    sentinel_model: str = doc("an obviously synthesized model whose images serve as attention checks")
    jobs_per_model: int | None = doc("jobs per model (null = enough to show every layout once per model)", 1, 100_000)

    def validate(self):
        yield from _models("models", self.models)
        yield from _sentinel_model(self)


@dataclass(frozen=True)
class ConsentParams:
    """``study.consent``: what the consent page states before "I agree" (rendered into the manifest)."""

    text: str | None = doc("consent text, plain text with {duration_minutes}, {pay}, {contact}, {ethics_approval}; blank "
                           "lines separate paragraphs (null = the built-in text)")
    ethics_approval: str | None = doc("the ethics committee's approval reference, stated on the consent page (null = none)")
    contact: str = doc("whom participants contact with questions (name and e-mail address)")
    reward: float | None = doc("what a participant is paid for the whole session (null = unpaid, e.g. a lab)", 0, 10_000)
    currency: Literal["GBP", "USD", "EUR"] = doc("currency of `reward`")
    duration_minutes: int = doc("the session's stated duration; check it with `crn-repro study power --pilot STUDY`", 1, 600)

    def validate(self):
        if not self.contact.strip():
            yield "contact", "must say whom participants can contact (a name and an e-mail address)"
        if self.text is not None:
            try:
                self.text.format(duration_minutes="", pay="", contact="", ethics_approval="")
            except (KeyError, IndexError, ValueError) as error:
                yield "text", f"not a valid template ({error!r}); use only {{duration_minutes}}, {{pay}}, {{contact}}, {{ethics_approval}}"

    @property
    def pay(self) -> str | None:
        """The reward as the consent page states it, e.g. "£1.50" (None when unpaid)."""
        if self.reward is None:
            return None
        symbol = CURRENCY_SYMBOLS.get(self.currency)
        return f"{symbol}{self.reward:.2f}" if symbol else f"{self.reward:.2f} {self.currency}"


@dataclass(frozen=True)
class ProlificParams:
    """``study.prolific``: recruiting on Prolific (null codes are refused when enabled)."""

    enabled: bool = doc("participants come from Prolific: the manifest carries the codes below")
    completion_code: str = doc("the code of a completed session (Prolific's study settings)")
    declined_code: str = doc("the code given to a participant who does not consent")
    failed_attention_code: str = doc("the code given to a participant whose sentinel accuracy is below "
                                     "`study.min_sentinel_accuracy`")
    abandon_after_minutes: int = doc("a session idle this long returns its job to the pool", 1, 10_000)
    reject_min_failed_sentinels: int = doc(
        "reject a submission only with at least this many failed sentinels (Prolific: two or more failed fair attention "
        "checks)", 1, 100_000)
    hourly_rate: float = doc("pay per hour the reward estimate uses (Prolific recommends 9 GBP / 12 USD; minimum 6 / 8)",
                             0, 10_000, low_open=True)

    def validate(self):
        codes = {"completion_code": self.completion_code, "declined_code": self.declined_code,
                 "failed_attention_code": self.failed_attention_code}
        for key, code in codes.items():
            if not _CODE.match(code):
                yield key, f"{code!r} is not a Prolific code (4 to 32 upper-case letters and digits)"
        if len(set(codes.values())) != len(codes):
            yield "completion_code", "the three codes must differ, so that Prolific tells the outcomes apart"


@dataclass(frozen=True)
class StudyParams:
    """params.yaml ``study``."""

    dir: str = doc("the study folder that `crn-repro study make` writes (manifest.json, images/)")
    design: Literal["paper", "timed", "mixed", "hype"] = doc(
        "paper: Table 1, the authors' design | timed: Fig. 3 | mixed: every baseline in one job | hype: HYPE-infinity "
        "(`study make --design` overrides)")
    seed: int = doc("seed of the layouts, left/right sides and trial order", range=SEED)
    reference_model: str = doc("the model every other one is compared against (paper: crn)")
    jobs: int = doc("jobs of the mixed and timed designs (one participant's session, one MTurk HIT; paper timed: 10)", 1, 100_000)
    practice_trials: int = doc("practice trials at the start of every job, shown with feedback and never analysed", 0, 100)
    image_size_wh: tuple[int, int] = doc("stimulus size, width x height (paper: 400x200)", 16, 8192)
    min_sentinel_accuracy: float = doc("participants with a lower fraction of sentinels right are excluded (1.0 = all)", 0, 1)
    timing_tolerance_frames: float = doc(
        "timed test trials whose measured on-screen time is further than this many frames of the participant's display "
        "(the frame interval the page measured with each answer; 60 Hz where none was recorded) from the target, or was "
        "not measured, are left out of the analysis (1 = one frame at any refresh rate; sentinels are kept)", 0, 100,
        low_open=True
    )
    bootstrap_resamples: int = doc("resamples of the bootstraps (workers, images, crossed, ranking)", 10, 1_000_000)
    alpha: float = doc("significance level of every test (paper: p < 1e-3)", 0, 1, low_open=True, high_open=True)
    consent: ConsentParams = doc("the consent page")  # noqa: RUF009 (doc() is a field)
    prolific: ProlificParams = doc("recruiting on Prolific")  # noqa: RUF009 (doc() is a field)
    paper: PaperDesignParams = doc("the authors' unlimited-time design (Table 1)")  # noqa: RUF009 (doc() is a field)
    timed: TimedDesignParams = doc("the time-limited design (Fig. 3)")  # noqa: RUF009 (doc() is a field)
    mixed: MixedDesignParams = doc("every baseline in one job, unlimited time")  # noqa: RUF009 (doc() is a field)
    hype: HypeDesignParams = doc("HYPE-infinity: one image at a time, real or fake")  # noqa: RUF009 (doc() is a field)

    def validate(self):
        if self.reference_model not in GENERATORS:
            yield "reference_model", f"unknown model {self.reference_model!r} (valid: {', '.join(GENERATORS)})"
        if min(self.image_size_wh) < 16:
            yield "image_size_wh", "must be at least 16x16"
        if self.prolific.enabled:
            yield from self._prolific_pay()

    def _prolific_pay(self):
        """A Prolific study states its pay, and pays at least Prolific's minimum for its stated duration."""
        consent = self.consent
        if consent.reward is None:
            yield "consent.reward", "Prolific participants are paid: state the reward (and its currency)"
            return
        minimum = PROLIFIC_MINIMUM_HOURLY.get(consent.currency)
        hourly = consent.reward * 60 / consent.duration_minutes
        if minimum is not None and hourly < minimum - 1e-9:
            yield "consent.reward", (f"{consent.pay} for {consent.duration_minutes} minutes is {hourly:.2f} {consent.currency}"
                                     f"/h, below Prolific's minimum of {minimum:.2f} {consent.currency}/h")
