"""The method docs are the only place code comments cite: ``docs/methods/<method>.md#<anchor>``.

Anchor rule: ``docs/methods/dsg.md#D3`` resolves iff ``docs/methods/dsg.md`` has a markdown heading whose
text is ``D3`` or starts with ``D3`` followed by ``.`` or a space (``### D3. Linear mixing ...``).
Ids are unique within a file. No file of the packages or the tests points outside the repository
(the method specifications the project started from are not part of it).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CODE_DIRS = ("onmanifold", "onmanifold_bench", "tests")
METHODS = ROOT / "docs" / "methods"
CITATION = re.compile(r"docs/methods/([A-Za-z0-9_-]+)\.md#([A-Za-z0-9_-]+)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")
HEADING_ID = re.compile(r"^([A-Za-z]+[0-9]+)(?:[.\s]|$)")
# references to files outside the repository; built from parts so that this file does not match itself
FORBIDDEN = (
    re.compile("shared" + "/methods", re.IGNORECASE),
    re.compile("spec" + r"\s+section", re.IGNORECASE),
    re.compile(r"(?<![\w/])" + "methods" + r"/(?:dsg|tag|asced)\.md"),  # a bare methods/x.md: not the repository's docs
)


def _code_files() -> list[Path]:
    return sorted(p for d in CODE_DIRS for p in (ROOT / d).rglob("*.py"))


def _citing_files() -> list[Path]:
    """Every file that may cite the method docs: the code, the tests, the docs and the README."""
    return _code_files() + sorted((ROOT / "docs").rglob("*.md")) + [ROOT / "README.md"]


def headings(path: Path) -> list[str]:
    """The text of every markdown heading of ``path`` (fenced code blocks skipped)."""
    out, fenced = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        m = None if fenced else HEADING.match(line)
        if m:
            out.append(m.group(1))
    return out


def resolves(anchor: str, heading_texts: list[str]) -> bool:
    """The anchor rule of the module docstring."""
    return any(text == anchor or re.match(re.escape(anchor) + r"[.\s]", text) for text in heading_texts)


def citations() -> list[tuple[Path, int, str, str]]:
    """``(file, line, method, anchor)`` of every ``docs/methods/<method>.md#<anchor>`` in the citing files."""
    out = []
    for path in _citing_files():
        if not path.is_file():
            continue
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            out.extend((path, i, m.group(1), m.group(2)) for m in CITATION.finditer(line))
    return out


def test_no_file_points_outside_the_repository():
    me = Path(__file__).resolve()
    bad = []
    for path in _code_files():
        if path.resolve() == me:
            continue
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if any(p.search(line) for p in FORBIDDEN):
                bad.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not bad, "cite docs/methods/<method>.md#<anchor> instead of files outside the repository:\n" + "\n".join(bad)


def test_every_cited_anchor_resolves_to_a_heading():
    found = citations()
    assert len(found) >= 30, f"only {len(found)} citations of docs/methods found: the scan is broken"
    cited_methods = {m for _, _, m, _ in found}
    for doc in ("dsg", "tag", "asced"):
        assert doc in cited_methods, f"docs/methods/{doc}.md is never cited by the code"
    cache: dict[str, list[str] | None] = {}
    bad = []
    for path, line, method, anchor in found:
        if method not in cache:
            doc = METHODS / f"{method}.md"
            cache[method] = headings(doc) if doc.is_file() else None
        texts = cache[method]
        if texts is None:
            bad.append(f"{path.relative_to(ROOT)}:{line}: docs/methods/{method}.md does not exist")
        elif not resolves(anchor, texts):
            bad.append(f"{path.relative_to(ROOT)}:{line}: docs/methods/{method}.md has no heading starting with {anchor!r}")
    assert not bad, "unresolved citations:\n" + "\n".join(bad)


@pytest.mark.parametrize("doc", sorted(p.name for p in METHODS.glob("*.md")))
def test_anchor_ids_are_unique_within_a_method_doc(doc):
    ids = [m.group(1) for text in headings(METHODS / doc) if (m := HEADING_ID.match(text))]
    assert ids, f"{doc}: no numbered headings"
    dup = sorted({i for i in ids if ids.count(i) > 1})
    assert not dup, f"{doc}: anchor ids used by more than one heading: {dup}"


def test_the_anchor_rule():
    texts = ["D1. The gradient", "D12 shared", "R1", "Notation"]
    assert resolves("D1", texts) and resolves("D12", texts) and resolves("R1", texts)
    assert not resolves("D2", texts) and not resolves("D", texts) and not resolves("Nota", texts)
