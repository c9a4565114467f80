"""The layers: what each package may import, and no import cycles.

Two views, because each sees what the other cannot:

- Importing: every module of ``polc.runtime`` and ``polc.server``, each in a
  fresh process, imports no third-party package or polc layer it must not
  (lark, click, the compiler; cryptography and uvicorn only when used). This
  sees imports made through other packages, which the source does not show.
- Reading the source (AST) of every product module: the import graph of the
  product, function-level (lazy) imports included, has no cycle, and each
  layer imports only the layers below it (the runtime nothing of polc but
  itself; the compiler never the command line or the server). This sees lazy
  imports, which importing a module does not run. Imports under
  ``if TYPE_CHECKING:`` are left out: they never run.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

FORBIDDEN_RUNTIME = ("lark", "click", "polc.compiler", "cryptography")

REPO = Path(__file__).resolve().parent.parent
# source directory -> the package it installs as (pyproject's package-dir)
PACKAGE_DIRS = {"cli": "polc", "compiler": "polc.compiler", "runtime": "polc.runtime", "grammar": "polc.grammar"}


def _modules_after(code: str) -> set[str]:
    probe = code + "\nimport sys, json\nprint(json.dumps(sorted(sys.modules)))"
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return set(json.loads(r.stdout.splitlines()[-1]))


def _loaded(mods: set[str], name: str) -> bool:
    return any(m == name or m.startswith(name + ".") for m in mods)


def test_runtime_imports_with_msgpack_alone():
    mods = _modules_after(
        "import polc.runtime\n"
        "from polc.runtime import PolicyAgent, Decision, ReloadResult, ReloadEvent, ReloadFailure, PolicyLoadError"
    )
    for name in FORBIDDEN_RUNTIME:
        assert not _loaded(mods, name), name
    assert "msgpack" in mods


def test_runtime_works_without_lark_and_click_importable(tmp_path):
    """Even with lark and click made unimportable, an agent loads and decides."""
    code = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('lark', 'click'):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
from polc.runtime import PolicyAgent
agent = PolicyAgent({str(tmp_path)!r}, reload=False).start()
print(agent.check('m', 'threads.create').reason)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "no entitlement"


def test_polc_eval_never_imports_lark():
    mods = _modules_after("import polc.cli, polc.cmd_eval")
    assert not _loaded(mods, "lark") and not _loaded(mods, "polc.compiler")


def test_polc_eval_command_import_time_has_no_lark(tmp_path):
    r = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "polc", "eval", str(tmp_path), "m", "threads.create"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1, r.stderr  # denied: no entitlement
    imported = {line.split("|")[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "polc.runtime.agent" in imported
    assert not any(m == "lark" or m.startswith("lark.") for m in imported)
    assert not any(m.startswith("polc.compiler") for m in imported)


# --------------------------------------------------------------------------- every module, imported alone


def _product_modules() -> dict[str, tuple[Path, bool]]:
    """Every product module: dotted name -> (file, is a package)."""
    mods: dict[str, tuple[Path, bool]] = {}
    for directory, package in PACKAGE_DIRS.items():
        for path in sorted((REPO / directory).rglob("*.py")):
            if not (path.parent / "__init__.py").exists():
                continue  # not part of a package: the guard's boot sitecustomize, run by `polc guard` only
            parts = list(path.relative_to(REPO / directory).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts.pop()
            mods[".".join((package, *parts))] = (path, is_package)
    return mods


MODULES = _product_modules()

# Forks one child per module from a process that has imported nothing of polc
# but the package it walks, so each module is measured as if imported first.
_PROBE = """
import json, os, sys
names = json.loads(sys.argv[1])
base = set(sys.modules)
out = {}
for name in names:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            __import__(name)
            report = sorted(set(sys.modules) - base)
        except BaseException as exc:
            report = {"error": f"{type(exc).__name__}: {exc}"}
        os.write(w, json.dumps(report).encode())
        os._exit(0)
    os.close(w)
    chunks = []
    while True:
        chunk = os.read(r, 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(r)
    os.waitpid(pid, 0)
    out[name] = json.loads(b"".join(chunks))
print(json.dumps(out))
"""


def _imported_alone(names: list[str]) -> dict[str, list[str]]:
    r = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(names)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    result: dict[str, list[str]] = json.loads(r.stdout.splitlines()[-1])
    errors = {name: got for name, got in result.items() if isinstance(got, dict)}
    assert not errors, errors
    return result


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="probes with os.fork")
@pytest.mark.parametrize(
    "package, forbidden",
    [
        ("polc.runtime", ("lark", "click", "polc.compiler", "polc.server", "cryptography", "uvicorn")),
        # the ASGI app mounts in another server without uvicorn, click or the compiler
        ("polc.server", ("lark", "click", "polc.compiler", "uvicorn", "httptools")),
    ],
)
def test_every_module_imported_alone_stays_in_its_layer(package: str, forbidden: tuple[str, ...]) -> None:
    names = [name for name in MODULES if name == package or name.startswith(package + ".")]
    assert len(names) > 1, names
    bad = {}
    for name, loaded in _imported_alone(names).items():
        hits = sorted(m for m in loaded if any(m == f or m.startswith(f + ".") for f in forbidden))
        if hits:
            bad[name] = hits
    assert not bad, f"imported alone, these modules import what their layer must not: {bad}"


# --------------------------------------------------------------------------- the import graph, from the source


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(name: str, path: Path, is_package: bool) -> set[str]:
    """The product modules ``name`` imports anywhere in its source, lazily or not."""
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for stmt in child.orelse:
                    visit_one(stmt)
                continue
            visit_one(child)

    def visit_one(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in MODULES else base)  # `from pkg import module` imports the module
        visit(node)

    visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
    return {m for m in found if m in MODULES and m != name}


def _graph() -> dict[str, set[str]]:
    return {name: _imports(name, path, is_package) for name, (path, is_package) in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


# Cycles that exist and are being removed; each entry must still be a cycle
# (so a fixed one is taken off this list), and no other cycle may appear.
KNOWN_CYCLES: list[list[str]] = []


def test_the_cycle_finder_finds_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}, "f": set()}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_no_module_imports_one_that_imports_it_back() -> None:
    cycles = _cycles(_graph())
    new = [c for c in cycles if c not in KNOWN_CYCLES]
    assert not new, f"import cycles (lazy imports included): {new}"
    gone = [c for c in KNOWN_CYCLES if c not in cycles]
    assert not gone, f"no longer cycles; remove them from KNOWN_CYCLES: {gone}"


# Each layer and the polc packages it may import (besides its own modules).
LAYERS = {
    "polc.runtime": ("polc.runtime",),
    "polc.grammar": ("polc.grammar",),
    "polc.compiler": ("polc.compiler", "polc.runtime", "polc.grammar", "polc"),
    "polc.server": ("polc.server", "polc.runtime", "polc"),
}


def _layer(name: str) -> str | None:
    return next((layer for layer in LAYERS if name == layer or name.startswith(layer + ".")), None)


def test_each_layer_imports_only_the_layers_below_it() -> None:
    bad = []
    for name, targets in sorted(_graph().items()):
        layer = _layer(name)
        if layer is None:
            continue  # the command line (polc, polc.cmd_*) may use every layer
        for target in sorted(targets):
            allowed = LAYERS[layer]
            if not any(target == a or (a != "polc" and target.startswith(a + ".")) for a in allowed):
                bad.append(f"{name} imports {target}")
    assert not bad, bad


def test_the_source_walk_sees_every_package() -> None:
    assert {"polc", "polc.server", "polc.runtime", "polc.compiler", "polc.grammar"} <= set(MODULES)
    graph = _graph()
    assert "polc.runtime.agent" in graph["polc.runtime"]  # a lazy import, inside __getattr__
    assert "polc.server.app" in graph["polc.server.serve"]
