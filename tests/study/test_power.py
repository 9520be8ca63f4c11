"""`study power`: judgments for p < alpha at a true rate (exact binomial power), participants of the crossed design
(simulated), and a session's length and reward (docs/facts.md §6.4)."""

import math

import pandas as pd
import pytest
from typer.testing import CliRunner

from crn_repro import stats
from crn_repro.cli import app
from crn_repro.study.observer import CrossedPopulation
from crn_repro.study.power import (
    DEFAULT_RATES,
    READING_MINUTES,
    CrossedLayout,
    crossed_power,
    participants_needed,
    pay_estimate,
    pilot_session_minutes,
    power_table,
    simulated_session_minutes,
)


def test_table_gives_the_n_from_which_the_power_stays_reached():
    rows = power_table(alpha=1e-3, power=0.9)
    assert [r["rate"] for r in rows] == list(DEFAULT_RATES)
    for row in rows:
        n, first = row["judgments"], row["first"]
        assert row["power"] >= 0.9 and stats.binomial_power(n - 1, row["rate"], 1e-3) < 0.9
        assert all(stats.binomial_power(m, row["rate"], 1e-3) >= 0.9 for m in range(n, n + 2 * first))
        assert first <= n and stats.binomial_power(first, row["rate"], 1e-3) >= 0.9 > stats.binomial_power(first - 1, row["rate"], 1e-3)
    by_rate = {r["rate"]: r for r in rows}
    # rate 0.9: power 0.902 at 25 judgments, but 0.888 at 26 and 0.898 at 27; from 28 on it stays above 0.9
    assert (by_rate[0.9]["first"], by_rate[0.9]["judgments"]) == (25, 28)
    assert stats.binomial_power(26, 0.9, 1e-3) == pytest.approx(0.888, abs=1e-3)
    assert (by_rate[0.7]["first"], by_rate[0.7]["judgments"]) == (126, 131)
    needed = [r["judgments"] for r in rows]
    assert all(a >= b for a, b in zip(needed, needed[1:]))  # fewer for clearer preferences


def test_no_preference_cannot_be_detected():
    with pytest.raises(ValueError, match="no preference"):
        power_table((0.5,))


def test_cli_power_table(tmp_path):
    result = CliRunner().invoke(app, ["--params", str(tmp_path / "none.yaml"), "study", "power", "--rate", "0.7", "--power", "0.9"])
    assert result.exit_code == 0, result.output
    assert "131" in result.output and "126" in result.output and "70%" in result.output
    assert "every larger n keeps the power" in result.output
    result = CliRunner().invoke(app, ["study", "power", "--rate", "0.5"])
    assert result.exit_code == 1 and "error:" in result.output and "no preference" in result.output


@pytest.mark.parametrize("option", [["--rate", "0"], ["--rate", "1"], ["--rate", "-0.2"], ["--alpha", "0"], ["--power", "1.5"]])
def test_cli_power_refuses_values_outside_the_unit_interval(tmp_path, option):
    result = CliRunner().invoke(app, ["--params", str(tmp_path / "none.yaml"), "study", "power", *option])
    assert result.exit_code == 1, result.output
    assert f"error: study power: {option[0]} " in result.output and "must lie strictly between 0 and 1" in result.output
    assert len(result.output.strip().splitlines()) == 1 and "true rate" not in result.output  # no default table


def test_crossed_power_grows_with_participants_and_clustering_costs_power():
    layout = CrossedLayout(layouts=40, blocks=2, per_participant=20)
    population = CrossedPopulation(log_odds=math.log(0.75 / 0.25), bias_sd=0.5, difficulty_sd=0.5)
    powers = [crossed_power(population, layout, n, 1e-3, 40, seed=0) for n in (4, 8, 16)]
    assert powers[0] <= powers[1] <= powers[2] and powers[2] > 0.8
    n, reached = participants_needed(population, layout, 1e-3, 0.8, 40, seed=0, start=2)
    assert reached >= 0.8 and crossed_power(population, layout, n - 1, 1e-3, 40, seed=0) < 0.8
    plain = CrossedPopulation(log_odds=math.log(3), bias_sd=0.0, sensitivity_sd=0.0, difficulty_sd=0.0)
    assert participants_needed(plain, layout, 1e-3, 0.8, 40, seed=0, start=2)[0] <= n  # no clustering: no more needed


