"""The package's layout rules (issue #13), checked on the source of ``src/eosflow``.

1. every module imports on its own (one new interpreter; every ``eosflow`` module is dropped from
   ``sys.modules`` before each import);
2. no import circle among the package's modules (static graph from ``ast``);
3. no private name of one module imported by another (dunders are public; a private module
   ``pkg._m`` may be imported by the modules of ``pkg`` only); ``tests/`` is not checked;
4. no module named like a function or class it exports, and no package attribute that names a
   submodule but is bound to something else;
5. size limits: no module over 400 lines, no function over 80 lines.

Rules 2-5 read the source with ``ast`` (nothing is imported), so a checker bug cannot hide behind
an import error; the ``test_checker_*`` tests run the checkers on a small fake package with known
violations, so the rules themselves are tested.

Import-graph rule (rule 2). An edge ``M -> T`` is an import of ``T`` by ``M``, at module level or
inside a function (a deferred import is still a dependency, and the next refactor may hoist it);
imports under ``if TYPE_CHECKING:`` never run and are skipped; dynamic imports (``importlib``,
the lazy ``__getattr__`` of ``eosflow/__init__.py``) are not seen. Python runs the ``__init__`` of
every package above ``T`` before ``T``; for a package that is not above ``M`` this is a real
dependency (``M -> P``), but ``M``'s own ancestors are already initializing when ``M`` runs, so the
implicit ``M -> ancestor`` edge is not drawn: a package ``__init__`` importing its submodules is
no circle back to them. An *explicit* import of an ancestor package to use its names (``import
eosflow``, ``from eosflow import some_function``) does read the half-initialized package, so it is
an edge ``M -> eosflow``, and ``eosflow``'s edges are what its ``__init__`` imports: this is a
circle exactly when the package imports ``M`` (directly or through others). ``from eosflow import
sub`` where ``sub`` is a submodule is an edge to the submodule only.
"""

from __future__ import annotations

import ast
import json
import os
import pkgutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "eosflow"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80


# ----------------------------------------------------------------------------- the checker


@dataclass
class Module:
    name: str  # dotted, "eosflow.losses.base"
    path: Path
    is_pkg: bool
    tree: ast.Module = field(repr=False)

    @property
    def package(self) -> str:
        """The package that relative imports in this module start from."""
        return self.name if self.is_pkg else self.name.rpartition(".")[0]


@dataclass(frozen=True)
class Import:
    """One imported name: ``from target import name`` (or ``import target`` with ``name=None``)."""

    importer: str
    target: str  # the module the name is read from, or the imported module itself
    name: str | None  # the name read from ``target``; None when ``target`` is the imported module
    line: int
    path: Path


def discover(src: Path, package: str) -> dict[str, Module]:
    """Every module of ``package`` under ``src`` (subpackages included), parsed, without importing
    anything: pkgutil over the folders, recursing into packages."""
    found: dict[str, Module] = {}

    def add(name: str, path: Path, is_pkg: bool) -> None:
        found[name] = Module(name, path, is_pkg, ast.parse(path.read_text(), str(path)))

    def walk(folder: Path, prefix: str) -> None:
        for info in pkgutil.iter_modules([str(folder)]):
            name = f"{prefix}.{info.name}"
            if info.ispkg:
                add(name, folder / info.name / "__init__.py", True)
                walk(folder / info.name, name)
            else:
                add(name, folder / f"{info.name}.py", False)

    add(package, src / package / "__init__.py", True)
    walk(src / package, package)
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(tree: ast.AST):
    """``ast.walk`` without the bodies of ``if TYPE_CHECKING:`` (their ``else`` runs)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _resolve_from(mod: Module, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    parts = mod.package.split(".")
    base = parts[: len(parts) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _in_package(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def imports(mods: dict[str, Module], package: str) -> list[Import]:
    """Every import of a module of ``package`` made by a module of ``package``, resolved."""
    out = []
    for mod in mods.values():
        for node in _runtime_nodes(mod.tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if _in_package(alias.name, package):
                        out.append(Import(mod.name, alias.name, None, node.lineno, mod.path))
            elif isinstance(node, ast.ImportFrom):
                base = _resolve_from(mod, node)
                if not _in_package(base, package):
                    continue
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    if sub in mods:  # `from pkg import submodule`: the submodule itself
                        out.append(Import(mod.name, sub, None, node.lineno, mod.path))
                    else:
                        out.append(Import(mod.name, base, alias.name, node.lineno, mod.path))
    return out


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_graph(mods: dict[str, Module], package: str) -> dict[str, dict[str, Import]]:
    """``{M: {T: first import making the edge}}`` by the rule in this file's docstring."""
    graph: dict[str, dict[str, Import]] = {m: {} for m in mods}
    for imp in imports(mods, package):
        m = imp.importer
        own = set(_ancestors(m))
        targets = [p for p in _ancestors(imp.target) if p not in own and p != m]
        if imp.target in own:  # an explicit import of an ancestor package, to read its names
            targets.append(imp.target)
        elif imp.target != m:
            targets.append(imp.target)
        for t in targets:
            if t in graph:
                graph[m].setdefault(t, imp)
    return graph


