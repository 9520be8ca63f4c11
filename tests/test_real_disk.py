"""Every command that writes, on a real disk that is full and on a real read-only one.

The workspace of the bad-input catalog (a finished tiny pipeline: prepared, trained, synthesized,
evaluated, reported; here also a study made, answered by simulated participants and analysed) is copied
onto a tmpfs mounted for the case. "full": a filler file then takes every free block; "read-only": the
tmpfs is remounted read-only. The command runs as a user runs it (a fresh process, `python -m crn_repro`),
with its params edited where it would otherwise have nothing to do. Each must exit 1 with one line on
stderr that says what happened and what to do, no traceback, and leave every file on the disk as it was:
a before/after SHA-256 of every file, the dvclive files under runs/*/live included, nothing exempted
(a SQLite database by the SHA-256 of its SQL dump).

Mounting needs root (CI and our machine run as root); elsewhere the cases skip, and the catalog's
monkeypatched ENOSPC/EROFS cases (tests/test_bad_inputs.py) still run.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from crn_repro.cli import app
from test_bad_inputs import workspace  # noqa: F401  (the module-scoped finished pipeline)

REPO = Path(__file__).resolve().parents[1]
STUDY = "studies/s"


def edit(root: Path, change) -> None:
    raw = yaml.safe_load((root / "params.yaml").read_text())
    change(raw)
    (root / "params.yaml").write_text(yaml.safe_dump(raw))


def _more_steps(raw):
    train = raw["crn"].setdefault("train", {}) or {}
    raw["crn"]["train"] = dict(train, total_steps=int(train.get("total_steps") or raw["train"]["total_steps"])
                               + int(raw["train"]["checkpoint_every_steps"]))


# (command, params edit so that it has work to do, which disks): every command of the CLI that writes
CASES = {
    "prepare": (["prepare"], lambda raw: raw["synthetic"].update(num_train=raw["synthetic"]["num_train"] + 1)),
    "train": (["train", "-m", "crn"], _more_steps),
    "synthesize": (["synthesize", "-m", "crn"], None),
    "evaluate": (["evaluate"], None),
    "report": (["report"], None),
    "preset": (["preset", "demo", "--force"], None),
    "bench": (["bench", "--steps", "1", "--scale", "1"], None),
    "study make": (["study", "make", "--out", "studies/t"], None),
    "study preregister": (["study", "preregister", STUDY], None),
    "study export-mturk": (["study", "export-mturk", STUDY, f"{STUDY}/mturk", "--base-url", "https://example.org/s"], None),
    "study simulate": (["study", "simulate", STUDY, "--participants", "2", "--via", "web"], None),
    "study analyze": (["study", "analyze", STUDY], None),
    "study serve": (["study", "serve", STUDY, "--port", "0"], None),  # must refuse to start, not serve and lose answers
}


@pytest.fixture(scope="module")
def finished(workspace, tmp_path_factory):  # noqa: F811
    """The catalog's workspace with presets/ beside it and a study made, answered and analysed."""
    root = tmp_path_factory.mktemp("finished") / "ws"
    shutil.copytree(workspace, root)
    shutil.copytree(REPO / "presets", root / "presets")
    runner = CliRunner()
    cwd = os.getcwd()
    os.chdir(root)
    try:
        for args in (["study", "make", "--out", STUDY], ["study", "simulate", STUDY, "--participants", "3", "--via", "web"],
                     ["study", "analyze", STUDY]):
            result = runner.invoke(app, ["--params", "params.yaml", *args])
            assert result.exit_code == 0, (args, result.output)
    finally:
        os.chdir(cwd)
    return root


SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` (live files and temporaries included): relative path -> SHA-256. A
    SQLite database is compared by content: the SHA-256 of its SQL dump, which includes what its -wal
    holds (SQLite creates and removes the -wal and -shm files as connections come and go)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if not p.is_file() or p.name.endswith(tuple("sqlite" + side for side in SQLITE_SIDE_FILES)):
            continue
        data = sqlite_dump(p) if p.suffix == ".sqlite" else p.read_bytes()
        out[str(p.relative_to(root))] = hashlib.sha256(data).hexdigest()
    return out


def sqlite_dump(path: Path) -> bytes:
    """The SQL dump of the database at ``path`` with its -wal, read from copies (reading a WAL database
    in place may create files beside it)."""
    with tempfile.TemporaryDirectory() as folder:
        for side in ("", "-wal"):
            if Path(f"{path}{side}").is_file():
                shutil.copy(f"{path}{side}", Path(folder) / f"db.sqlite{side}")
        con = sqlite3.connect(Path(folder) / "db.sqlite")
        try:
            return "\n".join(con.iterdump()).encode()
        finally:
            con.close()


@pytest.fixture
def disk(tmp_path):
    """A 256 MiB tmpfs mounted for the case (root only)."""
    where = tmp_path / "disk"
    where.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(where)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root (tests/test_bad_inputs.py's monkeypatched disk faults still run)")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(where: Path) -> None:
    """Take every free block of the filesystem at ``where`` with one file outside the workspace."""
    stat = os.statvfs(where)
    with open(where / "filler", "wb") as f:
        os.posix_fallocate(f.fileno(), 0, stat.f_bavail * stat.f_frsize)
    with pytest.raises(OSError):  # the disk is really full
        with open(where / "probe", "wb") as f:
            f.write(b"x" * 65536)
            f.flush()
            os.fsync(f.fileno())
    (where / "probe").unlink(missing_ok=True)


@pytest.mark.slow
@pytest.mark.parametrize("kind, advice", [("full", "disk is full"), ("read-only", "read-only")])
@pytest.mark.parametrize("name", list(CASES))
def test_a_writing_command_on_a_real_full_or_read_only_disk(finished, disk, name, kind, advice):
    args, change = CASES[name]
    root = disk / "ws"
    shutil.copytree(finished, root)
    if change:
        edit(root, change)
    if kind == "full":
        fill(disk)
    else:
        assert subprocess.run(["mount", "-o", "remount,ro", str(disk)], capture_output=True).returncode == 0
    before = snapshot(root)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-m", "crn_repro", "--params", "params.yaml", *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 1, (done.returncode, done.stderr[-3000:])
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert advice in errors[0], errors[0]
    after = snapshot(root)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    assert not changed, f"{name} on a {kind} disk changed files: {changed}"
