"""Multi-process training with the real torchrun (2 CPU processes, gloo), launched the way `dvc repro`
does it: `crn-repro train` with train.processes: 2 relaunches itself under `torchrun --standalone`.

2 processes x batch b compute what 1 process x batch 2b does (the global batch of a step is split over
the processes, and DDP averages their gradients), and an interrupted DDP run resumes exactly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from crn_repro.checkpoint import load_training_state

pytestmark = pytest.mark.slow


def _train(raw: dict, folder: Path, *args: str, **train) -> subprocess.CompletedProcess:
    raw = dict(raw, train=dict(raw["train"], **train))
    raw["paths"] = dict(raw["paths"], runs=str(folder))
    params = folder.with_suffix(".yaml")
    params.write_text(yaml.safe_dump(raw))
    return subprocess.run(
        [sys.executable, "-m", "crn_repro", "--params", str(params), "train", "--model", "crn", *args],
        capture_output=True, text=True, timeout=600,
    )


def _state(folder: Path) -> dict:
    return load_training_state(folder / "crn" / "state.pt")


@pytest.fixture
def raw(prepared_tiny, tiny_raw):
    root, _ = prepared_tiny
    tiny_raw["paths"]["prepared"] = str(root / "data/prepared")
    tiny_raw["train"].update(total_steps=4, checkpoint_every_steps=2, log_every_steps=1)
    return tiny_raw


def test_two_processes_compute_what_one_process_with_twice_the_batch_does(raw, tmp_path):
    one = _train(raw, tmp_path / "one", batch_size_per_process=2, processes=1)
    assert one.returncode == 0, one.stderr
    two = _train(raw, tmp_path / "two", batch_size_per_process=1, processes=2)
    assert two.returncode == 0, two.stderr
    summary = yaml.safe_load((tmp_path / "two/crn/summary.json").read_text())
    assert summary["processes"] == 2 and summary["batch_size"] == 2 and summary["batch_size_per_process"] == 1
    assert summary["device"] == "cpu x2"
    a, b = _state(tmp_path / "one"), _state(tmp_path / "two")
    assert a["fingerprint"] == b["fingerprint"]  # the same global batches: either can resume the other
    for key in a["nets"]["G"]:
        torch.testing.assert_close(a["nets"]["G"][key], b["nets"]["G"][key], rtol=1e-4, atol=1e-5, msg=key)
    torch.testing.assert_close(a["objective"]["loss.lambdas"], b["objective"]["loss.lambdas"], rtol=1e-6, atol=0)
    # the logged losses are the global batch's (averaged over the processes), as one process logs them
    logged = {run: yaml.safe_load((tmp_path / run / "crn/summary.json").read_text())["final_losses"] for run in ("one", "two")}
    assert logged["one"].keys() == logged["two"].keys() and "G/total" in logged["one"]
    for key, value in logged["one"].items():
        assert logged["two"][key] == pytest.approx(value, rel=1e-4), key


def test_an_interrupted_ddp_run_resumes_exactly(raw, tmp_path):
    whole = _train(raw, tmp_path / "whole", batch_size_per_process=1, processes=2)
    assert whole.returncode == 0, whole.stderr
    first = _train(raw, tmp_path / "split", "--until-step", "2", batch_size_per_process=1, processes=2)
    assert first.returncode == 0, first.stderr
    assert _state(tmp_path / "split")["step"] == 2
    second = _train(raw, tmp_path / "split", batch_size_per_process=1, processes=2)
    assert second.returncode == 0, second.stderr
    assert "resuming crn" in second.stderr and "at step 2" in second.stderr
    a, b = _state(tmp_path / "whole"), _state(tmp_path / "split")
    assert b["step"] == 4
    assert all(torch.equal(a["nets"]["G"][k], b["nets"]["G"][k]) for k in a["nets"]["G"])


def test_a_failing_worker_fails_the_command(raw, tmp_path):
    raw["crn"]["network"]["widths"] = [8, 8]  # wrong module count for 16x32: every worker stops with the error
    result = _train(raw, tmp_path / "bad", processes=2)
    assert result.returncode != 0
    assert "crn.network:" in result.stderr
