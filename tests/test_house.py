"""The house's shape, kept: no import circle among mtcore's modules, no neutral module importing a
framework (even lazily), and framework names outside mtcore/torch and mtcore/jax only where an
allow-list says why (the registry, user-facing text, defaults users see)."""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "mtcore"
FRAMEWORK_FOLDERS = ("torch", "jax")
FRAMEWORK_PACKAGES = ("torch", "jax", "jaxlib", "flax", "optax")


def _modules() -> dict[str, Path]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Every module ``path`` imports, at its top or inside a function: mtcore's modules by name,
    other packages by their top-level name."""
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against this module's package
                base = name.split(".")[: -node.level] + ([node.module] if node.module else [])
                module = ".".join(base)
            else:
                module = node.module or ""
            # ``from mtcore.x import y`` imports the module mtcore.x.y where there is one.
            named = [f"{module}.{a.name}" for a in node.names if f"{module}.{a.name}" in modules]
            out.update(named or [module])
    return {m if m.startswith("mtcore") else m.split(".")[0] for m in out}


def _within(module: str, modules: dict[str, Path]) -> str | None:
    """The mtcore module ``module`` names (its longest known prefix), or None outside mtcore."""
    while module and module not in modules:
        module = module.rpartition(".")[0]
    return module or None


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: {t for i in _imports(p, modules) if (t := _within(i, modules)) and t != m and t != "mtcore"}
            for m, p in modules.items()}


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _neutral(module: str) -> bool:
    return module.split(".")[1:2] not in ([f] for f in FRAMEWORK_FOLDERS) and module != "mtcore"


def test_no_import_circle_among_mtcores_modules():
    assert _circles(_graph()) == []


def test_the_circle_finder_finds_a_circle():
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_neutral_module_imports_a_framework():
    modules = _modules()
    arrows = sorted(f"{m} -> {i}" for m, p in modules.items() if _neutral(m)
                    for i in _imports(p, modules)
                    if i.split(".")[0] in FRAMEWORK_PACKAGES
                    or any(i.startswith(f"mtcore.{f}.") or i == f"mtcore.{f}" for f in FRAMEWORK_FOLDERS))
    assert arrows == []


# Where a framework's name may stand in code outside mtcore/torch and mtcore/jax (docstrings,
# comments and longer strings -- help, error lines -- are free): a bare name string or an
# identifier holding one, per file, with why. ("hf" is a backend on torch, not a framework.)
ALLOWED = {
    "mtcore/backend.py": ("the registry: BACKENDS, and the framework that reads a .bin checkpoint",
                          Counter({'"torch"': 8, '"jax"': 4, '"flax"': 1})),
    "mtcore/devices.py": ("the framework names, declared once", Counter({'"torch"': 1, '"jax"': 1})),
    "mtcore/train/options.py": ("--framework's default, in its help", Counter({'"torch"': 1})),
    "mtcore/train/run.py": ("compare's default frameworks, as its help says", Counter({'"torch"': 1, '"jax"': 1})),
    "mtcore/train/plots.py": ("torch's compile mode in a caption", Counter({"_torch_mode": 1})),
    "mtcore/train/report.py": ("the report's words: 'a JAX host device', torch's compile mode",
                               Counter({'"jax"': 1, "_torch_mode": 1})),
    "mtcore/train/runs.py": ("the report's name for torch's compile mode (a user-facing label)",
                             Counter({"_torch_mode": 1})),
    "mtcore/train/trainer.py": ("the run record's torch intra-op thread count (torch_threads)",
                                Counter({"torch": 3, '"torch"': 1})),
}


def framework_names(path: Path) -> Counter:
    """Bare framework-name strings and identifiers naming a framework, in ``path``'s code."""
    found = Counter()
    for token in tokenize.generate_tokens(io.StringIO(path.read_text(encoding="utf-8")).readline):
        if token.type == tokenize.NAME and re.search(r"torch|jax|flax", token.string):
            found[token.string] += 1
        elif token.type == tokenize.STRING and token.string.strip("'\"") in ("torch", "jax", "flax"):
            found['"' + token.string.strip("'\"") + '"'] += 1
    return found


def test_framework_names_stand_outside_the_framework_folders_only_where_allowed():
    seen = {}
    for module, path in _modules().items():
        if _neutral(module) and (names := framework_names(path)):
            seen[path.relative_to(ROOT).as_posix()] = names
    assert seen == {f: names for f, (_, names) in ALLOWED.items()}
