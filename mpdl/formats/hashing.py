"""Hash algorithms named in manifests as ``algo:hex``.

Manifests name their digests by algorithm so a depot can pick a fast non-cryptographic
hash (xxh3) for integrity or a classic one (sha256) it already publishes; mpdl only
needs to turn the name into a hasher and compare hex digests.
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys
import typing
from collections.abc import Callable
from dataclasses import FrozenInstanceError

import xxhash

__all__ = ["ALGORITHMS", "HashSpec", "Hasher", "hash_file", "hash_next", "new_hasher",
           "parse_checksum", "parse_hash", "split_fragment"]

#: Algorithm name -> length of its hex digest.
ALGORITHMS: dict[str, int] = {
    "xxh3_64": 16,
    "xxh3_128": 32,
    "xxh64": 16,
    "md5": 32,
    "sha1": 40,
    "sha256": 64,
    "sha384": 96,
    "sha512": 128,
    "xxh32": 8,
}

#: Other spellings of the algorithms a user may type (aria2c's ``sha-256``, xxHash's own names),
#: read by ``parse_checksum`` only: a manifest names its algorithms as above, one spelling each,
#: as a file's identity (journal.py) holds the name.
_ALIASES: dict[str, str] = {
    "sha-1": "sha1", "sha-256": "sha256", "sha-384": "sha384", "sha-512": "sha512",
    "xxh3": "xxh3_64", "xxh3-64": "xxh3_64", "xxh3-128": "xxh3_128", "xxh128": "xxh3_128",
}


class Hasher(typing.Protocol):
    """What mpdl needs from a hash object: hashlib's and xxhash's both fit."""

    def update(self, data: bytes | bytearray | memoryview, /) -> None: ...

    def hexdigest(self) -> str: ...


# md5 and sha1 check integrity here, not security: saying so keeps FIPS builds of
# OpenSSL from refusing them.
_CONSTRUCTORS: dict[str, Callable[[], Hasher]] = {
    "xxh3_64": xxhash.xxh3_64,
    "xxh3_128": xxhash.xxh3_128,
    "xxh64": xxhash.xxh64,
    "md5": functools.partial(hashlib.md5, usedforsecurity=False),
    "sha1": functools.partial(hashlib.sha1, usedforsecurity=False),
    "sha256": hashlib.sha256,
    "sha384": hashlib.sha384,
    "sha512": hashlib.sha512,
    "xxh32": xxhash.xxh32,
}

_HEX_DIGITS = frozenset("0123456789abcdef")


class HashSpec:
    """An expected digest: a known algorithm and its lowercase hex digest.

    Construction validates, so a HashSpec in hand can always build its hasher.
    Use :func:`parse_hash` to read one from ``algo:hex`` text in any case.

    It holds one string, ``algo:hex``, which ``str`` returns as is: a plan's checks and the
    writer's records name the hash by that text, so a 100,000-file manifest keeps one string
    per hash rather than a hex digest and, per planned file, its ``algo:hex`` copy.
    Immutable, equal by value and hashable, as a frozen dataclass would be.
    """

    __slots__ = ("_text",)
    _text: str

    def __init__(self, algo: str, hexdigest: str) -> None:
        length = ALGORITHMS.get(algo)
        if length is None:
            raise ValueError(f"unknown hash algorithm {algo!r}")
        if len(hexdigest) != length:
            raise ValueError(
                f"{algo} digest must be {length} hex digits, not {len(hexdigest)}"
            )
        if not _HEX_DIGITS.issuperset(hexdigest):
            raise ValueError(f"{algo} digest has characters other than 0-9a-f")
        object.__setattr__(self, "_text", f"{algo}:{hexdigest}")

    @property
    def algo(self) -> str:
        return sys.intern(self._text.partition(":")[0])

    @property
    def hexdigest(self) -> str:
        return self._text.partition(":")[2]

    def __setattr__(self, name: str, value: object) -> None:
        raise FrozenInstanceError(f"HashSpec is immutable: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"HashSpec is immutable: cannot delete {name!r}")

    def __reduce__(self) -> tuple[type[HashSpec], tuple[str, str]]:
        return HashSpec, (self.algo, self.hexdigest)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HashSpec):
            return NotImplemented
        return self._text == other._text

    def __hash__(self) -> int:
        return hash(self._text)

    def __repr__(self) -> str:
        return f"HashSpec(algo={self.algo!r}, hexdigest={self.hexdigest!r})"

    def __str__(self) -> str:
        return self._text

    def new(self) -> Hasher:
        """A fresh hasher of this spec's algorithm."""
        return new_hasher(self.algo)

    def matches(self, hexdigest: str) -> bool:
        """Whether a computed hex digest (any case) is the expected one."""
        return hexdigest.lower() == self.hexdigest


