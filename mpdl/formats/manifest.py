"""The ``mpdl/1`` manifest: what to download, from where, and where it goes.

Validation happens once, here, before anything is written, so the later stages
(planner, workers, writer) can trust every field. A refusal is a
:class:`~mpdl.errors.ManifestError` whose message is one line naming the field,
such as ``files[3].path: '..' is not allowed``.
"""

from __future__ import annotations

import difflib
import itertools
import logging
import sys
import json
import os
import posixpath
import re
from collections.abc import Iterator, Sequence
from dataclasses import FrozenInstanceError, dataclass
from urllib.parse import urljoin, urlsplit

import xxhash

from ..errors import ManifestError
from . import jsonread
from .hashing import ALGORITHMS, HashSpec, parse_hash
from .headers import Headers, merge_headers, problem, shown
from .names import folded_name, windows_name_problem

__all__ = [
    "COMPRESSIONS",
    "FORMAT",
    "FileEntry",
    "LinkEntry",
    "Manifest",
    "Part",
    "load_manifest",
    "parse_manifest",
]

#: The only manifest format this version reads.
FORMAT = "mpdl/1"
#: Compressions a part may declare; the writer must know how to undo each.
COMPRESSIONS = ("zlib",)
#: Sizes, offsets and lengths must fit a signed 64-bit file offset.
MAX_INT = 2**63 - 1
#: A manifest larger than this is refused rather than read into memory.
MAX_MANIFEST_BYTES = 512 << 20
#: First path component reserved for mpdl's own state folder in the destination.
STATE_DIR = ".mpdl"

log = logging.getLogger("mpdl")

#: The fields each level of a manifest takes: any other key is named in a warning (an error
#: with ``strict``), as a typo would otherwise pass unseen ("sha256" for "hash": unverified).
FIELDS = {
    "manifest": ("format", "base_urls", "headers", "files"),
    "file": ("path", "size", "hash", "executable", "url", "parts"),
    "link": ("path", "link"),
    "directory": ("path", "directory"),
    "part": ("url", "offset", "length", "size", "compression", "hash"),
}

#: Unknown keys named one by one, at most; the rest are counted in one more line.
MAX_WARNINGS = 10

_DRIVE = re.compile(r"[A-Za-z]:")
_URL_FORBIDDEN = re.compile(r"[\s\x00-\x1f\x7f-\x9f]")
_KINDS = {
    type(None): "null",
    bool: "a boolean",
    int: "a number",
    float: "a number",
    str: "a string",
    list: "an array",
    dict: "an object",
}


@dataclass(frozen=True, slots=True)
class Part:
    """``length`` bytes at ``offset`` of ``url``: ``size`` bytes once decompressed."""

    url: str
    offset: int
    length: int
    size: int
    compression: str | None = None
    hash: HashSpec | None = None  # of the uncompressed bytes

    @property
    def compressed(self) -> bool:
        return self.compression is not None