def cycles(graph: dict[str, dict[str, Import]]) -> list[list[str]]:
    """One circle ``[a, b, ..., a]`` per strongly connected component with more than one module
    (Tarjan's algorithm, then a DFS inside the component for the circle)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    comps: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            comps.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)

    found = []
    for comp in comps:
        if len(comp) < 2:
            continue
        members = set(comp)
        start = comp[0]
        # A path start -> ... -> start inside the component (BFS from start's successors).
        prev: dict[str, str] = {}
        frontier = [start]
        while frontier and start not in prev:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v]):
                    if w in members and w not in prev:
                        prev[w] = v
                        nxt.append(w)
            frontier = nxt
        path = [start]
        v = prev[start]
        while v != start:
            path.append(v)
            v = prev[v]
        path.append(start)
        found.append(path[::-1])
    return sorted(found)


def describe_cycle(graph: dict[str, dict[str, Import]], cycle: list[str], src: Path) -> str:
    steps = []
    for a, b in zip(cycle, cycle[1:], strict=False):
        imp = graph[a][b]
        what = f"{imp.target}.{imp.name}" if imp.name else imp.target
        steps.append(f"  {a} -> {b}   ({imp.path.relative_to(src)}:{imp.line}: imports {what})")
    return " -> ".join(cycle) + "\n" + "\n".join(steps)


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _private_module_violation(importer: str, module: str) -> str | None:
    """The first private component of ``module`` that ``importer`` may not reach: a module
    ``pkg._m`` is private to ``pkg`` (its own modules may import it, nobody else)."""
    parts = module.split(".")
    for i in range(1, len(parts)):
        if _is_private(parts[i]):
            parent = ".".join(parts[:i])
            if not _in_package(importer, parent):
                return ".".join(parts[: i + 1])
    return None


def _dotted(node: ast.expr) -> str | None:
    names = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return ".".join([node.id, *reversed(names)])
    return None


def private_imports(mods: dict[str, Module], package: str, src: Path) -> list[str]:
    """``file:line: importer uses module.name`` for each private name (or private module) of one
    module reached from another: ``from m import _x``, ``import m`` + ``m._x``,
    ``from pkg import m`` + ``m._x``. Dunder names are public."""
    out = []

    def report(mod: Module, line: int, what: str) -> None:
        out.append(f"{mod.path.relative_to(src)}:{line}: {mod.name} uses {what}")

    all_imports = imports(mods, package)
    for mod in mods.values():
        mine = [i for i in all_imports if i.importer == mod.name]
        bound: dict[str, str] = {}  # local name -> eosflow module it is bound to
        for imp in mine:
            bad_module = _private_module_violation(mod.name, imp.target)
            if bad_module:
                report(mod, imp.line, bad_module)
            elif imp.name is not None and _is_private(imp.name) and imp.target != mod.name:
                report(mod, imp.line, f"{imp.target}.{imp.name}")
        for node in _runtime_nodes(mod.tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if _in_package(alias.name, package):
                        if alias.asname:
                            bound[alias.asname] = alias.name
                        else:
                            bound[package] = package
            elif isinstance(node, ast.ImportFrom):
                base = _resolve_from(mod, node)
                for alias in node.names:
                    if f"{base}.{alias.name}" in mods:
                        bound[alias.asname or alias.name] = f"{base}.{alias.name}"
        for node in _runtime_nodes(mod.tree):
            if not isinstance(node, ast.Attribute):
                continue
            chain = _dotted(node.value)
            if chain is None or chain.split(".")[0] not in bound:
                continue
            head, _, rest = chain.partition(".")
            owner = bound[head] + (f".{rest}" if rest else "")
            if owner not in mods or owner == mod.name:
                continue
            full = f"{owner}.{node.attr}"
            if full in mods:
                bad_module = _private_module_violation(mod.name, full)
                if bad_module:
                    report(mod, node.lineno, bad_module)
            elif _is_private(node.attr):
                report(mod, node.lineno, full)
    return sorted(set(out))


def _exports(tree: ast.Module) -> tuple[set[str], set[str]]:
    """(``__all__`` if it is a literal list/tuple, else empty; public top-level names defined by
    ``def``/``class``/assignment)."""
    all_names: set[str] = set()
    defined: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            defined.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                if isinstance(t, ast.Name):
                    defined.add(t.id)
                    if t.id == "__all__" and isinstance(node.value, ast.List | ast.Tuple):
                        all_names |= {
                            e.value
                            for e in node.value.elts
                            if isinstance(e, ast.Constant) and isinstance(e.value, str)
                        }
    return all_names, {n for n in defined if not n.startswith("_")}


def shadowing_names(mods: dict[str, Module], src: Path) -> list[str]:
    """Rule 4: a module ``pkg/foo.py`` that defines or exports a public ``foo``, and a package
    whose ``__init__`` binds the name of one of its submodules to something else (then
    ``pkg.foo`` is not the module ``pkg.foo``)."""
    out = []
    for mod in mods.values():
        short = mod.name.rpartition(".")[2]
        all_names, defined = _exports(mod.tree)
        if short in all_names or short in defined:
            line = next(
                (
                    n.lineno
                    for n in mod.tree.body
                    if getattr(n, "name", None) == short
                    or any(getattr(t, "id", None) == short for t in getattr(n, "targets", []))
                ),
                1,
            )
            how = "defines" if short in defined else "exports"
            out.append(f"{mod.path.relative_to(src)}:{line}: module {mod.name} {how} {short!r}")
        if not mod.is_pkg:
            continue
        for node in mod.tree.body:
            # (name bound, the submodule it is or None, line)
            bindings: list[tuple[str, str | None, int]] = []
            if isinstance(node, ast.ImportFrom):
                base = _resolve_from(mod, node)
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    is_module = sub if sub in mods else None
                    bindings.append((alias.asname or alias.name, is_module, alias.lineno))
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.asname:
                        bindings.append((alias.asname, alias.name, alias.lineno))
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                bindings.append((node.name, None, node.lineno))
            elif isinstance(node, ast.Assign):
                bindings += [
                    (t.id, None, node.lineno) for t in node.targets if isinstance(t, ast.Name)
                ]
            for bound, is_module, line in bindings:
                sub = f"{mod.name}.{bound}"
                if sub in mods and is_module != sub:
                    out.append(
                        f"{mod.path.relative_to(src)}:{line}: {mod.name}.{bound} is bound "
                        f"to something other than the submodule {sub}"
                    )
    return sorted(out)


def _docstring_lines(node) -> int:
    first = node.body[0] if node.body else None
    if isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None), ast.Constant):
        if isinstance(first.value.value, str):
            return first.end_lineno - first.lineno + 1
    return 0


def too_long(mods: dict[str, Module], src: Path) -> tuple[list[str], list[str]]:
    """Rule 5: (modules over ``MAX_MODULE_LINES`` lines, functions over ``MAX_FUNCTION_LINES``
    lines from ``def`` to their last line, the docstring not counted (it is the API's
    documentation, not code to read through); methods and nested functions count on their
    own)."""
    big_modules, big_functions = [], []
    for mod in mods.values():
        rel = mod.path.relative_to(src)
        n = len(mod.path.read_text().splitlines())
        if n > MAX_MODULE_LINES:
            big_modules.append(f"{rel}: {n} lines")
        for node in ast.walk(mod.tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1 - _docstring_lines(node)
                if length > MAX_FUNCTION_LINES:
                    big_functions.append(f"{rel}:{node.lineno}: {node.name}() {length} lines")
    return sorted(big_modules), sorted(big_functions)


# ----------------------------------------------------------------------------- the package

MODS = discover(SRC, PACKAGE)


def test_discovery_covers_every_file():
    """The walk sees every ``.py`` file under ``src/eosflow`` (a folder without ``__init__.py``
    would be skipped by pkgutil and escape every rule) and the known subpackages."""
    on_disk = {p.resolve() for p in (SRC / PACKAGE).rglob("*.py")}
    assert {m.path.resolve() for m in MODS.values()} == on_disk
    for name in ("eosflow.losses.base", "eosflow.experiments._common", "eosflow.experiments.net"):
        assert name in MODS


_IMPORT_EACH = textwrap.dedent(
    """
    import importlib, json, sys, traceback
    package, names = sys.argv[1], sys.argv[2:]
    failures, files = {}, {}
    for name in names:
        for key in [k for k in sys.modules if k == package or k.startswith(package + ".")]:
            del sys.modules[key]
        try:
            importlib.import_module(name)
        except BaseException:
            failures[name] = traceback.format_exc()
        files[name] = getattr(sys.modules.get(name), "__file__", None)
    print(json.dumps({"failures": failures, "files": files}))
    """
)


def import_each(src: Path, package: str, names: list[str]) -> tuple[dict, dict]:
    """Import ``names`` in this order in one new interpreter, each from scratch: every module of
    ``package`` is dropped from ``sys.modules`` before each import (third-party modules stay
    loaded; a fresh interpreter per module would cost ~2 s of JAX start-up each). Returns
    ``({name: traceback} for failures, {name: file it was loaded from})``."""
    path = os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")])
    r = subprocess.run(
        [sys.executable, "-c", _IMPORT_EACH, package, *names],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=path),
        timeout=300,
        cwd=src,
    )
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    return result["failures"], result["files"]


def test_every_module_imports_on_its_own():
    """Rule 1."""
    failures, files = import_each(SRC, PACKAGE, sorted(MODS))
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())
    # Every module was imported, from this source tree (not from an installed copy).
    assert {name: Path(f).resolve() for name, f in files.items()} == {
        name: m.path.resolve() for name, m in MODS.items()
    }


def test_no_import_cycles():
    """Rule 2 (the edge rule is in this file's docstring)."""
    graph = import_graph(MODS, PACKAGE)
    found = cycles(graph)
    assert not found, "import circles:\n" + "\n".join(describe_cycle(graph, c, SRC) for c in found)


def test_no_private_imports():
    """Rule 3: only ``src/`` (tests may reach privates)."""
    found = private_imports(MODS, PACKAGE, SRC)
    assert not found, "private names used across modules:\n" + "\n".join(found)


def test_no_module_named_like_its_export():
    """Rule 4."""
    found = shadowing_names(MODS, SRC)
    assert not found, "modules named like what they export:\n" + "\n".join(found)


def test_module_size():
    """Rule 5a: no module over 400 lines."""
    found, _ = too_long(MODS, SRC)
    assert not found, f"modules over {MAX_MODULE_LINES} lines:\n" + "\n".join(found)


def test_function_size():
    """Rule 5b: no function over 80 lines."""
    _, found = too_long(MODS, SRC)
    assert not found, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(found)


# ----------------------------------------------------------------------------- checker self-tests

_FAKE = {
    # The package imports its submodules (no circle back to them), binds its submodule's name
    # `c` to the function c.c (shadowing), and imports `e`, which imports the bare package.
    "__init__.py": """
        from fake.a import f
        from fake import b
        from fake.c import c
        from fake import e
        """,
    # a <-> b through a deferred import inside a function; a takes b's private `_hidden`.
    "a.py": """
        from fake.b import _hidden, g
        from .b import __version__
        def f():
            return g() + _hidden
        """,
    "b.py": """
        __version__ = "1"
        _hidden = 1
        def g():
            from . import a
            return a.f
        """,
    # c reaches b's private through an attribute; c defines `c`.
    "c.py": """
        import fake.b
        import fake.b as bee
        from fake import b as bb
        def c():
            return fake.b._hidden + bee._other + bb._third + fake.b.__version__
        """,
    # d reads a non-module name from the package, which does not import d: no circle.
    "d.py": """
        from typing import TYPE_CHECKING
        from fake import f
        if TYPE_CHECKING:
            from fake.sub.user import u  # never runs: no edge, no circle
        """,
    # e imports the bare package, which imports e: a circle.
    "e.py": """
        import fake
        def e2():
            return fake.f
        """,
    # A private module is private to its package: siblings may import it, outsiders may not.
    "sub/__init__.py": """
        from fake.sub._priv import y
        """,
    "sub/_priv.py": """
        y = 1
        """,
    "sub/user.py": """
        from fake.sub._priv import y
        from ._priv import y as y2
        import fake.d
        u = y + y2
        """,
    "outside.py": """
        from fake.sub._priv import y
        import fake.sub
        z = fake.sub._priv.y
        """,
    "outside2.py": """
        from fake.sub import _priv
        """,
}


def _fake_package(tmp_path: Path) -> dict[str, Module]:
    for rel, text in _FAKE.items():
        p = tmp_path / "fake" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text))
    long_fn = "def long_fn():\n" + "    x = 1\n" * 79 + "    return x\n"  # 81 lines
    ok_fn = "def ok_fn():\n" + "    x = 1\n" * 78 + "    return x\n"  # 80 lines
    pad = "\n" * (MAX_MODULE_LINES + 1 - 81 - 80)
    (tmp_path / "fake" / "big.py").write_text(long_fn + ok_fn + pad)  # 401 lines
    (tmp_path / "fake" / "fits.py").write_text("x = 1\n" * MAX_MODULE_LINES)
    return discover(tmp_path, "fake")


