"""Multi-process training with the real torchrun (CPU processes, gloo), launched the ways the docs launch it:
`crn-repro train` with train.processes: 2 relaunching itself under `torchrun --standalone` (what `dvc repro`
does), and two `torchrun --nnodes 2 --node_rank i` launchers meeting at a c10d rendezvous on 127.0.0.1, as
on two machines (docs/multi-gpu.md, "Several machines").

N processes at batch b compute what one process at batch N x b does (the global batch of a step is split
over the processes, and DDP averages their gradients), and an interrupted multi-process run resumes exactly."""

from __future__ import annotations

import json
import time

import pytest
import torch

from ddp import assert_same_weights, kill_all, params_file, start_nodes, state, train, wait_all

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, prepared_tiny):
    """`crn-repro train` with train.processes: 2 (it relaunches itself under `torchrun --standalone`), batch 1
    per process, DDP_TRAIN's schedule: the run folder."""
    from conftest import ddp_raw_params

    root = tmp_path_factory.mktemp("two")
    result = train(ddp_raw_params(prepared_tiny[0], root), root / "runs", batch_size_per_process=1, processes=2)
    assert result.returncode == 0, result.stderr
    return root / "runs"


def test_two_processes_compute_what_one_process_with_twice_the_batch_does(two_processes, crn_batch2_reference):
    summary = json.loads((two_processes / "crn/summary.json").read_text())
    assert summary["processes"] == 2 and summary["batch_size"] == 2 and summary["batch_size_per_process"] == 1
    assert summary["device"] == "cpu x2"
    a, b = crn_batch2_reference, state(two_processes)
    assert a["fingerprint"] == b["fingerprint"]  # the same global batches: either can resume the other
    assert_same_weights(a, b, exact=False)
    torch.testing.assert_close(a["objective"]["loss.lambdas"], b["objective"]["loss.lambdas"], rtol=1e-6, atol=0)
    # the logged losses are the global batch's (averaged over the processes), as one process logs them
    logged = {"one": a["last_losses"], "two": json.loads((two_processes / "crn/summary.json").read_text())["final_losses"]}
    assert logged["one"].keys() == logged["two"].keys() and "G/total" in logged["one"]
    for key, value in logged["one"].items():
        assert logged["two"][key] == pytest.approx(value, rel=1e-4), key


def test_an_interrupted_ddp_run_resumes_exactly(ddp_raw, tmp_path, two_processes):
    first = train(ddp_raw, tmp_path / "split", "--until-step", "2", batch_size_per_process=1, processes=2)
    assert first.returncode == 0, first.stderr
    assert state(tmp_path / "split")["step"] == 2
    second = train(ddp_raw, tmp_path / "split", batch_size_per_process=1, processes=2)
    assert second.returncode == 0, second.stderr
    assert "resuming crn" in second.stderr and "at step 2" in second.stderr
    assert_same_weights(state(two_processes), state(tmp_path / "split"), exact=True)


def test_a_failing_worker_fails_the_command(ddp_raw, tmp_path):
    ddp_raw["crn"]["network"]["widths"] = [8, 8]  # wrong module count for 16x32: every worker stops with the error
    result = train(ddp_raw, tmp_path / "bad", processes=2)
    assert result.returncode != 0
    assert "crn.network:" in result.stderr


def test_two_nodes_at_a_c10d_rendezvous_train_what_one_process_at_twice_the_batch_does(ddp_raw, tmp_path, crn_batch2_reference):
    """Two `torchrun --nnodes 2 --node_rank i --rdzv_backend c10d --rdzv_endpoint 127.0.0.1:PORT` launchers,
    one process each: the CRN's weights equal one process's at batch 2, and each node's worker knows the
    two-node world (the summary says 2 processes, global batch 2)."""
    params = params_file(ddp_raw, tmp_path / "nodes", batch_size_per_process=1, processes=1)
    results = wait_all(start_nodes(params, 2))
    assert [rc for rc, _ in results] == [0, 0], "\n".join(out for _, out in results)
    summary = json.loads((tmp_path / "nodes/crn/summary.json").read_text())
    assert summary["processes"] == 2 and summary["batch_size"] == 2
    assert_same_weights(crn_batch2_reference, state(tmp_path / "nodes"), exact=False)


