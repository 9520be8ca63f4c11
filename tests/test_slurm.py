"""examples/slurm/train.sbatch and the "DVC stage waits for a cluster job" recipe of docs/multi-gpu.md, on a
real SLURM cluster started on this machine (tests/slurm_cluster.py: slurmctld and four slurmd, munge).

The script runs as written; the cluster has no GPUs, so the GPUs its #SBATCH line asks for are overridden at
submission (SBATCH_GPUS_PER_NODE=0, which sbatch reads before the script's lines), and each node then
runs one process on its CPUs."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

from conftest import REPO
from ddp import assert_same_weights, free_port, params_file, state
from workspace import ENV, clone, commit, run, tiny_params, write_params

pytestmark = pytest.mark.slow

NO_GPUS = {"SBATCH_GPUS_PER_NODE": "0"}


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A clone to submit from, with the README's virtual environment at .venv (the script activates it)."""
    work = clone(tmp_path_factory.mktemp("slurm-clone") / "repo")
    (work / ".venv").symlink_to(sys.prefix, target_is_directory=True)
    assert (work / ".venv/bin/activate").is_file(), "tests must run in a virtual environment (the README's)"
    return work


def _job_output(repo: Path, job: str) -> str:
    return "".join(f.read_text(errors="replace") for f in repo.glob(f"slurm-*-{job}.out"))


def test_sbatch_trains_then_a_longer_submission_resumes(slurm_cluster, repo, ddp_raw, tmp_path, crn_batch2_reference):
    """`sbatch --nodes 2 examples/slurm/train.sbatch crn PARAMS` (the documented submission) on two nodes, one
    process each at a c10d rendezvous on the first node's address, trains to the end; a second submission
    with more steps resumes from the first one's checkpoint; the weights are one process's at batch 2."""
    runs = tmp_path / "runs"
    env = {**NO_GPUS, "CRN_RDZV_PORT": str(free_port())}
    for total_steps, resumed in ((2, None), (ddp_raw["train"]["total_steps"], 2)):
        params = params_file(ddp_raw, runs, batch_size_per_process=1, total_steps=total_steps)
        job = slurm_cluster.submit(["--nodes", "2", "examples/slurm/train.sbatch", "crn", str(params)], repo, env=env)
        assert slurm_cluster.wait(job) == ("COMPLETED", 0), _job_output(repo, job) + slurm_cluster.logs()
        output = _job_output(repo, job)
        assert state(runs)["step"] == total_steps
        if resumed:
            assert re.search(rf"resuming crn from\s+\S+state.pt\s+at step {resumed}", output), output
    summary = json.loads((runs / "crn/summary.json").read_text())
    assert summary["processes"] == 2 and summary["batch_size"] == 2
    assert_same_weights(crn_batch2_reference, state(runs), exact=False)


def test_a_failed_job_fails(slurm_cluster, repo, tmp_path):
    """A training that stops with an error fails its job (srun --kill-on-bad-exit, torchrun), and
    `sbatch --wait`, the DVC stage's command, returns a failed job's exit status."""
    env = {**NO_GPUS, "CRN_RDZV_PORT": str(free_port())}
    job = slurm_cluster.submit(["examples/slurm/train.sbatch", "crn", str(tmp_path / "missing.yaml")], repo, env=env)
    assert slurm_cluster.wait(job) == ("FAILED", 1)
    assert "missing.yaml: params file not found" in _job_output(repo, job)
    usage = slurm_cluster.sbatch(["--wait", "examples/slurm/train.sbatch", "crn"], repo, env=env)  # no params file: usage
    assert usage.returncode == 1, usage.stdout + usage.stderr


def stage_override() -> str:
    """The train stage's command as docs/multi-gpu.md shows it in its dvc.yaml snippet."""
    text = (REPO / "docs/multi-gpu.md").read_text()
    found = re.findall(r"^\s+cmd: (sbatch --wait .*)$", text, flags=re.M)
    assert len(found) == 1, found
    return found[0]


def test_a_dvc_stage_that_submits_the_job_and_waits(slurm_cluster, tmp_path):
    """docs/multi-gpu.md's override of the train stage (`sbatch --wait --nodes 4 ... ${item} params.yaml`) in
    a clone's dvc.yaml, under `dvc repro` on tiny params: prepare and the segmenter run here, the CRN trains
    as a four-node job, DVC records its outputs, and the stage is then up to date."""
    work = clone(tmp_path / "repo")
    (work / ".venv").symlink_to(sys.prefix, target_is_directory=True)
    (work / "dvc.lock").unlink()
    raw = tiny_params()
    raw["train"]["batch_size_per_process"] = 1  # 4 nodes: a global batch of 4 of the 6 training frames
    write_params(work, raw)
    dvc_yaml = (work / "dvc.yaml").read_text()
    stage = "      cmd: crn-repro train --model ${item}\n"
    assert dvc_yaml.count(stage) == 1
    (work / "dvc.yaml").write_text(dvc_yaml.replace(stage, f"      cmd: {stage_override()}\n"))
    commit(work, "train on the cluster")
    env = {**ENV, **slurm_cluster.env, **NO_GPUS, "CRN_RDZV_PORT": str(free_port())}
    result = run(["dvc", "repro", "train@crn"], work, env=env, check=False, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr + "".join(
        p.read_text() for p in work.glob("slurm-*.out")) + slurm_cluster.logs()
    assert "Submitted batch job" in result.stdout
    summary = json.loads((work / "runs/crn/summary.json").read_text())
    assert summary["processes"] == 4 and summary["finished"]
    status = run(["dvc", "status", "train@crn"], work, env=env)
    assert "up to date" in status.stdout, status.stdout


def test_the_documented_submissions_pass_sbatchs_own_check(slurm_cluster, repo):
    """`sbatch --test-only` (the cluster checks the request and says where it would start) for the commands
    the docs show, with the script's own #SBATCH lines (4 nodes x 32 CPUs: this cluster has them)."""
    args = ["--nodes", "4", "examples/slurm/train.sbatch", "crn", "presets/cityscapes-1024p.yaml"]
    result = slurm_cluster.sbatch(["--test-only", *args], repo, env=NO_GPUS)
    assert result.returncode == 0 and "to start at" in result.stderr and "on nodes n[1-4]" in result.stderr, result.stderr
    if "SBATCH_GPUS_PER_NODE" not in os.environ:  # as written, the script asks for 8 GPUs a node, which this cluster lacks
        refused = slurm_cluster.sbatch(["--test-only", *args], repo)
        assert refused.returncode != 0 and "gres" in refused.stderr, refused.stderr
        overridden = slurm_cluster.sbatch(["--test-only", "--gpus-per-node", "0", *args], repo)  # `sbatch --gpus-per-node N ...`
        assert overridden.returncode == 0 and "to start at" in overridden.stderr, overridden.stderr
