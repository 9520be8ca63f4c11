import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from crn_repro import checkpoint
from crn_repro.batches import batch_indices
from crn_repro.checkpoint import load_training_state
from crn_repro.registry import load_model
from crn_repro.errors import CrnError
from crn_repro.params import parse_params
from crn_repro.trainer import train


def _with_paths(raw, prepared_root, runs):
    raw = dict(raw)
    raw["paths"] = dict(raw["paths"], prepared=str(prepared_root / "data/prepared"), runs=str(runs))
    return parse_params(raw)


def _weights(runs, model="crn"):
    return load_training_state(Path(runs) / model / "state.pt")["nets"]["G"]


def test_batches_cover_each_epoch_and_are_deterministic():
    epoch = np.concatenate([batch_indices(3, s, 10, 4) for s in range(3)])  # 3 steps = one epoch
    assert set(epoch[:10]) == set(range(10))
    assert np.array_equal(batch_indices(3, 7, 10, 4), batch_indices(3, 7, 10, 4))
    assert not np.array_equal(batch_indices(3, 0, 10, 4), batch_indices(4, 0, 10, 4))


def test_resume_gives_same_weights_as_uninterrupted(prepared_tiny, tiny_raw, tmp_path):
    root, _ = prepared_tiny
    full = _with_paths(tiny_raw, root, tmp_path / "full")
    split = _with_paths(tiny_raw, root, tmp_path / "split")
    summary = train(full, "crn")
    assert summary["steps"] == 4 and summary["finished"]
    partial = train(split, "crn", until_step=2)
    assert partial["steps"] == 2 and not partial["finished"]
    assert load_training_state(tmp_path / "split/crn/state.pt")["step"] == 2
    train(split, "crn")  # the same command again resumes
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "split")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # and the objective's adaptive lambdas too (rescaled after 1 epoch = 3 steps)
    sa = load_training_state(tmp_path / "full/crn/state.pt")["objective"]
    sb = load_training_state(tmp_path / "split/crn/state.pt")["objective"]
    assert bool(sa["loss.rescaled"]) and torch.equal(sa["loss.lambdas"], sb["loss.lambdas"])


@pytest.mark.slow
def test_training_is_deterministic_and_lowers_loss(prepared_tiny, tiny_raw, tmp_path):
    root, _ = prepared_tiny
    tiny_raw["train"]["total_steps"] = 12
    tiny_raw["crn"]["objective"]["lambda_mode"] = "authors-256p"
    a = train(_with_paths(tiny_raw, root, tmp_path / "a"), "crn")
    b = train(_with_paths(tiny_raw, root, tmp_path / "b"), "crn")
    assert a["final_losses"] == b["final_losses"]
    wa, wb = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    import json

    first = json.loads((tmp_path / "a/crn/live/metrics.json").read_text())
    history = (tmp_path / "a/crn/live/plots/metrics/train/G/total.tsv").read_text().splitlines()[1:]
    losses = [float(line.split("\t")[-1]) for line in history]
    assert len(losses) == 12 and np.mean(losses[-3:]) < np.mean(losses[:3])
    assert first["step"] == 12


def test_model_file_rebuilds_network_without_params(prepared_tiny, tiny_raw, tmp_path):
    root, _ = prepared_tiny
    train(_with_paths(tiny_raw, root, tmp_path), "crn")
    nets, data = load_model(tmp_path / "crn/model.pt")
    assert data["model"] == "crn" and data["facts"]["steps"] == 4
    assert data["facts"]["vgg"].startswith("random init")
    assert nets["G"](torch.zeros(1, 20, 16, 32)).shape == (1, 3, 16, 32)
    assert not any(k.startswith("module.") for k in data["state_dicts"]["G"])


