"""`study power`: judgments for p < alpha at a true rate (exact binomial power), and jobs of a design."""

import pytest
from typer.testing import CliRunner

from crn_repro import stats
from crn_repro.cli import app
from crn_repro.params import parse_params
from crn_repro.study.design import study_design
from crn_repro.study.power import DEFAULT_RATES, jobs_needed, power_table


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


def test_jobs_per_design(tiny_raw):
    params = parse_params(tiny_raw, "params")
    timed = study_design(params.study, "timed", params.models)  # 105 pairs over 21 cells: 5 per cell and job
    assert jobs_needed(25, timed) == 5 and jobs_needed(26, timed) == 6


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
