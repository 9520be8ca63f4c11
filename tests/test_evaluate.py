"""The evaluate and report stages on a tiny pipeline: metrics with intervals and protocols, the
preference table from the automatic judge or from human judgments, and the self-contained HTML."""

import json
import re
import time

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from crn_repro.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from conftest import tiny_raw_params

    root = tmp_path_factory.mktemp("evaluate")
    raw = tiny_raw_params(root)
    raw["models"] = ["crn", "crn-diverse"]
    raw["crn-diverse"]["network"] = {"preset": None, "widths": [8, 8, 8], "num_outputs": 2}
    raw["segmenter"]["network"] = {"base_width": 4, "depth": 2, "max_width": 8}
    raw["evaluate"]["bootstrap_resamples"] = 20
    raw["synthetic"]["num_val"] = 5
    run_pipeline(root, raw)
    return root, raw


def run_pipeline(root, raw) -> None:
    """Write RAW as root/params.yaml and run every stage on it: prepare, train, synthesize, evaluate, report."""
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    steps = [["prepare"], ["train", "-m", "segmenter"]]
    for model in raw["models"]:
        steps += [["train", "-m", model], ["synthesize", "-m", model]]
    for command in steps + [["evaluate"], ["report"]]:
        result = runner.invoke(app, ["--params", str(params)] + command)
        assert result.exit_code == 0, (raw["data"]["dataset"], command, result.output)


def test_metrics_have_values_intervals_and_protocols(tiny_run):
    root, _ = tiny_run
    metrics = json.loads((root / "reports/metrics.json").read_text())
    assert set(metrics["models"]) == {"crn", "crn-diverse"}
    crn = metrics["models"]["crn"]
    for name in ("segmentation_miou", "segmentation_pixel_accuracy", "frechet_distance_segmenter", "realism_score", "colour_distance"):
        entry = crn[name]
        assert entry["ci_low"] <= entry["value"] <= entry["ci_high"] or entry["ci_low"] == entry["ci_high"], name
        assert len(entry["protocol"]) > 40
    assert "diversity" in metrics["models"]["crn-diverse"] and "diversity" not in crn
    assert "fid" not in crn  # no Inception weights configured: no FID, and no fake one
    per_image = pd.read_csv(root / "reports/per_image/crn.csv")
    assert len(per_image) == 5 and {"image", "pixel_accuracy", "realism_score"} <= set(per_image.columns)


def test_every_segmenter_score_names_its_judge(tiny_run):
    """The segmenter's weights digest goes with each score it computed, in metrics.json, the per-image
    tables and the headline metrics (`dvc exp show`'s judge column), and the report names it."""
    import torch

    from crn_repro.evaluate import weights_sha256
    from crn_repro.registry import load_segmenter

    root, _ = tiny_run
    metrics = json.loads((root / "reports/metrics.json").read_text())
    segmenter = load_segmenter(root / "runs/segmenter/model.pt", torch.device("cpu"), (16, 32))
    sha = weights_sha256(segmenter)
    assert metrics["judge"]["weights_sha256"] == sha and metrics["judge"]["id"] == sha[:12]
    for model, entry in metrics["models"].items():
        for name in ("segmentation_miou", "segmentation_pixel_accuracy", "frechet_distance_segmenter", "realism_score"):
            assert entry[name]["judge"] == sha[:12], (model, name)
        assert "judge" not in entry["colour_distance"]  # colours are measured, not judged
        assert json.loads((root / f"reports/headline/{model}.json").read_text())["judge"] == sha[:12]
        assert set(pd.read_csv(root / f"reports/per_image/{model}.csv").judge) == {sha[:12]}
    assert f"**Judge**: every segmenter-based score above" in (root / "reports/report.md").read_text()
    with torch.no_grad():
        next(segmenter.parameters())[0].add_(1e-6)  # another judge: another digest
    assert weights_sha256(segmenter) != sha


