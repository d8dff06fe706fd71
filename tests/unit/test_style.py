"""The code follows one dialect (pyproject.toml's ruff rules, UP among them: ``X | None``,
builtin generics) and keeps its classes small, checked here so that CI enforces it rather than
a reviewer.

(Ruff, a process: tests/integration/test_style_live.py.)"""

from __future__ import annotations

import ast

from helpers import REPO

ROOT = REPO


#: "One module, one job": a class that outgrows this keeps more than one concern, and a room of
#: its own (as the scheduler's: board.py, dispatch.py, delivery.py, races.py...) is due.
MAX_CLASS_LINES = 350


def test_no_class_in_mpdl_is_over_350_lines() -> None:
    too_long = []
    for path in sorted((ROOT / "mpdl").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_CLASS_LINES:
                    too_long.append(f"{path.name}: {node.name}, {lines} lines")
    assert not too_long, too_long


#: The calls that differ between Linux, macOS and Windows: mpdl/osdeps.py alone makes them,
#: each with its fallback, so the fallbacks are all in one place and all tested (forced).
OS_SPECIFIC = {"pwrite", "pread", "preadv", "pwritev", "posix_fallocate", "fsync", "link",
               "symlink"}


def test_only_the_platform_layer_makes_os_specific_calls() -> None:
    found = []
    for path in sorted((ROOT / "mpdl").rglob("*.py")):
        if path.name == "osdeps.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Import) and any(a.name == "ctypes" for a in node.names):
                found.append(f"{where}: imports ctypes")
            elif isinstance(node, ast.ImportFrom) and node.module == "ctypes":
                found.append(f"{where}: imports from ctypes")
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                if (node.value.id, node.attr) == ("sys", "platform"):
                    found.append(f"{where}: tests sys.platform")
                elif node.value.id == "os" and node.attr in OS_SPECIFIC:
                    found.append(f"{where}: calls os.{node.attr}")
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                  and node.func.id in ("getattr", "hasattr") and node.args
                  and isinstance(node.args[0], ast.Name) and node.args[0].id == "os"):
                found.append(f"{where}: asks whether os has {ast.unparse(node.args[1])}")
    assert not found, found
