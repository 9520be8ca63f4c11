"""Statistics for the perceptual experiments (Sec. 5.1, Table 1, Fig. 3; docs/facts.md §6) and for
per-image automatic scores (docs/facts.md §7).

Pure functions: numbers in, numbers out (numpy/scipy only, no files, no strings). The Wilson interval,
the exact binomial test and the bootstrap intervals are scipy.stats'; what scipy does not offer is
here: the exact power of the binomial test over many n at once, and the cluster bootstrap. Table 1 reports,
per baseline, the fraction of pairwise A/B comparisons in which the CRN image was judged more
realistic, "with p < 1e-3"; one such row is :func:`preference_summary`. The paper does not state
how many judgments stand behind each rate, so :func:`judgments_needed` says how many an exact test
needs to support that claim at a given power.

Invalid arguments (n < 1, a probability outside its range, ...) raise ``ValueError``: an empty
comparison set has no rate, and failing loudly beats a NaN travelling into a report table. The one
deliberate NaN: :func:`cluster_bootstrap_ci` with fewer than ``MIN_BOOTSTRAP_CLUSTERS`` clusters
(valid input whose interval is not estimable; report tables show it as "n/a").
"""

from __future__ import annotations

import warnings
from typing import Callable

import numpy as np
import scipy.stats
from scipy.stats import binom

# Outcomes whose probability is within this relative tolerance of the observed one count as "no
# more likely" in the two-sided exact test; scipy.stats.binomtest uses the same 1 + 1e-7, so that
# outcomes that tie mathematically (p = 0.5, k vs n - k) are not split by rounding.
_LOG_RELATIVE_TOLERANCE = np.log1p(1e-7)

BOOTSTRAP_METHODS = ("percentile", "basic", "bca")
_SCIPY_METHODS = {"percentile": "percentile", "basic": "basic", "bca": "BCa"}


def significant(value: float | None, digits: int = 4) -> float | None:
    """``value`` rounded to ``digits`` significant digits (None and NaN stay as they are): the headline
    files a person reads in a table; the full files keep every digit."""
    if value is None or value != value:
        return value
    return float(f"{value:.{digits}g}")


def _check_count(successes: int, n: int) -> None:
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer, got {n}")
    if int(successes) != successes or not 0 <= successes <= n:
        raise ValueError(f"successes must be an integer in [0, n={n}], got {successes}")


