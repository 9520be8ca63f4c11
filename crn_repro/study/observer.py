"""Simulated participants for tests and planning (paper Sec. 5.1, docs/facts.md §6).

A seeded observer sees a pair for ``shown_ms`` and picks the side whose realism score plus Gaussian
noise is higher. The noise shrinks with exposure, sd = noise_sd_at_1s * sqrt(1000 / shown_ms) (the
evidence an observer accumulates grows with viewing time), so short presentations give rates near
50% and long ones approach the score ranking, the shape of the paper's Fig. 3. Unlimited time
counts as ``UNLIMITED_MS``. With ``lapse_rate`` a careless participant answers that fraction of
trials at random, which the sentinels are there to catch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

UNLIMITED_MS = 8000.0  # unlimited viewing time has the noise of the longest timed presentation


class Observer:
    """One simulated participant; all its randomness comes from ``seed``."""

    def __init__(self, seed: int, noise_sd_at_1s: float = 0.5, lapse_rate: float = 0.0, median_response_ms: float = 900.0,
                 criterion: float = 0.0):
        if noise_sd_at_1s < 0 or not 0.0 <= lapse_rate <= 1.0 or median_response_ms <= 0:
            raise ValueError("need noise_sd_at_1s >= 0, 0 <= lapse_rate <= 1 and median_response_ms > 0")
        self.seed = seed
        self.noise_sd_at_1s = noise_sd_at_1s
        self.lapse_rate = lapse_rate
        self.median_response_ms = median_response_ms
        self.criterion = criterion  # single images (hype): called real when score + noise reaches it
        self.rng = np.random.default_rng(seed)

    def noise_sd(self, shown_ms: float | None) -> float:
        shown = UNLIMITED_MS if shown_ms is None else max(float(shown_ms), 1.0)
        return self.noise_sd_at_1s * math.sqrt(1000.0 / shown)

    def choose(self, trial: dict, shown_ms: float | None) -> str:
        """"left" or "right" for a pair trial of the manifest (reads ``trial[side]["score"]``) shown for
        ``shown_ms``; "real" or "fake" for a single image (hype: ``trial["image"]["score"]`` plus noise against
        the observer's ``criterion``)."""
        if "image" in trial:
            if self.rng.random() < self.lapse_rate:
                return "real" if self.rng.random() < 0.5 else "fake"
            seen = trial["image"]["score"] + self.noise_sd(shown_ms) * self.rng.standard_normal()
            return "real" if seen >= self.criterion else "fake"
        if self.rng.random() < self.lapse_rate:
            return "left" if self.rng.random() < 0.5 else "right"
        sd = self.noise_sd(shown_ms)
        left = trial["left"]["score"] + sd * self.rng.standard_normal()
        right = trial["right"]["score"] + sd * self.rng.standard_normal()
        return "left" if left >= right else "right"

    def response_ms(self) -> float:
        """Time from stimulus onset to the answer (log-normal around the median)."""
        return float(self.median_response_ms * math.exp(0.35 * self.rng.standard_normal()))


def is_careless(participant: int, careless_fraction: float) -> bool:
    """Whether simulated participant number ``participant`` is careless: exactly
    floor(n * careless_fraction) of the first n participants are, spread evenly."""
    return math.floor((participant + 1) * careless_fraction) > math.floor(participant * careless_fraction)


def hype_criterion(manifest: dict) -> float:
    """Where a simulated observer of single images (the hype design) draws the line between real and fake:
    halfway between the highest score of a synthesized image and the lowest of a real one in the study
    (real images score above every synthesized one, see `crn_repro.study.make`); 0 for pair designs."""
    shown = [t["image"] for job in manifest["jobs"] for t in job["trials"] if "image" in t]
    real = [s["score"] for s in shown if s["model"] == "real"]
    fake = [s["score"] for s in shown if s["model"] != "real"]
    return (min(real) + max(fake)) / 2 if real and fake else 0.0


def observer_factory(seed: int, careless_fraction: float = 0.0, noise_sd_at_1s: float = 0.5,
                     criterion: float = 0.0) -> Callable[[int], Observer]:
    """Participant number -> its Observer: attentive ones, and careless ones (answering every trial
    at random) at ``careless_fraction``; ``criterion`` for single images (`hype_criterion`)."""
    if not 0.0 <= careless_fraction <= 1.0:
        raise ValueError(f"careless_fraction must lie in [0, 1], got {careless_fraction}")

    def make(participant: int) -> Observer:
        lapse = 1.0 if is_careless(participant, careless_fraction) else 0.0
        return Observer(seed * 1_000_003 + participant, noise_sd_at_1s=noise_sd_at_1s, lapse_rate=lapse, criterion=criterion)

    return make


# --------------------------------------------------------------------------------------------
# Crossed populations: participants and layouts as random factors, for validation and planning
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CrossedPopulation:
    """Judgments of one comparison by a population of participants on a population of layouts:
    participant i chooses the first model on layout j with probability
    ``expit(s_i * log_odds + u_i + d_j)``, where ``s_i`` (log-normal with mean 1, sd of its log
    ``sensitivity_sd``) is how strongly the participant sees the difference between the models,
    ``u_i ~ N(0, bias_sd)`` their own bias toward the first model, and ``d_j ~ N(0, difficulty_sd)``
    how much the layout favours it. ``log_odds`` is then the population's mean log odds (over
    participants, on the average layout): what the intercept of ``stats.crossed_logit`` estimates;
    ``true_rate()`` is the population's average preference rate: what the plain rate and the
    bootstrap intervals estimate."""

    log_odds: float
    bias_sd: float = 0.5
    sensitivity_sd: float = 0.2
    difficulty_sd: float = 0.5

    def true_rate(self) -> float:
        """E[expit(s log_odds + u + d)] over the population, by Gauss-Hermite quadrature (30^3 nodes)."""
        nodes, weights = np.polynomial.hermite_e.hermegauss(30)
        weights = weights / weights.sum()
        u = self.bias_sd * nodes[:, None, None]
        s = np.exp(self.sensitivity_sd * nodes[None, :, None] - self.sensitivity_sd**2 / 2)
        d = self.difficulty_sd * nodes[None, None, :]
        p = 1.0 / (1.0 + np.exp(-(s * self.log_odds + u + d)))
        return float(np.einsum("i,j,k,ijk->", weights, weights, weights, p))

    def sample(self, rng: np.random.Generator, participants: int, layouts: int, jobs: int,
               per_participant: int | None = None) -> dict[str, np.ndarray]:
        """One simulated study: ``layouts`` split into ``jobs`` equal blocks (as the paper's design
        splits the validation set), participant i takes job i mod jobs and judges ``per_participant``
        distinct layouts of its block (all of them by default). Returns 0/1 ``outcome`` (the first
        model won), ``participant`` and ``layout`` indexes, one entry per judgment."""
        if not 1 <= jobs <= layouts or participants < 1:
            raise ValueError(f"need 1 <= jobs <= layouts and participants >= 1, got {jobs} jobs, {layouts} layouts, {participants}")
        blocks = np.array_split(rng.permutation(layouts), jobs)
        u = rng.normal(0.0, self.bias_sd, participants)
        s = np.exp(rng.normal(-self.sensitivity_sd**2 / 2, self.sensitivity_sd, participants))  # mean 1
        d = rng.normal(0.0, self.difficulty_sd, layouts)
        who, where = [], []
        for i in range(participants):
            block = blocks[i % jobs]
            shown = block if per_participant is None else rng.choice(block, min(per_participant, len(block)), replace=False)
            who.append(np.full(len(shown), i))
            where.append(shown)
        who, where = np.concatenate(who), np.concatenate(where)
        p = 1.0 / (1.0 + np.exp(-(s[who] * self.log_odds + u[who] + d[where])))
        return {"outcome": (rng.random(len(p)) < p).astype(float), "participant": who, "layout": where}


def simulate_ranking(rng: np.random.Generator, strengths: np.ndarray, participants: int, pairs_per_participant: int,
                     sensitivity_sd: float = 0.2) -> np.ndarray:
    """Pairwise judgments among items with Bradley-Terry ``strengths`` (log scale) by participants who
    each see ``pairs_per_participant`` random pairs and scale the strength difference by their own
    sensitivity (``log s ~ N(0, sensitivity_sd)``). Returns wins per participant,
    ``wins[k, i, j]``: times participant k chose item i over item j."""
    strengths = np.asarray(strengths, dtype=float)
    items = len(strengths)
    wins = np.zeros((participants, items, items))
    for k in range(participants):
        s = np.exp(rng.normal(0.0, sensitivity_sd))
        first = rng.integers(0, items, pairs_per_participant)
        second = (first + rng.integers(1, items, pairs_per_participant)) % items  # another item
        p = 1.0 / (1.0 + np.exp(-s * (strengths[first] - strengths[second])))
        won = rng.random(pairs_per_participant) < p
        np.add.at(wins[k], (np.where(won, first, second), np.where(won, second, first)), 1.0)
    return wins
