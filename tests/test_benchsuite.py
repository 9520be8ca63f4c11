"""`crn-repro bench --suite gpu`: the smoke run (every part at tiny sizes, on the CPU here) through the CLI
as documented, a failing part recorded while the others run, the refusal without CUDA, and the parity
comparison against hand-made loss curves."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from crn_repro import benchsuite
from crn_repro.benchsuite import agreement, drn_with_random_weights, smooth_image
from crn_repro.cli import app

REPO = Path(__file__).resolve().parents[1]
PARTS = ["crn-256p-bf16", "crn-256p-fp32", "crn-1024p-bf16", "crn-1024p-fp32", "pix2pix-256p-bf16",
         "crn-1024p-all-modules-checkpointed", "loss-parity", "drn-tf32"]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    shutil.copytree(REPO / "presets", tmp_path / "presets")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.slow
def test_the_smoke_suite_runs_every_part_and_writes_its_file(workdir):
    result = CliRunner().invoke(app, ["bench", "--suite", "gpu", "--smoke"])
    assert result.exit_code == 0, result.output
    files = list((workdir / "benchmarks" / "results").glob("*-suite-smoke.json"))
    assert len(files) == 1 and str(files[0].relative_to(workdir)) in result.output
    results = json.loads(files[0].read_text())
    assert sorted(results["parts"]) == sorted(PARTS) and results["failed"] == [] and results["smoke"] is True
    for name, size in zip(PARTS[:6], [(32, 64), (32, 64), (64, 128), (64, 128), (64, 128), (64, 128)]):
        part = results["parts"][name]
        assert part["timed_at_hw"] == list(size) == part["image_size_hw"], name  # measured at the size reported
        assert part["precision"] == ("float32" if name.endswith("fp32") else "bfloat16"), name
        assert part["train_step_s"]["n"] == 5 and part["train_step_s"]["iqr_s"] >= 0
        assert 0 < part["train_fraction_of_sustained_peak"] <= 1, name
        assert part["model"] == name.split("-")[0] and part["projection"] == "measured at the full size"
    assert results["parts"]["crn-1024p-all-modules-checkpointed"]["activation_checkpointing"] is True
    assert results["parts"]["crn-1024p-bf16"]["activation_checkpointing"] is False
    parity = results["parts"]["loss-parity"]
    assert parity["steps"] == 20 and len(parity["losses_device"]) == len(parity["losses_cpu"]) == 20
    assert parity["agree"] and parity["losses_device"] != [parity["losses_device"][0]] * 20  # it trained
    drn = results["parts"]["drn-tf32"]
    assert drn["argmax_flips"] == 0 and drn["classes_predicted"] > 1  # no TF32 on a CPU; scores vary
    for line in (f"{name}: " for name in PARTS):
        assert line in result.output


def test_a_failing_part_is_recorded_and_the_others_still_run(workdir, monkeypatch):
    monkeypatch.setattr(benchsuite, "plan", lambda smoke: [
        ("broken", "crn", dict(preset="cityscapes-256p", size_hw=(64, 128), precision="fp16"))])
    monkeypatch.setattr(benchsuite, "loss_parity", lambda smoke, device: {"compared": "x", "steps": 1, **agreement([1.0], [1.0])})
    monkeypatch.setattr(benchsuite, "drn_tf32", lambda smoke, device: {
        "image_size_hw": [8, 8], "tf32": "off", "argmax_flips": 0, "pixels": 64, "max_abs_logit_difference": 0.0})
    result = CliRunner().invoke(app, ["bench", "--suite", "gpu", "--smoke"])
    assert result.exit_code == 1
    assert "1 part(s) failed (broken); their errors and every other part's figures are in benchmarks/results/" in result.output
    path = next((workdir / "benchmarks" / "results").glob("*-suite-smoke.json"))
    results = json.loads(path.read_text())
    assert results["failed"] == ["broken"] and "fp16" in results["parts"]["broken"]["error"]
    assert results["parts"]["loss-parity"]["agree"] and "part_wall_s" in results["parts"]["drn-tf32"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_the_gpu_suite_without_cuda_says_how_to_run_the_smoke(workdir):
    result = CliRunner().invoke(app, ["bench", "--suite", "gpu"])
    assert result.exit_code == 1
    assert "no CUDA device here" in result.output and "crn-repro bench --suite gpu --smoke" in result.output
    assert not (workdir / "benchmarks").exists()


@pytest.mark.parametrize("argv, message", [
    (["--suite", "cpu"], "--suite cpu: the one suite is `gpu`"),
    (["--smoke"], "--smoke: goes with --suite gpu"),
])
def test_bench_suite_options_are_checked(workdir, argv, message):
    result = CliRunner().invoke(app, ["bench", *argv])
    assert result.exit_code == 1 and message in result.output


def test_agreement_of_loss_curves_by_hand():
    same = agreement([2.0, 1.5, 1.0], [2.0, 1.5, 1.0])
    assert same["agree"] and same["max_relative_difference"] == 0
    off = agreement([2.0, 1.5, 1.02], [2.0, 1.5, 1.0], tolerance=0.01)  # 2% at the last step
    assert not off["agree"] and off["max_relative_difference"] == pytest.approx(0.02)
    assert off["median_relative_difference"] == 0 and off["last_step_relative_difference"] == pytest.approx(0.02)
    assert not agreement([float("nan")] * 3, [1.0] * 3)["agree"]
    with pytest.raises(ValueError, match="loss curves of 2 and 3 steps"):
        agreement([1.0, 1.0], [1.0, 1.0, 1.0])


def test_the_drn_of_the_tf32_part_scores_like_a_network_not_a_constant():
    net = drn_with_random_weights(105)
    image = smooth_image((64, 128))
    assert image.eq(image.round()).all() and 0 <= image.min() and image.max() <= 255  # as a saved image
    with torch.no_grad():
        scores = net(image)
    assert torch.isfinite(scores).all() and scores.argmax(1).unique().numel() > 1
    conv = net.base[0][0]
    fan_out = conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.1)