class FileEntry:
    """A regular file: its ``parts`` concatenated, or the whole object at ``url``.

    ``size`` is None only for :meth:`Manifest.single_url` downloads of unknown length.
    A size-0 file may have neither ``url`` nor ``parts``.

    Immutable, equal by value and hashable, as a frozen dataclass of these six fields. A
    file that is one plain range of an object (a GOG V1 file in ``main.bin``) keeps only
    that range's object and offset: its one Part is made when ``parts`` is read, so a
    100,000-file manifest holds no Part, tuple and length per file (a third of its model).
    """

    __slots__ = ("path", "size", "hash", "executable", "url", "_parts", "_source", "_offset")
    path: str
    size: int | None
    hash: HashSpec | None
    executable: bool
    url: str | None
    _parts: tuple[Part, ...] | None  # None: one raw part, of _source at _offset, all of size
    _source: str | None
    _offset: int

    def __init__(self, path: str, size: int | None, hash: HashSpec | None = None,
                 executable: bool = False, url: str | None = None,
                 parts: tuple[Part, ...] = ()) -> None:
        put = object.__setattr__
        put(self, "path", path)
        put(self, "size", size)
        put(self, "hash", hash)
        put(self, "executable", executable)
        put(self, "url", url)
        one = parts[0] if len(parts) == 1 else None
        if (one is not None and one.compression is None and one.hash is None
                and one.length == one.size == size):
            put(self, "_parts", None)
            put(self, "_source", one.url)
            put(self, "_offset", one.offset)
        else:
            put(self, "_parts", tuple(parts))
            put(self, "_source", None)
            put(self, "_offset", 0)

    @property
    def parts(self) -> tuple[Part, ...]:
        if self._parts is not None:
            return self._parts
        assert self._source is not None and self.size is not None
        return (Part(self._source, self._offset, self.size, self.size),)

    @property
    def plain_range(self) -> tuple[str, int, int] | None:
        """(object, offset, length) of a file that is one plain range of an object, which
        ``parts`` would give as one Part; None for any other file."""
        if self._parts is not None or self._source is None or self.size is None:
            return None
        return self._source, self._offset, self.size

    def _key(self) -> tuple[object, ...]:
        return (self.path, self.size, self.hash, self.executable, self.url, self.parts)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not FileEntry:
            return NotImplemented
        assert isinstance(other, FileEntry)
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (f"FileEntry(path={self.path!r}, size={self.size!r}, hash={self.hash!r}, "
                f"executable={self.executable!r}, url={self.url!r}, parts={self.parts!r})")

    def __setattr__(self, name: str, value: object) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def __reduce__(self) -> tuple[type[FileEntry], tuple[object, ...]]:
        return FileEntry, self._key()

    @property
    def identity(self) -> str:
        """What the file is, whatever its path or URLs: its size and hash, or, without a
        file hash, the sizes and hashes of its parts. Two entries with one identity hold the
        same bytes when it names a file hash or a hash for every part; otherwise it tells
        files apart only as far as it goes (a file with no hash at all has only its size). It
        starts with the size and a colon, which the journal relies on."""
        if self.hash is not None or not any(part.hash for part in self.parts):
            return f"{self.size}:{self.hash}"
        parts = ",".join(f"{part.size}:{part.hash}" for part in self.parts)
        return f"{self.size}:parts:{xxhash.xxh3_128_hexdigest(parts.encode())}"


@dataclass(frozen=True)
class LinkEntry:
    """A symbolic link; ``target`` is relative to the link's own folder."""

    path: str
    target: str


@dataclass(frozen=True)
class DirectoryEntry:
    """A folder to make even when no file goes in it (a game's empty saves folder)."""

    path: str


