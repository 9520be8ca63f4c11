"""`study power`: judgments for p < alpha at a true rate (exact binomial power), and jobs of a design."""

import pytest
from typer.testing import CliRunner

from crn_repro import stats
from crn_repro.cli import app
from crn_repro.params import parse_params
from crn_repro.study.design import study_design
from crn_repro.study.power import DEFAULT_RATES, jobs_needed, power_table


def test_table_gives_the_first_n_that_reaches_the_power():
    rows = power_table(alpha=1e-3, power=0.9)
    assert [r["rate"] for r in rows] == list(DEFAULT_RATES)
    for row in rows:
        n = row["judgments"]
        assert row["power"] >= 0.9 and stats.binomial_power(n - 1, row["rate"], 1e-3) < 0.9
    by_rate = {r["rate"]: r["judgments"] for r in rows}
    assert by_rate[0.9] == 25 and by_rate[0.7] == 126
    assert all(a >= b for a, b in zip(list(by_rate.values()), list(by_rate.values())[1:]))  # fewer for clearer preferences


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
    assert "126" in result.output and "70%" in result.output
    result = CliRunner().invoke(app, ["study", "power", "--rate", "0.5"])
    assert result.exit_code == 1 and "error:" in result.output and "no preference" in result.output