@pytest.mark.slow
def test_changed_settings_start_afresh_and_keep_old_state(prepared_tiny, tiny_raw, tmp_path):
    root, _ = prepared_tiny
    train(_with_paths(tiny_raw, root, tmp_path), "crn", until_step=2)
    tiny_raw["crn"]["network"]["widths"] = [8, 8, 4]
    summary = train(_with_paths(tiny_raw, root, tmp_path), "crn")
    assert summary["steps"] == 4
    assert len(list((tmp_path / "crn").glob("state.stale-*.pt"))) == 1


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "state.pt"
    checkpoint.atomic_torch_save({"format": checkpoint.STATE_FORMAT, "step": 1}, path)

    def dying_save(obj, f):
        f.write(b"partial")
        raise KeyboardInterrupt  # killed mid-write

    monkeypatch.setattr(checkpoint.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.atomic_torch_save({"step": 2}, path)
    monkeypatch.undo()
    assert load_training_state(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]


def test_corrupt_state_is_a_clear_error(tmp_path):
    (tmp_path / "state.pt").write_bytes(b"garbage")
    with pytest.raises(CrnError, match="state.pt: not a readable training state"):
        load_training_state(tmp_path / "state.pt")


def test_missing_prepared_data(tiny_params):
    with pytest.raises(CrnError, match="run `crn-repro prepare`"):
        train(tiny_params, "crn")


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted(prepared_tiny, tiny_raw, tmp_path):
    """A real kill -9 in the middle of training, then the same command again."""
    root, _ = prepared_tiny
    tiny_raw["train"].update(total_steps=40, checkpoint_every_steps=1)
    tiny_raw["paths"] = dict(tiny_raw["paths"], prepared=str(root / "data/prepared"), runs=str(tmp_path / "killed"))
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(tiny_raw))
    cmd = [sys.executable, "-m", "crn_repro", "--params", str(params_file), "train", "--model", "crn"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path / "killed/crn/state.pt"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if state.exists() and load_training_state(state)["step"] >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = load_training_state(state)["step"]
    assert killed_at < 40, "training finished before it could be killed"
    subprocess.run(cmd, cwd=tmp_path, check=True, capture_output=True)
    reference = _with_paths(dict(tiny_raw, train=tiny_raw["train"]), root, tmp_path / "reference")
    train(reference, "crn")
    a, b = _weights(tmp_path / "killed"), _weights(tmp_path / "reference")
    assert all(torch.equal(a[k], b[k]) for k in a)
    logged = (tmp_path / "killed/crn/live/plots/metrics/train/G/total.tsv").read_text().splitlines()[1:]
    assert [int(line.split("\t")[0]) for line in logged] == list(range(1, 41))  # no step logged twice


def test_rerun_of_finished_run_keeps_summary_and_resumes_on_harmless_changes(prepared_tiny, tiny_raw, tmp_path):
    root, _ = prepared_tiny
    first = train(_with_paths(tiny_raw, root, tmp_path), "crn")
    again = train(_with_paths(tiny_raw, root, tmp_path), "crn")
    assert again["final_losses"] == first["final_losses"] and again["steps"] == 4
    tiny_raw["data"]["max_val_images"] = 2  # validation-only: the state stays valid
    tiny_raw["train"]["total_steps"] = 6  # more steps: resume
    more = train(_with_paths(tiny_raw, root, tmp_path), "crn")
    assert more["steps"] == 6 and not list((tmp_path / "crn").glob("state.stale-*"))


def test_tensorflow_adam_epsilon_equals_tensorflows_update():
    """train.adam_epsilon: tensorflow gives TensorFlow 1's Adam update, written out here from its
    documented formula: lr_t = lr sqrt(1 - b2^t) / (1 - b1^t); theta -= lr_t m / (sqrt(v) + eps)."""
    import numpy as np
    import torch

    from crn_repro.trainer import tensorflow_epsilon

    lr, b1, b2, eps = 1e-3, 0.9, 0.999, 1e-8
    rng = np.random.default_rng(0)
    grads = [rng.normal(scale=1e-6, size=4) for _ in range(5)]  # tiny gradients: epsilon matters
    theta, m, v = np.ones(4), np.zeros(4), np.zeros(4)
    param = torch.nn.Parameter(torch.ones(4, dtype=torch.float64))
    plain = torch.nn.Parameter(torch.ones(4, dtype=torch.float64))
    optimizer = torch.optim.Adam([param], lr=lr, betas=(b1, b2), eps=eps)
    reference = torch.optim.Adam([plain], lr=lr, betas=(b1, b2), eps=eps)
    for t, g in enumerate(grads, start=1):
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        theta = theta - lr * np.sqrt(1 - b2**t) / (1 - b1**t) * m / (np.sqrt(v) + eps)
        param.grad, plain.grad = torch.from_numpy(g.copy()), torch.from_numpy(g.copy())
        tensorflow_epsilon(optimizer, t, eps)
        optimizer.step()
        reference.step()
        np.testing.assert_allclose(param.detach().numpy(), theta, rtol=1e-12, atol=1e-15)
    assert np.abs(plain.detach().numpy() - theta).max() > 1e-6  # PyTorch's own placement differs here


def test_sync_batchnorm_needs_cuda_and_keeps_the_files_format(tiny_params):
    """train.sync_batchnorm converts BatchNorm to torch's SyncBatchNorm for several CUDA processes; torch's runs
    on GPUs only, so several CPU processes are refused with one line (no GPU here: the CUDA path is not run).
    The converted networks have the same state_dict, so their model files rebuild with plain BatchNorm."""
    import dataclasses

    from baselines.pix2pix import UnetGenerator
    from crn_repro.trainer import Runtime, prepare_networks

    tp = dataclasses.replace(tiny_params.train, sync_batchnorm=True)
    nets = {"G": UnetGenerator(20, "layout", 6, 4)}
    with pytest.raises(CrnError, match=r"train.sync_batchnorm: torch's SyncBatchNorm runs on CUDA only \(this run: cpu x 2\)"):
        prepare_networks(nets, tp, Runtime(torch.device("cpu"), 0, 2, None, False))
    assert prepare_networks(nets, tp, Runtime(torch.device("cpu"), 0, 1, None, False))["G"] is nets["G"]  # one process
    synced = torch.nn.SyncBatchNorm.convert_sync_batchnorm(UnetGenerator(20, "layout", 6, 4))
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in synced.modules())
    UnetGenerator(20, "layout", 6, 4).load_state_dict(synced.state_dict())  # strict: the same keys and shapes