@dataclass(frozen=True)
class Manifest:
    """A validated manifest. Relative urls resolve against each of ``base_urls``.

    ``headers`` go with every request of the run (a depot's token, the User-Agent its CDN
    wants); the caller's own headers win over them (headers.py)."""

    base_urls: tuple[str, ...]
    files: tuple[FileEntry, ...]
    links: tuple[LinkEntry, ...] = ()
    directories: tuple[DirectoryEntry, ...] = ()
    headers: Headers = ()
    # Other URLs of an absolute URL's object, tried after it (mpdl.download's mirrors, the
    # CLI's --mirror, the tab-separated URLs of an -i line): (url, (mirror, ...)) pairs.
    alternates: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def mirrors(self, url: str) -> tuple[str, ...]:
        """Where to fetch ``url`` from, in the order to try. Asked once per request (a batch
        of small files asks it per file): a plain relative path is appended to each base
        without urljoin's parsing, which gives the same URL (``_PLAIN_PATH``)."""
        if _PLAIN_PATH.fullmatch(url) and not _DOT_SEGMENT.search(url):
            return tuple(base + url if base[-1:] == "/" and "?" not in base and "#" not in base
                         else urljoin(base, url) for base in self.base_urls)
        if _is_absolute(url):
            return (url, *next((more for one, more in self.alternates if one == url), ()))
        return tuple(urljoin(base, url) for base in self.base_urls)

    def to_json(self) -> dict[str, object]:
        """This manifest as mpdl/1 JSON, which ``parse_manifest`` reads back as an equal one
        (a file of unknown size has no mpdl/1 form and is left out)."""
        out: dict[str, object] = {"format": FORMAT, "base_urls": list(self.base_urls),
                                  "files": list(self._json_entries())}
        if self.headers:
            out["headers"] = dict(self.headers)
        return out

    def to_json_bytes(self) -> bytes:
        """``to_json`` as compact JSON: ``json.dumps(..., separators=(",", ":"))``'s bytes."""
        return b"".join(self.json_chunks())

    def json_chunks(self) -> Iterator[bytes]:
        """``to_json_bytes`` in pieces, made entry by entry as they are taken: the files of a
        100,000-file manifest never exist at once as a tree of dicts (four times the memory
        of the manifest itself), nor as one string, when written to a file."""
        encode = json.JSONEncoder(separators=(",", ":")).encode
        head = encode({"format": FORMAT, "base_urls": list(self.base_urls)})
        yield head[:-1].encode() + b',"files":['
        comma = b""
        for item in self._json_entries():
            yield comma + encode(item).encode()
            comma = b","
        yield b"]"
        if self.headers:
            yield b',"headers":' + encode(dict(self.headers)).encode()
        yield b"}"

    def _json_entries(self) -> Iterator[dict[str, object]]:
        for file in self.files:
            if file.size is None:
                continue
            item: dict[str, object] = {"path": file.path, "size": file.size}
            if file.hash is not None:
                item["hash"] = str(file.hash)
            if file.executable:
                item["executable"] = True
            if file.url is not None:
                item["url"] = file.url
            if file.parts:
                item["parts"] = [_part_json(part) for part in file.parts]
            yield item
        for link in self.links:
            yield {"path": link.path, "link": link.target}
        for folder in self.directories:
            yield {"path": folder.path, "directory": True}

    @classmethod
    def single_url(cls, url: str, path: str, size: int | None = None,
                   hash: HashSpec | None = None) -> Manifest:
        """A plain one-url download as a manifest, so it takes the same pipeline."""
        entry = FileEntry(
            path=_path(path, "path"),
            size=None if size is None else _int(size, "size"),
            url=_file_url(url, "url", ()),
            hash=hash,
        )
        return cls(base_urls=(), files=(entry,))


def _part_json(part: Part) -> dict[str, object]:
    item: dict[str, object] = {"url": part.url, "offset": part.offset, "length": part.length}
    if part.compression is not None:
        item["compression"] = part.compression
        item["size"] = part.size
    if part.hash is not None:
        item["hash"] = str(part.hash)
    return item


#: What a run or a verify takes as its manifest: a parsed one, a decoded dict, or a JSON file.
ManifestSource = Manifest | dict[str, object] | str | os.PathLike[str]


def load_manifest(source: ManifestSource, *, strict: bool = False) -> Manifest:
    """A manifest from a :class:`Manifest` (as is), a decoded dict or a JSON file.
    ``strict``: an unknown key is a ManifestError, not a warning."""
    if isinstance(source, Manifest):
        return source
    if isinstance(source, dict):
        return parse_manifest(source, strict=strict)
    if isinstance(source, (str, os.PathLike)):
        return manifest_from_bytes(read_manifest(source), strict=strict)
    raise TypeError(
        f"expected a Manifest, a dict or a path, not {type(source).__name__}"
    )


def read_manifest(path: str | os.PathLike[str]) -> bytes:
    """A manifest file's bytes, unparsed (ManifestError if it cannot be read, or is too
    large): a re-run compares them with what the install came from (mpdl.disk.update)."""
    return jsonread.read_bounded(path, MAX_MANIFEST_BYTES, what="manifest")


