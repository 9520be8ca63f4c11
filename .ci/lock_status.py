"""CI: the committed dvc.lock (and so reports/) corresponds to the committed code and params.

Run in a fresh clone (`python .ci/lock_status.py [REPO]`): `dvc status --json`, no rerun. A locked stage whose
command, params or git-tracked dependencies (code, the demo's raw-data folder) differ from what dvc.lock
recorded is stale, and this exits 1 naming each stage and what changed. Outputs and data dependencies
that a fresh clone does not have (they come from running the pipeline) are not changes of the code.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def tracked(repo: Path, path: str) -> bool:
    out = subprocess.run(["git", "ls-files", "--", path], cwd=repo, capture_output=True, text=True, check=True)
    return bool(out.stdout.strip())


def stale_stages(repo: Path) -> dict[str, list[str]]:
    """{stage: [what changed]} for every stage whose command, params or git-tracked deps changed."""
    result = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=repo, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"CI: `dvc status --json` failed:\n{result.stdout}{result.stderr}")
    status = json.loads(result.stdout or "{}")
    stale = {}
    for stage, entries in status.items():
        reasons = []
        for entry in entries:
            if entry == "changed command":
                reasons.append("command")
            if not isinstance(entry, dict):
                continue
            for path, change in entry.get("changed deps", {}).items():
                if isinstance(change, dict):  # a params file: {key: modified | new | deleted}
                    reasons += [f"params {key} {how}" for key, how in change.items()]
                elif tracked(repo, path):
                    reasons.append(f"{path} {change}")
        if reasons:
            stale[stage] = reasons
    return stale


def main(argv: list[str]) -> int:
    repo = Path(argv[1]) if len(argv) > 1 else Path.cwd()
    stale = stale_stages(repo)
    if not stale:
        print("CI: dvc.lock matches the committed code and params (dvc status --json)")
        return 0
    lines = "\n".join(f"  {stage}: {', '.join(reasons)}" for stage, reasons in sorted(stale.items()))
    print(f"CI: dvc.lock does not match the committed code and params; these stages are stale:\n{lines}\n"
          "Run `dvc repro`, then commit dvc.lock and reports/ (the report must come from the code beside it).",
          file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