def test_report_flags_scores_of_different_judges():
    from crn_repro.report import judge_lines

    def entry(judge):
        return {"segmentation_miou": {"value": 0.5, "judge": judge}, "colour_distance": {"value": 3.0}}

    judge = {"id": "aaa", "file": "runs/segmenter/model.pt", "weights_sha256": "aaa0"}
    assert "`aaa` (`runs/segmenter/model.pt`, weights SHA-256 `aaa0`)" in judge_lines({"crn": entry("aaa"), "unet": entry("aaa")}, judge)[0]
    flagged = judge_lines({"crn": entry("aaa"), "unet": entry("bbb")}, judge)[0]
    assert flagged.startswith("**Scored by different judges, not comparable**") and "`bbb`: unet" in flagged
    assert judge_lines({"crn": {"colour_distance": {"value": 1.0}}}, {}) == []


def test_preference_table_says_automatic_proxy(tiny_run):
    root, _ = tiny_run
    table = pd.read_csv(root / "reports/preference.csv")
    assert list(table.baseline) == ["crn-diverse"]
    assert table.source[0] == "automatic proxy, not human judgments"
    assert table.n[0] <= 5 and 0 <= table.rate[0] <= 1
    report = (root / "reports/report.md").read_text()
    assert "automatic proxy judgments, not human judgments" in report


def test_report_html_is_self_contained(tiny_run):
    root, _ = tiny_run
    html = (root / "reports/report.html").read_text()
    assert html.count("data:image/png;base64,") >= 4
    assert 'src="figures/' not in html
    for name in ("qualitative", "legend", "diversity_crn-diverse", "training_curves", "metrics"):
        assert (root / f"reports/figures/{name}.png").stat().st_size > 1000, name
        assert (root / f"reports/figures/{name}.pdf").is_file(), name


def test_report_carries_tables_gallery_provenance_and_the_papers_numbers(tiny_run):
    root, _ = tiny_run
    reports = root / "reports"
    report = (reports / "report.md").read_text()
    assert "Produced by the code at git revision `" in report and "params.json" in report
    assert json.loads((reports / "params.json").read_text())["models"] == ["crn", "crn-diverse"]
    for name in ("runs", "preference", "metrics", "memory", "published_automatic"):
        csv = pd.read_csv(reports / "tables" / f"{name}.csv")
        assert len(csv), name
        tex = (reports / "tables" / f"{name}.tex").read_text()
        assert tex.startswith("\\begin{tabular}") and "\\bottomrule" in tex, name
    preference = pd.read_csv(reports / "tables/preference.csv")
    assert "paper (cityscapes)" in preference.columns  # the synthetic city stands in for Cityscapes
    assert "52.4" in report and "Park et al. 2019 (SPADE)" in report  # published scores, in their own section
    index = (reports / "gallery/index.html").read_text()
    assert 'href="crn.html"' in index and 'href="crn-diverse.html"' in index
    page = (reports / "gallery/crn-diverse.html").read_text()
    names = json.loads((root / "data/prepared/val/names.json").read_text())
    assert page.count("<tr>") == len(names) + 1  # the header and every validation layout
    assert "u = 1" in page and "inputs/" in page
    pages = [reports / "gallery" / "index.html", *(reports / "gallery").glob("*.html"), *(reports / "gallery/layouts").glob("*.html")]
    assert len(list((reports / "gallery/layouts").glob("*.html"))) == len(names)  # a page per layout
    for path in pages:  # every image and page a gallery page points to is in the report's folder
        for target in re.findall(r'(?:src|href)="([^"]+)"', path.read_text()):
            resolved = (path.parent / target).resolve()
            assert resolved.is_file() and resolved.is_relative_to(reports.resolve()), (path.name, target)
    layout = (reports / "gallery/layouts" / f"{names[0]}.html").read_text()
    assert all(f'href="../{model}.html"' in layout for model in ("crn", "crn-diverse"))  # every model, side by side
    assert "crn-diverse: all" in layout and "dvc repro" in layout  # the k outputs; how to get the full-size PNGs
    for target in re.findall(r"\]\(([^)]+)\)", report):  # the report's own links stay in the report's folder too
        assert (reports / target).resolve().exists() and (reports / target).resolve().is_relative_to(reports.resolve()), target