def _check_open_unit(name: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must lie strictly between 0 and 1, got {value}")


# --------------------------------------------------------------------------------------------
# Binomial proportions: one row of Table 1
# --------------------------------------------------------------------------------------------


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson 1927, JASA 22:209), as
    ``scipy.stats.binomtest(k, n).proportion_ci(method="wilson")`` computes it.

    Inverts the score test: the p with |p_hat - p| <= z sqrt(p (1 - p) / n). Unlike the Wald
    interval it stays inside [0, 1] and keeps near-nominal coverage at rates close to 0 or 1 (e.g.
    Table 1's 99.7%). n = 0 raises ``ValueError`` (no judgments, no interval).
    """
    _check_count(successes, n)
    _check_open_unit("confidence", confidence)
    ci = scipy.stats.binomtest(int(successes), int(n)).proportion_ci(confidence, method="wilson")
    return float(ci.low), float(ci.high)


def _two_sided_p_values(n: int, p: float) -> np.ndarray:
    """Exact two-sided binomial p-value of every outcome k = 0..n at once (the rule of ``binomial_test``,
    with scipy's relative tolerance), for the exact power of a whole rejection region."""
    k = np.arange(n + 1)
    log_pmf = binom.logpmf(k, n, p)  # orders outcomes; stays finite where the pmf underflows
    pmf = binom.pmf(k, n, p)  # summed; more accurate than exp(logpmf) for large n
    order = np.argsort(log_pmf, kind="stable")
    tail_mass = np.cumsum(pmf[order])  # ascending, so small terms are not lost
    num_no_more_likely = np.searchsorted(log_pmf[order], log_pmf + _LOG_RELATIVE_TOLERANCE, side="right")
    # Every outcome counted (the observation is a mode): the total is 1, not a rounded sum.
    return np.where(num_no_more_likely == n + 1, 1.0, np.minimum(1.0, tail_mass[num_no_more_likely - 1]))


def binomial_test(successes: int, n: int, p: float = 0.5) -> float:
    """Exact two-sided binomial test (the "minimum likelihood" rule; Hollander & Wolfe, 1999):
    ``scipy.stats.binomtest(k, n, p).pvalue``, the total null probability of the outcomes no more
    likely than the observed one."""
    _check_count(successes, n)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must lie in [0, 1], got {p}")
    return float(scipy.stats.binomtest(int(successes), int(n), p).pvalue)


def preference_summary(wins: int, n: int, confidence: float = 0.95) -> dict:
    """One cell of Table 1: the rate at which CRN was preferred in n A/B judgments, its Wilson
    interval, and the exact two-sided binomial p-value against no preference (0.5).

    Returns ``{"rate", "ci_low", "ci_high", "p_value", "wins", "n"}`` (floats; counts as ints).
    """
    ci_low, ci_high = wilson_interval(wins, n, confidence)
    return {
        "rate": wins / n,
        "ci_low": ci_low,
        "ci_high": ci_high,
        "p_value": binomial_test(wins, n, 0.5),
        "wins": int(wins),
        "n": int(n),
    }


# --------------------------------------------------------------------------------------------
# Power: how many judgments Table 1 needs
# --------------------------------------------------------------------------------------------


def binomial_power(n: int, true_rate: float, alpha: float = 1e-3, null_p: float = 0.5) -> float:
    """Exact power of the two-sided binomial test (``binomial_test``) at level alpha.

    Probability, under Binomial(n, true_rate), of an outcome whose p-value against null_p is
    <= alpha; both the rejection region and its probability are exact (no normal approximation).
    """
    _check_count(0, n)
    _check_open_unit("alpha", alpha)
    for name, value in (("true_rate", true_rate), ("null_p", null_p)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1], got {value}")
    rejects = _two_sided_p_values(int(n), null_p) <= alpha
    return float(binom.pmf(np.flatnonzero(rejects), n, true_rate).sum())


def _power_against_half(n: np.ndarray, true_rate: float, alpha: float) -> np.ndarray:
    """``binomial_power(n, true_rate, alpha, 0.5)`` for an array of n, in closed form.

    Under p = 0.5 the pmf is symmetric and unimodal, so the test rejects exactly k <= c and
    k >= n - c, with c the largest k such that 2 * cdf(k) <= alpha (c = -1: never rejects).
    """
    q = binom.ppf(alpha / 2.0, n, 0.5)  # smallest k with cdf(k) >= alpha / 2
    c = np.where(2.0 * binom.cdf(q, n, 0.5) <= alpha, q, q - 1)
    power = binom.cdf(c, n, true_rate) + binom.sf(n - c - 1, n, true_rate)
    return np.where(c >= 0, power, 0.0)


# The search bound of ``judgments_needed(..., sustained=True)``, as a multiple of the first n that reaches
# the power. Checked up to 20x that n for alpha in {1e-3, 0.01, 0.05}, power 0.5 to 0.99 and true rates
# 0.52 to 0.999: the last dip below the target ended by 1.5x the first n (e.g. rate 0.9, alpha 1e-3, power
# 0.9: first reached at 25, last dip at 27).
SUSTAINED_SEARCH_FACTOR = 4


def judgments_needed(
    true_rate: float, alpha: float = 1e-3, power: float = 0.8, max_n: int = 10_000_000, *, sustained: bool = False
) -> int:
    """Smallest number of A/B judgments n at which the exact two-sided binomial test of "no
    preference" (p = 0.5) at level alpha has at least the given power when CRN is truly preferred
    at ``true_rate`` (exact power, as ``binomial_power``).

    Power of an exact test is a sawtooth in n (the discrete rejection region jumps), so power can
    dip back below the target at some n slightly larger than the first one that reaches it (rate 0.9,
    alpha 1e-3: power 0.902 at n = 25, 0.888 at 26). By default this returns that *first* n; with
    ``sustained=True`` it returns the smallest n such that every n' from n up to the search bound,
    ``SUSTAINED_SEARCH_FACTOR`` times the first n (capped at max_n), reaches the power too: the number
    to plan a study with, since a few more judgments than planned must not lose power. The search
    evaluates the power of every n in blocks 1..64, 65..128, 129..256, ... (vectorised, closed form),
    stopping at the first block that reaches the target, so the cost is about twice the answer (times
    the factor when sustained). Raises ``ValueError`` if max_n judgments do not suffice (e.g.
    true_rate = 0.5).
    """
    _check_open_unit("true_rate", true_rate)
    _check_open_unit("alpha", alpha)
    _check_open_unit("power", power)
    first, low, high = None, 1, 64
    while low <= max_n and first is None:
        n = np.arange(low, min(high, max_n) + 1)
        reached = np.flatnonzero(_power_against_half(n, true_rate, alpha) >= power)
        if reached.size:
            first = int(n[reached[0]])
        low, high = high + 1, 2 * high
    if first is None:
        raise ValueError(f"power {power} is not reached within {max_n} judgments at true rate {true_rate}")
    if not sustained:
        return first
    n = np.arange(first, min(SUSTAINED_SEARCH_FACTOR * first, max_n) + 1)
    below = np.flatnonzero(_power_against_half(n, true_rate, alpha) < power)
    if below.size and below[-1] == len(n) - 1:
        raise ValueError(f"power {power} does not stay reached within {max_n} judgments at true rate {true_rate}")
    return int(n[below[-1] + 1]) if below.size else first


# --------------------------------------------------------------------------------------------
# Bootstrap: per-image scores and human-study clusters
# --------------------------------------------------------------------------------------------


def bootstrap_ci(
    items: int | np.ndarray,
    statistic: Callable[[np.ndarray], float | np.ndarray],
    *,
    num_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    method: str = "percentile",
    vectorized: bool = False,
) -> tuple[float, float]:
    """Nonparametric bootstrap confidence interval over items (Efron & Tibshirani 1993, Ch. 13-14).

    ``items`` is the number of items (e.g. test images) or an array whose first axis indexes them
    (only its length is used). ``statistic`` receives an index array into the items and returns
    the statistic of those items, so one statistic can read several aligned per-item arrays, e.g.
    ``lambda i: miou(confusions[i].sum(0))``. With ``vectorized=True`` it receives all resamples at
    once, an index array of shape (num_resamples, num_items), and returns shape (num_resamples,).
    The resamples (with replacement) depend only on ``seed``, not on ``vectorized``.

    method: "percentile" (the default), "basic" (reflected percentile), or "bca" (bias-corrected
    and accelerated, Efron 1987; costs num_items more evaluations for the jackknife). Computed by
    ``scipy.stats.bootstrap`` over the index array; one item, or a statistic that is the same in every
    resample, gives the zero-width interval at the statistic's value.
    """
    num_items = int(items) if np.ndim(items) == 0 else len(items)
    if num_items < 1:
        raise ValueError(f"need at least one item, got {num_items}")
    if num_resamples < 1:
        raise ValueError(f"num_resamples must be positive, got {num_resamples}")
    if method not in BOOTSTRAP_METHODS:
        raise ValueError(f"unknown bootstrap method {method!r}; choose one of {BOOTSTRAP_METHODS}")
    _check_open_unit("confidence", confidence)

    everything = np.arange(num_items)

    def theta_hat() -> float:
        return float(np.asarray(statistic(everything[None, :] if vectorized else everything)).reshape(-1)[0])

    if num_items == 1:  # one item: every resample is the item itself (scipy needs two)
        return theta_hat(), theta_hat()
    with warnings.catch_warnings():  # a degenerate BCa interval warns; it is handled below
        warnings.simplefilter("ignore", scipy.stats.DegenerateDataWarning)
        result = scipy.stats.bootstrap(
            (everything,),
            lambda index, axis=-1: statistic(index),
            n_resamples=num_resamples,
            vectorized=vectorized,
            confidence_level=confidence,
            method=_SCIPY_METHODS[method],
            rng=np.random.default_rng(seed),
        )
    boot = result.bootstrap_distribution
    if np.all(boot == boot[0]):  # degenerate (a constant statistic): no spread to report
        return theta_hat(), theta_hat()
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def bootstrap_mean_ci(
    values: np.ndarray,
    *,
    num_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    method: str = "percentile",
) -> tuple[float, float]:
    """Bootstrap confidence interval of the mean of per-item values (``bootstrap_ci``, vectorised)."""
    values = np.asarray(values, dtype=float)
    if values.ndim != 1:
        raise ValueError(f"values must be one-dimensional, got shape {values.shape}")
    return bootstrap_ci(
        values,
        lambda index: values[index].mean(axis=-1),
        num_resamples=num_resamples,
        confidence=confidence,
        seed=seed,
        method=method,
        vectorized=True,
    )


# Fewest clusters for which ``cluster_bootstrap_ci`` reports an interval. With k clusters a resample
# is one of at most C(2k - 1, k) multisets (k = 1: 1, 2: 3, 3: 10, 4: 35, 5: 126), so below 5 the
# 2.5% and 97.5% quantiles are read off a handful of distinct values: one cluster gives a zero-width
# interval, and two to four give intervals that are mostly an artefact of the few clusters. Even at
# 5 and somewhat beyond, percentile cluster-bootstrap intervals are known to be too narrow (Cameron,
# Gelbach & Miller 2008, Rev. Econ. Stat. 90:414); treat them as a lower bound on the uncertainty.
MIN_BOOTSTRAP_CLUSTERS = 5


def cluster_bootstrap_ci(
    values: np.ndarray,
    clusters: np.ndarray,
    statistic: Callable[[np.ndarray], float] = np.mean,
    *,
    num_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    method: str = "percentile",
    min_clusters: int = MIN_BOOTSTRAP_CLUSTERS,
) -> tuple[float, float]:
    """Cluster (block) bootstrap interval (Davison & Hinkley 1997, Sec. 3.8; Field & Welsh 2007).

    Resamples whole clusters with replacement (e.g. the workers, or the test images, of a human
    study) and keeps every observation of each drawn cluster, so judgments that are correlated
    within a cluster are not treated as independent. ``values`` holds one entry (or row) per
    observation, ``clusters`` its cluster label; ``statistic`` receives the observations of one
    resample (``values[...]``, grouped by drawn cluster) and must not depend on their order. Method
    and seed as in ``bootstrap_ci``; for "bca" the jackknife leaves out one cluster at a time.

    With fewer than ``min_clusters`` distinct clusters (default ``MIN_BOOTSTRAP_CLUSTERS``, 5; at
    least 2) the interval is not estimable and (NaN, NaN) is returned, deliberately: a zero-width or
    near-degenerate interval from one to four clusters would look like certainty.
    """
    values = np.asarray(values)
    clusters = np.asarray(clusters)
    if clusters.ndim != 1 or len(clusters) != len(values):
        raise ValueError(
            f"need one cluster label per observation: {len(clusters)} labels, {len(values)} observations"
        )
    if int(min_clusters) != min_clusters or min_clusters < 2:
        raise ValueError(f"min_clusters must be an integer >= 2 (one cluster has no spread to resample), got {min_clusters}")
    _, cluster_of = np.unique(clusters, return_inverse=True)
    by_cluster = np.argsort(cluster_of, kind="stable")  # observations grouped cluster by cluster
    sizes = np.bincount(cluster_of)
    if len(sizes) < min_clusters:
        return float("nan"), float("nan")
    starts = np.cumsum(sizes) - sizes

    def observations(drawn: np.ndarray) -> np.ndarray:
        drawn_sizes = sizes[drawn]
        # Position j of the output belongs to drawn cluster m: by_cluster[starts[m] + (j - first j of m)].
        shift = np.repeat(starts[drawn] - (np.cumsum(drawn_sizes) - drawn_sizes), drawn_sizes)
        return by_cluster[shift + np.arange(drawn_sizes.sum())]

    return bootstrap_ci(
        len(sizes),
        lambda drawn: statistic(values[observations(drawn)]),
        num_resamples=num_resamples,
        confidence=confidence,
        seed=seed,
        method=method,
    )
