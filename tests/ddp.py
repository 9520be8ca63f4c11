"""Training runs as users start them, for the multi-process tests: `crn-repro train` in a process of its own
(itself relaunching under `torchrun --standalone` when train.processes > 1), several `torchrun --nnodes N`
launchers meeting at a c10d rendezvous on 127.0.0.1, or a SLURM job; and what they leave behind."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from crn_repro.checkpoint import load_training_state

TIMEOUT_S = 600


def params_file(raw: dict, folder: Path, model_overrides: dict | None = None, **train) -> Path:
    """``raw`` with ``train`` updated and the runs written to ``folder``, saved as ``folder``.yaml."""
    raw = dict(raw, train=dict(raw["train"], **train))
    raw["paths"] = dict(raw["paths"], runs=str(folder))
    for model, section in (model_overrides or {}).items():
        raw[model] = section
    path = folder.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(raw))
    return path


def train(raw: dict, folder: Path, *args: str, model: str = "crn", model_overrides: dict | None = None, **train_keys) -> subprocess.CompletedProcess:
    params = params_file(raw, folder, model_overrides, **train_keys)
    return subprocess.run([sys.executable, "-m", "crn_repro", "--params", str(params), "train", "--model", model, *args],
                          capture_output=True, text=True, timeout=TIMEOUT_S)


def state(folder: Path, model: str = "crn") -> dict:
    return load_training_state(folder / model / "state.pt")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_nodes(params: Path, nodes: int, *args: str, model: str = "crn", rdzv_id: str = "crn-test") -> list[subprocess.Popen]:
    """One `torchrun --nnodes N --node_rank i` launcher per node (one process each), all on this machine,
    meeting at a c10d rendezvous on 127.0.0.1, as docs/multi-gpu.md starts them on N machines."""
    port = free_port()
    launchers = []
    for rank in range(nodes):
        log = tempfile.TemporaryFile()
        launcher = subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nodes), "--nproc_per_node", "1",
             "--node_rank", str(rank), "--rdzv_backend", "c10d", "--rdzv_id", rdzv_id,
             "--rdzv_endpoint", f"127.0.0.1:{port}", "-m", "crn_repro", "--params", str(params), "train", "--model", model,
             *args],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        launcher.log = log
        launchers.append(launcher)
    return launchers


def wait_all(launchers: list[subprocess.Popen], timeout: float = TIMEOUT_S) -> list[tuple[int, str]]:
    """(exit status, output) of every launcher; all of them killed if one outlives ``timeout``."""
    deadline = time.monotonic() + timeout
    try:
        return [(p.wait(timeout=max(1.0, deadline - time.monotonic())), _output(p)) for p in launchers]
    finally:
        kill_all(launchers)


def _output(p: subprocess.Popen) -> str:
    p.log.seek(0)
    return p.log.read().decode(errors="replace")


def kill_all(launchers: list[subprocess.Popen], number: int = signal.SIGKILL) -> None:
    """Signal every launcher and every process below it (torchrun starts its workers in sessions of their
    own, so a process group does not hold them), all at once, as a lost node; then reap the launchers."""
    import psutil

    processes = []
    for p in launchers:
        try:
            parent = psutil.Process(p.pid)
            processes += [parent, *parent.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    for process in processes:
        try:
            process.send_signal(number)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(processes, timeout=30)
    for p in launchers:
        p.wait(timeout=30)


BUFFERS = ("running_mean", "running_var", "num_batches_tracked")  # BatchNorm's statistics, not weights


def assert_same_weights(a: dict, b: dict, exact: bool, net: str = "G", buffers: bool = True) -> None:
    """Two training states hold the same network. ``exact``: bit for bit. Otherwise to the rounding of sums taken
    in another order (DDP averages per-process gradients, one process averages per image): every tensor within
    rtol 1e-4, atol 1e-5, except where Adam's first steps magnify that rounding (a gradient near zero whose
    sign flips moves a weight by up to lr per step): at most 1% of a tensor's elements, each within 1e-3.
    ``buffers=False`` leaves BatchNorm's running statistics out."""
    assert a["step"] == b["step"]
    for key in a["nets"][net]:
        if not buffers and key.endswith(BUFFERS):
            continue
        x, y = a["nets"][net][key], b["nets"][net][key]
        if exact:
            assert torch.equal(x, y), f"{net}.{key}"
            continue
        if not x.is_floating_point():
            assert torch.equal(x, y), f"{net}.{key}"
            continue
        far = ~torch.isclose(x, y, rtol=1e-4, atol=1e-5)
        worst = (x - y).abs().max().item() if x.numel() else 0.0
        assert far.float().mean().item() <= 0.01 and worst <= 1e-3, (
            f"{net}.{key}: {int(far.sum())} of {x.numel()} elements differ (largest difference {worst:.3g})")
