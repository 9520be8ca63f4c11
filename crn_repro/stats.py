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
import scipy.linalg
import scipy.optimize
import scipy.special
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
    if statistic is np.mean and values.ndim == 1:  # the mean from per-cluster sums, all resamples at once
        sums = np.bincount(cluster_of, values.astype(float))
        return bootstrap_ci(
            len(sizes), lambda drawn: sums[drawn].sum(axis=-1) / sizes[drawn].sum(axis=-1),
            num_resamples=num_resamples, confidence=confidence, seed=seed, method=method, vectorized=True,
        )

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


# --------------------------------------------------------------------------------------------
# Crossed designs: every judgment belongs to one participant and one layout (image)
# --------------------------------------------------------------------------------------------


def crossed_bootstrap_ci(
    values: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    *,
    num_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    min_clusters: int = MIN_BOOTSTRAP_CLUSTERS,
) -> tuple[float, float]:
    """Percentile interval of the mean of ``values`` from the crossed ("pigeonhole") bootstrap over two
    random factors at once (Owen 2007, Ann. Appl. Stat. 1:2; McCullagh 2000, Bernoulli 6:285): each
    resample draws the row clusters (participants) and, independently, the column clusters (layouts)
    with replacement, and an observation of row r and column c counts (times r was drawn) x (times c
    was drawn). Unlike a one-way cluster bootstrap it keeps both sources of variation; for a mean it
    is mildly conservative (Owen 2007). Resamples in which no drawn row meets a drawn column are left
    out. (NaN, NaN) with fewer than ``min_clusters`` rows or columns, as ``cluster_bootstrap_ci``."""
    values = np.asarray(values, dtype=float)
    rows, cols = np.asarray(rows), np.asarray(cols)
    if values.ndim != 1 or rows.shape != values.shape or cols.shape != values.shape:
        raise ValueError(f"need one row and one column label per value: {len(rows)}, {len(cols)} labels, {len(values)} values")
    if num_resamples < 1:
        raise ValueError(f"num_resamples must be positive, got {num_resamples}")
    _check_open_unit("confidence", confidence)
    _, r = np.unique(rows, return_inverse=True)
    _, c = np.unique(cols, return_inverse=True)
    nr, nc = int(r.max(initial=-1)) + 1, int(c.max(initial=-1)) + 1
    if min(nr, nc) < min_clusters:
        return float("nan"), float("nan")
    sums = np.zeros((nr, nc))
    counts = np.zeros((nr, nc))
    np.add.at(sums, (r, c), values)
    np.add.at(counts, (r, c), 1.0)
    rng = np.random.default_rng(seed)
    means = []
    for start in range(0, num_resamples, 256):  # in blocks: memory stays at 256 x (rows + cols)
        size = min(256, num_resamples - start)
        drawn_rows = rng.multinomial(nr, np.full(nr, 1.0 / nr), size=size).astype(float)
        drawn_cols = rng.multinomial(nc, np.full(nc, 1.0 / nc), size=size).astype(float)
        numerator = ((drawn_rows @ sums) * drawn_cols).sum(axis=1)
        denominator = ((drawn_rows @ counts) * drawn_cols).sum(axis=1)
        kept = denominator > 0
        means.append(numerator[kept] / denominator[kept])
    means = np.concatenate(means)
    tail = (1.0 - confidence) / 2.0
    return float(np.quantile(means, tail)), float(np.quantile(means, 1.0 - tail))


def _expit(x: np.ndarray) -> np.ndarray:
    return scipy.special.expit(x)