# --- resume never depends on a file a kill can tear -------------------------------------------------------


def _run_files(run: Path) -> dict[str, bytes]:
    """The run's files that must come out the same as an uninterrupted run's: the training losses as
    dvclive logged them (images_per_s is a timing: only its steps are compared), the validation losses."""
    metrics = run / "live/plots/metrics"
    out = {}
    for tsv in sorted(metrics.rglob("*.tsv")):
        text = tsv.read_text()
        if tsv.name == "images_per_s.tsv":
            text = "".join(line.split("\t")[0] + "\n" for line in text.splitlines())
        out[str(tsv.relative_to(run))] = text
    return out


def _same_as_uninterrupted(full: Path, resumed: Path) -> None:
    assert _run_files(resumed) == _run_files(full)
    a, b = load_training_state(full / "state.pt"), load_training_state(resumed / "state.pt")
    assert a["step"] == b["step"] and a["logged"] is not None
    assert all(torch.equal(a["nets"]["G"][k], b["nets"]["G"][k]) for k in a["nets"]["G"])
    model = torch.load(resumed / "model.pt", weights_only=True)
    assert model["run"]["step"] == b["step"]
    assert all(torch.equal(model["state_dicts"]["G"][k], b["nets"]["G"][k]) for k in b["nets"]["G"])
    summary = json.loads((resumed / "live/metrics.json").read_text())
    assert summary["step"] == b["step"] and summary["train"]["G"]["total"] == json.loads((full / "live/metrics.json").read_text())["train"]["G"]["total"]
    assert not list(resumed.rglob(".*.tmp"))