def test_report_rerun_rewrites_identical_figures(tiny_run):
    """Unchanged results give byte-identical figures (the PDFs carry no creation date), so a rerun of the
    report changes no file that users version."""
    root, _ = tiny_run
    figures = sorted((root / "reports/figures").iterdir())
    before = {path.name: path.read_bytes() for path in figures}
    assert any(name.endswith(".pdf") for name in before)
    time.sleep(1.1)  # a creation date (seconds) would now differ
    result = runner.invoke(app, ["--params", str(root / "params.yaml"), "report"])
    assert result.exit_code == 0, result.output
    assert {path.name: path.read_bytes() for path in sorted((root / "reports/figures").iterdir())} == before


def test_human_judgments_replace_the_proxy(tiny_run, tmp_path):
    root, raw = tiny_run
    judgments = tmp_path / "judgments.csv"
    rows = [{"model_a": "crn", "model_b": "crn-diverse", "winner": "crn"}] * 9 + [
        {"model_a": "crn-diverse", "model_b": "crn", "winner": "crn-diverse"}
    ]
    pd.DataFrame(rows).to_csv(judgments, index=False)
    raw = dict(raw, evaluate=dict(raw["evaluate"], human_judgments=str(judgments)))
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    result = runner.invoke(app, ["--params", str(params), "evaluate"])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(root / "reports/preference.csv")
    assert table.source[0] == "human judgments"
    assert (table.wins[0], table.n[0]) == (9, 10)
    assert table.p_value[0] == pytest.approx(0.021484375)  # exact two-sided binomial, 9 of 10


def test_missing_synthesis_is_a_clear_error(tiny_run, tmp_path):
    _, raw = tiny_run
    raw = dict(raw, paths=dict(raw["paths"], synth=str(tmp_path / "nothing")))
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    result = runner.invoke(app, ["--params", str(params), "evaluate"])
    assert result.exit_code == 1 and "run `crn-repro synthesize --model crn`" in result.output


def test_timed_judgments_give_fig3_curves(tiny_run, tmp_path):
    root, raw = tiny_run
    rows = []
    for duration, wins in ((125, 6), (1000, 9)):
        rows += [{"model_a": "crn", "model_b": "crn-diverse", "winner": "crn", "duration_ms": duration}] * wins
        rows += [{"model_a": "crn", "model_b": "crn-diverse", "winner": "crn-diverse", "duration_ms": duration}] * (10 - wins)
    rows += [{"model_a": "crn", "model_b": "crn-diverse", "winner": "crn", "duration_ms": None}] * 3
    judgments = tmp_path / "judgments.csv"
    pd.DataFrame(rows).to_csv(judgments, index=False)
    raw = dict(raw, evaluate=dict(raw["evaluate"], human_judgments=str(judgments)))
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    for command in (["evaluate"], ["report"]):
        result = runner.invoke(app, ["--params", str(params)] + command)
        assert result.exit_code == 0, result.output
    curves = pd.read_csv(root / "reports/time_curves.csv")
    assert list(curves.duration_ms) == [125, 1000] and list(curves.wins) == [6, 9]
    assert list(curves["first"]) == ["crn", "crn"]
    table = pd.read_csv(root / "reports/preference.csv")
    assert (table.wins[0], table.n[0]) == (3, 3)  # Table 1 counts the unlimited-time judgments only
    assert (root / "reports/figures/time_curves.png").stat().st_size > 1000