def test_pay_estimate_warns_below_prolifics_minimum():
    fine = pay_estimate(10.0, 9.0, "GBP", 6.0, stated_reward=1.5, stated_minutes=12)
    assert fine["reward"] == 1.5 and fine["warnings"] == []
    low = pay_estimate(10.0, 5.0, "GBP", 6.0, stated_reward=0.8, stated_minutes=8)
    assert low["reward"] == pytest.approx(0.84)
    assert [w.split(":")[0].split(" is ")[0] for w in low["warnings"]] == [
        "5.00 GBP/h", "the stated reward 0.80 GBP for a median 10.0-minute session", "the median session (10.0 min)"]
    assert "below Prolific's minimum of 6.00 GBP/h" in low["warnings"][0] and "raise study.consent.duration_minutes" in low["warnings"][2]


def test_session_minutes_simulated_and_from_a_pilot(tmp_path, tiny_raw, prepared_tiny):
    from study_data import fake_pipeline

    from crn_repro.study.make import make_study

    params = fake_pipeline(tmp_path / "run", tiny_raw, prepared_tiny[1].paths.prepared)
    manifest = make_study(params, design="timed")
    trials = len(manifest["jobs"][0]["trials"])
    minutes = simulated_session_minutes(manifest)
    assert READING_MINUTES + trials * 1.0 / 60 < minutes < READING_MINUTES + trials * 10.0 / 60
    longer = dict(manifest, jobs=[dict(j, trials=j["trials"] * 2) for j in manifest["jobs"]])
    assert simulated_session_minutes(longer) > minutes

    job = manifest["jobs"][0]
    rows = [{"source": "web", "participant": p, "job": job["job"], "trial": t["index"], "response_ms": 1000.0,
             "answered_utc": f"2026-01-01T10:{p * 20 + i // 6:02d}:{(i % 6) * 10:02d}Z"}
            for p in range(2) for i, t in enumerate(job["trials"])]
    rows += [{"source": "web", "participant": 9, "job": job["job"], "trial": 0, "response_ms": 1.0, "answered_utc": "2026-01-01T11:00:00Z"}]
    median, finished = pilot_session_minutes(pd.DataFrame(rows), manifest)  # the unfinished participant 9 does not count
    assert finished == 2 and median == pytest.approx((len(job["trials"]) - 1) * 10 / 60 + 1 / 60 + READING_MINUTES)
    with pytest.raises(ValueError, match="no participant of the pilot answered every trial"):
        pilot_session_minutes(pd.DataFrame(rows[-1:]), manifest)


def test_cli_power_simulates_the_design_and_prices_a_pilot(tmp_path, tiny_raw, prepared_tiny):
    import yaml
    from study_data import fake_pipeline

    from crn_repro.study.make import make_study

    params = fake_pipeline(tmp_path / "run", tiny_raw, prepared_tiny[1].paths.prepared)
    make_study(params, design="mixed")
    raw = dict(tiny_raw, paths={k: str(v) for k, v in vars(params.paths).items()}, models=list(params.models))
    raw["study"] = dict(raw["study"], dir=params.study.dir, design="mixed")
    raw["study"]["mixed"] = dict(raw["study"]["mixed"], test_pairs_per_job=6, sentinels_per_job=2)
    raw["study"]["consent"] = dict(raw["study"]["consent"], reward=0.05, duration_minutes=1)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    runner = CliRunner()
    result = runner.invoke(app, ["--params", str(path), "study", "simulate", params.study.dir, "-n", "3", "--via", "web",
                                 "--careless-fraction", "0"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["--params", str(path), "study", "power", "--rate", "0.85", "--replicates", "10",
                                 "--pilot", params.study.dir])
    assert result.exit_code == 0, result.output
    assert "session: median 1.5 minutes (3 simulated pilot participants); at 9.00 GBP/h the reward is 0.23 GBP" in result.output
    assert "warning: the stated reward 0.05 GBP for a median 1.5-minute session is" in result.output
    assert "below Prolific's minimum of 6.00: Prolific asks for adjustment payments" in result.output
    assert "warning: the median session (1.5 min) is longer than the stated 1 minutes" in result.output
    assert "the mixed design, simulated: participants per comparison" in result.output
    line = next(line for line in result.output.splitlines() if line.startswith("│ 85%") and line.count("│") == 6)
    participants = int(line.split("│")[2])
    assert participants >= 1 and "each participant gives a comparison 2 judgments over 5 layouts" in result.output
