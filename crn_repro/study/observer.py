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

import numpy as np

UNLIMITED_MS = 8000.0  # unlimited viewing time has the noise of the longest timed presentation


class Observer:
    """One simulated participant; all its randomness comes from ``seed``."""

    def __init__(self, seed: int, noise_sd_at_1s: float = 0.5, lapse_rate: float = 0.0, median_response_ms: float = 900.0):
        if noise_sd_at_1s < 0 or not 0.0 <= lapse_rate <= 1.0 or median_response_ms <= 0:
            raise ValueError("need noise_sd_at_1s >= 0, 0 <= lapse_rate <= 1 and median_response_ms > 0")
        self.seed = seed
        self.noise_sd_at_1s = noise_sd_at_1s
        self.lapse_rate = lapse_rate
        self.median_response_ms = median_response_ms
        self.rng = np.random.default_rng(seed)

    def noise_sd(self, shown_ms: float | None) -> float:
        shown = UNLIMITED_MS if shown_ms is None else max(float(shown_ms), 1.0)
        return self.noise_sd_at_1s * math.sqrt(1000.0 / shown)

    def choose(self, trial: dict, shown_ms: float | None) -> str:
        """"left" or "right" for a manifest trial (reads ``trial[side]["score"]``) shown for ``shown_ms``."""
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


def observer_factory(seed: int, careless_fraction: float = 0.0, noise_sd_at_1s: float = 0.5) -> Callable[[int], Observer]:
    """Participant number -> its Observer: attentive ones, and careless ones (answering every trial
    at random) at ``careless_fraction``."""
    if not 0.0 <= careless_fraction <= 1.0:
        raise ValueError(f"careless_fraction must lie in [0, 1], got {careless_fraction}")

    def make(participant: int) -> Observer:
        lapse = 1.0 if is_careless(participant, careless_fraction) else 0.0
        return Observer(seed * 1_000_003 + participant, noise_sd_at_1s=noise_sd_at_1s, lapse_rate=lapse)

    return make