def manifest_from_bytes(data: bytes, *, strict: bool = False) -> Manifest:
    """The manifest a file's bytes hold (ManifestError when they do not hold a valid one).

    The files are decoded one at a time, each made into the model and dropped: the JSON of a
    100,000-file manifest never exists as one tree of dicts beside the model (decoded whole
    and freed, it left some 40 MiB of holes in the heap that the run never gave back). Any
    JSON this reading does not follow is read again by ``json.loads``, which says what is
    wrong with it: the messages are the same."""
    found = jsonread.top_level(data, "files")
    if found is None:
        return parse_manifest(jsonread.decode(data, what="manifest"), consume=True, strict=strict)
    obj, text, start = found
    return _model(obj, None if start is None else jsonread.elements(text, start),
                  strict=strict)


def parse_manifest(obj: object, *, consume: bool = False, strict: bool = False) -> Manifest:
    """Validate a decoded JSON value into a :class:`Manifest`. Unknown keys are named in
    one warning each (``UnknownKeys``), or refused with ``strict``.

    ``consume``: empty ``obj["files"]`` as its entries are parsed (for a value no one else
    holds), which frees each entry's memory while the model grows."""
    if not isinstance(obj, dict):
        raise ManifestError(f"manifest: must be a JSON object, not {_kind(obj)}")
    return _model(obj, None, consume=consume, strict=strict)


def _model(obj: dict[str, object], elements: Iterator[object] | None, *,
           consume: bool = False, strict: bool) -> Manifest:
    """The manifest ``obj`` describes; its files are ``obj["files"]``, or ``elements`` where
    they are decoded one by one (``obj["files"]`` is then an empty list)."""
    unknown = UnknownKeys(strict)
    unknown.check(obj, "manifest", "manifest")
    _check_format(obj.get("format"))
    base_urls = _base_urls(obj.get("base_urls"))
    headers = _headers(obj.get("headers"))
    entries = obj.get("files")
    if entries is None:
        raise ManifestError("files: missing")
    if not isinstance(entries, list):
        raise ManifestError(f"files: must be an array, not {_kind(entries)}")
    files: list[FileEntry] = []
    links: list[LinkEntry] = []
    directories: list[DirectoryEntry] = []
    placed: list[tuple[str, int]] = []  # (path, index in files): "files[i]" made if refused
    folders: list[tuple[str, int]] = []
    for index, entry in enumerate(entries if elements is None else elements):
        where = f"files[{index}]"
        if not isinstance(entry, dict):
            raise ManifestError(f"{where}: must be an object, not {_kind(entry)}")
        kind = ("directory" if entry.get("directory") is not None
                else "link" if entry.get("link") is not None else "file")
        unknown.check(entry, kind, where)
        parts = entry.get("parts") if kind == "file" else None
        for number, part in enumerate(parts if isinstance(parts, list) else ()):
            if isinstance(part, dict):  # else _parts says what is wrong with it
                unknown.check(part, "part", f"{where}.parts[{number}]")
        if entry.get("directory") is not None:
            directory = _directory(entry, where)
            directories.append(directory)
            folders.append((directory.path, index))
        elif entry.get("link") is not None:
            link = _link(entry, where)
            links.append(link)
            placed.append((link.path, index))
        else:
            file = _file(entry, where, base_urls)
            files.append(file)
            placed.append((file.path, index))
        if consume:
            entries[index] = None
    _check_overlaps(placed, folders)
    unknown.warn()
    return Manifest(base_urls=base_urls, files=tuple(files), links=tuple(links),
                    directories=tuple(directories), headers=headers)