def parse_hash(text: object) -> HashSpec:
    """Read ``algo:hex``, hex in any case. Takes any object: it reads decoded JSON."""
    if not isinstance(text, str):
        # A bad manifest value rather than a caller's bug, hence ValueError.
        raise ValueError(  # noqa: TRY004
            f"expected an 'algo:hex' string, not {type(text).__name__}"
        )
    algo, colon, hexdigest = text.partition(":")
    if not colon:
        raise ValueError(f"expected 'algo:hex', found no ':' in {text!r}")
    # A manifest names a few algorithms in 100,000 hashes: one string each, not a copy each.
    return HashSpec(sys.intern(algo), hexdigest.lower())


def parse_checksum(text: str) -> HashSpec:
    """A checksum as people type one for a download: ``sha256:HEX`` (mpdl's form), aria2c's
    ``sha-256=HEX``, or pip's fragment body ``sha256=HEX``; the algorithm's name in any case
    and under its other spellings (``sha-512``, ``xxh128``). Raises ValueError naming the
    algorithms known."""
    text = text.strip()
    cut = min((i for i in (text.find(":"), text.find("=")) if i >= 0), default=-1)
    if cut < 0:
        raise ValueError(f"expected ALGO:HEX (e.g. sha256:...), not {text!r}")
    algo = text[:cut].strip().lower()
    algo = _ALIASES.get(algo, algo)
    if algo not in ALGORITHMS:
        raise ValueError(f"unknown hash algorithm {text[:cut]!r}; known: "
                         f"{', '.join(sorted(ALGORITHMS))}")
    return HashSpec(algo, text[cut + 1:].strip().lower())


def split_fragment(url: str) -> tuple[str, HashSpec | None]:
    """pip's ``URL#sha256=HEX``: the URL without its fragment, and the checksum the fragment
    names (None when it names none: ``#egg=...``, or no fragment). A fragment is never sent
    to a server, so dropping it changes no request."""
    base, hash_mark, fragment = url.partition("#")
    if not hash_mark:
        return url, None
    for item in fragment.split("&"):
        name, equals, _ = item.partition("=")
        algo = _ALIASES.get(name.strip().lower(), name.strip().lower())
        if equals and algo in ALGORITHMS:
            return base, parse_checksum(item)
    return base, None


def new_hasher(algo: str) -> Hasher:
    """A fresh hasher for an algorithm name from :data:`ALGORITHMS`."""
    try:
        constructor = _CONSTRUCTORS[algo]
    except KeyError:
        raise ValueError(f"unknown hash algorithm {algo!r}") from None
    return constructor()


def hash_file(
    path: str | os.PathLike[str], algo: str, *, buffer_size: int = 1 << 20
) -> str:
    """Hex digest of a file's bytes.

    Reads into one reused buffer: files can be gigabytes, and a fresh bytes object
    per read would churn the allocator for nothing.
    """
    if buffer_size < 1:
        raise ValueError(f"buffer_size must be at least 1, not {buffer_size}")
    hasher = new_hasher(algo)
    with open(path, "rb", buffering=0) as file:
        # No bigger than the file: a writer hashes thousands of small files in a row.
        size = os.fstat(file.fileno()).st_size
        buffer = memoryview(bytearray(max(1, min(buffer_size, size))))
        while count := file.readinto(buffer):
            hasher.update(buffer[:count])
    return hasher.hexdigest()


def hash_next(file: typing.BinaryIO, algo: str, length: int,
              buffer_size: int = 1 << 20) -> tuple[str, int]:
    """The digest of the next ``length`` bytes of ``file``, and how many there were (fewer
    at the end of the file): how a file's parts are checked one after the other."""
    hasher = new_hasher(algo)
    buffer = memoryview(bytearray(min(buffer_size, max(1, length))))
    done = 0
    while done < length:
        n = file.readinto(buffer[:min(len(buffer), length - done)])  # type: ignore[attr-defined]
        if not n:
            break
        hasher.update(buffer[:n])
        done += n
    return hasher.hexdigest(), done
