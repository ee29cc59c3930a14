"""The README and docs/ hold together: links resolve, the README stays short, its module map names
every module on disk, and every finding is dated. Plain file reading: no framework imports."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
FINDINGS = DOCS / "findings"
README_MAX_LINES = 200
BENCH_MODULES = ("conftest.py", "cases.py", "inputs.py", "machine.py", "summary.py", "turns.py", "scaling_worker.py")

LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+[\"'][^)]*[\"'])?\s*\)")
REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s+(\S+)")
INLINE_CODE = re.compile(r"`[^`]*`")
DATED = re.compile(r"^\d{4}-\d{2}-\d{2}-")


def markdown_files() -> list[Path]:
    return [README] + sorted(DOCS.rglob("*.md"))


def links(path: Path):
    """(line number, target) of every markdown link outside code blocks and inline code."""
    fence = None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        stripped = line.lstrip()
        if stripped.startswith(("```", "~~~")):
            marker = stripped[:3]
            fence = None if fence == marker else (fence or marker)
            continue
        if fence:
            continue
        for match in LINK.finditer(INLINE_CODE.sub("", line)):
            yield number, match.group(1)
        if match := REFERENCE.match(line):  # a reference-style link's definition: [name]: target
            yield number, match.group(1)


def test_docs_exist():
    assert README.is_file()
    assert (DOCS / "README.md").is_file(), "docs/README.md (the index of the docs pages) is missing"
    assert (FINDINGS / "README.md").is_file(), "docs/findings/README.md (the findings index) is missing"


def test_relative_links_resolve():
    broken = []
    for path in markdown_files():
        for number, target in links(path):
            if target.startswith(("http://", "https://", "mailto:", "#")):
                continue
            file_part = target.split("#", 1)[0]
            if not file_part:
                continue
            if not (path.parent / file_part).exists():
                broken.append(f"{path.relative_to(ROOT)}:{number}: [{target}] does not resolve")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_readme_is_short():
    lines = len(README.read_text(encoding="utf-8").splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines, at most {README_MAX_LINES}: move detail into docs/"


def test_readme_module_map_names_every_module():
    text = README.read_text(encoding="utf-8")
    modules = sorted(
        p for p in (ROOT / "mtcore").rglob("*.py")
        if p.name not in ("__init__.py", "__main__.py") and "__pycache__" not in p.parts
    )
    modules += [ROOT / "benches" / name for name in BENCH_MODULES if (ROOT / "benches" / name).is_file()]
    missing = [str(p.relative_to(ROOT)) for p in modules if p.name not in text]
    assert not missing, "README.md's module map does not name: " + ", ".join(missing)


def test_findings_are_dated():
    assert FINDINGS.is_dir(), "docs/findings/ is missing"
    undated = [p.name for p in sorted(FINDINGS.iterdir()) if p.name != "README.md" and not DATED.match(p.name)]
    assert not undated, "findings must be named YYYY-MM-DD-topic.md: " + ", ".join(undated)


def test_the_docs_the_code_points_to_exist():
    """Comments and docstrings send readers to docs/ for figures and reasons (a code comment carries
    none): every such path names a file that is there."""
    named = re.compile(r"docs/[\w./-]+?\.md")
    missing = [f"{path.relative_to(ROOT)}:{number}: {ref}"
               for folder in ("mtcore", "benches", "scripts", "tests")
               for path in sorted((ROOT / folder).rglob("*.py"))
               for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
               for ref in named.findall(line)
               if not (ROOT / ref).is_file()]
    assert not missing, "code points to docs that are not there:\n" + "\n".join(missing)
