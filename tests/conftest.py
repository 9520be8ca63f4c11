"""Shared fixtures: a tiny params set derived from the shipped params.yaml (so tests track it)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from crn_repro.files import read_yaml
from crn_repro.params import parse_params

REPO = Path(__file__).resolve().parents[1]


def pytest_addoption(parser):
    parser.addoption(
        "--slow", action="store_true",
        help="also run the tests marked slow (they train models or run whole pipelines); the README's test command and CI do",
    )


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: trains models or runs a whole pipeline (seconds each); run with --slow")


def pytest_collection_modifyitems(config, items):
    """Without --slow, leave the slow tests out (reported as deselected), so `pytest` is a fast check."""
    if config.getoption("--slow"):
        return
    slow = [item for item in items if "slow" in item.keywords]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if "slow" not in item.keywords]


def tiny_raw_params(root: Path) -> dict:
    """params.yaml shrunk to seconds: 16x32 images, 3-module CRN, a handful of frames, paths under root."""
    raw = read_yaml(REPO / "params.yaml", "")
    raw = copy.deepcopy(raw)
    raw["paths"] = {k: str(root / v) for k, v in raw["paths"].items()}
    raw["data"]["image_size_hw"] = [16, 32]
    raw["synthetic"].update(num_train=6, num_val=5, image_size_hw=[32, 64])
    raw["train"].update(total_steps=4, batch_size_per_process=2, checkpoint_every_steps=2, log_every_steps=1,
                        precision="auto", cache_reference_features=False)  # the demo's speed settings have tests of their own
    raw["models"] = ["crn"]
    raw["evaluate"]["baselines"] = None  # every other listed model
    for design in ("paper", "mixed", "hype"):  # the study compares the tiny run's models
        raw["study"][design]["models"] = None
    raw["crn"]["network"]["widths"] = [8, 8, 8]
    raw["crn"]["objective"]["lambda_rescale_after_epochs"] = 1
    raw["report"]["figure_rows"] = 2
    for section in raw.values():  # models train with the tiny global `train` section
        if isinstance(section, dict) and "train" in section:
            section["train"] = {}
    raw["synthesize"]["batch_size"] = 2
    return raw


@pytest.fixture
def tiny_raw(tmp_path) -> dict:
    return tiny_raw_params(tmp_path)


@pytest.fixture
def tiny_params(tiny_raw):
    return parse_params(tiny_raw, "tiny params")


@pytest.fixture(scope="session")
def prepared_tiny(tmp_path_factory):
    """A prepared tiny synthetic dataset shared by tests that only read it."""
    from crn_repro.prepare import prepare

    root = tmp_path_factory.mktemp("prepared")
    params = parse_params(tiny_raw_params(root), "tiny params")
    prepare(params)
    return root, params


SMALL_SIZE = (32, 64)  # the smallest size every model runs at (pix2pix needs 2^5 | H)


@pytest.fixture(scope="session")
def prepared_small(tmp_path_factory):
    """A prepared synthetic dataset at 32x64 (``SMALL_SIZE``), shared by tests that only read it."""
    from crn_repro.prepare import prepare

    root = tmp_path_factory.mktemp("prepared_small")
    raw = tiny_raw_params(root)
    raw["data"]["image_size_hw"] = list(SMALL_SIZE)
    prepare(parse_params(raw))
    return root / "data/prepared"


# --- multi-process training (tests/test_distributed.py, tests/test_slurm.py) ----------------------------------

DDP_TRAIN = dict(total_steps=6, checkpoint_every_steps=2, log_every_steps=1)  # checkpoints at 2 and 4: room to interrupt


def ddp_raw_params(prepared_root: Path, root: Path) -> dict:
    raw = tiny_raw_params(root)
    raw["paths"]["prepared"] = str(prepared_root / "data/prepared")
    raw["train"].update(DDP_TRAIN)
    return raw


@pytest.fixture
def ddp_raw(prepared_tiny, tmp_path) -> dict:
    """Tiny params on the shared prepared data, with DDP_TRAIN's schedule."""
    return ddp_raw_params(prepared_tiny[0], tmp_path)


@pytest.fixture(scope="session")
def crn_batch2_reference(prepared_tiny, tmp_path_factory) -> dict:
    """The training state of the tiny CRN trained by one process at batch 2 (DDP_TRAIN's schedule): what N
    processes at batch 2 / N must compute, wherever they run."""
    from ddp import state, train

    root = tmp_path_factory.mktemp("reference")
    result = train(ddp_raw_params(prepared_tiny[0], root), root / "runs", batch_size_per_process=2, processes=1)
    assert result.returncode == 0, result.stderr
    return state(root / "runs")


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A real SLURM cluster of four nodes on this machine (tests/slurm_cluster.py); skipped where SLURM or
    munge is missing, unless CRN_REQUIRE_SLURM=1 (set by .ci/run), which makes that a failure."""
    import os

    from slurm_cluster import Cluster, missing

    reason = missing()
    if reason:
        if os.environ.get("CRN_REQUIRE_SLURM") == "1":
            pytest.fail(f"{reason}; CRN_REQUIRE_SLURM=1 forbids skipping the SLURM tests")
        pytest.skip(reason)
    cluster = Cluster(tmp_path_factory.mktemp("slurm")).start()
    try:
        yield cluster
    finally:
        cluster.stop()