class _CrossedLogit:
    """The Laplace approximation of a logistic model with crossed random intercepts,
    ``logit P(y = 1) = beta + sd_a * za[a] + sd_b * zb[b]`` with standard-normal ``za``, ``zb``: the
    penalised least squares of lme4's glmer (Bates et al. 2015, J. Stat. Softw. 67:1, Sec. 5), in
    numpy. The conditional mode of ``z`` is found by Newton steps; the random-effects Hessian is
    solved through the Schur complement of its smaller diagonal block, so the cost is
    O(min(na, nb)^3) per step."""

    def __init__(self, y: np.ndarray, a: np.ndarray, b: np.ndarray):
        self.y, self.a, self.b = y, a, b
        self.na, self.nb = int(a.max()) + 1, int(b.max()) + 1
        self.cell = a * self.nb + b
        self.z = (np.zeros(self.na), np.zeros(self.nb))  # warm start for the next mode

    def _blocks(self, w: np.ndarray, sa: float, sb: float):
        haa = 1.0 + sa**2 * np.bincount(self.a, w, self.na)
        hbb = 1.0 + sb**2 * np.bincount(self.b, w, self.nb)
        cross = sa * sb * np.bincount(self.cell, w, self.na * self.nb).reshape(self.na, self.nb)
        return haa, hbb, cross

    @staticmethod
    def _solve(haa, hbb, cross, ga, gb):
        """Solve [[diag(haa), cross], [cross', diag(hbb)]] [xa; xb] = [ga; gb]; also log det."""
        if len(haa) >= len(hbb):  # eliminate the larger (diagonal) block
            schur = np.diag(hbb) - cross.T @ (cross / haa[:, None])
            chol = scipy.linalg.cho_factor(schur)
            xb = scipy.linalg.cho_solve(chol, gb - cross.T @ (ga / haa))
            xa = (ga - cross @ xb) / haa
            logdet = np.log(haa).sum() + 2.0 * np.log(np.diag(chol[0])).sum()
            return xa, xb, logdet
        xb, xa, logdet = _CrossedLogit._solve(hbb, haa, cross.T, gb, ga)
        return xa, xb, logdet

    def mode(self, beta: float, sa: float, sb: float):
        """The conditional mode of (za, zb) given the parameters: (za, zb, eta, log det H)."""
        def objective(za, zb):  # the penalised deviance / 2, which the mode minimises
            eta = beta + sa * za[self.a] + sb * zb[self.b]
            return float(np.sum(np.logaddexp(0.0, eta) - self.y * eta) + (za @ za + zb @ zb) / 2), eta

        za, zb = (z.copy() for z in self.z)
        value, eta = objective(za, zb)
        for _ in range(100):
            mu = _expit(eta)
            w, r = mu * (1.0 - mu), self.y - mu
            ga = sa * np.bincount(self.a, r, self.na) - za
            gb = sb * np.bincount(self.b, r, self.nb) - zb
            da, db, logdet = self._solve(*self._blocks(w, sa, sb), ga, gb)
            if max(np.abs(da).max(initial=0), np.abs(db).max(initial=0)) < 1e-9:
                break  # at the mode: this step's Hessian (and log det) is the mode's to ~1e-9
            for _halving in range(40):  # damped Newton: never a step that increases the objective
                new_value, new_eta = objective(za + da, zb + db)
                if new_value <= value + 1e-12 * abs(value):
                    break
                da, db = da / 2, db / 2
            za, zb, value, eta = za + da, zb + db, new_value, new_eta
        else:
            raise RuntimeError("the conditional mode did not converge in 100 Newton steps")
        self.z = (za, zb)
        return za, zb, eta, logdet

    def deviance(self, params: np.ndarray) -> float:
        """The Laplace-approximated deviance (-2 log marginal likelihood) at (beta, sd_a, sd_b)."""
        beta, sa, sb = params
        za, zb, eta, logdet = self.mode(beta, sa, sb)
        loglik = float(np.sum(self.y * eta - np.logaddexp(0.0, eta)))
        return -2.0 * loglik + float(za @ za + zb @ zb) + logdet

    def beta_variance(self, beta: float, sa: float, sb: float) -> float:
        """Var(beta) from the joint Hessian of (beta, z) at the mode, the random effects integrated out
        (the Schur complement; lme4's RX-based covariance), given the standard deviations."""
        za, zb, eta, _ = self.mode(beta, sa, sb)
        mu = _expit(eta)
        w = mu * (1.0 - mu)
        ga, gb = sa * np.bincount(self.a, w, self.na), sb * np.bincount(self.b, w, self.nb)
        xa, xb, _ = self._solve(*self._blocks(w, sa, sb), ga, gb)
        return 1.0 / float(w.sum() - ga @ xa - gb @ xb)