def test_checker_import_each(tmp_path):
    """Rule 1's runner imports each module from scratch: ``fake2.a`` reads ``fake2.b`` without
    importing it, which works only after something else imported ``fake2.b``."""
    for rel, text in {
        "__init__.py": "",
        "a.py": "import fake2\nx = fake2.b.y\n",
        "b.py": "y = 1\n",
        "c.py": "import fake2.b\n",
    }.items():
        (tmp_path / "fake2").mkdir(exist_ok=True)
        (tmp_path / "fake2" / rel).write_text(text)
    failures, files = import_each(tmp_path, "fake2", ["fake2.c", "fake2.a", "fake2.b"])
    assert set(failures) == {"fake2.a"} and "AttributeError" in failures["fake2.a"]
    assert Path(files["fake2.c"]).resolve() == (tmp_path / "fake2" / "c.py").resolve()


def test_checker_discovery(tmp_path):
    mods = _fake_package(tmp_path)
    assert set(mods) == {
        "fake",
        *(f"fake.{m}" for m in "a b c d e outside outside2 big fits sub".split()),
        "fake.sub._priv",
        "fake.sub.user",
    }
    assert mods["fake.sub"].is_pkg and not mods["fake.a"].is_pkg


def test_checker_finds_the_circles(tmp_path):
    mods = _fake_package(tmp_path)
    graph = import_graph(mods, "fake")
    # The package -> submodule edges exist; the implicit submodule -> parent ones do not.
    assert {"fake.a", "fake.b", "fake.c", "fake.e"} <= set(graph["fake"])
    assert "fake" not in graph["fake.a"] and "fake" not in graph["fake.sub._priv"]
    assert "fake" in graph["fake.d"] and "fake" in graph["fake.e"]  # explicit reads
    # `from fake import b` is an edge to the submodule; `from .b import` resolves relatively.
    assert set(graph["fake.a"]) == {"fake.b"} and set(graph["fake.b"]) == {"fake.a"}
    # Importing fake.sub._priv from outside runs fake.sub's __init__ first: an edge to it.
    assert set(graph["fake.outside"]) == {"fake.sub._priv", "fake.sub"}
    assert "fake.sub" not in graph["fake.sub.user"]  # its own package
    assert set(graph["fake.d"]) == {"fake"}  # the TYPE_CHECKING import is not an edge
    found = cycles(graph)
    # a <-> b (deferred import), and e -> fake -> e (the bare package). d -> fake too, but fake
    # does not import d, so d is in no circle.
    assert found == [["fake", "fake.e", "fake"], ["fake.a", "fake.b", "fake.a"]]
    text = describe_cycle(graph, found[1], tmp_path)
    assert "fake.b -> fake.a" in text and "fake/b.py:5" in text