class UnknownKeys:
    """The keys a manifest has that no field takes, each with a suggestion: a hash named by
    its algorithm ("sha256": ...) is one for ``hash``, else the closest field's name
    (difflib). A key repeated in many entries is one warning, with the count; ``strict``
    raises ManifestError at the first."""

    def __init__(self, strict: bool) -> None:
        self.strict = strict
        # (kind, key) -> where it was first seen, its value there, how many times seen
        self.found: dict[tuple[str, str], tuple[str, object, int]] = {}

    def check(self, obj: dict[str, object], kind: str, where: str) -> None:
        fields = FIELDS[kind]
        for key in obj:
            if key in fields:
                continue
            place = where if kind == "manifest" else f"{where}.{key}"
            if self.strict:
                raise ManifestError(self.line(kind, key, obj[key], place, 1))
            first, value, count = self.found.get((kind, key), (place, obj[key], 0))
            self.found[(kind, key)] = (first, value, count + 1)

    def warn(self) -> None:
        """One warning per key, MAX_WARNINGS at most: a manifest is untrusted, and one of
        distinct keys by the thousand would otherwise be as many lines."""
        found = list(self.found.items())
        for (kind, key), (first, value, count) in found[:MAX_WARNINGS]:
            log.warning("%s", self.line(kind, key, value, first, count))
        if len(found) > MAX_WARNINGS:
            log.warning("manifest: %d more keys that are no field", len(found) - MAX_WARNINGS)

    @staticmethod
    def line(kind: str, key: str, value: object, place: str, count: int) -> str:
        """``files[3].sha256: not a field; did you mean hash: "sha256:…"?"""
        where = f"{key}" if kind == "manifest" else place
        more = f" (and {count - 1} more)" if count > 1 else ""
        fields = FIELDS[kind]
        if key.lower().replace("-", "_") in ALGORITHMS and "hash" in fields:
            shown = f"{value}"[:16] if isinstance(value, str) else "…"
            hint = f"hash: \"{key.lower().replace('-', '_')}:{shown}…\""
        else:
            close = [f for f in fields if f.startswith(key.lower())] or \
                difflib.get_close_matches(key.lower(), fields, n=1, cutoff=0.6)
            hint = close[0] if close else ""
        suggestion = f"; did you mean {hint}?" if hint else f" (fields: {', '.join(fields)})"
        return f"{where}{more}: not a field{suggestion}"


# Top-level fields.


def _check_format(value: object) -> None:
    if value is None:
        raise ManifestError(f"format: missing (expected {FORMAT!r})")
    if value != FORMAT:
        raise ManifestError(f"format: unsupported {value!r} (expected {FORMAT!r})")