def test_table_baselines_are_chosen_and_checked(tiny_run, tmp_path):
    from crn_repro.errors import CrnError
    from crn_repro.evaluate import table_baselines
    from crn_repro.params import parse_params

    _, raw = tiny_run
    raw = dict(raw, evaluate=dict(raw["evaluate"], baselines=[]))
    assert table_baselines(parse_params(raw)) == []  # e.g. crn alone at 1024p: no Table 1
    raw["evaluate"]["baselines"] = ["pix2pix"]  # a paper baseline this run did not train
    with pytest.raises(CrnError, match="evaluate.baselines: 'pix2pix' is not one of the other models"):
        table_baselines(parse_params(raw))


def test_report_shows_too_few_clusters_as_n_a():
    """A comparison with one worker has no worker-bootstrap interval (stats.MIN_BOOTSTRAP_CLUSTERS): the table
    keeps both bootstrap columns (the image bootstrap exists) and says n/a, never "nan"."""
    from crn_repro.report import markdown, preference_table

    nan = float("nan")
    table = pd.DataFrame([{"baseline": "pix2pix", "rate": 0.7, "ci_low": 0.4, "ci_high": 0.9, "p_value": 0.34, "n": 10,
                           "boot_workers_low": nan, "boot_workers_high": nan, "boot_images_low": 0.5, "boot_images_high": 0.9}])
    head, _, row = markdown(preference_table(table, "cityscapes"))
    assert "95% bootstrap, workers" in head and "95% bootstrap, images" in head
    assert row == "| pix2pix | 70.0% | 40.0% - 90.0% | n/a | 50.0% - 90.0% | 0.340 | 10 | 96.9% |"
    no_boot = table.assign(boot_images_low=nan, boot_images_high=nan)  # e.g. the automatic judge: no columns at all
    assert "bootstrap" not in markdown(preference_table(no_boot, "nyu"))[0]
    assert markdown(preference_table(no_boot, "nyu"))[2].endswith("| 77.2% |")  # NYU's own row of Table 1


