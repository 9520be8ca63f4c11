"""`crn-repro study ...` end to end on a tiny trained pipeline (paper Sec. 5.1): make a study, let
simulated participants answer it through the web app and through the MTurk CSV path, analyse it,
and see their judgments in the report's Table 1 and Fig. 3, labelled as simulated, never as human."""

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from crn_repro.cli import app

runner = CliRunner()


def _run(params, *command):
    result = runner.invoke(app, ["--params", str(params), *map(str, command)])
    assert result.exit_code == 0, (command, result.output)
    return result.output


@pytest.mark.parametrize("command", [["study"], ["study", "make"], ["study", "serve"], ["study", "export-mturk"],
                                     ["study", "analyze"], ["study", "power"], ["study", "simulate"], ["study", "preregister"]])
def test_help(command):
    result = runner.invoke(app, command + ["--help"])
    assert result.exit_code == 0 and "Usage" in result.output


def test_errors_are_one_line(tmp_path, tiny_raw):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_raw))
    result = runner.invoke(app, ["--params", str(params), "study", "analyze", str(tmp_path / "nowhere")])
    assert result.exit_code == 1 and "error:" in result.output and "build one with `crn-repro study make`" in result.output
    result = runner.invoke(app, ["--params", str(params), "study", "make"])  # tiny params: models [crn]
    assert result.exit_code == 1 and "no model besides the reference model" in result.output
    tiny_raw["models"] = ["crn", "image-space"]
    params.write_text(yaml.safe_dump(tiny_raw))
    result = runner.invoke(app, ["--params", str(params), "study", "make"])
    assert result.exit_code == 1 and "run `crn-repro prepare`" in result.output


@pytest.mark.slow
def test_study_end_to_end(tmp_path, tiny_raw):
    raw = tiny_raw
    raw["models"] = ["crn", "image-space"]
    raw["image-space"]["network"]["widths"] = [8, 8, 8]
    raw["segmenter"]["network"] = {"base_width": 4, "depth": 2, "max_width": 8}
    raw["evaluate"]["bootstrap_resamples"] = 20
    study = tmp_path / "studies" / "demo"
    raw["study"].update(dir=str(study), jobs=2, image_size_wh=[64, 32], bootstrap_resamples=50)
    raw["study"]["paper"].update(test_pairs_per_job=4, sentinels_per_job=2)  # 5 layouts: 2 jobs, 3 practice trials each
    raw["study"]["timed"].update(durations_ms=[125, 1000], pairs=[["real", "crn"], ["crn", "image-space"]],
                                 test_pairs_per_job=8, sentinels_per_job=2)
    raw["study"]["hype"].update(real_per_job=3, fake_per_job=3, sentinels_per_job=1)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    for command in (["prepare"], ["train", "-m", "segmenter"], ["train", "-m", "crn"], ["synthesize", "-m", "crn"],
                    ["train", "-m", "image-space"], ["synthesize", "-m", "image-space"], ["evaluate"]):
        _run(params, *command)

    # Table 1: the authors' design, answered through the web app and on (simulated) MTurk
    out = _run(params, "study", "make")
    assert "2 jobs" in out and "session: median" in out and "at 9.00 GBP/h the reward is" in out
    assert "registered demo (paper)" in _run(params, "study", "preregister", study)
    _run(params, "study", "export-mturk", study, study / "mturk", "--base-url", "https://example.org/demo")
    _run(params, "study", "simulate", study, "--participants", 5, "--via", "mturk", "--careless-fraction", 0.2)
    _run(params, "study", "simulate", study, "--participants", 3, "--via", "web", "--careless-fraction", 0)
    out = _run(params, "study", "analyze", study, "--mturk", study / "mturk" / "simulated_results.csv")
    assert f"evaluate.human_judgments={study}/analysis/judgments.csv" in out
    assert "only simulated participants answered (72 answers of 8 simulated participants)" in out  # 9 trials each
    assert "timed test answers left out" not in out  # unlimited time: nothing to measure
    assert "pre-registered" in out and "the analysis ran as registered" in out
    table = [line for line in out.splitlines() if "crn > image-space" in line]
    assert len(table) == 1 and len(table[0]) > 120 and "odds ratio" in out  # the whole table, not cut at 80 columns
    assert "Bradley-Terry ranking" in out and f"study build demo@" in out
    summary = pd.read_csv(study / "analysis" / "summary.csv")
    assert list(zip(summary["first"], summary["second"])) == [("crn", "image-space")]
    responses = pd.read_csv(study / "analysis" / "responses.csv")
    assert set(responses.source) == {"simulated-web", "simulated-mturk"} and len(responses) == 8 * 9
    assert (responses.kind == "practice").sum() == 8 * 3
    web = responses[responses.source == "simulated-web"]
    assert web.measured_ms.isna().all() and web.duration_ms.isna().all()
    exclusions = pd.read_csv(study / "analysis" / "exclusions.csv")
    excluded = int(exclusions.excluded.sum())
    assert excluded <= 1  # the one careless MTurk worker, unless it guessed both sentinels

    human = dict(raw, evaluate=dict(raw["evaluate"], human_judgments=str(study / "analysis" / "judgments.csv")))
    params.write_text(yaml.safe_dump(human))
    _run(params, "evaluate")
    _run(params, "report")
    table = pd.read_csv(tmp_path / "reports" / "preference.csv")
    assert table.source[0] == f"simulated participants ({8 - excluded}, {excluded} excluded), not human judgments"
    assert table.n[0] == 4 * (8 - excluded) and table.boot_workers_low[0] <= table.rate[0] <= table.boot_workers_high[0]
    report = (tmp_path / "reports" / "report.md").read_text()
    assert f"Source: **simulated participants ({8 - excluded}, {excluded} excluded), not human judgments**" in report
    assert "> These are **simulated participants, not human judgments**" in report and "human judgments (" not in report
    assert ("| baseline | preferred | 95% Wilson | 95% bootstrap, workers | 95% bootstrap, images | 95% bootstrap, both | "
            "mixed model [95%] | odds ratio [95%] | sd participant, layout | p | n |") in report
    assert "Study build: **demo@" in report and "### Ranking (Bradley-Terry)" in report and table.dropped[0] == 0
    assert "automatic proxy judgments" not in report

    # Fig. 3: the time-limited design, on MTurk
    timed = tmp_path / "studies" / "timed"
    _run(params, "study", "make", "--design", "timed", "--out", timed)
    _run(params, "study", "export-mturk", timed, timed / "mturk", "--base-url", "https://example.org/timed")
    _run(params, "study", "simulate", timed, "-n", 4, "--via", "mturk", "--careless-fraction", 0)
    out = _run(params, "study", "analyze", timed, "--mturk", timed / "mturk" / "simulated_results.csv")
    assert (f"0 timed test answers left out: on screen more than 1 frame(s) from the target, or not measured (0) -> "
            f"{timed}/analysis/mistimed.csv") in out
    # both designs in one report: Table 1 from the unlimited study, Fig. 3 from the timed one
    human["evaluate"]["human_judgments"] = [str(study / "analysis" / "judgments.csv"), str(timed / "analysis" / "judgments.csv")]
    params.write_text(yaml.safe_dump(human))
    _run(params, "evaluate")
    _run(params, "report")
    both = pd.read_csv(tmp_path / "reports" / "preference.csv")
    assert both.n[0] == table.n[0] and both.wins[0] == table.wins[0]  # timed answers stay out of Table 1
    people = set(pd.read_csv(study / "analysis" / "judgments.csv").participant) | set(
        pd.read_csv(timed / "analysis" / "judgments.csv").participant
    )  # distinct people over both studies (the simulated MTurk workers reuse their ids)
    assert both.source[0] == f"simulated participants ({len(people)}, {excluded} excluded), not human judgments"
    curves = pd.read_csv(tmp_path / "reports" / "time_curves.csv")
    assert set(zip(curves["first"], curves["second"])) == {("real", "crn"), ("crn", "image-space")}
    assert set(curves.duration_ms) == {125, 1000} and curves.n.sum() == 4 * 8
    assert (tmp_path / "reports" / "figures" / "time_curves.png").stat().st_size > 1000
    assert "### Time-limited judgments (paper Fig. 3)" in (tmp_path / "reports" / "report.md").read_text()

    # HYPE-infinity: one image at a time, answered real or fake through the web app by simulated observers
    hype = tmp_path / "studies" / "hype"
    _run(params, "study", "make", "--design", "hype", "--out", hype)
    _run(params, "study", "simulate", hype, "-n", 3, "--via", "web", "--careless-fraction", 0)
    _run(params, "study", "analyze", hype)
    fooled = pd.read_csv(hype / "analysis" / "hype.csv").set_index("model")
    answers = pd.read_csv(hype / "analysis" / "responses.csv")
    assert set(answers.chosen_side) <= {"real", "fake"} and len(set(answers.chosen_side)) == 2  # both answers occur
    assert {"crn", "image-space"} <= set(fooled.index)
    # real images score above every synthesized one, so attentive observers are rarely fooled, never always
    assert (fooled.loc[["crn", "image-space"], "hype_score"] < 0.5).all()

    # a study holding answers is not rebuilt by accident
    result = runner.invoke(app, ["--params", str(params), "study", "make"])
    assert result.exit_code == 1 and "already holds responses; pass --force" in result.output