def _tear(path: Path, how: str) -> None:
    data = path.read_bytes()
    path.write_bytes({"empty": b"", "half": data[: len(data) // 2], "garbage": b"\x00\xff" * 7}[how])


TORN = {  # two resumes: each file torn once, empty and half-written among them
    "dvclive": {"live/metrics.json": "empty", "live/plots/metrics/train/G/total.tsv": "half",
                "live/plots/metrics/train/G/image.tsv": "empty", "live/plots/metrics/val/G/image.tsv": "garbage",
                "live/plots/images/samples/val_0.png": "half"},
    "model": {"model.pt": "half", "live/metrics.json": "half"},
}


@pytest.fixture(scope="module")
def uninterrupted(prepared_tiny, tmp_path_factory):
    from conftest import tiny_raw_params

    root, _ = prepared_tiny
    runs = tmp_path_factory.mktemp("uninterrupted")
    train(_with_paths(tiny_raw_params(runs), root, runs), "crn")
    return runs / "crn"


@pytest.mark.parametrize("torn", list(TORN))
def test_torn_run_files_are_rebuilt_from_the_training_state_with_a_note(prepared_tiny, tiny_raw, tmp_path, uninterrupted, torn):
    """What a kill -9 in the middle of dvclive's in-place writes (or of a hand edit) leaves: empty or
    half-written files, and rows logged after the checkpoint. The resume rebuilds them (one note line
    naming them, never a traceback) and ends exactly where an uninterrupted run ends."""
    from io import StringIO

    from rich.console import Console

    root, _ = prepared_tiny
    params = _with_paths(tiny_raw, root, tmp_path)
    train(params, "crn", until_step=2)
    for name, how in TORN[torn].items():
        _tear(tmp_path / "crn" / name, how)
    if torn == "dvclive":  # step 3 logged, step 4 torn, then the kill
        tsv = tmp_path / "crn/live/plots/metrics/train/G/conv1_2.tsv"
        tsv.write_text(tsv.read_text() + "3\t1.5\n4\t1.")
    out = StringIO()
    train(params, "crn", console=Console(file=out, width=1000))
    notes = [line for line in out.getvalue().splitlines() if "from the training state at step 2" in line]
    assert len(notes) == (1 if torn == "dvclive" else 2), out.getvalue()
    for name in [*TORN[torn], *(["conv1_2.tsv"] if torn == "dvclive" else [])]:
        assert any(Path(name).name in note for note in notes), (name, notes)
    _same_as_uninterrupted(uninterrupted, tmp_path / "crn")


def test_a_model_file_behind_its_training_state_is_exported_again(prepared_tiny, tiny_raw, tmp_path):
    """The kill between the last checkpoint's files: state.pt says step 4 (total_steps), model.pt is
    the previous checkpoint's. The rerun used to say 'resuming at step 4' and leave the old model."""
    from io import StringIO

    from rich.console import Console

    root, _ = prepared_tiny
    params = _with_paths(tiny_raw, root, tmp_path)
    train(params, "crn", until_step=2)
    behind = (tmp_path / "crn/model.pt").read_bytes()
    train(params, "crn")
    (tmp_path / "crn/model.pt").write_bytes(behind)
    out = StringIO()
    train(params, "crn", console=Console(file=out, width=400))
    assert "model.pt: exported at step 2; exported again from the training state at step 4" in out.getvalue()
    state = load_training_state(tmp_path / "crn/state.pt")
    model = torch.load(tmp_path / "crn/model.pt", weights_only=True)
    assert model["run"]["step"] == state["step"] == 4
    assert all(torch.equal(model["state_dicts"]["G"][k], state["nets"]["G"][k]) for k in state["nets"]["G"])
