"""Fresh clones of the repository for tests that run the real tools (dvc, torchrun, sbatch) as a user would:
the files git tracks, as they are in the working tree, in a new git repository, with a tiny params.yaml."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import REPO, tiny_raw_params

BIN = os.path.dirname(sys.executable)  # the virtual environment's crn-repro, dvc, torchrun
ENV = dict(os.environ, PATH=BIN + os.pathsep + os.environ.get("PATH", ""), DVC_NO_ANALYTICS="1")
GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    return [name for name in out.decode().split("\0") if name and (REPO / name).is_file()]


def clone(dest: Path) -> Path:
    """What `git clone` of this working tree gives (tracked files, uncommitted edits included), committed."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in tracked_files():
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, dest / name, follow_symlinks=False)
    run(GIT + ["init", "-q"], dest)
    commit(dest, "clone")
    return dest


def commit(dest: Path, message: str) -> None:
    run(GIT + ["add", "-A"], dest)
    run(GIT + ["commit", "-qm", message, "--allow-empty"], dest)


def tiny_params(models: tuple[str, ...] = ("crn",)) -> dict:
    """conftest's tiny params with paths relative to the clone (as params.yaml has them); a small segmenter."""
    raw = tiny_raw_params(Path("."))
    raw["paths"] = {k: str(Path(v)) for k, v in raw["paths"].items()}
    raw["models"] = list(models)
    raw["segmenter"]["network"] = {"base_width": 4, "depth": 2, "max_width": 8}
    raw["evaluate"]["bootstrap_resamples"] = 20
    return raw


def write_params(dest: Path, raw: dict, name: str = "params.yaml") -> Path:
    path = dest / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run(cmd, cwd: Path, timeout: float = 600, check: bool = True, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    """A command in ``cwd`` (a list, or a string for the shell); with ``check``, a failure shows its output."""
    result = subprocess.run(cmd, cwd=cwd, env=env or ENV, capture_output=True, text=True, timeout=timeout,
                            shell=isinstance(cmd, str), **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"{cmd} exited {result.returncode} in {cwd}:\n{result.stdout}\n{result.stderr}")
    return result
