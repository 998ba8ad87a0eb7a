"""Guards the layering of the `bilma` package, and that it never edits `sys.path`.

A module may import only from a layer strictly below its own, or from its own package (the
base modules count as one package); two packages of one layer never import each other. This
is checked on the source (every import, lazy ones inside functions too) and in fresh
processes (what importing a package really loads). There is no import cycle, not even through
lazy imports. Only the checkout's thin scripts (and tests, benchmarks) put the checkout on
`sys.path`, and nothing in the package sets `PYTHONPATH` (Ray workers get no repository path).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from support.paths import REPO

PACKAGE = REPO / "bilma"

# Bottom to top. Layer 0 is one group: its modules may import each other.
LAYERS = [
    [
        "bilma",
        "bilma.errors",
        "bilma.logs",
        "bilma.fileio",
        "bilma.resources",
        "bilma.labels",
        "bilma.patches",
    ],  # fmt: skip
    ["bilma.config"],
    ["bilma.data", "bilma.device"],
    ["bilma.model", "bilma.parse"],
    ["bilma.evaluation", "bilma.runs"],
    ["bilma.tracking"],
    ["bilma.training"],
    ["bilma.sweep", "bilma.analysis"],
    ["bilma.export"],  # a checkpoint's encoders as a CLIP folder; pretrain-clip trains one
    ["bilma.commands"],  # the library's commands
    ["bilma.__main__"],  # dispatch only
]
ENTRY_LAYER = {entry: i for i, layer in enumerate(LAYERS) for entry in layer}

# The only files outside tests/ and benchmarks/ that may edit sys.path: the checkout's scripts.
SYS_PATH_EDITORS = {
    "sweeps/launch.py",
    "sweeps/parse.py",
    "analysis/make_tables.py",
    "analysis/show_retrievals.py",
    "analysis/branch_probe.py",
    "analysis/lookalike_readout.py",
}


def entry_of(module: str) -> str | None:
    """The LAYERS entry of a bilma module: the longest entry that is it or a package above it
    (`bilma` itself matches only the package's __init__)."""
    parts = module.split(".")
    for n in range(len(parts), 1, -1):
        if ".".join(parts[:n]) in ENTRY_LAYER:
            return ".".join(parts[:n])
    return "bilma" if module == "bilma" else None


def group_of(entry: str) -> str:
    """What a module may import freely: its own package, or the whole base layer."""
    return "base" if ENTRY_LAYER[entry] == 0 else entry


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(module: str) -> list[tuple[int, str, bool]]:
    """(line, imported bilma module, lazy) for every import of `module`; lazy = in a function."""
    path = MODULES[module]
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found: list[tuple[int, str, bool]] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend((child.lineno, a.name, lazy) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    up = package[: len(package) - child.level + 1]
                    base = ".".join(up + ([child.module] if child.module else []))
                for a in child.names:  # `from bilma import resources` imports a module
                    name = f"{base}.{a.name}"
                    found.append((child.lineno, name if name in MODULES else base, lazy))
            func = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
            visit(child, lazy or isinstance(child, func))

    visit(ast.parse(path.read_text(encoding="utf-8"), str(path)), False)
    return [(line, m, lazy) for line, m, lazy in found if m == "bilma" or m.startswith("bilma.")]


EDGES = {m: imports_of(m) for m in MODULES}


def cycles(lazy_too: bool) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), sorted."""
    graph = {
        m: sorted({t for _, t, lazy in edges if t in MODULES and t != m and (lazy_too or not lazy)})
        for m, edges in EDGES.items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            strongconnect(v)
    return sorted(found)


def test_every_module_is_in_a_layer():
    assert sorted(m for m in MODULES if entry_of(m) is None) == []


def test_no_import_goes_up_or_sideways():
    violations = []
    for module, edges in EDGES.items():
        src = entry_of(module)
        for line, target, lazy in edges:
            dst = entry_of(target)
            where = f"{MODULES[module].relative_to(REPO)}:{line} ({module})"
            kind = "lazy " if lazy else ""
            if target not in MODULES or dst is None:
                violations.append(f"{where}: {kind}import of {target}, not a module of bilma")
            elif group_of(src) == group_of(dst):
                continue
            elif ENTRY_LAYER[dst] > ENTRY_LAYER[src]:
                violations.append(
                    f"{where}: {kind}import of {target} goes up, "
                    f"layer {ENTRY_LAYER[src]} ({src}) -> layer {ENTRY_LAYER[dst]} ({dst})"
                )
            elif ENTRY_LAYER[dst] == ENTRY_LAYER[src]:
                violations.append(
                    f"{where}: {kind}import of {target} goes sideways, "
                    f"{src} -> {dst}, both layer {ENTRY_LAYER[src]}"
                )
    assert not violations, f"{len(violations)} layering violations:\n" + "\n".join(violations)


def test_no_import_cycle_at_module_level():
    assert cycles(lazy_too=False) == []


def test_no_import_cycle_through_lazy_imports():
    assert cycles(lazy_too=True) == []


# Imports every module of one layer entry in a fresh process; prints the bilma modules loaded.
PROBE = """
import importlib, json, pkgutil, sys
entry = sys.argv[1]
mod = importlib.import_module(entry)
names = [entry]
if entry != "bilma" and hasattr(mod, "__path__"):  # `bilma` alone: its __init__
    def fail(name):
        raise ImportError(name)
    names += [m.name for m in pkgutil.walk_packages(mod.__path__, entry + ".", onerror=fail)]
for name in names:
    importlib.import_module(name)
import bilma
print(json.dumps({"file": bilma.__file__, "imported": names,
                  "loaded": sorted(m for m in sys.modules if m.split(".")[0] == "bilma")}))
"""


def probe(entry: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONNOUSERSITE": "1"}  # this checkout
    return subprocess.run(
        [sys.executable, "-c", PROBE, entry],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_importing_a_layer_loads_nothing_above_it():
    entries = [entry for layer in LAYERS for entry in layer]
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 1)) as pool:
        results = dict(zip(entries, pool.map(probe, entries), strict=True))
    violations = []
    for entry, proc in results.items():
        assert proc.returncode == 0, f"importing {entry} failed:\n{proc.stderr[-3000:]}"
        report = json.loads(proc.stdout.splitlines()[-1])
        assert Path(report["file"]).resolve() == PACKAGE / "__init__.py"
        assert sorted(report["imported"]) == [m for m in MODULES if entry_of(m) == entry]
        for loaded in report["loaded"]:
            dst = entry_of(loaded)
            if dst is None or group_of(dst) == group_of(entry):
                continue
            if ENTRY_LAYER[dst] >= ENTRY_LAYER[entry]:
                violations.append(
                    f"importing {entry} (layer {ENTRY_LAYER[entry]}) loads {loaded} "
                    f"(layer {ENTRY_LAYER[dst]})"
                )
    assert not violations, "\n".join(violations)


def sys_path_edits(path: Path) -> list[int]:
    """Lines that change sys.path: sys.path.insert/append/extend(...), sys.path[...] = ...,
    sys.path = ..., sys.path += ...."""

    def is_sys_path(node: ast.AST) -> bool:
        return (
            isinstance(node, ast.Attribute)
            and node.attr == "path"
            and isinstance(node.value, ast.Name)
            and node.value.id == "sys"
        )

    lines = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        func = node.func if isinstance(node, ast.Call) else None
        calls = isinstance(func, ast.Attribute) and func.attr in {"insert", "append", "extend"}
        if calls and is_sys_path(func.value):
            lines.append(node.lineno)
        targets = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        for t in targets:
            if is_sys_path(t) or (isinstance(t, ast.Subscript) and is_sys_path(t.value)):
                lines.append(node.lineno)
    return lines


def test_only_the_checkout_scripts_edit_sys_path():
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.py"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    editors = {
        name
        for name in listed
        if (REPO / name).is_file()
        and name.split("/")[0] not in {"tests", "benchmarks"}
        and sys_path_edits(REPO / name)
    }
    assert editors == SYS_PATH_EDITORS
    in_package = {name: sys_path_edits(p) for name, p in MODULES.items() if sys_path_edits(p)}
    assert in_package == {}


# The one module that sets PYTHONPATH, and only in the environment of the jobs it launches:
# a launch's code snapshot goes first on their path (bilma.sweep.snapshot).
PYTHONPATH_SETTERS = {"bilma/sweep/snapshot.py"}


def test_the_package_never_mentions_pythonpath():
    mentions = [
        f"{p.relative_to(REPO)}:{n}: {line.strip()}"
        for p in MODULES.values()
        if str(p.relative_to(REPO)) not in PYTHONPATH_SETTERS
        for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if "PYTHONPATH" in line
    ]
    assert mentions == []
