"""The package's shape (docs/architecture.md): imports go one way (no cycle, delayed imports included),
and the light modules stay light (the study server and the judgment statistics never load torch)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

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


def _module_path(module: str) -> Path:
    path = REPO / (module.replace(".", "/") + ".py")
    return path if path.exists() else REPO / module.replace(".", "/") / "__init__.py"


def top_level_imports(module: str, graph: dict[str, set[str]]) -> set[str]:
    """The project modules ``module`` imports at its top level (when it is imported)."""
    found = set()
    for node in ast.parse(_module_path(module).read_text()).body:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return {m for m in found if m in graph}


def stage_code(command_module: str) -> set[str]:
    """The source files a stage runs: what `crn-repro` imports to start (the CLI's top-level imports and
    theirs) and everything the stage's library module imports, anywhere, transitively."""
    graph = import_graph()
    seen, stack = set(), [*top_level_imports("crn_repro.cli", graph), "crn_repro", command_module]
    while stack:
        module = stack.pop()
        if module not in seen:
            seen.add(module)
            stack.extend(graph[module])
    return {str(_module_path(m).relative_to(REPO)) for m in seen | {"crn_repro.cli", "crn_repro.__main__"}}


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


def documented_layers() -> dict[str, int]:
    """module -> layer, from the table under "Imports go one way" in docs/architecture.md (the rule itself)."""
    text = (REPO / "docs" / "architecture.md").read_text()
    table = text[text.index("<!-- layers:"):].split("\n\n", 1)[0]
    layers = {}
    for row in re.findall(r"^\| (\d+)\. [^|]+\| (.+) \|$", table, flags=re.M):
        for name in re.findall(r"`([^`]+)`", row[1]):
            module = name if name.startswith("baselines") else ("crn_repro" if name == "crn_repro" else f"crn_repro.{name}")
            assert module not in layers, f"docs/architecture.md: {name} is listed in two layers"
            layers[module] = int(row[0])
    assert len(set(layers.values())) >= 5, "docs/architecture.md: the layer table was not found"
    return layers


def test_every_module_has_exactly_one_documented_layer():
    graph, layers = import_graph(), documented_layers()
    unlisted = sorted(set(graph) - set(layers))
    assert not unlisted, f"add these modules to the layer table of docs/architecture.md: {', '.join(unlisted)}"
    not_modules = sorted(set(layers) - set(graph))
    assert not not_modules, f"docs/architecture.md's layer table lists what is no module: {', '.join(not_modules)}"


def test_imports_go_down_the_documented_layers():
    """A module imports only from its own layer or the layers below (docs/architecture.md)."""
    graph, layers = import_graph(), documented_layers()
    upward = [f"{module} (layer {layers[module]}) imports {target} (layer {layers[target]})"
              for module, targets in sorted(graph.items()) for target in sorted(targets)
              if module in layers and target in layers and layers[target] > layers[module]]
    assert upward == [], "; ".join(upward)


def test_the_layer_check_catches_an_upward_import(tmp_path, monkeypatch):
    """The check above is not vacuous: an import from a higher layer (here memory -> registry, the one the
    previous layout let through) is found."""
    graph = import_graph()
    graph["crn_repro.memory"] = graph["crn_repro.memory"] | {"crn_repro.registry"}
    monkeypatch.setattr(sys.modules[__name__], "import_graph", lambda: graph)
    with pytest.raises(AssertionError, match="crn_repro.memory \\(layer 2\\) imports crn_repro.registry \\(layer 3\\)"):
        test_imports_go_down_the_documented_layers()


def test_checkpoint_format_knows_no_models():
    """checkpoint.py is the file format; rebuilding networks is the registry's (registry -> checkpoint)."""
    graph = import_graph()
    assert "crn_repro.registry" not in graph["crn_repro.checkpoint"]
    assert "crn_repro.checkpoint" in graph["crn_repro.registry"]


def test_layer_one_never_loads_torch():
    """Layer 1 is plain Python: the study server, `study analyze` and the judgment statistics start without
    torch (or the registry of networks)."""
    light = sorted(m for m, layer in documented_layers().items() if layer == 1)
    assert {"crn_repro.study.server", "crn_repro.study.analyze", "crn_repro.judgments", "crn_repro.files"} <= set(light)
    code = (
        f"import sys, importlib; [importlib.import_module(m) for m in {light!r}]; "
        "print(sorted(m for m in ('torch', 'crn_repro.registry') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]", out.stdout


STAGE_MODULES = {"prepare": "crn_repro.prepare", "train": "crn_repro.trainer", "synthesize": "crn_repro.synthesize",
                 "evaluate": "crn_repro.evaluate", "report": "crn_repro.report"}


def test_every_stage_depends_on_exactly_the_code_it_runs():
    """dvc.yaml lists, per stage, the source files `crn-repro <stage>` imports (no folder), so a change
    reruns the stages that run the changed code and no other."""
    import yaml

    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    checked = set()
    for name, stage in stages.items():
        stage = stage.get("do", stage)
        command = stage["cmd"].split()[1]
        declared = {d for d in stage["deps"] if d.endswith(".py") or d in PACKAGES or d.rstrip("/") in ("crn_repro", "baselines")}
        expected = stage_code(STAGE_MODULES[command])
        assert declared == expected, f"{name}: dvc.yaml should list:\n" + "\n".join(f"- {f}" for f in sorted(expected))
        checked.add(command)
    assert checked == set(STAGE_MODULES)
