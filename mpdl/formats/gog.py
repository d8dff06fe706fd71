"""GOG Galaxy depot manifests (V1 and V2) as ``mpdl/1`` manifests.

``python -m mpdl.formats.gog DEPOT.json --base-url URL -o OUT.json``, or :func:`convert` from
Python.

A depot is untrusted input, like any manifest: the converter maps GOG's fields onto mpdl/1
and then runs :func:`mpdl.formats.manifest.parse_manifest` on its own output, so whatever the mpdl/1
validator refuses (``..``, drive letters, links leaving DEST, sizes that don't add up...) is
refused here too, with a one-line :class:`~mpdl.errors.ManifestError` that names the depot item.
The converter is stricter than mpdl/1 where GOG's format allows it: chunk and file hashes must
be hex digests (a chunk's hash becomes its URL), V1 blob URLs must be relative to the base URLs,
and a path loses at most one leading separator (so ``\\\\host\\share`` stays absolute and refused).

Where files go follows heroic-gogdl (Heroic-Games-Launcher/heroic-gogdl, read at commit
4fe37391), so an install made by mpdl looks like Heroic's:

- V2 ``support`` files go to ``gog-support/<product id>/<path>``: gogdl/dl/objects/v2.py
  lines 13-15 prefix a support file's path with its product id, and
  gogdl/dl/managers/task_executor.py line 26 (with lines 672-673) writes support files under
  ``<install>/gog-support`` unless ``--support`` names another folder. The product id is not in
  the depot manifest (it is the depot's ``productId`` in the build meta): ``product_id=``.
- V1 ``support`` files go to ``gog-support/<path>``, without a product id:
  gogdl/dl/objects/v1.py line 41 keeps the bare path and gogdl/dl/managers/v1.py line 220 joins
  it to the support folder.
- A ``DepotLink`` target is relative to the install folder: gogdl/dl/workers/task_executor.py
  line 294 links to ``os.path.join(install, target)``. mpdl/1 link targets are relative to the
  link's own folder, so the target is rewritten relative to it.
- ``DepotDirectory`` items (V2) and ``directory`` records (V1) become mpdl/1 directory entries,
  so empty folders are made too.
  gogdl/dl/objects/v2.py lines 134-139 treat every item that is neither a file nor a link as a
  folder; this converter refuses unknown item types instead of dropping content silently.
"""

from __future__ import annotations

import argparse
import json
import os
import posixpath
import re
import sys
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from typing import Any

from ..errors import ManifestError
from .manifest import FORMAT, MAX_MANIFEST_BYTES, parse_manifest
from ..osdeps import fsync
from ..core.plan import ZLIB_MAX_RATIO

__all__ = ["SUPPORT_DIR", "convert", "decode_depot", "main"]

#: Where heroic-gogdl puts support files inside the install (task_executor.py line 26).
SUPPORT_DIR = "gog-support"

_MD5 = re.compile(r"[0-9a-fA-F]{32}")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
#: A scheme, or a leading "/": what would take a V1 blob URL away from the base URLs' folder.
_NOT_RELATIVE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:|/")
_FILE_ENTRY = re.compile(r"files\[(\d+)\]")
PROG = "mpdl.formats.gog"


