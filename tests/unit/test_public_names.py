"""``mpdl``'s public names (``__all__``) are loaded on first use (mpdl/__init__.py): each must
resolve to what the README calls it, wherever the layout put its module."""

from __future__ import annotations

import pytest

import mpdl


@pytest.mark.parametrize("name", mpdl.__all__)
def test_every_public_name_resolves(name: str) -> None:
    assert getattr(mpdl, name) is not None


def test_the_calls_are_the_functions_not_modules_of_the_same_name() -> None:
    """``mpdl.plan`` is the preview (mpdl.preview.plan), whatever submodules were imported
    before: a submodule named plan would shadow it."""
    import mpdl.core.plan  # noqa: F401  (the planner: imported by every run)
    for name, module in (("plan", "mpdl.preview"), ("run", "mpdl.api"),
                         ("download", "mpdl.downloads"), ("verify", "mpdl.verify")):
        value = getattr(mpdl, name)
        assert callable(value) and value.__module__ == module, (name, value)
