""".ci/lock_status.py, CI's check that the committed dvc.lock matches the committed code and params (a fresh
clone's `dvc status --json`, no rerun), on a small pipeline in a git repository and fresh clones of it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO
from workspace import GIT, commit, run

pytestmark = pytest.mark.slow

PIPELINE = """stages:
  make:
    cmd: python make.py
    deps: [make.py]
    params: [size]
    outs: [made.txt]
  use:
    cmd: python -c "print(open('made.txt').read())" > used.txt
    deps: [made.txt]
    outs: [used.txt]
"""


def check(repo):
    return subprocess.run([sys.executable, str(REPO / ".ci/lock_status.py"), str(repo)], capture_output=True, text=True)


def fresh_clone(origin, dest):
    run(GIT + ["clone", "-q", str(origin), str(dest)], origin.parent)
    return dest


def test_a_stale_lock_fails_naming_the_stage_and_a_consistent_one_passes(tmp_path):
    origin = tmp_path / "origin"
    origin.mkdir()
    (origin / "make.py").write_text("open('made.txt', 'w').write('1')\n")
    (origin / "params.yaml").write_text("size: 1\nother: 2\n")
    (origin / "dvc.yaml").write_text(PIPELINE)
    (origin / ".gitignore").write_text("/made.txt\n/used.txt\n")
    run(GIT + ["init", "-q"], origin)
    run([sys.executable, "-m", "dvc", "init", "-q"], origin)
    run([sys.executable, "-m", "dvc", "repro", "-q"], origin)
    commit(origin, "run")
    ok = check(fresh_clone(origin, tmp_path / "ok"))  # no outputs in a fresh clone: not a change of the code
    assert ok.returncode == 0, ok.stdout + ok.stderr

    (origin / "make.py").write_text("open('made.txt', 'w').write('2')  # changed, not rerun\n")
    (origin / "params.yaml").write_text("size: 2\nother: 3\n")
    commit(origin, "edit without rerunning")
    stale = check(fresh_clone(origin, tmp_path / "stale"))
    assert stale.returncode == 1
    assert "  make: make.py modified, params size modified\n" in stale.stderr, stale.stderr
    assert "use:" not in stale.stderr  # its own dependencies did not change