def decode_depot(data: bytes) -> dict[str, Any]:
    """A depot as GOG's CDN serves it (zlib-compressed JSON) or as plain JSON, decoded.

    Decompression stops at mpdl's manifest size limit, so a zlib bomb costs no more memory
    than the largest manifest mpdl would read.
    """
    if data.lstrip()[:1] in (b"{", b"["):
        text = data
    else:
        inflater = zlib.decompressobj()
        try:
            text = inflater.decompress(data, MAX_MANIFEST_BYTES + 1)
        except zlib.error as exc:
            raise ManifestError(f"depot: neither JSON nor zlib-compressed JSON ({exc})") from None
        if len(text) > MAX_MANIFEST_BYTES:
            raise ManifestError(f"depot: inflates to more than {MAX_MANIFEST_BYTES} bytes")
        if not inflater.eof:
            raise ManifestError("depot: zlib stream is truncated")
    try:
        obj = json.loads(text)
    except UnicodeDecodeError as exc:
        raise ManifestError(f"depot: not valid UTF-8 (byte {exc.start})") from None
    except RecursionError:
        raise ManifestError("depot: not valid JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, or an integer beyond Python's digit limit
        raise ManifestError(f"depot: not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ManifestError("depot: must be a JSON object")
    return obj


def convert(
    depot: bytes | dict[str, Any],
    base_urls: Sequence[str],
    *,
    product_id: str | None = None,
    support_dir: str = SUPPORT_DIR,
) -> dict[str, Any]:
    """The mpdl/1 manifest of a GOG depot (V1 or V2), validated.

    ``depot`` is the manifest's bytes (zlib-compressed or not) or its decoded JSON.
    ``base_urls`` are the mirrors: for V2 the folder that holds the galaxy paths of the chunks
    (a secure link's ``.../content-system/v2/store/<product>/`` or so), for V1 the folder
    the ``url`` of each file is relative to. ``product_id`` is needed only for V2 support files.
    Raises :class:`~mpdl.errors.ManifestError` with a one-line reason.
    """
    obj = decode_depot(depot) if isinstance(depot, (bytes, bytearray)) else depot
    if not isinstance(obj, dict) or not isinstance(obj.get("depot"), dict):
        raise ManifestError("depot: not a GOG depot manifest (no 'depot' object)")
    body = obj["depot"]
    if isinstance(body.get("items"), list):
        entries, origins = _v2(body["items"], product_id, support_dir)
    elif isinstance(body.get("files"), list):
        entries, origins = _v1(body["files"], support_dir)
    else:
        raise ManifestError(
            "depot: not a GOG depot manifest (neither depot.items (V2) nor depot.files (V1))"
        )
    manifest = {"format": FORMAT, "base_urls": list(base_urls), "files": entries}
    try:
        parse_manifest(manifest)
    except ManifestError as exc:
        raise ManifestError(_from_depot(str(exc), origins)) from None
    return manifest


# V2: chunked, zlib-compressed files.


def _objects(items: list[Any], name: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each of a depot's records with where it is, refusing one that is not a JSON object."""
    for index, item in enumerate(items):
        where = f"{name}[{index}]"
        if not isinstance(item, dict):
            raise ManifestError(f"{where}: must be an object")
        yield where, item


def _v2(
    items: list[Any], product_id: str | None, support_dir: str
) -> tuple[list[dict[str, Any]], list[str]]:
    entries: list[dict[str, Any]] = []
    origins: list[str] = []
    for where, item in _objects(items, "depot.items"):
        kind = item.get("type")
        if kind == "DepotDirectory":
            path = _path(item.get("path"), f"{where}.path").rstrip("/")  # "saves\\" too
            entries.append({"path": path, "directory": True})
            origins.append(where)
            continue
        if kind == "DepotLink":
            entries.append(_v2_link(item, where))
        elif kind == "DepotFile":
            entries.append(_v2_file(item, where, product_id, support_dir))
        else:
            raise ManifestError(f"{where}.type: unknown item type {kind!r}")
        origins.append(where)
    return entries, origins


def _v2_file(
    item: dict[str, Any], where: str, product_id: str | None, support_dir: str
) -> dict[str, Any]:
    path = _path(item.get("path"), f"{where}.path")
    flags = item.get("flags") or []
    if not isinstance(flags, list):
        raise ManifestError(f"{where}.flags: must be an array")
    if "support" in flags:
        if not product_id:
            raise ManifestError(
                f"{where}: a support file needs the product id (--product-id: the depot's"
                " productId in the build meta)"
            )
        path = f"{support_dir}/{product_id}/{path}"
    chunks = item.get("chunks")
    if not isinstance(chunks, list):
        raise ManifestError(f"{where}.chunks: must be an array")
    parts = [_chunk(chunk, f"{where}.chunks[{n}]") for n, chunk in enumerate(chunks)]
    entry: dict[str, Any] = {"path": path, "size": sum(part["size"] for part in parts)}
    if item.get("md5") is not None:
        entry["hash"] = "md5:" + _hex(item["md5"], _MD5, f"{where}.md5")
    elif item.get("sha256") is not None:
        entry["hash"] = "sha256:" + _hex(item["sha256"], _SHA256, f"{where}.sha256")
    elif len(parts) == 1:
        entry["hash"] = parts[0]["hash"]  # one chunk: its bytes are the file's
    if "executable" in flags:
        entry["executable"] = True
    if parts:
        entry["parts"] = parts
    return entry


def _chunk(chunk: object, where: str) -> dict[str, Any]:
    if not isinstance(chunk, dict):
        raise ManifestError(f"{where}: must be an object")
    stored = _hex(chunk.get("compressedMd5"), _MD5, f"{where}.compressedMd5").lower()
    length = _size(chunk.get("compressedSize"), f"{where}.compressedSize")
    size = _size(chunk.get("size"), f"{where}.size")
    if size > length * ZLIB_MAX_RATIO:  # mpdl's planner refuses it too, later
        raise ManifestError(
            f"{where}.size: {length} bytes of deflate cannot make the {size} it declares")
    return {
        "url": galaxy_path(stored),
        "offset": 0,
        "length": length,
        "size": size,
        "compression": "zlib",
        "hash": "md5:" + _hex(chunk.get("md5"), _MD5, f"{where}.md5"),
    }


def galaxy_path(digest: str) -> str:
    """Where GOG's CDN keeps an object named by ``digest``: ``ab/cd/abcd...``."""
    return f"{digest[0:2]}/{digest[2:4]}/{digest}"


def _v2_link(item: dict[str, Any], where: str) -> dict[str, Any]:
    path = _path(item.get("path"), f"{where}.path")
    raw = item.get("target")
    if not isinstance(raw, str) or not raw:
        raise ManifestError(f"{where}.target: must be a non-empty string")
    target = raw.replace("\\", "/")
    if target.startswith("/"):
        raise ManifestError(f"{where}.target: absolute targets are not allowed")
    # GOG's target is relative to the install folder (see the module docstring), mpdl/1's to
    # the link's folder. The validator then refuses any target that leaves DEST.
    resolved = posixpath.normpath(target)
    if resolved == ".." or resolved.startswith("../"):
        raise ManifestError(f"{where}.target: {raw!r} points outside the destination")
    # Both under one made-up absolute root, so relpath never looks at the working folder.
    relative = posixpath.relpath(f"/r/{resolved}", posixpath.dirname(f"/r/{path}"))
    return {"path": path, "link": relative}


# V1: files at offsets of one big blob.


def _v1(records: list[Any], support_dir: str) -> tuple[list[dict[str, Any]], list[str]]:
    entries: list[dict[str, Any]] = []
    origins: list[str] = []
    for where, record in _objects(records, "depot.files"):
        path = _path(record.get("path"), f"{where}.path")
        if record.get("directory"):
            entries.append({"path": path.rstrip("/"), "directory": True})
            origins.append(where)
            continue
        if record.get("support"):
            path = f"{support_dir}/{path}"
        size = _size(record.get("size"), f"{where}.size")
        entry: dict[str, Any] = {"path": path, "size": size}
        if record.get("hash") is not None:
            entry["hash"] = "md5:" + _hex(record["hash"], _MD5, f"{where}.hash")
        if record.get("executable"):
            entry["executable"] = True
        if size:
            url = record.get("url")
            if not isinstance(url, str) or _NOT_RELATIVE.match(url) or ".." in url.split("/"):
                raise ManifestError(f"{where}.url: must be a URL relative to the base URLs")
            offset = _size(record.get("offset"), f"{where}.offset")
            entry["parts"] = [{"url": url, "offset": offset, "length": size}]
        entries.append(entry)
        origins.append(where)
    return entries, origins


# Field checks.


def _path(value: object, where: str) -> str:
    """GOG's Windows-style path as mpdl/1's: ``/`` separators, one leading separator dropped.

    Only one: ``\\\\host\\share`` stays absolute, for the validator to refuse.
    """
    if not isinstance(value, str):
        raise ManifestError(f"{where}: must be a string")
    path = value.replace("\\", "/")
    return path[1:] if path.startswith("/") else path


def _hex(value: object, pattern: re.Pattern[str], where: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ManifestError(f"{where}: must be a hex digest, not {value!r:.80}")
    return value


def _size(value: object, where: str) -> int:
    if type(value) is not int or value < 0:
        raise ManifestError(f"{where}: must be a non-negative integer, not {value!r:.40}")
    return value


def _from_depot(message: str, origins: list[str]) -> str:
    """The validator names ``files[N]``: say which depot item that came from."""
    found = _FILE_ENTRY.match(message)
    if found and int(found.group(1)) < len(origins):
        return f"{origins[int(found.group(1))]}: {message}"
    return message


# The command line.


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line and exit 1, like every other error of this command."""

    def error(self, message: str) -> Any:
        self.exit(1, f"{PROG}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=f"python -m {PROG}",
        description="Turn a GOG Galaxy depot manifest (V1 or V2, zlib-compressed as GOG's CDN "
        "serves it, or plain JSON) into an mpdl/1 manifest for `python -m mpdl`.",
        epilog="V2 chunks are fetched from BASE/ab/cd/abcd... (the galaxy path of each chunk's "
        "compressedMd5), V1 files from their `url` (a main.bin) relative to BASE. Support files "
        f"go under {SUPPORT_DIR}/ as heroic-gogdl puts them; empty folders are left out. "
        "Errors are one line on stderr, exit status 1; nothing is written then.",
    )
    parser.add_argument("depot", help="the depot manifest file")
    parser.add_argument(
        "--base-url", action="append", required=True, metavar="URL",
        help="a mirror the chunks or blobs are relative to; repeat for more, tried in order",
    )
    parser.add_argument("-o", "--output", required=True, metavar="OUT.json",
                        help="the mpdl/1 manifest to write (atomically)")
    parser.add_argument(
        "--product-id", metavar="ID",
        help="the depot's productId (from the build meta): V2 support files go to "
        f"{SUPPORT_DIR}/ID/",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with open(args.depot, "rb") as file:
            data = file.read(MAX_MANIFEST_BYTES + 1)
        if len(data) > MAX_MANIFEST_BYTES:
            raise ManifestError(f"depot: larger than {MAX_MANIFEST_BYTES} bytes")
        manifest = convert(data, args.base_url, product_id=args.product_id)
        _write_atomically(args.output, json.dumps(manifest, indent=1) + "\n")
    except ManifestError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"{PROG}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


def _write_atomically(path: str, text: str) -> None:
    """Write beside ``path`` and rename over it: a reader sees the old file or the new one."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, temp = tempfile.mkstemp(prefix=".mpdl-gog-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        os.unlink(temp)
        raise


if __name__ == "__main__":
    sys.exit(main())
