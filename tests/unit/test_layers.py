"""The layers: mpdl/core decides without I/O; procs, net and disk carry the decisions out.

Read from the source with ast, not by importing: importing ``mpdl.core.x`` runs
``mpdl/__init__.py`` first (the public API, which imports everything), so what a module pulls in
at run time says nothing about the module. What counts is each module's own imports, wherever
they are in it (a function's import runs when the function does), but for those under
``if TYPE_CHECKING:``, which never run: the core is handed a Layout, it need not import one.

Two rules, followed through every mpdl module the core imports, directly or not:
- nothing the core reaches is in an I/O subpackage (procs, net, disk) or the platform layer
  (osdeps), or imports a module that talks to the network, starts processes or threads, or
  makes OS-level calls (NO_IO_ANYWHERE);
- the core's own modules touch no file and no clock either (NOT_IN_CORE): a file a decision
  needs is read by the caller and handed in as a record, and time comes in as an argument.
The formats, errors, options and progress modules the core reaches may read a manifest or a
terminal's width; the network, processes and threads they may not.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "mpdl"

#: The subpackages and modules that do I/O: the core imports none of them, even indirectly.
IO_PARTS = ("mpdl.procs", "mpdl.net", "mpdl.disk", "mpdl.osdeps")

#: Modules that talk to the network, run processes or threads, or call the OS below files.
NO_IO_ANYWHERE = {"socket", "ssl", "http", "urllib3", "urllib.request", "ftplib", "smtplib",
                  "selectors", "select", "asyncio", "multiprocessing", "subprocess",
                  "threading", "_thread", "concurrent", "queue", "signal", "ctypes", "fcntl",
                  "termios", "mmap", "resource", "psutil"}

#: Besides, the core's own modules open no file, look at no folder and read no clock.
NOT_IN_CORE = NO_IO_ANYWHERE | {"os", "io", "pathlib", "shutil", "tempfile", "glob", "time",
                                "sys", "builtins"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
CORE = sorted(name for name in MODULES if name.startswith("mpdl.core."))


def _type_checking_only(tree: ast.Module) -> set[int]:
    """The ids of the import nodes under ``if TYPE_CHECKING:`` (never run)."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                skipped.update(id(n) for n in ast.walk(child))
    return skipped


def imports_of(name: str) -> set[str]:
    """Every module ``name`` imports when it runs, absolute: ``from .x import y`` inside
    mpdl/core is mpdl.core.x, and mpdl.core.x.y when y is itself a module."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    skipped = _type_checking_only(tree)
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names
                         if f"{module}.{alias.name}" in MODULES)
    return found


def reached_from_core() -> dict[str, str]:
    """Every mpdl module the core's modules import, directly or not: name -> the chain that
    reaches it (for the message)."""
    chains = {name: name for name in CORE}
    todo = list(CORE)
    while todo:
        name = todo.pop()
        for imported in sorted(imports_of(name)):
            if imported in MODULES and imported not in chains:
                chains[imported] = f"{chains[name]} -> {imported}"
                todo.append(imported)
    return chains


def _matches(module: str, forbidden: set[str] | tuple[str, ...]) -> bool:
    return any(module == f or module.startswith(f + ".") for f in forbidden)


def test_the_core_is_there() -> None:
    """The walk below has something to walk (a moved or renamed core would pass it empty)."""
    assert {"mpdl.core.scheduler", "mpdl.core.plan", "mpdl.core.retry"} <= set(CORE)


def test_the_core_reaches_no_io_subpackage_and_no_io_module() -> None:
    problems = []
    for name, chain in sorted(reached_from_core().items()):
        if _matches(name, IO_PARTS):
            problems.append(f"{chain}: an I/O part of mpdl")
        for imported in sorted(imports_of(name)):
            if _matches(imported, NO_IO_ANYWHERE):
                problems.append(f"{chain} imports {imported}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", CORE)
def test_a_core_module_touches_no_file_and_no_clock(name: str) -> None:
    found = sorted(m for m in imports_of(name) if _matches(m, NOT_IN_CORE))
    assert not found, f"{name} imports {found}"


def test_the_walk_sees_what_an_import_brings(tmp_path: Path) -> None:
    """The reader itself: relative imports resolve, ``from . import x`` names module x, and
    only TYPE_CHECKING imports are skipped (a function's lazy import counts)."""
    imported = imports_of("mpdl.api")
    assert {"mpdl.net.direct", "mpdl.core.scheduler", "mpdl.procs.supervisor"} <= imported
    assert "mpdl.core.messages" in imports_of("mpdl.core.retry")
    assert "typing_extensions" not in imported  # under TYPE_CHECKING
    assert "mpdl.progress" in imports_of("mpdl.errors")  # imported inside a function
