"""Which relative paths a file system can hold: the rules a manifest's paths are checked
against (mpdl.formats.manifest.windows_unsafe_paths), and the folding a case-insensitive file
system does (an update's moves, mpdl.disk.update).

Pure string rules, apart from mpdl.osdeps and its calls, so that the manifest, and the core
that reads its records, import nothing that runs processes or calls the OS
(tests/unit/test_layers.py).
"""

from __future__ import annotations

import re
import unicodedata

_WINDOWS_RESERVED = re.compile(r"(CON|PRN|AUX|NUL|CONIN\$|CONOUT\$|COM[0-9¹²³]|LPT[0-9¹²³])"
                               r"(\..*)?\Z", re.I)
_WINDOWS_BAD_CHARS = re.compile(r'[<>:"|?*\\\x00-\x1f]')


def folded_name(path: str) -> str:
    """``path`` as a file system that tells apart neither case nor Unicode normalization
    sees it (Windows; macOS by default): two paths that fold alike are one file there."""
    return unicodedata.normalize("NFC", path).casefold()


def windows_name_problem(path: str) -> str | None:
    """Why Windows cannot hold the relative ``path`` (``/``-separated), or None when it can:
    a reserved device name (CON, NUL, aux.txt, COM1 ...), a name ending in a dot or a space,
    or a character Windows refuses (``<>:"|?*``, a backslash, control characters)."""
    for name in path.split("/"):
        if _WINDOWS_RESERVED.match(name):
            return f"{name!r} is a device name on Windows"
        if name.endswith((".", " ")) and name not in (".", ".."):
            return f"{name!r} ends in a dot or a space, which Windows drops"
        bad = _WINDOWS_BAD_CHARS.search(name)
        if bad:
            return f"{name!r} holds {bad.group()!r}, which Windows refuses in a name"
    return None