def _base_urls(value: object) -> tuple[str, ...]:
    """Mirror roots, each ending with "/" so urljoin appends rather than replaces."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ManifestError(
            f"base_urls: must be an array of http(s) URLs, not {_kind(value)}"
        )
    bases = []
    for index, item in enumerate(value):
        where = f"base_urls[{index}]"
        url = _url(item, where)
        if not _is_absolute(url):
            raise ManifestError(f"{where}: must be an absolute http(s) URL")
        if "?" in url or "#" in url:
            raise ManifestError(f"{where}: must not have a query or fragment")
        bases.append(url if url.endswith("/") else url + "/")
    return tuple(bases)


def _headers(value: object) -> Headers:
    """``{"Name": "value", ...}``: headers for every request, each one a valid header."""
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise ManifestError(f"headers: must be an object of header names to strings, not "
                            f"{_kind(value)}")
    pairs = []
    for name, text in value.items():
        if not isinstance(text, str):
            raise ManifestError(f"headers.{shown(name)}: must be a string, not {_kind(text)}")
        why = problem(name, text.strip())
        if why:
            raise ManifestError(f"headers.{shown(name)}: {why}")
        pairs.append((name, text.strip()))
    return merge_headers(pairs)


# Entries.


def _file(entry: dict[str, object], where: str, bases: tuple[str, ...]) -> FileEntry:
    path = _path(_required(entry, "path", where), f"{where}.path")
    size = _int(_required(entry, "size", where), f"{where}.size")
    digest = _hash(entry.get("hash"), f"{where}.hash")
    executable = _get(entry, "executable", False)
    if not isinstance(executable, bool):
        raise ManifestError(
            f"{where}.executable: must be true or false, not {_kind(executable)}"
        )
    url, parts = entry.get("url"), entry.get("parts")
    if url is not None and parts is not None:
        raise ManifestError(f"{where}.parts: a file takes url or parts, not both")
    if url is not None:
        url = _file_url(url, f"{where}.url", bases)
        return FileEntry(path, size, digest, executable, url=url)
    if parts is not None:
        return FileEntry(
            path, size, digest, executable, parts=_parts(parts, where, size, bases)
        )
    if size:
        raise ManifestError(f"{where}: needs url or parts to fetch its {size} bytes")
    return FileEntry(path, size, digest, executable)


def _parts(
    value: object, where: str, size: int, bases: tuple[str, ...]
) -> tuple[Part, ...]:
    where = f"{where}.parts"
    if not isinstance(value, list) or not value:
        raise ManifestError(f"{where}: must be a non-empty array")
    parts = tuple(
        _part(item, f"{where}[{index}]", bases) for index, item in enumerate(value)
    )
    total = sum(part.size for part in parts)
    if total != size:
        raise ManifestError(
            f"{where}: part sizes add up to {total}, not the file's size {size}"
        )
    return parts


def _part(value: object, where: str, bases: tuple[str, ...]) -> Part:
    if not isinstance(value, dict):
        raise ManifestError(f"{where}: must be an object, not {_kind(value)}")
    url = _file_url(_required(value, "url", where), f"{where}.url", bases)
    offset = _int(_get(value, "offset", 0), f"{where}.offset")
    length = _int(_required(value, "length", where), f"{where}.length")
    if offset + length > MAX_INT:
        raise ManifestError(f"{where}.length: offset + length is above 2**63-1")
    compression = _compression(value.get("compression"), f"{where}.compression")
    size = _int(_get(value, "size", length), f"{where}.size")
    if compression is None and size != length:
        raise ManifestError(
            f"{where}.size: {size} differs from length {length} but not compressed"
        )
    digest = _hash(value.get("hash"), f"{where}.hash")
    return Part(url, offset, length, size, compression, digest)


def _directory(entry: dict[str, object], where: str) -> DirectoryEntry:
    path = _path(_required(entry, "path", where), f"{where}.path")
    if entry["directory"] is not True:
        raise ManifestError(f"{where}.directory: must be true, not {_kind(entry['directory'])}")
    for key in ("size", "url", "parts", "link"):
        if entry.get(key) is not None:
            raise ManifestError(
                f"{where}.{key}: directory entries take no size, url, parts or link"
            )
    return DirectoryEntry(path)


def _link(entry: dict[str, object], where: str) -> LinkEntry:
    path = _path(_required(entry, "path", where), f"{where}.path")
    for key in ("size", "url", "parts"):
        if entry.get(key) is not None:
            raise ManifestError(
                f"{where}.{key}: link entries take no size, url or parts"
            )
    target = entry["link"]
    where = f"{where}.link"
    if not isinstance(target, str) or not target:
        raise ManifestError(f"{where}: must be a non-empty string")
    if target.startswith("/"):
        raise ManifestError(f"{where}: absolute targets are not allowed")
    if "\\" in target or "\0" in target:
        raise ManifestError(f"{where}: backslashes and NULs are not allowed")
    _utf8(target, where)
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
    if resolved == ".." or resolved.startswith("../"):
        raise ManifestError(f"{where}: {target!r} points outside the destination")
    return LinkEntry(path, target)


@dataclass(slots=True)
class _Folder:
    """One level of the destination tree, to find entries that would clash. ``children``
    stays None at a leaf: 100,000 files make no 100,000 empty dicts."""

    owner: int | None = None  # the index in files of the entry at exactly this path
    children: dict[str, _Folder] | None = None

    def child(self, name: str) -> _Folder:
        if self.children is None:
            self.children = {}
        node = self.children.get(name)
        if node is None:
            node = self.children[name] = _Folder()
        return node


def _check_overlaps(placed: list[tuple[str, int]],
                    folders: Sequence[tuple[str, int]] = ()) -> None:
    """Refuse two entries at one path, or an entry inside another's path; a directory entry
    may hold files (and repeat), but not sit at or inside a file's or a link's path. Each
    is (path, its index in ``files``).

    A tree rather than a set of prefixes keeps this linear in the paths' length.
    """
    root = _Folder()
    for path, index in placed:
        where = f"files[{index}]"
        node = root
        names = path.split("/")
        for depth, name in enumerate(names):
            if node.owner is not None:
                parent = "/".join(names[:depth])
                raise ManifestError(
                    f"{where}.path: {path!r} is inside {parent!r},"
                    f" the path of files[{node.owner}]"
                )
            node = node.child(name)
        if node.owner is not None:
            raise ManifestError(
                f"{where}.path: {path!r} is also the path of files[{node.owner}]"
            )
        if node.children:
            raise ManifestError(
                f"{where}.path: {path!r} is a parent folder of {_any_owner(node)}"
            )
        node.owner = index
    for path, index in folders:  # after the files: they never meet a folder-only node
        node = root
        for name in path.split("/"):
            node = node.child(name)
            if node.owner is not None:
                raise ManifestError(f"files[{index}].path: {path!r} is at or inside the path "
                                    f"of files[{node.owner}]")


def _any_owner(node: _Folder) -> str:
    # Folders exist only on the way to an owned path, so going down always ends at one.
    while node.owner is None:
        assert node.children
        node = next(iter(node.children.values()))
    return f"files[{node.owner}]"


# Field checks.


def _path(value: object, where: str) -> str:
    """A relative POSIX path that stays inside the destination on every OS."""
    if not isinstance(value, str):
        raise ManifestError(f"{where}: must be a string, not {_kind(value)}")
    if not value:
        raise ManifestError(f"{where}: is empty")
    if value.startswith("/"):
        raise ManifestError(f"{where}: absolute paths are not allowed")
    if "\\" in value:
        raise ManifestError(f"{where}: backslashes are not allowed")
    if "\0" in value:
        raise ManifestError(f"{where}: NUL is not allowed")
    _utf8(value, where)
    names = value.split("/")
    if "" in names:
        raise ManifestError(f"{where}: empty component in {value!r}")
    for name in names:
        if name in (".", ".."):
            raise ManifestError(f"{where}: {name!r} is not allowed")
    if _DRIVE.match(names[0]):
        raise ManifestError(f"{where}: {names[0]!r} looks like a Windows drive")
    if names[0].casefold() == STATE_DIR:
        raise ManifestError(f"{where}: {names[0]!r} is reserved for mpdl's state")
    return value


def _utf8(value: str, where: str) -> None:
    """JSON can carry lone surrogates ("\\ud800"); no file system or URL can."""
    if value.isascii():  # the common case, and much cheaper than encoding
        return
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ManifestError(f"{where}: {value!r} is not valid Unicode text") from None


def _url(value: object, where: str) -> str:
    """An http(s) URL or a relative reference, safe to put in a request line."""
    if type(value) is str and _PLAIN_PATH.fullmatch(value):
        return value  # a plain relative path (no scheme, no "//", nothing to refuse below)
    if not isinstance(value, str):
        raise ManifestError(f"{where}: must be a string, not {_kind(value)}")
    if not value:
        raise ManifestError(f"{where}: is empty")
    if _URL_FORBIDDEN.search(value):
        raise ManifestError(
            f"{where}: whitespace and control characters are not allowed"
        )
    _utf8(value, where)
    try:
        split = urlsplit(value)
        host = split.hostname
    except ValueError as exc:
        raise ManifestError(f"{where}: not a valid URL ({exc})") from exc
    if split.scheme:
        if split.scheme not in ("http", "https"):
            raise ManifestError(
                f"{where}: scheme {split.scheme!r} is not http or https"
            )
        if not host:
            raise ManifestError(f"{where}: has no host")
    elif split.netloc:
        # urljoin would send "//host/x" to that one host from every mirror.
        raise ManifestError(f"{where}: '//host' URLs need a scheme")
    return value


def _file_url(value: object, where: str, bases: tuple[str, ...]) -> str:
    url = _url(value, where)
    if not bases and not _is_absolute(url):
        raise ManifestError(f"{where}: relative URL {url!r} needs base_urls")
    return sys.intern(url)  # a GOG V1 depot names its one main.bin in every file


# A relative URL that urljoin only appends to a base ending in "/" (no query, no fragment):
# no scheme (no ":"), no leading "/", no query or fragment, no "."/".." segment to resolve
# nor empty one ("//"), nothing but unreserved characters, "/" and percent-escapes.
_PLAIN_PATH = re.compile(r"[A-Za-z0-9_~%-][A-Za-z0-9_.~%/-]*")
_DOT_SEGMENT = re.compile(r"(?:^|/)\.{1,2}(?:/|$)|//")  # urljoin resolves or drops these


def _is_absolute(url: str) -> bool:
    return bool(urlsplit(url).scheme)


def _int(value: object, where: str) -> int:
    if type(value) is not int:  # bool is an int subclass: refuse it too
        raise ManifestError(f"{where}: must be an integer, not {_kind(value)}")
    if value < 0:
        raise ManifestError(f"{where}: must not be negative")
    if value > MAX_INT:
        raise ManifestError(f"{where}: must be at most 2**63-1")
    return value


def _compression(value: object, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or value not in COMPRESSIONS:
        known = ", ".join(COMPRESSIONS)
        raise ManifestError(f"{where}: unknown compression {value!r} (known: {known})")
    return value


def _hash(value: object, where: str) -> HashSpec | None:
    if value is None:
        return None
    try:
        return parse_hash(value)
    except ValueError as exc:
        raise ManifestError(f"{where}: {exc}") from exc


def _required(entry: dict[str, object], key: str, where: str) -> object:
    value = entry.get(key)
    if value is None:
        raise ManifestError(f"{where}.{key}: missing")
    return value


def _get(entry: dict[str, object], key: str, default: object) -> object:
    """An optional field; JSON null counts as absent."""
    value = entry.get(key)
    return default if value is None else value


def _kind(value: object) -> str:
    """JSON's name for what was found, for messages."""
    return _KINDS.get(type(value), type(value).__name__)


def windows_unsafe_paths(manifest: Manifest) -> dict[str, str]:
    """The paths (files, links, folders) Windows cannot hold, with why (names.py): on Windows
    each such file fails with that reason; elsewhere the run names them in a warning, since
    the same manifest handed to a Windows player would fail there."""
    # Only the problems are kept, and a path that folds to itself is its own key: 100,000
    # paths make no dict of them all, nor a folded copy of each.
    found: dict[str, str] = {}
    first: dict[str, str] = {}
    for path in itertools.chain((entry.path for entry in manifest.files),
                                (link.path for link in manifest.links)):
        why = windows_name_problem(path)
        folded = folded_name(path)
        # a second file of one name but for case overwrites the first there
        other = first.setdefault(path if folded == path else folded, path)
        if why is None and other != path:
            why = f"Windows (and macOS, by default) cannot tell it from {other!r}"
        if why is not None:
            found[path] = why
    for folder in manifest.directories:
        why = windows_name_problem(folder.path)
        if why is not None:
            found.setdefault(folder.path, why)
    return found
