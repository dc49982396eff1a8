"""The package's layers: answering never imports training, nothing imports upward into the CLI or the
service, and the module-level imports form no circle.

The static checks read the source with `ast` (the package as installed: connectors/, indexes/ and
evals/ are ragapp.connectors, ragapp.indexes and ragapp.evals); the import check runs a clean
interpreter per module, because this test process has long since imported everything.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {"ragapp": "ragapp", "connectors": "ragapp.connectors", "indexes": "ragapp.indexes", "evals": "ragapp.evals"}

# What answering, serving and the everyday commands load; none of them may pull in training.
ANSWERING = ["ragapp.app", "ragapp.agent", "ragapp.service.api", "ragapp.cli.documents", "ragapp.reward"]
# Training code, and the libraries only training uses (peft is loaded lazily by the transformers
# generator when an adapter is configured, never at import, so it belongs here too).
TRAINING = [
    "ragapp.training",
    "ragapp.finetune",
    "ragapp.align",
    "ragapp.reward_training",
    "ragapp.preferences",
    "trl",
    "peft",
    "datasets",
]


def package_modules() -> dict[str, Path]:
    """Every module of the installed package by its dotted name."""
    modules = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join([package, *parts])] = path
    return modules


MODULES = package_modules()
TREES = {module: ast.parse(path.read_text(encoding="utf-8"), str(path)) for module, path in MODULES.items()}


def _targets(node: ast.Import | ast.ImportFrom, module: str, path: Path) -> list[str]:
    """The package modules an import statement loads (`from a import b` loads a.b if that is a module)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def module_level_imports(body: list[ast.stmt], module: str, path: Path) -> list[str]:
    """Imports that run when the module is imported: not those inside functions or `if TYPE_CHECKING:`."""
    out: list[str] = []
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            out += _targets(node, module, path)
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            out += module_level_imports(node.orelse, module, path)
        else:  # class bodies, if/try/with blocks run at import time
            for name in ("body", "orelse", "finalbody", "handlers"):
                block = getattr(node, name, None)
                if isinstance(block, list):
                    out += module_level_imports(block, module, path)
    return out


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for module, path in MODULES.items():
        targets = module_level_imports(TREES[module].body, module, path)
        graph[module] = {t for t in targets if t in MODULES and t != module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None (depth-first search, white/grey/black)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_package_is_what_the_checks_read() -> None:
    """The static checks below see every part of the package (a renamed folder would leave them blind)."""
    assert {"ragapp.app", "ragapp.cli", "ragapp.service.api", "ragapp.connectors", "ragapp.evals.runner"} <= set(
        MODULES
    )
    assert "ragapp.indexes" in MODULES


def test_find_cycle_finds_a_circle() -> None:
    """The detector itself, on a made-up graph: a circle behind an acyclic part, and none without it."""
    graph = {"a": {"b"}, "b": {"c", "d"}, "c": set(), "d": {"e"}, "e": {"b"}}
    assert find_cycle(graph) == ["b", "d", "e", "b"]
    graph["e"] = set()
    assert find_cycle(graph) is None


def test_module_level_imports_form_no_circle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_nothing_imports_upward_into_the_cli_or_the_service() -> None:
    """Any import counts here, also one inside a function: the CLI and the service sit on top of the rest."""
    upward = []
    for module, path in MODULES.items():
        if module == "ragapp.__main__":  # `python -m ragapp` is the CLI's entry point
            continue
        for node in ast.walk(TREES[module]):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            for target in _targets(node, module, path):
                into_cli = within(target, "ragapp.cli") and not within(module, "ragapp.cli")
                into_service = within(target, "ragapp.service") and not (
                    within(module, "ragapp.service") or within(module, "ragapp.cli")
                )
                if into_cli or into_service:
                    upward.append(f"{path.relative_to(ROOT)}:{node.lineno}: {module} imports {target}")
    assert not upward, "\n".join(upward)


def test_answering_never_imports_training() -> None:
    """One clean interpreter imports each answering module in turn and says which training modules each
    one added: loading none at all in one process means none of them loads any on its own."""
    code = (
        "import importlib, json, sys\n"
        "added = {}\n"
        f"for module in {ANSWERING!r}:\n"
        "    importlib.import_module(module)\n"
        "    seen = {m for found in added.values() for m in found}\n"
        f"    added[module] = [m for m in {TRAINING!r} if m in sys.modules and m not in seen]\n"
        "print(json.dumps(added))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False)
    assert result.returncode == 0, result.stderr
    added = json.loads(result.stdout.splitlines()[-1])
    assert list(added) == ANSWERING
    assert {module: found for module, found in added.items() if found} == {}, "answering loads training code"


def test_no_module_imports_another_modules_private_names() -> None:
    """A `_name` is its module's own business; what modules share is public (as ragapp.training is)."""
    private = []
    for module, path in MODULES.items():
        for node in ast.walk(TREES[module]):
            if isinstance(node, ast.ImportFrom) and node.module != "__future__":
                base = _targets(node, module, path)[0] if node.level else node.module or ""
                names = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                if names and within(base, "ragapp"):
                    private.append(f"{path.relative_to(ROOT)}:{node.lineno}: {module} imports {names} from {base}")
    assert not private, "\n".join(private)
