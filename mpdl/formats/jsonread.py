"""JSON documents read from untrusted files: within a size bound, and one array at a time.

A 100,000-file manifest's JSON tree is several times the size of its model, and a tree
decoded whole and freed leaves holes in the heap the run never gives back. So the one
array that grows with the document (a manifest's ``files``) is left in the text and
decoded an element at a time, while everything else is decoded as ``json.loads`` would.

Rules: every refusal is a :class:`~mpdl.errors.ManifestError` of one line; the element
reading follows only well-formed JSON, and says None (not an error) where it does not,
so the caller reads the bytes again with :func:`decode`, whose messages are
``json.loads``'s.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator

from ..errors import ManifestError

__all__ = ["decode", "elements", "read_bounded", "top_level"]

_WS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


def read_bounded(path: str | os.PathLike[str], limit: int, *, what: str) -> bytes:
    """The file's bytes; ManifestError (naming ``what``) if it cannot be read or holds more
    than ``limit`` bytes."""
    try:
        with open(path, "rb") as file:
            # Not read(limit + 1): that asks for a buffer of the limit whatever the file's size.
            size = os.fstat(file.fileno()).st_size
            data = file.read(size + 1 if size <= limit else limit + 1)
            if len(data) > size and len(data) <= limit:
                data += file.read(limit + 1 - len(data))  # it grew meanwhile
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ManifestError(f"{what}: cannot read {os.fspath(path)!r}: {reason}") from exc
    if len(data) > limit:
        raise ManifestError(f"{what}: larger than {limit} bytes")
    return data


def decode(data: bytes, *, what: str) -> object:
    """``json.loads(data)``, its failures one line naming ``what``."""
    try:
        return json.loads(data)
    except json.JSONDecodeError as exc:
        raise ManifestError(
            f"{what}: not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from exc
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{what}: not valid UTF-8 (byte {exc.start})") from exc
    except ValueError as exc:  # such as an integer beyond Python's digit limit
        raise ManifestError(f"{what}: not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise ManifestError(f"{what}: not valid JSON: nested too deeply") from exc


def top_level(data: bytes, array: str) -> tuple[dict[str, object], str, int | None] | None:
    """The document's top-level members, decoded, but for the ``array`` member left in the
    text: (members, with ``array`` an empty list; the text; where its first element starts,
    None when the last ``array`` member is no array). Every element is decoded once here, to
    find the array's end (and any JSON error before any element is judged, as ``json.loads``
    would), and dropped. None where the bytes are anything but one JSON object (or not JSON
    at all): the caller then reads them with :func:`decode`, which names what is wrong."""
    try:
        text = data.decode(json.detect_encoding(data), "surrogatepass")
        at = _skip(text, 0)
        if text[at:at + 1] != "{":
            return None
        obj: dict[str, object] = {}
        start: int | None = None
        at = _skip(text, at + 1)
        more = text[at:at + 1] != "}"
        if not more:
            at += 1
        while more:
            if text[at:at + 1] != '"':
                return None
            key, at = json.decoder.scanstring(text, at + 1)  # type: ignore[attr-defined]
            at = _skip(text, at)
            if text[at:at + 1] != ":":
                return None
            at = _skip(text, at + 1)
            if key == array and text[at:at + 1] == "[":
                start = at + 1
                at = _array_end(text, start)
                obj[key] = []
            else:
                obj[key], at = _DECODER.raw_decode(text, at)
                if key == array:
                    start = None  # the last member of a name is the one json.loads keeps
            at = _skip(text, at)
            separator = text[at:at + 1]
            at = _skip(text, at + 1) if separator == "," else at + 1
            if separator not in (",", "}"):
                return None
            more = separator == ","
        if _skip(text, at) != len(text):
            return None
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError too
        return None
    return obj, text, start


def elements(text: str, start: int) -> Iterator[object]:
    """The values of the JSON array whose first element (or ``]``) is at or after ``start``,
    decoded one by one."""
    at = start
    while True:
        value, at = _element(text, at)
        if at < 0:
            return
        yield value


def _skip(text: str, at: int) -> int:
    """Past the JSON whitespace at ``at``."""
    found = _WS.match(text, at)
    assert found is not None  # it matches the empty string
    return found.end()


def _array_end(text: str, start: int) -> int:
    """Past the ``]`` of the array ``elements`` reads, each element decoded and dropped."""
    at = start
    while at >= 0:
        _, at = _element(text, at)
    return -at


def _element(text: str, at: int) -> tuple[object, int]:
    """The array's value at or after ``at`` and where the next starts; at its end (None,
    minus the offset past the ``]``). Raises ValueError where it is no JSON array."""
    at = _skip(text, at)
    if text[at:at + 1] == "]":
        return None, -(at + 1)
    value, at = _DECODER.raw_decode(text, at)
    at = _skip(text, at)
    separator = text[at:at + 1]
    if separator == "]":  # the next call ends it
        return value, at
    at = _skip(text, at + 1)
    if separator != "," or text[at:at + 1] == "]":
        raise ValueError("expected a value after each , in the array")
    return value, at