def _beta_variance(model: _CrossedLogit, at: np.ndarray) -> float:
    """Var(beta) as lme4 computes it by default: 2 (H^-1)_beta,beta with H the finite-difference
    Hessian of the Laplace deviance in (beta, sd_a, sd_b), which carries the uncertainty of the
    standard deviations into beta's. Where a standard deviation sits on its bound (0) or H is not
    positive definite, the Hessian in beta alone at the mode (given the standard deviations: lme4's
    fallback) is used."""
    free = [0] + [i for i in (1, 2) if at[i] > 1e-4]
    step = 1e-4 * np.maximum(1.0, np.abs(at))
    hessian = np.zeros((len(free), len(free)))
    f0 = model.deviance(at)
    for m, i in enumerate(free):
        for n, j in enumerate(free[: m + 1]):
            def shifted(di, dj):
                x = at.copy()
                x[i] += di * step[i]
                x[j] += dj * step[j]
                return model.deviance(x)
            if i == j:
                value = (shifted(1, 0) - 2 * f0 + shifted(-1, 0)) / step[i] ** 2
            else:
                value = (shifted(1, 1) - shifted(1, -1) - shifted(-1, 1) + shifted(-1, -1)) / (4 * step[i] * step[j])
            hessian[m, n] = hessian[n, m] = value
    model.mode(*at)  # leave the warm start at the optimum
    try:
        np.linalg.cholesky(hessian)
        return float(2.0 * np.linalg.inv(hessian)[0, 0])
    except np.linalg.LinAlgError:
        return model.beta_variance(*at)


MAX_LOG_ODDS = 15.0  # |beta| bound of the fit: beyond it (odds 3e6) the judgments are all one way
MAX_SD = 10.0  # bound of a random-effect standard deviation on the log-odds scale


def crossed_logit(
    outcomes: np.ndarray, participants: np.ndarray, layouts: np.ndarray, confidence: float = 0.95
) -> dict:
    """A logistic mixed model with crossed random intercepts, ``y ~ 1 + (1 | participant) + (1 | layout)``,
    fitted by maximum likelihood under the Laplace approximation, as lme4's ``glmer`` does by default
    (nAGQ = 1; docs/facts.md §6). ``outcomes`` are 0/1 (e.g. "the first model won"), one per judgment,
    with its participant and layout labels.

    Returns ``log_odds`` (the intercept: log odds of y = 1 for a typical participant on a typical
    layout), its Wald ``se`` and interval, ``odds_ratio`` = exp(log_odds) against even odds with
    ``odds_ratio_low/high``, the ``rate`` = expit(log_odds) with ``rate_low/high``, and the two
    standard deviations ``participant_sd``, ``layout_sd`` (log-odds scale). Every value is NaN where
    the outcomes are all 0 or all 1 (the likelihood has no finite maximum); ``reason`` says why."""
    y = np.asarray(outcomes, dtype=float)
    if y.ndim != 1 or len(participants) != len(y) or len(layouts) != len(y):
        raise ValueError(f"need one participant and one layout per outcome: {len(participants)}, {len(layouts)} labels, {len(y)} outcomes")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("outcomes must be 0 or 1")
    _check_open_unit("confidence", confidence)
    keys = ("log_odds", "se", "log_odds_low", "log_odds_high", "odds_ratio", "odds_ratio_low", "odds_ratio_high",
            "rate", "rate_low", "rate_high", "participant_sd", "layout_sd")
    out = dict.fromkeys(keys, float("nan"))
    if len(y) == 0 or y.min() == y.max():
        return {**out, "reason": "no judgments" if len(y) == 0 else "every judgment went one way: no finite odds ratio"}
    a = np.unique(np.asarray(participants), return_inverse=True)[1]
    b = np.unique(np.asarray(layouts), return_inverse=True)[1]
    model = _CrossedLogit(y, a, b)
    start = np.array([scipy.special.logit(np.clip(y.mean(), 0.01, 0.99)), 0.5, 0.5])
    fit = scipy.optimize.minimize(model.deviance, start, method="L-BFGS-B",
                                  bounds=[(-MAX_LOG_ODDS, MAX_LOG_ODDS), (0.0, MAX_SD), (0.0, MAX_SD)])
    beta, sa, sb = (float(v) for v in fit.x)
    se = float(np.sqrt(_beta_variance(model, np.array([beta, sa, sb]))))
    z = float(scipy.stats.norm.ppf(0.5 + confidence / 2.0))
    low, high = beta - z * se, beta + z * se
    return {
        "log_odds": beta, "se": se, "log_odds_low": low, "log_odds_high": high,
        "odds_ratio": float(np.exp(beta)), "odds_ratio_low": float(np.exp(low)), "odds_ratio_high": float(np.exp(high)),
        "rate": float(_expit(beta)), "rate_low": float(_expit(low)), "rate_high": float(_expit(high)),
        "participant_sd": sa, "layout_sd": sb, "reason": "" if fit.success else f"optimizer: {fit.message}",
    }


