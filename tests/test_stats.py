"""crn_repro.stats against closed forms, published worked examples and simulation (docs/facts.md §6). The
functions call scipy; the references here never do: they are computed from the definitions (exact
rational arithmetic, the Wilson formula) or taken from published tables."""

from __future__ import annotations

import math
import shutil
from fractions import Fraction
import subprocess

import numpy as np
import pytest

from crn_repro.stats import (
    MIN_BOOTSTRAP_CLUSTERS,
    binomial_power,
    binomial_test,
    bootstrap_ci,
    bootstrap_mean_ci,
    bradley_terry,
    bradley_terry_bootstrap,
    cluster_bootstrap_ci,
    comparison_components,
    crossed_bootstrap_ci,
    crossed_logit,
    judgments_needed,
    preference_summary,
    wilson_interval,
)
from crn_repro.study.observer import CrossedPopulation, simulate_ranking

# Table 1 (docs/facts.md §6): fraction of comparisons in which CRN was preferred, per baseline
# (image-space loss, GAN+SemSeg, pix2pix, encoder-decoder, full-resolution).
TABLE1_RATES = {
    "cityscapes": [0.997, 0.985, 0.969, 0.783, 0.677],
    "nyu": [0.914, 0.823, 0.772, 0.712, 0.658],
}
# The paper does not say how many judgments stand behind each rate. Assumption for these tests:
# 500 judgments per comparison (5 jobs of 100 test pairs each), wins = round(rate * n).
ASSUMED_JUDGMENTS = 500


# ---------------------------------------------------------------- Wilson interval


# Phi^-1((1 + confidence) / 2), to 16 digits
Z = {0.90: 1.6448536269514722, 0.95: 1.959963984540054, 0.99: 2.5758293035489004}


def wilson_formula(k: int, n: int, confidence: float) -> tuple[float, float]:
    """Wilson (1927): (p_hat + z^2/2n -+ z sqrt(p_hat (1 - p_hat)/n + z^2/4n^2)) / (1 + z^2/n)."""
    z, p_hat = Z[confidence], k / n
    center = (p_hat + z**2 / (2 * n)) / (1 + z**2 / n)
    half_width = z / (1 + z**2 / n) * math.sqrt(p_hat * (1 - p_hat) / n + z**2 / (4 * n**2))
    return max(0.0, center - half_width), min(1.0, center + half_width)


@pytest.mark.parametrize("k, n, confidence", [(8, 10, 0.95), (0, 7, 0.95), (3, 3, 0.90), (70, 100, 0.99),
                                              (1, 1000, 0.95), (997, 1000, 0.95), (333, 500, 0.90)])
def test_wilson_interval_matches_the_formula(k, n, confidence):
    assert wilson_interval(k, n, confidence) == pytest.approx(wilson_formula(k, n, confidence), rel=0, abs=1e-12)


def test_wilson_interval_matches_published_values():
    """Newcombe (1998), Stat. Med. 17:857, Table I, method 3 (score interval without continuity correction),
    to the four decimals printed there; and 8 of 10."""
    for (k, n), published in {(81, 263): (0.2553, 0.3662), (15, 148): (0.0624, 0.1605), (0, 20): (0.0, 0.1611),
                              (1, 29): (0.0061, 0.1718), (8, 10): (0.4902, 0.9433)}.items():
        assert tuple(round(x, 4) for x in wilson_interval(k, n)) == published, (k, n)


