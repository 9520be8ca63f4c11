"""The report stage's parts on their own (the whole stage runs in tests/test_evaluate.py)."""

import shutil
import subprocess
from pathlib import Path

from crn_repro.params import load_params
from crn_repro.report import provenance

REPO = Path(__file__).resolve().parents[1]


def _git(work: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=work, check=True, capture_output=True)


def test_provenance_is_dirty_only_when_code_or_params_differ_from_the_commit(tmp_path, monkeypatch):
    """A clone run as the README says rewrites dvc.lock, tracked reports/ files and DVC's .gitignore files:
    none of that is an uncommitted change; an edit to code or params.yaml is, and is named."""
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, tmp_path / name)
    outputs = ["dvc.lock", "reports/report.md", "reports/headline/crn.json", "reports/figures/metrics.png",
               "data/synth/crn/index.json", "runs/crn/metrics.json", "data/.gitignore"]
    for name in ["crn_repro/evaluate.py", *outputs]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("committed\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-qm", "c")
    monkeypatch.chdir(tmp_path)
    params = load_params("params.yaml")
    for name in outputs:  # the pipeline's own outputs, rewritten by a run
        (tmp_path / name).write_text("rewritten by the pipeline\n")
    code = provenance(params)["code"]
    assert "uncommitted" not in code and len(code) == 12, code
    (tmp_path / "crn_repro/evaluate.py").write_text("edited\n")
    assert provenance(params)["code"].endswith(" with uncommitted changes to crn_repro/evaluate.py")
    _git(tmp_path, "checkout", "crn_repro/evaluate.py")
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text() + "\n# edited\n")
    assert provenance(params)["code"].endswith(" with uncommitted changes to params.yaml")