def test_checker_finds_private_imports(tmp_path):
    mods = _fake_package(tmp_path)
    found = private_imports(mods, "fake", tmp_path)
    assert found == [
        "fake/a.py:2: fake.a uses fake.b._hidden",
        "fake/c.py:6: fake.c uses fake.b._hidden",
        "fake/c.py:6: fake.c uses fake.b._other",
        "fake/c.py:6: fake.c uses fake.b._third",
        "fake/outside.py:2: fake.outside uses fake.sub._priv",
        "fake/outside.py:4: fake.outside uses fake.sub._priv",
        "fake/outside2.py:2: fake.outside2 uses fake.sub._priv",
    ]


def test_checker_finds_shadowing_names(tmp_path):
    mods = _fake_package(tmp_path)
    assert shadowing_names(mods, tmp_path) == [
        "fake/__init__.py:4: fake.c is bound to something other than the submodule fake.c",
        "fake/c.py:5: module fake.c defines 'c'",
    ]


def test_checker_finds_long_code(tmp_path):
    mods = _fake_package(tmp_path)
    modules, functions = too_long(mods, tmp_path)
    assert modules == [f"fake/big.py: {MAX_MODULE_LINES + 1} lines"]
    assert functions == [f"fake/big.py:1: long_fn() {MAX_FUNCTION_LINES + 1} lines"]
