"""`dvc repro` on a tiny params file in a temporary copy of the repository."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, tiny_raw_params
from crn_repro.files import read_yaml


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("dvc", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")) is None, reason="dvc not installed")
def test_dvc_repro_tiny(tmp_path):
    work = tmp_path / "repo"
    work.mkdir()
    for name in ("crn_repro", "baselines", "dvc.yaml", ".dvc", ".dvcignore", "pyproject.toml"):
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, work / name, ignore=shutil.ignore_patterns("__pycache__", "tmp", "cache"))
        else:
            shutil.copy(src, work / name)
    (work / "data/raw/synthetic").mkdir(parents=True)  # the demo's raw-data folder prepare depends on (in git)
    shutil.copy(REPO / "data/raw/synthetic/README.md", work / "data/raw/synthetic/README.md")
    (work / "studies").mkdir()  # the human-study folder evaluate depends on (tracked in git)
    shutil.copy(REPO / "studies/README.md", work / "studies/README.md")
    raw = tiny_raw_params(Path("."))
    raw["paths"] = {k: str(Path(v)) for k, v in raw["paths"].items()}
    raw["segmenter"]["network"] = {"base_width": 4, "depth": 2, "max_width": 8}
    raw["evaluate"]["bootstrap_resamples"] = 20
    (work / "params.yaml").write_text(yaml.safe_dump(raw))
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git + ["init", "-q"], cwd=work, check=True)
    subprocess.run(git + ["add", "-A"], cwd=work, check=True)
    subprocess.run(git + ["commit", "-qm", "tiny"], cwd=work, check=True)
    result = subprocess.run(["dvc", "repro"], cwd=work, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (work / "reports/report.md").is_file()
    assert (work / "reports/figures/qualitative.png").is_file()
    assert (work / "runs/crn/model.pt").is_file()
    again = subprocess.run(["dvc", "status"], cwd=work, env=env, capture_output=True, text=True)
    assert "up to date" in again.stdout, again.stdout
    metrics = subprocess.run(["dvc", "metrics", "show"], cwd=work, env=env, capture_output=True, text=True)
    assert "runs/crn/metrics.json" in metrics.stdout and "reports/headline/crn.json" in metrics.stdout, metrics.stdout
    assert max(len(line) for line in metrics.stdout.splitlines()) <= 160, metrics.stdout  # readable in a terminal
    # Each stage depends on the code it runs: a comment in report.py makes the report stale, nothing else.
    report_py = work / "crn_repro/report.py"
    report_py.write_text(report_py.read_text() + "\n# a comment\n")
    stale = subprocess.run(["dvc", "status"], cwd=work, env=env, capture_output=True, text=True)
    assert [line for line in stale.stdout.splitlines() if line.endswith(":") and not line[:1].isspace()] == ["report:"], stale.stdout
    report_py.write_text(report_py.read_text().removesuffix("\n# a comment\n"))
    # The experiment's raw dataset is a dependency of prepare: another dataset arriving changes nothing,
    # a change to this one reruns prepare (and what depends on it).
    (work / "data/raw/cityscapes").mkdir()
    (work / "data/raw/cityscapes/new_file.png").write_bytes(b"another dataset")
    same = subprocess.run(["dvc", "status", "prepare"], cwd=work, env=env, capture_output=True, text=True)
    assert "up to date" in same.stdout, same.stdout
    # Of the params, prepare depends on `data` and the section of the dataset it reads only.
    params_path = work / "params.yaml"
    edited = read_yaml(params_path, "")
    edited["nyu"]["num_classes"] += 1
    params_path.write_text(yaml.safe_dump(edited))
    same = subprocess.run(["dvc", "status", "prepare"], cwd=work, env=env, capture_output=True, text=True)
    assert "up to date" in same.stdout, same.stdout
    edited["synthetic"]["num_val"] += 1
    params_path.write_text(yaml.safe_dump(edited))
    changed = subprocess.run(["dvc", "status", "prepare"], cwd=work, env=env, capture_output=True, text=True)
    assert "modified:           synthetic" in changed.stdout, changed.stdout
    edited["synthetic"]["num_val"] -= 1
    params_path.write_text(yaml.safe_dump(edited))
    (work / "data/raw/synthetic/new_file.png").write_bytes(b"changed")
    changed = subprocess.run(["dvc", "status", "prepare"], cwd=work, env=env, capture_output=True, text=True)
    assert "prepare" in changed.stdout and "data/raw/synthetic" in changed.stdout, changed.stdout
    (work / "data/raw/synthetic/new_file.png").unlink()
    # Code a training stage depends on changes (a user pulls a new version): DVC removes the stage's
    # non-persistent outputs and reruns it; training resumes at its last step and must write them again.
    noise_py = work / "crn_repro/noise.py"
    noise_py.write_text(noise_py.read_text() + "\n# a comment\n")
    rerun = subprocess.run(["dvc", "repro", "train@crn"], cwd=work, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "resuming crn from runs/crn/state.pt at step" in rerun.stdout + rerun.stderr, rerun.stdout + rerun.stderr
    for name in ("params.json", "summary.json", "metrics.json", "live/metrics.json"):
        assert (work / "runs/crn" / name).is_file(), name
