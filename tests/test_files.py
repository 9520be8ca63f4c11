"""crn_repro.files: atomic writes leave the permissions a plain write would, and memory-mapped files
have their disk space reserved before the first byte is written (a full disk is an error, not SIGBUS)."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from crn_repro.checkpoint import atomic_torch_save
from crn_repro.errors import CrnError
from crn_repro.files import (
    allocated_memmap,
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    atomic_write_together,
    bytes_writer,
    current_umask,
    json_writer,
    staged_dir,
)

REPO = Path(__file__).resolve().parents[1]

# every atomic writer of the suite: files.py's and the torch files' (checkpoint.atomic_torch_save)
WRITERS = {
    "atomic_write": lambda p: atomic_write(p, lambda f: f.write(b"x")),
    "atomic_write_bytes": lambda p: atomic_write_bytes(p, b"x"),
    "atomic_write_text": lambda p: atomic_write_text(p, "x"),
    "atomic_write_json": lambda p: atomic_write_json(p, {"x": 1}),
    "atomic_write_together": lambda p: atomic_write_together([(p, bytes_writer(b"x")), (p.with_suffix(".b"), json_writer([1]))]),
    "atomic_torch_save": lambda p: atomic_torch_save({"x": torch.zeros(2)}, p),
}


@contextlib.contextmanager
def umask(mask: int):
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077])
@pytest.mark.parametrize("writer", list(WRITERS))
def test_an_atomic_write_gives_a_new_file_the_mode_a_plain_write_would(writer, mask, tmp_path):
    with umask(mask):
        plain = tmp_path / "plain"
        plain.write_bytes(b"x")
        WRITERS[writer](tmp_path / "atomic")
    assert mode(tmp_path / "atomic") == mode(plain) == 0o666 & ~mask
    if writer == "atomic_write_together":
        assert mode(tmp_path / "atomic.b") == 0o666 & ~mask
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("writer", list(WRITERS))
def test_an_atomic_write_keeps_the_mode_of_the_file_it_replaces(writer, tmp_path):
    path = tmp_path / "file"
    path.write_bytes(b"old")
    path.chmod(0o640)
    with umask(0o077):
        WRITERS[writer](path)
    assert mode(path) == 0o640


def test_the_umask_is_read_without_being_changed():
    with umask(0o027):
        assert current_umask() == 0o027
        assert os.umask(0o027) == 0o027


def test_files_of_a_staged_folder_have_plain_modes(tmp_path):
    with umask(0o027), staged_dir(tmp_path / "out") as tmp:
        atomic_write_json(tmp / "index.json", {})
        (tmp / "plain.txt").write_text("x")
    assert mode(tmp_path / "out/index.json") == mode(tmp_path / "out/plain.txt") == 0o640
    assert mode(tmp_path / "out") == 0o750


def test_a_failed_write_together_changes_none_of_the_files(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    first.write_bytes(b"old a")
    second.write_bytes(b"old b")

    def full(f):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(CrnError, match="cannot be written.*disk is full"):
        atomic_write_together([(first, bytes_writer(b"new a")), (second, full)])
    assert first.read_bytes() == b"old a" and second.read_bytes() == b"old b"
    assert not list(tmp_path.glob(".*.tmp"))


# --- memory maps on a full disk ---------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs mounted for the test (root only): a disk that really fills up."""
    where = tmp_path / "disk"
    where.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)],
                                                   capture_output=True).returncode == 0
    if not mounted:
        pytest.skip("mounting a small tmpfs needs root (the catalog's monkeypatched ENOSPC cases still run)")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_memory_map_larger_than_the_free_space_is_an_error_before_any_write(small_disk):
    path = small_disk / "big.npy"
    with pytest.raises(OSError) as caught:
        allocated_memmap(path, np.uint8, (4, 512, 1024))  # 2 MiB on a 1 MiB disk
    assert caught.value.errno == errno.ENOSPC and str(path) in str(caught.value)


def test_a_memory_map_that_fits_is_reserved_and_reads_back(small_disk):
    path = small_disk / "small.npy"
    array = allocated_memmap(path, np.uint16, (3, 5))
    array[:] = np.arange(15, dtype=np.uint16).reshape(3, 5)
    array.flush()
    del array
    assert np.array_equal(np.load(path), np.arange(15).reshape(3, 5))
    assert os.stat(path).st_blocks * 512 >= 15 * 2  # allocated, not sparse


def test_prepare_on_a_disk_that_fills_under_its_memory_maps_is_one_line_and_keeps_the_previous_cache(small_disk):
    """The synthetic frames fit (32x64 PNGs), the 256x512 cache does not: the old code died of SIGBUS
    here (exit -7, no message) and left data/prepared.partial; a subprocess, so a SIGBUS cannot kill pytest."""
    from conftest import tiny_raw_params

    raw = tiny_raw_params(small_disk)
    (small_disk / "params.yaml").write_text(yaml.safe_dump(raw))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    command = [sys.executable, "-m", "crn_repro", "--params", str(small_disk / "params.yaml"), "prepare"]
    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    prepared = Path(raw["paths"]["prepared"])
    before = {p: p.read_bytes() for p in prepared.rglob("*") if p.is_file()}
    raw["data"]["image_size_hw"] = [256, 512]
    (small_disk / "params.yaml").write_text(yaml.safe_dump(raw))
    failed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    errors = [line for line in failed.stderr.splitlines() if line.startswith("error:")]
    assert failed.returncode == 1, failed.stderr
    assert len(errors) == 1 and "Traceback" not in failed.stderr, failed.stderr
    assert ".npy: cannot be written" in errors[0] and "disk is full" in errors[0], errors[0]
    assert not prepared.with_name(prepared.name + ".partial").exists()
    assert {p: p.read_bytes() for p in prepared.rglob("*") if p.is_file()} == before