def test_lpips_diversity_with_the_backbone_file_and_missing_without_it(tiny_run, tmp_path):
    import shutil

    import torch
    import torchvision

    root, raw = tiny_run
    work = tmp_path / "work"
    shutil.copytree(root, work)
    raw = json.loads(json.dumps(raw).replace(str(root), str(work)))
    metrics = json.loads((work / "reports/metrics.json").read_text())
    assert any("LPIPS" in m["metric"] and "alexnet-owt-7be5be79.pth" in m["needs"] for m in metrics["missing"])
    assert any("FID" in m["metric"] for m in metrics["missing"])
    report = (work / "reports/report.md").read_text()
    assert "**Missing metrics**" in report and "alexnet-owt-7be5be79.pth" in report
    backbone = tmp_path / "alexnet-owt-7be5be79.pth"
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), backbone)
    raw["evaluate"]["lpips_backbone"] = str(backbone)
    (work / "params.yaml").write_text(yaml.safe_dump(raw))
    result = runner.invoke(app, ["--params", str(work / "params.yaml"), "evaluate"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((work / "reports/metrics.json").read_text())
    # 16x32 is below AlexNet's smallest input: reported missing with the reason, not computed some other way
    assert "diversity_lpips" not in metrics["models"]["crn-diverse"]
    assert any("LPIPS" in m["metric"] and "at least 32x32" in m["needs"] for m in metrics["missing"])


def test_human_judgments_count_only_for_the_current_images(tiny_run, tmp_path):
    """Judgments carry the hashes of what their images were made from (`study analyze`); evaluate keeps those
    of the current synthesized images, says how many it dropped, and refuses when none is current."""
    from pathlib import Path

    from crn_repro.datasets import PreparedSplit
    from crn_repro.evaluate import current_sources
    from crn_repro.params import parse_params

    root, raw = tiny_run
    params = parse_params(raw, "params")
    val = PreparedSplit(Path(params.paths.prepared), "val")
    source = current_sources(params, val)
    rows = []
    for i, layout in enumerate(val.names * 2):
        stale = i < 3  # judged before the models were trained again
        rows.append({"model_a": "crn", "model_b": "crn-diverse", "winner": "crn" if i % 4 else "crn-diverse",
                     "participant": f"web:p{i % 5}", "layout": layout, "source": "web", "kind": "test",
                     "source_a": "e" * 64 if stale else source("crn", layout), "source_b": source("crn-diverse", layout),
                     "study_build": "demo@2026-01-01T00:00:00Z/0123456789ab"})
    rows.append({**rows[-1], "model_a": "real", "winner": "real", "kind": "sentinel", "source_a": source("real", val.names[0]),
                 "layout": val.names[0], "source_b": source("crn-diverse", val.names[0])})
    judgments = tmp_path / "judgments.csv"
    pd.DataFrame(rows).to_csv(judgments, index=False)
    raw = dict(raw, evaluate=dict(raw["evaluate"], human_judgments=str(judgments)))
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw))
    result = runner.invoke(app, ["--params", str(params_file), "evaluate"])
    assert result.exit_code == 0, result.output
    assert "human judgments: 3 judged images that are no longer the synthesized ones and are left out (study build " \
           "demo@2026-01-01T00:00:00Z/0123456789ab)" in result.output
    table = pd.read_csv(root / "reports/preference.csv")
    assert table.n[0] == 2 * len(val.names) - 3 and table.dropped[0] == 3  # the sentinel is no Table 1 judgment
    assert table.study_build[0] == "demo@2026-01-01T00:00:00Z/0123456789ab" and table.odds_ratio.notna()[0]
    ranked = pd.read_csv(root / "reports/ranking.csv")
    assert set(ranked.item) == {"real", "crn", "crn-diverse"} and ranked.note.isna().all()  # the sentinel links real
    result = runner.invoke(app, ["--params", str(params_file), "report"])
    assert result.exit_code == 0, result.output
    report = (root / "reports/report.md").read_text()
    assert ("Study build: **demo@2026-01-01T00:00:00Z/0123456789ab**; 3 judgments of images that are no longer the "
            "synthesized ones were left out.") in report
    assert "| mixed model [95%] | odds ratio [95%] |" in report and "95% bootstrap, both" in report
    assert "### Ranking (Bradley-Terry)" in report and "| rank | item | strength (log) |" in report

    pd.DataFrame([dict(r, source_a="e" * 64) for r in rows]).to_csv(judgments, index=False)
    result = runner.invoke(app, ["--params", str(params_file), "evaluate"])
    assert result.exit_code == 1 and f"all {len(rows)} judgments judged images that are no longer the synthesized ones" in result.output
    assert "crn-repro study make --out studies/NEW" in result.output and "evaluate.human_judgments: null" in result.output


def test_evaluate_runs_with_tf32_off_and_restores_it(tiny_params, monkeypatch):
    """Training turns TF32 on (runtime.setup_runtime); evaluate's scorers run with it off, and the caller's
    settings come back after, also when evaluation stops with an error."""
    import torch

    from crn_repro import evaluate as E
    from crn_repro.errors import CrnError

    seen = []

    def load_scorers(params, val):
        seen.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))
        raise CrnError("stop here")

    monkeypatch.setattr(E, "PreparedSplit", lambda *args: None)
    monkeypatch.setattr(E, "load_scorers", load_scorers)
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        with pytest.raises(CrnError, match="stop here"):
            E.evaluate(tiny_params)
        assert seen == [(False, False)]
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (True, True)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_drn_sees_the_upsampled_images_as_saved_8_bit_images():
    """The upsampled variant segments what a saved 1024x2048 PNG of the upsampled image would hold: the
    bilinear result rounded to integers in 0..255 (here 8x16 -> 16x32)."""
    from types import SimpleNamespace

    import numpy as np
    import torch
    import torch.nn.functional as F

    from crn_repro.datasets import image_to_tensor, tensor_to_image
    from crn_repro.evaluate import Scored, _drn_confusions

    inputs = []

    def drn(images):
        inputs.append(images)
        return torch.zeros(len(images), 19, *images.shape[-2:])

    fake = torch.rand(2, 3, 8, 16, generator=torch.Generator().manual_seed(0)) * 255
    val = SimpleNamespace(labels_full=np.zeros((2, 16, 32), np.uint8))
    got = Scored()
    _drn_confusions(drn, fake, torch.zeros(2, 8, 16, dtype=torch.long), val, np.arange(2), got)
    assert len(got.drn_conf) == len(got.drn_conf_full) == 2
    upsampled = F.interpolate(fake, size=(16, 32), mode="bilinear", align_corners=False)
    saved = image_to_tensor(tensor_to_image(upsampled))  # written as a PNG and read back
    assert torch.equal(inputs[1], saved)
    assert not torch.equal(inputs[1], upsampled)  # rounding happened
    assert torch.equal(inputs[0], fake)  # the synthesis-size variant: the images as they are


