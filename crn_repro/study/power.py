"""`crn-repro study power`: how many judgments a comparison needs (paper Table 1 claims p < 1e-3 for
every comparison, docs/facts.md §6, without saying how many judgments stand behind each rate).

For a true preference rate, the number of A/B judgments from which the exact two-sided binomial test
against 50% reaches p < alpha with the given power and keeps it for every larger number
(``stats.judgments_needed(..., sustained=True)``; exact power dips below the target just past the first
n that reaches it), and the jobs of a study design that supply them.
"""

from __future__ import annotations

import math

from crn_repro import stats
from crn_repro.study.design import Design

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


def jobs_needed(judgments: int, design: Design) -> int:
    """Jobs of ``design`` that give one comparison cell ``judgments`` judgments (the binomial test
    counts every judgment as independent; the cluster bootstrap of `study analyze` shows how far
    they are not)."""
    return math.ceil(judgments * len(design.test_cells) / design.tests_per_job)
