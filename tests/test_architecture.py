"""The package's shape (docs/architecture.md): imports go one way (no cycle, delayed imports included),
and the light modules stay light (the study server and the judgment statistics never load torch)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("crn_repro", "baselines")


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports anywhere in its source (top level or inside functions)."""
    modules = {_module_name(p): p for package in PACKAGES for p in (REPO / package).rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            targets |= {t for t in found if t in modules}
        graph[name] = targets - {name}
    return graph


def test_imports_form_no_cycle():
    graph = import_graph()
    done, on_path, cycles = set(), [], []

    def visit(node):
        if node in on_path:
            cycles.append(on_path[on_path.index(node):] + [node])
            return
        if node in done:
            return
        on_path.append(node)
        for target in sorted(graph[node]):
            visit(target)
        on_path.pop()
        done.add(node)

    for node in sorted(graph):
        visit(node)
    assert cycles == [], " ; ".join(" -> ".join(c) for c in cycles)


def test_checkpoint_format_knows_no_models():
    """checkpoint.py is the file format; rebuilding networks is the registry's (registry -> checkpoint)."""
    graph = import_graph()
    assert "crn_repro.registry" not in graph["crn_repro.checkpoint"]
    assert "crn_repro.checkpoint" in graph["crn_repro.registry"]


def test_study_tools_and_judgment_statistics_do_not_load_torch():
    code = (
        "import sys; import crn_repro.study.server, crn_repro.study.analyze, crn_repro.judgments, crn_repro.files; "
        "print(sorted(m for m in ('torch', 'crn_repro.registry') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]", out.stdout
