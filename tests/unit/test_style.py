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
    for path in sorted((ROOT / "mpdl").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_CLASS_LINES:
                    too_long.append(f"{path.name}: {node.name}, {lines} lines")
    assert not too_long, too_long
