"""The simulated observer: seeded, score-driven, noisier at short exposure, careless at random."""

import numpy as np
import pytest

from crn_repro.study.observer import (
    UNLIMITED_MS,
    Observer,
    is_careless,
    observer_factory,
)


def _trial(left: float, right: float) -> dict:
    return {"left": {"score": left}, "right": {"score": right}}


def _rate(observer: Observer, shown_ms, n=2000) -> float:
    """How often the better image (left, score +0.5) is chosen."""
    return np.mean([observer.choose(_trial(1.5, 1.0), shown_ms) == "left" for _ in range(n)])


def test_same_seed_same_answers():
    trials = [_trial(a, b) for a, b in np.random.default_rng(0).normal(size=(50, 2))]
    answers = [[Observer(7).choose(t, 250) for t in trials] for _ in range(2)]
    assert answers[0] == answers[1]
    assert answers[0] != [Observer(8).choose(t, 250) for t in trials]


def test_noiseless_observer_follows_the_score():
    observer = Observer(0, noise_sd_at_1s=0.0)
    assert observer.choose(_trial(2.0, 1.0), 125) == "left" and observer.choose(_trial(0.1, 0.3), None) == "right"


def test_longer_exposure_means_clearer_preference():
    observer = Observer(1, noise_sd_at_1s=0.5)
    assert observer.noise_sd(125) == pytest.approx(0.5 * np.sqrt(8))
    assert observer.noise_sd(None) == observer.noise_sd(UNLIMITED_MS)
    short, long = _rate(observer, 125), _rate(observer, 8000)
    assert 0.55 < short < 0.75 and long > 0.9  # Phi(0.5 / (sqrt(2) sd)): 0.65 at 125 ms, 0.92 at 8 s


def test_lapses_answer_at_random():
    assert 0.45 < _rate(Observer(2, noise_sd_at_1s=0.0, lapse_rate=1.0), 8000) < 0.55


def test_careless_participants_are_spread_exactly():
    assert [is_careless(i, 0.25) for i in range(8)] == [False, False, False, True] * 2
    assert sum(is_careless(i, 0.1) for i in range(30)) == 3 and not any(is_careless(i, 0.0) for i in range(30))
    make = observer_factory(0, careless_fraction=0.5)
    assert [make(i).lapse_rate for i in range(4)] == [0.0, 1.0, 0.0, 1.0]
    with pytest.raises(ValueError):
        observer_factory(0, careless_fraction=1.5)