def test_an_interrupted_two_node_run_resumes(ddp_raw, tmp_path, crn_batch2_reference):
    """Both nodes killed (SIGKILL to each launcher and its worker, as a lost allocation) after a checkpoint and
    before the end; started again, they resume from the checkpoint and end with the weights of one process
    at batch 2."""
    params = params_file(ddp_raw, tmp_path / "nodes", batch_size_per_process=1, processes=1)
    launchers = start_nodes(params, 2)
    state_file = tmp_path / "nodes/crn/state.pt"
    deadline = time.monotonic() + 300
    try:
        while not state_file.exists() and time.monotonic() < deadline and all(p.poll() is None for p in launchers):
            time.sleep(0.05)
    finally:
        kill_all(launchers)
    killed_at = state(tmp_path / "nodes")["step"]
    assert 1 <= killed_at < ddp_raw["train"]["total_steps"], f"killed at step {killed_at}: no interruption to resume from"
    results = wait_all(start_nodes(params, 2, rdzv_id="crn-test-again"))
    assert [rc for rc, _ in results] == [0, 0], "\n".join(out for _, out in results)
    assert f"at step {killed_at}" in "".join(out for _, out in results)  # resumed, not started afresh
    assert_same_weights(crn_batch2_reference, state(tmp_path / "nodes"), exact=False)


# --- every model family against what docs/multi-gpu.md says of it ---------------------------------------------

@pytest.fixture(scope="module")
def families(tmp_path_factory):
    """Tiny params at 64x128 (pix2pix needs num_downs 6 for a dropout level) with pix2pix, gan-semseg and the
    segmenter, and the segmenter trained by one process at batch 2 (gan-semseg's frozen segmenter, and the
    segmenter's reference)."""
    from conftest import tiny_raw_params

    from crn_repro.params import parse_params
    from crn_repro.prepare import prepare

    root = tmp_path_factory.mktemp("families")
    raw = tiny_raw_params(root)
    raw["data"]["image_size_hw"] = [64, 128]
    raw["train"].update(total_steps=2, checkpoint_every_steps=2, log_every_steps=1)
    raw["models"] = ["crn", "pix2pix", "gan-semseg"]
    raw["pix2pix"]["network"].update(num_downs=6, ngf=4, ndf=4, dropout=0.5)
    raw["gan-semseg"]["network"].update(ngf=4, ndf=4)
    raw["segmenter"]["network"] = {"base_width": 4, "depth": 2, "max_width": 8}
    prepare(parse_params(raw))
    reference = train(raw, root / "segmenter-one", model="segmenter", batch_size_per_process=2)
    assert reference.returncode == 0, reference.stderr
    raw["gan-semseg"]["objective"]["segmenter"] = str(root / "segmenter-one/segmenter/model.pt")
    return raw, root


def _ghost_reference(raw: dict, folder, model: str, groups: int):
    """One process at batch groups x 1 whose BatchNorm normalises each process's share alone
    (tests/ghost_batchnorm.py)."""
    import subprocess
    import sys
    from pathlib import Path

    from ddp import params_file

    params = params_file(raw, folder, batch_size_per_process=groups)
    return subprocess.run([sys.executable, str(Path(__file__).parent / "ghost_batchnorm.py"), str(groups), "--params",
                           str(params), "train", "--model", model], capture_output=True, text=True, timeout=600)


def test_the_segmenter_two_processes_compute_what_one_process_with_twice_the_batch_does(families, tmp_path):
    """GroupNorm, no noise: as the CRN, N processes at batch b = one process at N x b (to rounding)."""
    raw, root = families
    two = train(raw, tmp_path / "two", model="segmenter", batch_size_per_process=1, processes=2)
    assert two.returncode == 0, two.stderr
    assert_same_weights(state(root / "segmenter-one", "segmenter"), state(tmp_path / "two", "segmenter"), exact=False, net="S")


@pytest.mark.parametrize("model", ["pix2pix", "gan-semseg"])
def test_batchnorm_models_two_processes_compute_one_process_normalising_each_share(families, tmp_path, model):
    """BatchNorm (pix2pix, gan-semseg) takes its statistics over each process's b images: N processes at batch
    b compute what one process at batch N x b computes when each BatchNorm normalises the N shares separately
    (for rank r, images r, r + N, ... of the global batch); pix2pix's dropout masks are drawn per image of the
    global batch, so they agree too. Generator and discriminator weights are compared."""
    raw, _ = families
    reference = _ghost_reference(raw, tmp_path / "one", model, groups=2)
    assert reference.returncode == 0, reference.stderr
    two = train(raw, tmp_path / "two", model=model, batch_size_per_process=1, processes=2)
    assert two.returncode == 0, two.stderr
    one, both = state(tmp_path / "one", model), state(tmp_path / "two", model)
    for net in ("G", "D"):  # the running statistics are the first process's (DDP broadcasts its buffers)
        assert_same_weights(one, both, exact=False, net=net, buffers=False)
