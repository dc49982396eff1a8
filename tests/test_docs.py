"""What README.md and docs/*.md promise about the code: every documented import works, every Python
example at least parses, and every file the README's layout table names exists. Cheap: imports only."""

from __future__ import annotations

import ast
import builtins
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(?P<lang>\w*)\n(?P<code>.*?)^```", re.DOTALL | re.MULTILINE)
# Bare names that install as ragapp.<name>; a top-level package of that name belongs to another project.
MOVED = ("connectors", "indexes", "evals")


def _blocks(lang: str | None = None) -> list[tuple[str, str]]:
    """(page:line, code) of every fenced block, or of those marked `lang`."""
    out = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for m in FENCE.finditer(text):
            if lang is None or m["lang"] == lang:
                out.append((f"{page.relative_to(ROOT)}:{text[: m.start()].count(chr(10)) + 1}", m["code"]))
    return out


def _imports() -> list[tuple[str, str, list[str]]]:
    """(where, module, names) of every `import ragapp...` / `from ragapp... import ...` in any code block."""
    found = []
    for where, code in _blocks():
        # Shell blocks and prompts can hold Python lines too (`python -c` aside): take the lines that read
        # as an import statement, joining a parenthesised continuation.
        for m in re.finditer(
            r"^\s*(?:>>> )?(from ragapp[\w.]* import (?:\([^)]*\)|.+)|import ragapp[\w.]*)", code, re.MULTILINE
        ):
            tree = ast.parse(m[1].strip())
            node = tree.body[0]
            if isinstance(node, ast.ImportFrom):
                found.append((where, node.module or "", [a.name for a in node.names]))
            elif isinstance(node, ast.Import):
                found.extend((where, a.name, []) for a in node.names)
    return found


IMPORTS = _imports()


def test_the_docs_document_imports() -> None:
    """The scan below finds what it should (README and python-api.md show `from ragapp import App`)."""
    assert {("ragapp", "App")} <= {(module, name) for _, module, names in IMPORTS for name in names}
    assert any(module == "ragapp.evals" for _, module, _ in IMPORTS)


@pytest.mark.parametrize(("where", "module", "names"), IMPORTS, ids=[f"{w} {m}" for w, m, _ in IMPORTS])
def test_documented_import_works(where: str, module: str, names: list[str]) -> None:
    imported = importlib.import_module(module)
    for name in names:
        assert hasattr(imported, name), f"{where}: `from {module} import {name}`: {module} has no {name}"


@pytest.mark.parametrize(("where", "code"), _blocks("python"), ids=[w for w, _ in _blocks("python")])
def test_python_examples_parse_and_use_no_bare_moved_package(where: str, code: str) -> None:
    tree = ast.parse(code, filename=where)
    for node in ast.walk(tree):
        modules = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        modules += [a.name for a in node.names] if isinstance(node, ast.Import) else []
        bare = [m for m in modules if m.split(".")[0] in MOVED]
        assert not bare, f"{where}: imports {bare[0]}; it installs as ragapp.{bare[0]}"


def _names(tree: ast.AST) -> tuple[set[str], set[str]]:
    """(names read, names bound) anywhere in `tree`, scopes ignored: enough to catch a name used but never
    imported or assigned (`GenerationSettings(...)` without its import)."""
    read, bound = set(), set(dir(builtins))
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (read if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
    return read, bound


@pytest.mark.parametrize(
    "page", [p for p in PAGES if "```python" in p.read_text(encoding="utf-8")], ids=lambda p: p.name
)
def test_python_examples_define_what_they_use(page: Path) -> None:
    """A page's examples read in order (python-api.md's later ones use the `app` of the first); `my_...`
    names stand for the reader's own objects."""
    where = str(page.relative_to(ROOT))
    code = "\n".join(c for w, c in _blocks("python") if w.startswith(where + ":"))
    read, bound = _names(ast.parse(code))
    undefined = sorted(n for n in read - bound if not n.startswith("my_"))
    assert undefined == [], f"{where}: names used but never imported or assigned"


def test_no_page_names_a_moved_package_by_its_bare_import_name() -> None:
    bare = re.compile(r"(?:^|\s)(?:from|import) (?:" + "|".join(MOVED) + r")\b|`(?:" + "|".join(MOVED) + r")\.\w")
    hits = [
        f"{page.relative_to(ROOT)}:{n}: {line.strip()}"
        for page in PAGES
        for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), start=1)
        if bare.search(line)
    ]
    assert hits == []


def _layout_rows() -> list[tuple[str, list[str]]]:
    """README's "Layout" table: (folder, [the files and folders its description names])."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 2 or not cells[0].startswith("`"):
            continue
        names = [n for n in re.findall(r"`([^`\s]+)`", cells[1]) if n.endswith((".py", "/"))]
        rows.append((cells[0].strip("`"), names))
    return rows


def test_readme_layout_names_only_paths_that_exist() -> None:
    rows = _layout_rows()
    assert {"ragapp/", "connectors/", "indexes/", "evals/"} <= {folder for folder, _ in rows}
    missing = []
    for folder, names in rows:
        base = ROOT / folder
        assert base.is_dir(), f"README layout: {folder} does not exist"
        for name in names:
            # `ragapp/generators/` is a path from the top; `report.py` and `tools/` are somewhere in the folder.
            path = name.rstrip("/")
            found = (ROOT / path).exists() if "/" in path else any(base.rglob(path))
            if not found:
                missing.append(f"{folder}: {name}")
    assert missing == []