@pytest.mark.parametrize("n", [1, 2, 7, 10, 100, 1001])
def test_wilson_interval_is_symmetric_and_in_unit_interval(n):
    for k in range(0, n + 1, max(1, n // 10)):
        low, high = wilson_interval(k, n)
        mirrored_low, mirrored_high = wilson_interval(n - k, n)
        assert 0.0 <= low <= k / n <= high <= 1.0
        assert low == pytest.approx(1.0 - mirrored_high, abs=1e-12)
        assert high == pytest.approx(1.0 - mirrored_low, abs=1e-12)
    assert wilson_interval(0, n)[0] == 0.0 and wilson_interval(n, n)[1] == 1.0


def test_wilson_interval_narrows_with_n_and_widens_with_confidence():
    widths = [np.subtract(*wilson_interval(int(0.7 * n), n)[::-1]) for n in (10, 100, 1000, 10000)]
    assert all(a > b for a, b in zip(widths, widths[1:]))
    low_90, high_90 = wilson_interval(70, 100, confidence=0.90)
    low_99, high_99 = wilson_interval(70, 100, confidence=0.99)
    assert low_99 < low_90 and high_90 < high_99


@pytest.mark.parametrize("successes, n", [(0, 0), (3, 2), (-1, 5), (1.5, 5)])
def test_invalid_counts_raise(successes, n):
    with pytest.raises(ValueError):
        wilson_interval(successes, n)
    with pytest.raises(ValueError):
        binomial_test(successes, n)


# ---------------------------------------------------------------- exact binomial test


def exact_p_value(k: int, n: int, p: Fraction) -> Fraction:
    """The definition, in exact rational arithmetic: the null probability of every outcome no more likely
    than the observed one (Hollander & Wolfe 1999), P(X = j) = C(n, j) p^j (1 - p)^(n - j)."""
    pmf = [math.comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(n + 1)]
    return sum(q for q in pmf if q <= pmf[k])


@pytest.mark.parametrize("n", [1, 2, 5, 10, 17, 40])
@pytest.mark.parametrize("p", [Fraction(1, 2), Fraction(1, 3), Fraction(1, 10), Fraction(3, 5), Fraction(9, 10)])
def test_binomial_test_is_the_exact_rational_p_value(n, p):
    for k in range(n + 1):
        assert binomial_test(k, n, float(p)) == pytest.approx(float(exact_p_value(k, n, p)), rel=1e-9, abs=1e-300), (k, n, p)


def test_binomial_test_hand_cases():
    assert binomial_test(5, 10) == 1.0  # the mode
    assert binomial_test(0, 10) == pytest.approx(2 / 2**10, rel=1e-12)  # {0, 10}
    assert binomial_test(9, 10) == pytest.approx(22 / 2**10, rel=1e-12)  # {0, 1, 9, 10}
    assert binomial_test(3, 10) == pytest.approx(352 / 2**10, rel=1e-12)  # 2 (1 + 10 + 45 + 120) / 1024
    # n = 5, p = 0.3: P(X = 0..5) = .16807 .36015 .3087 .1323 .02835 .00243
    assert binomial_test(3, 5, 0.3) == pytest.approx(0.1323 + 0.02835 + 0.00243, rel=1e-12)  # {3, 4, 5}
    assert binomial_test(0, 5, 0.3) == pytest.approx(0.16807 + 0.1323 + 0.02835 + 0.00243, rel=1e-12)  # {0, 3, 4, 5}
    assert binomial_test(1, 5, 0.3) == 1.0  # the mode


# ---------------------------------------------------------------- Table 1


def test_table1_rates_are_significant_at_assumed_sample_size():
    for dataset, rates in TABLE1_RATES.items():
        for rate in rates:
            row = preference_summary(round(rate * ASSUMED_JUDGMENTS), ASSUMED_JUDGMENTS)
            assert row["p_value"] < 1e-3, (dataset, rate, row)
            assert row["ci_low"] > 0.5 and row["ci_low"] <= row["rate"] <= row["ci_high"]
            assert set(row) == {"rate", "ci_low", "ci_high", "p_value", "wins", "n"}


def test_sample_size_matters_for_the_weakest_table1_rate():
    weakest = min(min(rates) for rates in TABLE1_RATES.values())  # NYU vs full-resolution, 65.8%
    assert weakest == 0.658
    # 50 judgments at 65.8% (33 wins) would not support "p < 1e-3" ...
    assert binomial_test(round(weakest * 50), 50) > 1e-3
    # ... and reaching it with 80% power takes well over 100 judgments (170 with this test).
    assert judgments_needed(weakest, alpha=1e-3, power=0.8) > 100


# ---------------------------------------------------------------- judgments_needed / power


def test_judgments_needed_is_the_first_n_reaching_the_power():
    for rate in (0.99, 0.9, 0.783, 0.658, 0.6, 0.35):
        n = judgments_needed(rate)
        assert binomial_power(n, rate) >= 0.8 > binomial_power(n - 1, rate), rate


def test_judgments_needed_decreases_with_true_rate_and_is_symmetric():
    needed = [judgments_needed(rate) for rate in (0.55, 0.6, 0.658, 0.7, 0.8, 0.9)]
    assert all(a > b for a, b in zip(needed, needed[1:]))
    assert judgments_needed(0.3) == judgments_needed(0.7)
    assert judgments_needed(0.658, power=0.9) > judgments_needed(0.658, power=0.8)
    assert judgments_needed(0.658, alpha=0.05) < judgments_needed(0.658, alpha=1e-3)


def test_exact_power_is_not_monotone_in_n():
    n = judgments_needed(0.658)
    later = [binomial_power(m, 0.658) for m in range(n, n + 10)]
    assert min(later) < 0.8  # the sawtooth: the documented "first n that reaches it" rule


def test_sustained_judgments_keep_the_power_from_then_on():
    # the brief's example: rate 0.9 at alpha 1e-3 reaches power 0.9 at n = 25, loses it at 26 and 27
    assert judgments_needed(0.9, power=0.9) == 25 and binomial_power(26, 0.9) < 0.9
    assert judgments_needed(0.9, power=0.9, sustained=True) == 28
    for rate in (0.99, 0.9, 0.783, 0.658, 0.35):
        first, n = judgments_needed(rate), judgments_needed(rate, sustained=True)
        assert first <= n and binomial_power(n - 1, rate) < 0.8, rate
        assert all(binomial_power(m, rate) >= 0.8 for m in range(n, 4 * first + 1)), rate
    with pytest.raises(ValueError, match="does not stay reached"):
        judgments_needed(0.9, power=0.9, max_n=26, sustained=True)


def test_judgments_needed_rejects_no_effect():
    with pytest.raises(ValueError):
        judgments_needed(0.5, max_n=10_000)


# ---------------------------------------------------------------- bootstrap


def test_bootstrap_percentile_mean_coverage():
    rng = np.random.default_rng(123)
    true_mean, repetitions, sample_size = 2.0, 300, 50
    samples = rng.normal(true_mean, 1.5, size=(repetitions, sample_size))
    intervals = np.array([bootstrap_mean_ci(s, seed=i) for i, s in enumerate(samples)])
    coverage = np.mean((intervals[:, 0] <= true_mean) & (true_mean <= intervals[:, 1]))
    assert 0.90 <= coverage <= 0.99, coverage


def test_bootstrap_is_deterministic_and_independent_of_vectorisation():
    values = np.random.default_rng(0).exponential(size=40)
    looped = bootstrap_ci(values, lambda i: values[i].mean(), seed=7)
    vectorised = bootstrap_ci(values, lambda i: values[i].mean(axis=-1), seed=7, vectorized=True)
    assert looped == pytest.approx(vectorised, rel=1e-12)
    assert bootstrap_mean_ci(values, seed=7) == pytest.approx(vectorised, rel=1e-12)
    assert bootstrap_mean_ci(values, seed=8) != bootstrap_mean_ci(values, seed=7)


def test_bootstrap_basic_reflects_percentile():
    values = np.random.default_rng(1).exponential(size=30)
    low, high = bootstrap_mean_ci(values, method="percentile")
    basic_low, basic_high = bootstrap_mean_ci(values, method="basic")
    assert basic_low == pytest.approx(2 * values.mean() - high, rel=1e-12)
    assert basic_high == pytest.approx(2 * values.mean() - low, rel=1e-12)


# Efron & Tibshirani (1993), An Introduction to the Bootstrap, Table 14.1: the spatial test scores A of
# 26 children; the statistic is the plug-in variance, 171.5. Table 14.2 gives its 90% intervals from
# B = 2000 resamples: percentile (100.8, 233.9), BCa (115.8, 259.6); Sec. 14.3: acceleration a = 0.061.
SPATIAL_A = np.array([48, 36, 20, 29, 42, 42, 20, 42, 22, 41, 45, 14, 6, 0, 33, 28, 34, 4, 32, 24, 47, 41, 24, 26, 30, 41.0])


def test_bootstrap_bca_reproduces_efron_tibshiranis_worked_example():
    assert SPATIAL_A.var() == pytest.approx(171.5, abs=0.05)
    jackknife = np.array([np.delete(SPATIAL_A, i).var() for i in range(len(SPATIAL_A))])
    d = jackknife.mean() - jackknife
    assert (d**3).sum() / (6 * (d**2).sum() ** 1.5) == pytest.approx(0.061, abs=5e-4)  # the book's a, from its formula
    statistic = lambda index: SPATIAL_A[index].var(axis=-1)  # noqa: E731
    bca = bootstrap_ci(len(SPATIAL_A), statistic, vectorized=True, num_resamples=40_000, confidence=0.9, method="bca")
    percentile = bootstrap_ci(len(SPATIAL_A), statistic, vectorized=True, num_resamples=40_000, confidence=0.9)
    # within the Monte Carlo error of the book's B = 2000 (about 2%); BCa's correction moves the lower end by ~15
    assert bca == pytest.approx((115.8, 259.6), rel=0.02)
    assert percentile == pytest.approx((100.8, 233.9), rel=0.03)
    assert bca[0] - percentile[0] > 10 and bca[1] - percentile[1] > 20


def test_bootstrap_bca_vectorised_jackknife_equals_the_loop():
    values = np.random.default_rng(2).exponential(size=40)
    ours = bootstrap_mean_ci(values, method="bca", num_resamples=4000)
    looped = bootstrap_ci(values, lambda i: values[i].mean(), method="bca", num_resamples=4000)
    assert ours == pytest.approx(looped, rel=1e-12)  # blocked vectorised jackknife == loop


def test_bootstrap_over_aligned_arrays_sums_then_scores():
    # Per-image confusion counts summed, then a ratio: the pattern used for dataset-level mIoU.
    rng = np.random.default_rng(4)
    hits = rng.integers(50, 100, size=25)
    totals = hits + rng.integers(0, 50, size=25)
    low, high = bootstrap_ci(len(hits), lambda i: hits[i].sum() / totals[i].sum())
    assert low < hits.sum() / totals.sum() < high


def test_bootstrap_degenerate_and_invalid():
    assert bootstrap_mean_ci(np.array([3.0])) == (3.0, 3.0)
    with pytest.raises(ValueError):
        bootstrap_mean_ci(np.array([]))
    with pytest.raises(ValueError):
        bootstrap_mean_ci(np.ones(5), method="studentized")


# ---------------------------------------------------------------- cluster bootstrap


def test_cluster_bootstrap_is_wider_under_within_cluster_correlation():
    rng = np.random.default_rng(5)
    num_clusters, per_cluster = 20, 10
    cluster_values = rng.normal(size=num_clusters)
    values = np.repeat(cluster_values, per_cluster)  # perfectly correlated inside a cluster
    clusters = np.repeat(np.arange(num_clusters), per_cluster)
    naive_low, naive_high = bootstrap_mean_ci(values)
    low, high = cluster_bootstrap_ci(values, clusters)
    assert low < values.mean() < high
    # Naive width shrinks like 1/sqrt(200), the honest one like 1/sqrt(20): ~3x wider.
    assert (high - low) > 2 * (naive_high - naive_low)
    # Equal cluster sizes and the mean: the same as the item bootstrap of the cluster means.
    assert (low, high) == pytest.approx(bootstrap_mean_ci(cluster_values), rel=1e-12)


def test_cluster_bootstrap_keeps_all_observations_of_a_cluster():
    # Unequal, interleaved clusters: each resample must hold whole clusters only.
    clusters = np.array(["w2", "w1", "w2", "w3", "w1", "w2"])
    values = np.array([20.0, 10.0, 21.0, 30.0, 11.0, 22.0])
    seen = []

    def statistic(observations):
        seen.append(observations)
        return observations.mean()

    cluster_bootstrap_ci(values, clusters, statistic, num_resamples=50, method="bca", min_clusters=3)
    whole = {"w1": [10.0, 11.0], "w2": [20.0, 21.0, 22.0], "w3": [30.0]}
    assert len(seen) > 50  # the full sample, the resamples and the leave-one-cluster-out jackknife
    for observations in seen:
        for members in whole.values():  # every member of a cluster appears equally often
            assert len({int(np.sum(observations == v)) for v in members}) == 1, observations


def test_cluster_bootstrap_needs_enough_clusters():
    # One worker: every resample is that worker, so a percentile interval would have zero width.
    values = np.array([1.0, 1.0, 0.0, 1.0, 0.0, 1.0])
    low, high = cluster_bootstrap_ci(values, np.zeros(6, dtype=int))
    assert np.isnan(low) and np.isnan(high)
    assert MIN_BOOTSTRAP_CLUSTERS == 5
    four, five = np.repeat(np.arange(4), 3), np.repeat(np.arange(5), 3)
    assert np.isnan(cluster_bootstrap_ci(np.arange(12.0), four)).all()  # below the minimum: not estimable
    low, high = cluster_bootstrap_ci(np.arange(15.0), five)
    assert low < 7.0 < high
    assert not np.isnan(cluster_bootstrap_ci(np.arange(12.0), four, min_clusters=4)).any()
    with pytest.raises(ValueError, match="min_clusters"):
        cluster_bootstrap_ci(values, np.arange(6), min_clusters=1)


# ---------------------------------------------------------------- crossed designs (docs/facts.md §6.3)


def _crossed_data(seed, participants=30, layouts=40, per=20, log_odds=0.8, participant_sd=0.6, layout_sd=0.6):
    """Outcomes of a logistic model with crossed normal random intercepts (the mixed model's own form)."""
    rng = np.random.default_rng(seed)
    u, v = rng.normal(0, participant_sd, participants), rng.normal(0, layout_sd, layouts)
    who = np.repeat(np.arange(participants), per)
    where = np.concatenate([rng.choice(layouts, per, replace=False) for _ in range(participants)])
    p = 1 / (1 + np.exp(-(log_odds + u[who] + v[where])))
    return (rng.random(len(p)) < p).astype(float), who, where


def test_crossed_logit_recovers_the_parameters_at_large_n():
    y, who, where = _crossed_data(0, participants=150, layouts=150, per=60, log_odds=0.8, participant_sd=0.7, layout_sd=0.4)
    fit = crossed_logit(y, who, where)
    assert fit["log_odds"] == pytest.approx(0.8, abs=3 * fit["se"]) and fit["se"] < 0.1
    assert fit["participant_sd"] == pytest.approx(0.7, abs=0.15) and fit["layout_sd"] == pytest.approx(0.4, abs=0.15)
    assert fit["odds_ratio"] == pytest.approx(math.exp(fit["log_odds"]))
    assert fit["rate_low"] < fit["rate"] < fit["rate_high"] and fit["odds_ratio_low"] < 1 < fit["odds_ratio"] or fit["odds_ratio_low"] > 1
    assert fit["reason"] == ""


def test_crossed_logit_without_clustering_is_the_plain_logit():
    """Where every participant and every layout has the same rate (7 of 10), the standard deviations are 0
    and the fit is the ordinary logistic intercept, log(70 / 30), with its Wald standard error."""
    who, where = np.divmod(np.arange(100), 10)
    y = ((who + where) % 10 < 7).astype(float)
    fit = crossed_logit(y, who, where)
    assert fit["participant_sd"] == pytest.approx(0, abs=1e-3) and fit["layout_sd"] == pytest.approx(0, abs=1e-3)
    assert fit["log_odds"] == pytest.approx(math.log(70 / 30), abs=1e-4)
    assert fit["se"] == pytest.approx(math.sqrt(1 / 70 + 1 / 30), rel=1e-3)


def test_crossed_logit_degenerate_and_invalid():
    all_won = crossed_logit(np.ones(20), np.arange(20) % 4, np.arange(20) % 5)
    assert math.isnan(all_won["odds_ratio"]) and "one way" in all_won["reason"]
    with pytest.raises(ValueError, match="0 or 1"):
        crossed_logit(np.array([0.5, 1.0]), [0, 1], [0, 1])
    with pytest.raises(ValueError, match="one participant and one layout per outcome"):
        crossed_logit(np.array([0.0, 1.0]), [0], [0, 1])


def test_crossed_bootstrap_is_wider_than_either_one_way_bootstrap():
    y, who, where = _crossed_data(1, participants=25, layouts=30, per=15, participant_sd=0.8, layout_sd=0.8)
    crossed = crossed_bootstrap_ci(y, who, where, num_resamples=500, seed=0)
    workers = cluster_bootstrap_ci(y, who, num_resamples=500, seed=0)
    images = cluster_bootstrap_ci(y, where, num_resamples=500, seed=0)
    width = lambda ci: ci[1] - ci[0]  # noqa: E731
    assert crossed[0] < y.mean() < crossed[1]
    assert width(crossed) > max(width(workers), width(images))
    assert crossed == crossed_bootstrap_ci(y, who, where, num_resamples=500, seed=0)  # seeded
    assert all(math.isnan(v) for v in crossed_bootstrap_ci(y, who % 4, where, num_resamples=50))  # 4 participants: too few


def test_fast_cluster_bootstrap_of_the_mean_equals_the_general_one():
    rng = np.random.default_rng(3)
    values, clusters = (rng.random(300) < 0.6).astype(float), rng.integers(0, 25, 300)
    for method in ("percentile", "basic", "bca"):
        fast = cluster_bootstrap_ci(values, clusters, method=method, num_resamples=300)
        general = cluster_bootstrap_ci(values, clusters, lambda v: v.mean(), method=method, num_resamples=300)
        assert fast == pytest.approx(general, abs=1e-12)


def test_bradley_terry_recovers_strengths_and_refuses_a_disconnected_graph():
    truth = np.array([1.5, 0.5, 0.0, -0.7, -1.3])
    wins = simulate_ranking(np.random.default_rng(0), truth, participants=400, pairs_per_participant=50).sum(axis=0)
    strengths = bradley_terry(wins)
    assert strengths.mean() == pytest.approx(0.0, abs=1e-9)
    assert strengths == pytest.approx(truth - truth.mean(), abs=0.1)
    cut = wins.copy()
    cut[:2, 2:] = cut[2:, :2] = 0  # items 0, 1 never meet 2, 3, 4
    with pytest.raises(ValueError, match=r"not connected: 2 separate groups of items \[\[2, 3, 4\], \[0, 1\]\]"):
        bradley_terry(cut)
    assert comparison_components(cut) == [[2, 3, 4], [0, 1]]


@pytest.mark.slow
def test_crossed_intervals_cover_the_truth_in_simulated_studies(capsys):
    """Simulated participants with their own bias and sensitivity, layouts with their own difficulty,
    laid out as the paper's design lays out its jobs (docs/facts.md §6.3): over 50 seeded studies the
    mixed model's 95% interval covers the population's mean log odds, and the crossed bootstrap's the
    population's mean rate, at least 90% of the time. The one-way intervals, Wilson's above all, ignore
    part of the clustering and cover less; their coverage is printed beside."""
    population = CrossedPopulation(log_odds=0.8, bias_sd=0.5, sensitivity_sd=0.3, difficulty_sd=0.5)
    truth_rate = population.true_rate()
    replicates, hits = 50, {"mixed model": 0, "crossed bootstrap": 0, "bootstrap over workers": 0,
                            "bootstrap over images": 0, "Wilson": 0}
    for r in range(replicates):
        data = population.sample(np.random.default_rng([2026, r]), participants=40, layouts=100, jobs=4)
        y, who, where = data["outcome"], data["participant"], data["layout"]
        fit = crossed_logit(y, who, where)
        hits["mixed model"] += fit["log_odds_low"] <= population.log_odds <= fit["log_odds_high"]
        for name, (low, high) in {
            "crossed bootstrap": crossed_bootstrap_ci(y, who, where, num_resamples=1000, seed=r),
            "bootstrap over workers": cluster_bootstrap_ci(y, who, num_resamples=1000, seed=r),
            "bootstrap over images": cluster_bootstrap_ci(y, where, num_resamples=1000, seed=r),
            "Wilson": wilson_interval(int(y.sum()), len(y)),
        }.items():
            hits[name] += low <= truth_rate <= high
    coverage = {name: count / replicates for name, count in hits.items()}
    with capsys.disabled():
        print(f"\ncoverage of 95% intervals over {replicates} simulated studies (40 participants x 25 judgments, 100 layouts "
              f"in 4 jobs): " + ", ".join(f"{name} {value:.0%}" for name, value in coverage.items()))
    assert coverage["mixed model"] >= 0.9 and coverage["crossed bootstrap"] >= 0.9
    assert coverage["Wilson"] < coverage["crossed bootstrap"]


@pytest.mark.slow
def test_the_ranking_recovers_the_true_order_at_large_n():
    truth = np.array([2.0, 1.0, 0.6, 0.2, -0.4, -1.5])  # real, crn and four baselines
    wins = simulate_ranking(np.random.default_rng(7), truth, participants=300, pairs_per_participant=60)
    fit = bradley_terry_bootstrap(wins, num_resamples=300, seed=0)
    assert list(np.argsort(-fit["strength"])) == list(range(len(truth)))
    assert fit["resamples"] == 300 and (fit["strength_low"] <= fit["strength"]).all() and (fit["strength"] <= fit["strength_high"]).all()
    assert list(fit["rank_low"]) == list(fit["rank_high"]) == list(range(1, len(truth) + 1))  # no overlap at this n


def _glmer(y, who, where, tmp_path):
    """lme4's glmer on the same data: (log odds, se, participant sd, layout sd)."""
    data = tmp_path / "judgments.csv"
    data.write_text("y,participant,layout\n" + "".join(f"{int(a)},p{b},l{c}\n" for a, b, c in zip(y, who, where)))
    script = ('suppressMessages(library(lme4)); d <- read.csv(commandArgs(TRUE)[1]); '
              'm <- glmer(y ~ 1 + (1 | participant) + (1 | layout), data = d, family = binomial); '
              'v <- VarCorr(m); cat(fixef(m), sqrt(diag(vcov(m))), attr(v$participant, "stddev"), attr(v$layout, "stddev"))')
    out = subprocess.run(["Rscript", "-e", script, str(data)], capture_output=True, text=True, check=True, timeout=120)
    return [float(v) for v in out.stdout.split()]


@pytest.mark.skipif(shutil.which("Rscript") is None, reason="R is not installed (apt-get install r-cran-lme4)")
@pytest.mark.parametrize("seed", [5, 6])
def test_crossed_logit_equals_lme4_glmer(tmp_path, seed):
    r = subprocess.run(["Rscript", "-e", "library(lme4)"], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip("R's lme4 is not installed (apt-get install r-cran-lme4)")
    y, who, where = _crossed_data(seed, participants=25, layouts=40, per=20, log_odds=0.6, participant_sd=0.7, layout_sd=0.5)
    fit = crossed_logit(y, who, where)
    log_odds, se, participant_sd, layout_sd = _glmer(y, who, where, tmp_path)
    assert fit["log_odds"] == pytest.approx(log_odds, abs=1e-3)
    assert fit["se"] == pytest.approx(se, rel=0.01)
    assert fit["participant_sd"] == pytest.approx(participant_sd, abs=2e-3)
    assert fit["layout_sd"] == pytest.approx(layout_sd, abs=2e-3)