def test_missing_evaluation_weights_files_are_missing_metrics_and_the_report_is_written(tiny_run):
    """README: a missing evaluation weights file "is reported as a missing metric, with its name and source"
    (issue 21: an absent Inception file used to stop `evaluate`). Inception (FID/KID) and AlexNet (LPIPS)
    named in params, neither file there: evaluate and report succeed and both name each metric, file and source."""
    root, raw = tiny_run
    raw = json.loads(json.dumps(raw))
    raw["paths"]["reports"] = str(root / "reports-missing")
    raw["evaluate"].update(inception="pytorch-fid", inception_path=str(root / "data/weights/pt_inception-2015-12-05-6726825d.pth"),
                           lpips_backbone=str(root / "data/weights/alexnet-owt-7be5be79.pth"))
    params = root / "params-missing.yaml"
    params.write_text(yaml.safe_dump(raw))
    for command in (["evaluate"], ["report"]):
        result = runner.invoke(app, ["--params", str(params)] + command)
        assert result.exit_code == 0, (command, result.output)
    metrics = json.loads((root / "reports-missing/metrics.json").read_text())
    assert "fid" not in metrics["models"]["crn"] and "kid" not in metrics["models"]["crn"]
    missing = {m["metric"]: m for m in metrics["missing"]}
    fid = missing["FID and KID (Inception-v3 pool3, pytorch-fid weights)"]
    assert "pt_inception-2015-12-05-6726825d.pth (not found)" in fid["needs"] and "mseitzer/pytorch-fid" in fid["from"]
    lpips = missing["diversity with LPIPS (learned weights, AlexNet backbone)"]
    assert "alexnet-owt-7be5be79.pth (not found)" in lpips["needs"] and "download.pytorch.org" in lpips["from"]
    report = (root / "reports-missing/report.md").read_text()
    for m in metrics["missing"]:
        assert f"- {m['metric']}: needs {m['needs']}; from {m['from']}" in report