def test_analyze_drops_simulated_answers_where_people_answered(tmp_path, tiny_raw):
    """`study simulate --via web` stores its participants as simulated in the same database as the lab's;
    once a person has answered, `study analyze` leaves the simulated ones out and says so in one line."""
    import json
    import urllib.request

    from study_web import write_study

    from crn_repro.study.server import make_server

    study = write_study(tmp_path / "lab", design="unlimited", jobs=1, tests_per_job=3, sentinels_per_job=1)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_raw))
    assert "marked simulated" in _run(params, "study", "simulate", study, "-n", 2, "--via", "web", "--careless-fraction", 0)
    out = _run(params, "study", "analyze", study)
    assert "only simulated participants answered (8 answers of 2 simulated participants)" in out
    assert "4 answers from 2 simulated participants" not in out and "8 answers from 2 simulated participants" in out

    def post(url, body):
        request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    manifest = json.loads((study / "manifest.json").read_text())
    with make_server(study, port=0) as server:  # a person in the lab, who gets the sentinel right
        joined = post(server.url + "/api/join", {"consent": True})
        creds, state = {"participant": joined["participant"], "token": joined["token"]}, joined["state"]
        for trial in manifest["jobs"][0]["trials"]:
            side = trial["correct"] or "left"
            state = post(server.url + "/api/answer", {**creds, "trial": trial["index"], "chosen_side": side,
                                                      "measured_ms": None, "response_ms": 900.0})
        assert state["status"] == "done"
    out = _run(params, "study", "analyze", study)
    dropped = [line for line in out.splitlines() if line.startswith("dropped ")]
    assert dropped == ["dropped 8 answers of 2 simulated participants (`study simulate`): real participants answered, "
                       "and only their answers are analysed"]
    assert "4 answers from 1 participants; 0 excluded" in out
    judgments = pd.read_csv(study / "analysis" / "judgments.csv")
    assert set(judgments.source) == {"web"} and judgments.participant.str.startswith("web:p-").all()
