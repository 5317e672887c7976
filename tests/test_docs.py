"""The docs point inside the repository: every "spec N" citation names a part of docs/spec.md."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SPEC = REPO / "docs" / "spec.md"
# "spec 2.5", "spec 2.5/15.1", "spec 5-6", "spec 8.2, 15.3", "spec section 15", "spec 9 / 15.4"
CITATION = re.compile(r"\bspec(?: section)? (\d+(?:\.\d+)?(?:\s*(?:[-/,]|and)\s*\d+(?:\.\d+)?)*)")
NUMBER = re.compile(r"\d+(?:\.\d+)?")
# Sections whose numbered items (a list, a table) are cited as N.M.
ITEMISED = {"11": r"^(\d+)\. ", "15": r"^\| (\d+) \|"}


def _sections() -> set[str]:
    """Section numbers of docs/spec.md: headings "## N." / "### N.M", and the items of 11, 15."""
    found: set[str] = set()
    current = ""
    for line in SPEC.read_text().splitlines():
        heading = re.match(r"^#{2,3} (\d+(?:\.\d+)?)[. ]", line)
        if heading:
            found.add(heading.group(1))
            current = heading.group(1).split(".")[0]
        elif current in ITEMISED and (item := re.match(ITEMISED[current], line)):
            found.add(f"{current}.{item.group(1)}")
    return found


def _cited_files() -> list[Path]:
    roots = ["README.md", "docs", "pcam", "workflow", "config", "tests", "benchmarks"]
    files = []
    for root in roots:
        path = REPO / root
        candidates = [path] if path.is_file() else sorted(path.rglob("*"))
        files += [
            p
            for p in candidates
            if p.suffix in {".py", ".md", ".yaml", ".smk", ".rst"}
            and not p.is_symlink()
            and "__pycache__" not in p.parts
            and p != SPEC
        ]
    return files


def test_every_spec_citation_resolves_to_a_section_of_docs_spec():
    sections = _sections()
    assert {"2.5", "9.1", "11.9", "15.4"} <= sections  # headings and itemised sections parsed
    cited, unresolved = 0, []
    for path in _cited_files():
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for match in CITATION.finditer(line):
                for section in NUMBER.findall(match.group(1)):
                    cited += 1
                    if section not in sections:
                        unresolved.append(f"{path.relative_to(REPO)}:{number}: spec {section}")
    assert cited > 100
    assert unresolved == []


def test_nothing_cites_a_path_outside_the_repository():
    outside = re.compile(r"(?:\.\./|/work/)shared|shared/(?:spec|notes|STYLE)")
    hits = [
        f"{path.relative_to(REPO)}:{n}"
        for path in _cited_files()
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if outside.search(line) and path != Path(__file__)
    ]
    assert hits == []


def test_design_and_spec_say_what_spec_n_means():
    for doc in (REPO / "docs" / "design.md", SPEC):
        assert re.search(r'"spec N".*section N', doc.read_text(), re.DOTALL), doc