WEIGHTS_KEYS = {  # evaluate key naming a weights file -> the missing metric's name in metrics.json
    "inception_path": "FID and KID",
    "drn_weights": "DRN-D-105",
    "lpips_backbone": "LPIPS",
}


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["cityscapes-256p", "cityscapes-512p", "cityscapes-1024p", "nyu"])
def test_every_preset_without_evaluation_weights_reports_them_missing(preset, tmp_path, tiny_raw):
    """Issue 21 item 7: each paper preset's evaluation settings (its weights files under data/weights/, none of
    them there) on a miniature dataset in the official layout: prepare, train, synthesize, evaluate and report
    all succeed, and the report names every missing metric with its file and source. The tiny sizes, networks,
    schedule and random VGG-19 (a training weight, which a user must have to train at all) are the test's; the
    dataset and `evaluate` settings are the preset's."""
    from cityscapes_fixture import TRAIN_CITIES, VAL_CITIES, write_cityscapes
    from nyu_fixture import write_nyu_mat

    from crn_repro.presets import load_preset

    values = load_preset(preset)
    raw = tiny_raw
    evaluate = {k: values["evaluate"][k] for k in ("inception", "inception_path", "drn_weights", "lpips_backbone")}
    named = {k: v for k, v in evaluate.items() if k in WEIGHTS_KEYS and v}
    evaluate.update({k: str(tmp_path / v) for k, v in named.items()})  # data/weights/... of the run's folder: absent
    raw["evaluate"].update(evaluate, bootstrap_resamples=10)
    raw["models"] = ["crn", "crn-diverse"]  # a k > 1 model, so diversity (LPIPS) is asked for
    raw["crn-diverse"]["network"] = {"preset": None, "widths": [8, 8, 8], "num_outputs": 2}
    raw["segmenter"]["network"] = {"base_width": 4, "depth": 2, "max_width": 8}
    raw["data"]["dataset"] = values["data"]["dataset"]
    if raw["data"]["dataset"] == "cityscapes":
        write_cityscapes(tmp_path / "cs", {"train": dict(zip(TRAIN_CITIES, (2, 2, 1))), "val": dict(zip(VAL_CITIES, (3, 2)))})
        raw["paths"]["raw"] = str(tmp_path / "cs")  # 5 val frames: the realism score's k = 3 needs 4 real ones
        raw["cityscapes"].update(root=str(tmp_path / "cs"), expected_train=5, expected_val=5, frame_size_hw=[32, 64],
                                 **{k: values["cityscapes"][k] for k in ("keep_full_resolution_val_labels", "labels")})
    else:
        write_nyu_mat(tmp_path / "nyu.mat", 10, hw=(48, 64), num_raw_classes=12, seed=3)
        raw["paths"]["raw"] = str(tmp_path)
        raw["nyu"].update(path=str(tmp_path / "nyu.mat"), num_frames=10, num_train=5, frame_size_hw=[48, 64], num_classes=5,
                          class_mapping=None)
    run_pipeline(tmp_path, raw)
    metrics = json.loads((tmp_path / "reports/metrics.json").read_text())
    report = (tmp_path / "reports/report.md").read_text()
    assert named  # every paper preset names evaluation weights
    for key, path in named.items():
        entry = next(m for m in metrics["missing"] if WEIGHTS_KEYS[key] in m["metric"])
        assert f"{tmp_path / path} (not found)" in entry["needs"] and entry["from"], (key, entry)
        assert f"- {entry['metric']}: needs {entry['needs']}; from {entry['from']}" in report


def test_a_proxy_that_fails_its_calibration_decides_no_table_and_the_report_says_so():
    from crn_repro.evaluate import withhold_uncalibrated
    from crn_repro.judgments import preference_tables
    from crn_repro.report import calibration_lines

    table = preference_tables("crn", ["unet"], {"crn": np.array([2.0, 1.0, 3.0]), "unet": np.array([1.0, 2.0, 1.0])})["preference"]
    failed = {"passes": False, "overall": 0.5, "threshold": 0.9, "pairs": {"real>slight": 0.5}, "protocol": "p"}
    assert withhold_uncalibrated(table, {"passes": True}).rate[0] == 2 / 3
    withheld = withhold_uncalibrated(table, failed)
    assert withheld.rate.isna().all() and withheld.source[0].startswith("none: the automatic proxy failed its calibration")
    assert "**fails: the automatic Table 1 is withheld**" in calibration_lines(failed)[0]
    assert "passes" in calibration_lines({**failed, "passes": True, "overall": 0.95})[0]


def test_the_proxy_calibration_is_in_metrics_and_report(tiny_run):
    root, _ = tiny_run
    calibration = json.loads((root / "reports/metrics.json").read_text())["proxy_calibration"]
    assert calibration["passes"] is None and "not calibrated" in calibration["note"]  # 5 images: too few
    assert "**Realism proxy**: not calibrated" in (root / "reports/report.md").read_text()
