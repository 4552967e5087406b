"""Citations point into the repository: every ``docs/<page>.md`` a file names exists.

Code and docs cite docs/ by path and section (``docs/protocol.md §3.2``).
Notes kept outside the repository (the project's spec, its research notes)
are not cited: what vmis takes from them is in docs/hyperv.md and
docs/real-vms.md. This test reads src/, tests/, bench/, dev/, .ci/, docs/
and README.md as text.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve()

#: ``docs/<page>.md`` or ``docs/services/<key>.md``; templates like these and globs are skipped
DOC_PATH = re.compile(r"(?<![\w/.-])docs/[\w./-]+?\.md(?![\w/-])")
#: a section right after a path: ``§3.2``, or ``§3-4`` (the first number is checked)
SECTION = re.compile(r"[ \t]*(?:\n[ \t#*:]*)?§(\d+(?:\.\d+)*)")
#: a relative Markdown link in docs/: ``[text](../protocol.md)``
MD_LINK = re.compile(r"\]\(([^)#:\s]+\.md)(?:#[^)]*)?\)")
#: a source file named in docs: ``src/vmis/host/session.py``, ``vmis/services/kvp/``, ``tests/x.py``
CODE_PATH = re.compile(r"(?<![\w/.-])(?:(?:src|tests|bench|dev)/|vmis/)[\w/.-]*[\w/](?![\w<*-])")
#: a numbered heading: ``## 3. Rules`` or ``### 3.2 HELLO``
HEADING = re.compile(r"^#{2,4} (\d+(?:\.\d+)*)\.? ", re.M)

#: files outside the repository that must not be cited (spelled so this file does not match)
OUTSIDE = re.compile("|".join([
    r"SPEC" r"\.md",
    r"\bSPEC\b\s*§",
    r"§\s*[\d.]+\s+of\s+SPEC\b",
    r"hyperv" r"-facts",
    r"\bresearch" r"/",
    r"feasibility" r"\.md",
    r"\bfeasibility\s*§",
    r"\banchors(?:\.md)?\s*§",
]))

TEXT_SUFFIXES = {".py", ".md", ".toml", ".txt", ".sh", ".cfg", ".ini", ".json", ".service", ""}


def _files():
    """Every text file of the repository's own trees (no caches, no built images)."""
    for top in ("src", "tests", "bench", "dev", ".ci", "docs"):
        for path in sorted((ROOT / top).rglob("*")):
            if (path.is_file() and "__pycache__" not in path.parts
                    and not any(part.endswith(".egg-info") for part in path.parts)
                    and path.suffix in TEXT_SUFFIXES):
                yield path
    yield ROOT / "README.md"


def _text(path):
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return ""


FILES = [p for p in _files() if _text(p)]


def _rel(path):
    return path.relative_to(ROOT).as_posix()


def _line(text, pos):
    return text.count("\n", 0, pos) + 1


def _sections(path):
    return set(HEADING.findall(path.read_text(encoding="utf-8")))


def test_the_files_are_found():
    names = {_rel(p) for p in FILES}
    assert {"README.md", "docs/protocol.md", "src/vmis/services/catalog.py",
            "tests/test_docs.py"} <= names


@pytest.mark.parametrize("path", FILES, ids=_rel)
def test_cited_docs_exist(path):
    text = _text(path)
    missing = [f"{_rel(path)}:{_line(text, m.start())}: {m.group()}"
               for m in DOC_PATH.finditer(text) if not (ROOT / m.group()).is_file()]
    if path.suffix == ".md" and _rel(path).startswith("docs/"):
        missing += [f"{_rel(path)}:{_line(text, m.start())}: {m.group(1)}"
                    for m in MD_LINK.finditer(text)
                    if not (path.parent / m.group(1)).resolve().is_file()]
    assert not missing, "cited files that do not exist:\n" + "\n".join(missing)


DOC_PAGES = [p for p in FILES if p.suffix == ".md"]


@pytest.mark.parametrize("path", DOC_PAGES, ids=_rel)
def test_code_paths_in_docs_exist(path):
    text = _text(path)
    missing = []
    for m in CODE_PATH.finditer(text):
        name = m.group()
        target = ROOT / ("src/" + name if name.startswith("vmis/") else name)
        if not target.exists():
            missing.append(f"{_rel(path)}:{_line(text, m.start())}: {name}")
    assert not missing, "paths to files that do not exist:\n" + "\n".join(missing)


@pytest.mark.parametrize("path", FILES, ids=_rel)
def test_cited_sections_exist(path):
    text = _text(path)
    wrong = []
    for m in DOC_PATH.finditer(text):
        target = ROOT / m.group()
        section = SECTION.match(text, m.end())
        if section and target.is_file() and section.group(1) not in _sections(target):
            wrong.append(f"{_rel(path)}:{_line(text, m.start())}: {m.group()} §{section.group(1)}")
    assert not wrong, "cited sections that do not exist:\n" + "\n".join(wrong)


@pytest.mark.parametrize("path", [p for p in FILES if p != HERE], ids=lambda p: _rel(p))
def test_nothing_cites_notes_outside_the_repository(path):
    text = _text(path)
    found = [f"{_rel(path)}:{_line(text, m.start())}: {m.group()}" for m in OUTSIDE.finditer(text)]
    assert not found, ("cites a file outside the repository; cite docs/ instead "
                       "(docs/hyperv.md, docs/real-vms.md):\n" + "\n".join(found))