# --------------------------------------------------------------------------------------------
# Bradley-Terry: one ranking of every model (and real images) from all their pairs
# --------------------------------------------------------------------------------------------

BRADLEY_TERRY_ALPHA = 0.01  # choix's regularisation: a weak prior that keeps an undefeated item finite


def comparison_components(wins: np.ndarray) -> list[list[int]]:
    """The connected components of the comparison graph of a win matrix (``wins[i, j]``: i beat j),
    each a sorted list of item indexes, largest first."""
    wins = np.asarray(wins)
    linked = (wins + wins.T) > 0
    seen, components = set(), []
    for start in range(len(wins)):
        if start in seen:
            continue
        stack, component = [start], []
        seen.add(start)
        while stack:
            i = stack.pop()
            component.append(i)
            for j in np.flatnonzero(linked[i]):
                if int(j) not in seen:
                    seen.add(int(j))
                    stack.append(int(j))
        components.append(sorted(component))
    return sorted(components, key=lambda c: (-len(c), c))


def bradley_terry(wins: np.ndarray, alpha: float = BRADLEY_TERRY_ALPHA) -> np.ndarray:
    """Bradley-Terry strengths (log scale, mean 0; P(i beats j) = expit(s_i - s_j)) from a win matrix
    ``wins[i, j]`` (times item i beat item j), by choix's iterative Luce spectral ranking (Maystre &
    Grossglauser 2015) with regularisation ``alpha``. ValueError if the comparison graph is not
    connected: items that were never compared, directly or through others, have no common scale."""
    wins = np.asarray(wins, dtype=float)
    if wins.ndim != 2 or wins.shape[0] != wins.shape[1] or len(wins) < 2:
        raise ValueError(f"need a square win matrix of at least 2 items, got shape {wins.shape}")
    if (wins < 0).any():
        raise ValueError("win counts must be >= 0")
    components = comparison_components(wins)
    if len(components) > 1:
        raise ValueError(f"the comparison graph is not connected: {len(components)} separate groups of items {components}")
    import choix

    strengths = choix.ilsr_pairwise_dense(wins, alpha=alpha, max_iter=1000)
    return strengths - strengths.mean()


def bradley_terry_bootstrap(
    wins_by_cluster: np.ndarray,
    *,
    num_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    alpha: float = BRADLEY_TERRY_ALPHA,
) -> dict:
    """Bradley-Terry strengths and ranks with percentile intervals from the bootstrap over clusters
    (participants): ``wins_by_cluster[k, i, j]`` counts how often cluster k's judgments had item i
    beat item j. Returns ``strength`` (all clusters), ``strength_low/high`` and ``rank_low/high``
    (1 = strongest) per item, and ``resamples``: how many resamples were connected and used (a
    resample that leaves an item unconnected is skipped). ValueError as ``bradley_terry`` when the
    full data are not connected."""
    wins_by_cluster = np.asarray(wins_by_cluster, dtype=float)
    if wins_by_cluster.ndim != 3:
        raise ValueError(f"need wins per cluster of shape (clusters, items, items), got {wins_by_cluster.shape}")
    _check_open_unit("confidence", confidence)
    strength = bradley_terry(wins_by_cluster.sum(axis=0), alpha)
    clusters = len(wins_by_cluster)
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(clusters, np.full(clusters, 1.0 / clusters), size=num_resamples)
    draws = []
    for wins in np.einsum("bk,kij->bij", counts, wins_by_cluster):
        if len(comparison_components(wins)) == 1:
            draws.append(bradley_terry(wins, alpha))
    tail = (1.0 - confidence) / 2.0
    nan = np.full(len(strength), np.nan)
    if not draws:
        return {"strength": strength, "strength_low": nan, "strength_high": nan, "rank_low": nan, "rank_high": nan,
                "resamples": 0}
    draws = np.array(draws)
    ranks = (-draws).argsort(axis=1).argsort(axis=1) + 1
    return {
        "strength": strength,
        "strength_low": np.quantile(draws, tail, axis=0), "strength_high": np.quantile(draws, 1 - tail, axis=0),
        "rank_low": np.quantile(ranks, tail, axis=0, method="lower"),
        "rank_high": np.quantile(ranks, 1 - tail, axis=0, method="higher"),
        "resamples": len(draws),
    }
