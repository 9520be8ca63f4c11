"""The repository's own sources: every citation of docs/facts.md names a section that exists there,
and nothing cites a document the repository does not carry."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SUFFIXES = {".py", ".md", ".yaml", ".js", ".html", ".css", ".toml"}
CITATION = re.compile(r"docs/facts\.md §(\d+(?:\.\d+)?)")


def sources() -> list[Path]:
    skip = {".git", ".venv", "node_modules", ".dvc"}
    return [
        p for p in REPO.rglob("*")
        if p.is_file() and p.suffix in SUFFIXES and not skip & set(p.relative_to(REPO).parts) and "egg-info" not in str(p)
    ]


def sections() -> set[str]:
    """'1', '2.1', ... from the headings '## 1. Title' and '### 2.1 Title' of docs/facts.md."""
    text = (REPO / "docs" / "facts.md").read_text()
    return set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", text, flags=re.M))


def test_every_citation_names_an_existing_section():
    known = sections()
    assert {"1", "2.1", "2.2", "2.3", "3", "4", "5", "6", "7", "8", "9"} <= known
    cited = {}
    for path in sources():
        for number in CITATION.findall(path.read_text(errors="replace")):
            cited.setdefault(number, []).append(str(path.relative_to(REPO)))
    assert cited, "no citation found: the pattern no longer matches the sources"
    missing = {n: files for n, files in cited.items() if n not in known}
    assert missing == {}


def test_no_citation_of_documents_outside_the_repository():
    offenders = [str(p.relative_to(REPO)) for p in sources() if p.name != "test_docs.py" and "crn-facts" in p.read_text(errors="replace")]
    assert offenders == []


# --- docs/architecture.md names only what exists -----------------------------------------------------------

# Names the page uses that belong to torch, DVC or the data, not to this code base.
NOT_OURS = {"nn.Module", "torch.compile", "state_dict", "total", "G", "D", "weights_only=True",
            "pytest", "chromium", "nginx", "openssl"}  # programs
REPO_FOLDERS = ("crn_repro/", "baselines/", "tests/", "docs/", "presets/", "examples/", "benchmarks/", ".ci/")


def defined_names() -> set[str]:
    """Every name this code base defines anywhere (functions, classes, methods, module and class attributes,
    dataclass fields), from the sources of crn_repro/, baselines/ and tests/ (the page explains the tests too)."""
    import ast

    names = set()
    for package in ("crn_repro", "baselines", "tests"):
        for path in (REPO / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    names.add(node.name)
                elif isinstance(node, ast.Assign):
                    names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
                    names |= {e.id for t in node.targets if isinstance(t, ast.Tuple) for e in t.elts if isinstance(e, ast.Name)}
                elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                    names.add(node.target.id)
    return names


def _resolves_as_code(dotted: str) -> bool:
    """`module.attr...` (modules of crn_repro/ or baselines/), or `Class.attr` of a class defined here."""
    import importlib
    import importlib.util

    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        prefix = ".".join(parts[:cut])
        for candidate in (prefix, f"crn_repro.{prefix}"):
            if not candidate.startswith(("crn_repro", "baselines")):
                continue
            if cut == len(parts):  # a module by itself: found without importing it (`__main__` would run)
                try:
                    if importlib.util.find_spec(candidate) is not None:
                        return True
                except ImportError:
                    pass
                continue
            try:
                obj = importlib.import_module(candidate)
            except ImportError:
                continue
            for attr in parts[cut:]:
                fields = getattr(obj, "__dataclass_fields__", {})
                if attr in fields:
                    obj = fields[attr]
                    continue
                if not hasattr(obj, attr):
                    return False
                obj = getattr(obj, attr)
            return True
    return False


def _params_key(dotted: str) -> bool:
    import yaml

    node = yaml.safe_load((REPO / "params.yaml").read_text())
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def unknown_names(text: str) -> list[str]:
    """The code names a page mentions (in backticks) that exist nowhere: no module, function, class,
    attribute, params key or repository file of that name."""
    defined = defined_names()
    unknown = []
    for span in dict.fromkeys(re.findall(r"`([^`\n]+)`", text)):
        name = span[:-2] if span.endswith("()") else span
        if name in NOT_OURS or re.search(r"[\s'\"<>\[\]{}=,:]", name) or name.startswith(("-", "$")):
            continue  # a command, an option, a literal, a template: not a name of the code
        if name.startswith(REPO_FOLDERS):
            if not list(REPO.glob(name.rstrip("/"))):
                unknown.append(name)
        elif "/" in name or re.search(r"\.(pt|json|yaml|lock|csv|md|html|py)$", name):
            continue  # a file the pipeline writes (model.pt, summary.json, ...) or a path of the user's
        elif "." in name:
            first = name.split(".")[0]
            if not (_resolves_as_code(name) or _params_key(name) or (first in defined and _resolves_as_code_class(name))):
                unknown.append(name)
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            if name not in defined and not _resolves_as_code(name):
                unknown.append(name)
    return unknown


def _resolves_as_code_class(dotted: str) -> bool:
    """`Class.attr` where Class is defined in some module of the package."""
    import importlib

    first, *rest = dotted.split(".")
    for path in (REPO / "crn_repro").rglob("*.py"):
        if re.search(rf"^class {first}\b", path.read_text(), flags=re.M):
            module = ".".join(path.relative_to(REPO).with_suffix("").parts)
            return _resolves_as_code(".".join([module, first, *rest]))
    return False


def test_architecture_page_names_only_what_exists():
    unknown = unknown_names((REPO / "docs" / "architecture.md").read_text())
    assert unknown == [], f"docs/architecture.md names what does not exist: {', '.join(unknown)}"


def test_the_name_check_catches_a_name_that_does_not_exist():
    """The check is not vacuous: the names the page used to give for things that never existed are caught."""
    assert unknown_names("`wrap_for_ddp` and `trainer.wrap_for_ddp` and `crn_repro/nowhere.py` and `train.no_such_key`") == [
        "wrap_for_ddp", "trainer.wrap_for_ddp", "crn_repro/nowhere.py", "train.no_such_key"]
    assert unknown_names("`trainer.train`, `build_run`, `ModelSpec.display_name`, `train.compile`, `crn_repro/trainer.py`") == []
