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
