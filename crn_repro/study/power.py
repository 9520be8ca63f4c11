"""`crn-repro study power`: planning a study (paper Table 1 claims p < 1e-3 for every comparison,
docs/facts.md §6, without saying how many judgments stand behind each rate).

- **Binomial**: for a true rate, the number of A/B judgments from which the exact two-sided binomial
  test against 50% reaches p < alpha with the given power and keeps it for every larger number
  (``stats.judgments_needed(..., sustained=True)``); it counts every judgment as independent.
- **Crossed, simulated**: participants and layouts are random factors; a design's participants
  per comparison from which the registered analysis (the mixed model of ``stats.crossed_logit``,
  Wald p < alpha) reaches the power, estimated from simulated studies of
  ``observer.CrossedPopulation`` laid out as the design lays out its jobs.
- **Pay**: the median session time, from a pilot's answers or from simulated sessions of the
  built study, and the reward at an hourly rate, checked against Prolific's minimum.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.stats

from crn_repro import stats
from crn_repro.study.design import Plan
from crn_repro.study.observer import CrossedPopulation

DEFAULT_RATES = (0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.99)


def power_table(rates: tuple[float, ...] = DEFAULT_RATES, alpha: float = 1e-3, power: float = 0.9) -> list[dict]:
    """One row per true rate: the ``judgments`` needed (the smallest n from which every larger n reaches
    the power, checked up to ``stats.SUSTAINED_SEARCH_FACTOR`` times ``first``), the exact ``power``
    reached there, and the ``first`` n that reaches it (where the two differ, power dips below the
    target in between).
    Raises ValueError for a rate, alpha or power outside (0, 1) or a rate of 0.5."""
    rows = []
    for rate in rates:
        if rate == 0.5:
            raise ValueError("a true rate of 0.5 is no preference: no number of judgments detects it")
        try:
            n = stats.judgments_needed(rate, alpha=alpha, power=power, sustained=True)
            first = stats.judgments_needed(rate, alpha=alpha, power=power)
        except ValueError as error:
            raise ValueError(f"rate {rate}: {error}") from None
        rows.append({"rate": rate, "judgments": n, "power": stats.binomial_power(n, rate, alpha), "first": first})
    return rows


def jobs_needed(judgments: int, plan: Plan) -> int:
    """Jobs of a design that give every comparison ``judgments`` judgments (``Plan.jobs_for``)."""
    return plan.jobs_for(judgments)


# --------------------------------------------------------------------------------------------
# The crossed design, simulated
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CrossedLayout:
    """How a design shows one comparison: ``per_participant`` judgments from each participant, drawn
    from ``layouts`` layouts split into ``blocks`` (the paper's design gives each job its own block of
    the validation set; the mixed and timed designs draw every job's pairs from all layouts)."""

    layouts: int
    blocks: int
    per_participant: int

    @classmethod
    def of(cls, plan: Plan, layouts: int) -> CrossedLayout:
        per = max(1, round(plan.judgments_per_job))
        blocks = max(1, min(layouts, math.ceil(layouts / per))) if plan.jobs_per_comparison else 1
        return cls(layouts, blocks, min(per, layouts))


def crossed_power(population: CrossedPopulation, layout: CrossedLayout, participants: int, alpha: float,
                  replicates: int, seed: int) -> float:
    """The fraction of ``replicates`` simulated studies of one comparison, with ``participants``
    participants, in which the mixed model rejects "no preference" at ``alpha`` (Wald p)."""
    hits = 0
    for r in range(replicates):
        rng = np.random.default_rng([seed, participants, r])  # common random numbers across sizes
        data = population.sample(rng, participants, layout.layouts, min(layout.blocks, participants), layout.per_participant)
        fit = stats.crossed_logit(data["outcome"], data["participant"], data["layout"])
        if fit["se"] == fit["se"]:
            hits += bool(2 * scipy.stats.norm.sf(abs(fit["log_odds"]) / fit["se"]) < alpha)
        else:  # every judgment one way: decided by the exact test
            hits += bool(stats.binomial_test(int(data["outcome"].sum()), len(data["outcome"])) < alpha)
    return hits / replicates


def participants_needed(population: CrossedPopulation, layout: CrossedLayout, alpha: float, power: float, replicates: int,
                        seed: int, start: int, limit: int = 5000,
                        progress: Callable[[int, float], None] | None = None) -> tuple[int, float]:
    """The fewest participants per comparison whose simulated power reaches ``power`` (searched up from
    ``start`` by factors of 1.5, then bisected), and the power there. ValueError beyond ``limit``."""
    tried: dict[int, float] = {}

    def at(n: int) -> float:
        if n not in tried:
            tried[n] = crossed_power(population, layout, n, alpha, replicates, seed)
            if progress:
                progress(n, tried[n])
        return tried[n]

    low, high = 1, max(2, start)
    while at(high) < power:
        low, high = high, math.ceil(high * 1.5)
        if high > limit:
            raise ValueError(f"power {power} is not reached with {limit} participants per comparison")
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if at(middle) >= power else (middle, high)
    return high, tried[high]


# --------------------------------------------------------------------------------------------
# Session time and pay
# --------------------------------------------------------------------------------------------

READING_MINUTES = 1.5  # consent and instructions (our assumption; a pilot measures the rest)
FIXATION_MS = 500.0
TRANSITION_MS = 300.0
FEEDBACK_MS = 1500.0  # a practice trial's feedback
MEDIAN_DECISION_MS = {"unlimited": 2500.0, "timed": 900.0}  # after onset (unlimited) or after the mask (timed)


def simulated_session_minutes(manifest: dict, participants: int = 200, seed: int = 0) -> float:
    """Median session length of ``participants`` simulated participants taking the study's jobs in
    turn: reading (``READING_MINUTES``), then per trial the fixation, the presentation (timed) and a
    log-normal decision time (median ``MEDIAN_DECISION_MS``; each participant's speed varies too), and
    the practice trials' feedback. A planning figure: a pilot's median replaces it."""
    rng = np.random.default_rng(seed)
    sessions = []
    for p in range(participants):
        job = manifest["jobs"][p % len(manifest["jobs"])]
        speed = math.exp(0.3 * rng.standard_normal())
        total = READING_MINUTES * 60_000
        for trial in job["trials"]:
            shown = trial["duration_ms"] or 0
            decision = MEDIAN_DECISION_MS["timed" if trial["duration_ms"] else "unlimited"] * speed
            total += FIXATION_MS + shown + decision * math.exp(0.35 * rng.standard_normal()) + TRANSITION_MS
            total += FEEDBACK_MS if trial["kind"] == "practice" else 0.0
        sessions.append(total / 60_000)
    return float(np.median(sessions))


def pilot_session_minutes(responses: pd.DataFrame, manifest: dict) -> tuple[float, int]:
    """Median session length of the participants who answered every trial of their job: from the
    first trial's onset (its answer time less its response time) to the last answer, plus
    ``READING_MINUTES``. Returns (minutes, participants counted); ValueError when nobody finished."""
    trials = {job["job"]: len(job["trials"]) for job in manifest["jobs"]}
    minutes = []
    for (_, _), g in responses.groupby(["source", "participant"]):
        if len(g) < trials.get(g.job.iloc[0], 0):
            continue
        times = pd.to_datetime(g.answered_utc, utc=True, errors="coerce")
        if times.isna().any():
            continue
        first = g.loc[times.idxmin()]
        onset = times.min() - pd.to_timedelta(first.response_ms if first.response_ms == first.response_ms else 0, unit="ms")
        minutes.append((times.max() - onset).total_seconds() / 60 + READING_MINUTES)
    if not minutes:
        raise ValueError("no participant of the pilot answered every trial of their job")
    return float(np.median(minutes)), len(minutes)


def pay_estimate(minutes: float, hourly_rate: float, currency: str, minimum_hourly: float | None,
                 stated_reward: float | None, stated_minutes: int) -> dict:
    """The reward for a median session of ``minutes`` at ``hourly_rate``, and warnings: a rate below
    Prolific's minimum, a stated reward that pays less than the minimum for the median session (what
    Prolific checks), a stated duration shorter than the median session."""
    reward = math.ceil(minutes / 60 * hourly_rate * 100) / 100
    warnings = []
    if minimum_hourly is not None and hourly_rate < minimum_hourly:
        warnings.append(f"{hourly_rate:.2f} {currency}/h is below Prolific's minimum of {minimum_hourly:.2f} {currency}/h")
    if stated_reward is not None and minimum_hourly is not None and stated_reward * 60 / minutes < minimum_hourly - 1e-9:
        warnings.append(f"the stated reward {stated_reward:.2f} {currency} for a median {minutes:.1f}-minute session is "
                        f"{stated_reward * 60 / minutes:.2f} {currency}/h, below Prolific's minimum of {minimum_hourly:.2f}: "
                        "Prolific asks for adjustment payments; raise study.consent.reward")
    if minutes > stated_minutes:
        warnings.append(f"the median session ({minutes:.1f} min) is longer than the stated {stated_minutes} minutes: raise "
                        "study.consent.duration_minutes")
    return {"minutes": minutes, "reward": reward, "hourly_rate": hourly_rate, "currency": currency, "warnings": warnings}
