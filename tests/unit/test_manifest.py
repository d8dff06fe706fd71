"""The mpdl/1 manifest: valid documents become the model, invalid ones one-line refusals."""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle
import re
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest

from mpdl.formats import jsonread
from mpdl.formats import manifest as manifest_module
from mpdl.errors import ManifestError
from mpdl.formats.hashing import HashSpec
from mpdl.formats.manifest import (
            COMPRESSIONS,
            FORMAT,
            FileEntry,
            LinkEntry,
            Manifest,
            Part,
            load_manifest,
            parse_manifest,
        )

BASES = ["https://cdn-a.example/depot/", "https://cdn-b.example/depot/"]
XXH = "0123456789abcdef" * 2
MD5 = "d41d8cd98f00b204e9800998ecf8427e"
SHA = "ab" * 32
BIG = 2**63


def example() -> dict:
    """The manifest of the format's documentation, plus a few unknown keys."""
    return {
        "format": "mpdl/1",
        "generator": "depot-tool 3.1",
        "base_urls": BASES,
        "files": [
            {
                "path": "bin/tool",
                "size": 3145728,
                "hash": f"xxh3_128:{XXH.upper()}",
                "executable": True,
                "url": "objects/tool",
            },
            {
                "path": "v1/s001.wav",
                "size": 5000,
                "hash": f"md5:{MD5}",
                "parts": [{"url": "main.bin", "offset": 777, "length": 5000}],
                "comment": "ignored",
            },
            {
                "path": "v2/level1.pak",
                "size": 2097152,
                "hash": f"sha256:{SHA}",
                "parts": [
                    {
                        "url": "chunks/ab12",
                        "length": 400113,
                        "size": 1048576,
                        "compression": "zlib",
                        "hash": f"md5:{MD5}",
                    },
                    {
                        "url": "chunks/cd34",
                        "length": 398002,
                        "size": 1048576,
                        "compression": "zlib",
                        "hash": f"md5:{MD5}",
                        "x-note": [1, 2],
                    },
                ],
            },
            {"path": "empty.dat", "size": 0},
            {"path": "lib/libfoo.so", "link": "libfoo.so.1"},
        ],
    }


EXPECTED = Manifest(
    base_urls=tuple(BASES),
    files=(
        FileEntry(
            path="bin/tool",
            size=3145728,
            hash=HashSpec("xxh3_128", XXH),
            executable=True,
            url="objects/tool",
            parts=(),
        ),
        FileEntry(
            path="v1/s001.wav",
            size=5000,
            hash=HashSpec("md5", MD5),
            executable=False,
            url=None,
            parts=(Part("main.bin", 777, 5000, 5000, None, None),),
        ),
        FileEntry(
            path="v2/level1.pak",
            size=2097152,
            hash=HashSpec("sha256", SHA),
            executable=False,
            url=None,
            parts=(
                Part("chunks/ab12", 0, 400113, 1048576, "zlib", HashSpec("md5", MD5)),
                Part("chunks/cd34", 0, 398002, 1048576, "zlib", HashSpec("md5", MD5)),
            ),
        ),
        FileEntry("empty.dat", 0, None, False, None, ()),
    ),
    links=(LinkEntry("lib/libfoo.so", "libfoo.so.1"),),
)


def doc(*files: dict, base_urls: object = BASES, **top: object) -> dict:
    """A valid top level around some file entries."""
    result = {"format": FORMAT, "base_urls": base_urls, "files": list(files)}
    result.update(top)
    return result


def whole(path: str = "f", size: int = 3, url: str = "objects/f", **extra) -> dict:
    return {"path": path, "size": size, "url": url, **extra}


def parted(*parts: dict, size: int | None = None, path: str = "f") -> dict:
    if size is None:
        size = sum(part.get("size", part.get("length", 0)) for part in parts)
    return {"path": path, "size": size, "parts": list(parts)}


def part(url: str = "main.bin", length: int = 10, **extra) -> dict:
    return {"url": url, "length": length, **extra}


def link(path: str = "l", target: str = "f", **extra) -> dict:
    return {"path": path, "link": target, **extra}


# Valid manifests.


def test_example_parses_into_the_model() -> None:
    assert parse_manifest(example()) == EXPECTED


def test_defaults() -> None:
    parsed = parse_manifest(doc(whole(), parted(part(), path="g")))
    plain, split = parsed.files
    assert (plain.hash, plain.executable, plain.parts) == (None, False, ())
    assert split.url is None
    (only,) = split.parts
    assert (only.offset, only.size, only.compression, only.hash) == (0, 10, None, None)
    assert not only.compressed
    assert parsed.links == ()


def test_compressed_property() -> None:
    compressed = parse_manifest(example()).files[2].parts[0]
    assert compressed.compressed
    assert compressed.compression in COMPRESSIONS


def test_model_is_frozen_tuples() -> None:
    parsed = parse_manifest(example())
    assert isinstance(parsed.base_urls, tuple)
    assert isinstance(parsed.files, tuple)
    assert isinstance(parsed.links, tuple)
    assert all(isinstance(entry.parts, tuple) for entry in parsed.files)
    for value in (parsed, parsed.files[0], parsed.files[1], parsed.files[1].parts[0],
                  parsed.links[0]):
        first = "path" if isinstance(value, FileEntry) else dataclasses.fields(value)[0].name
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(value, first, "x")


def test_a_file_of_one_plain_range_reads_back_as_its_part() -> None:
    """A V1 file keeps its range's object and offset, not a Part: what it gives back is the
    Part it was made of, equal to (and hashed as) one made the long way."""
    part = Part("main.bin", 123456789, 1434, 1434)
    entry = FileEntry("game/a.dat", 1434, HashSpec("md5", MD5), parts=(part,))
    assert entry.parts == (part,) and entry.parts[0].offset == 123456789
    assert entry.plain_range == ("main.bin", 123456789, 1434)
    assert entry == FileEntry("game/a.dat", 1434, HashSpec("md5", MD5), parts=(part,))
    assert entry != FileEntry("game/a.dat", 1434, HashSpec("md5", MD5),
                              parts=(Part("main.bin", 123456790, 1434, 1434),))
    assert pickle.loads(pickle.dumps(entry)) == entry
    assert len({entry, FileEntry("game/a.dat", 1434, HashSpec("md5", MD5), parts=(part,))}) == 1
    # What is not one plain range of the whole file keeps its parts as they came.
    hashed = Part("main.bin", 0, 1434, 1434, hash=HashSpec("md5", MD5))
    assert FileEntry("b", 1434, parts=(hashed,)).parts[0] is hashed
    assert FileEntry("b", 1434, parts=(hashed,)).plain_range is None
    shorter = Part("main.bin", 0, 1000, 1000)
    assert FileEntry("c", 1000, parts=(shorter, Part("x", 0, 0, 0))).parts[0] is shorter


def test_null_counts_as_absent_for_optional_fields() -> None:
    entry = whole(url="https://h.example/f", hash=None, executable=None, parts=None)
    parsed = parse_manifest(doc(entry, base_urls=None))
    assert parsed.files == (FileEntry("f", 3, url="https://h.example/f"),)
    assert parsed.base_urls == ()
    split = parse_manifest(
        doc(parted(part(offset=None, size=None, compression=None, hash=None), size=10))
    )
    assert split.files[0].parts == (Part("main.bin", 0, 10, 10),)


def test_unknown_keys_ignored_everywhere() -> None:
    plain = doc(parted(part()), base_urls=["https://a.example/"])
    noisy = copy.deepcopy(plain)
    noisy["extra"] = {"anything": [1, 2]}
    noisy["files"][0]["mode"] = "0644"
    noisy["files"][0]["parts"][0]["etag"] = "xyz"
    assert parse_manifest(noisy) == parse_manifest(plain)


def test_absolute_urls_need_no_base() -> None:
    parsed = parse_manifest(
        doc(
            whole(url="https://host.example/a?sig=1"),
            parted(part(url="HTTP://other.example/b"), path="g"),
            base_urls=[],
        )
    )
    assert parsed.files[0].url == "https://host.example/a?sig=1"
    assert parsed.mirrors("https://host.example/a?sig=1") == (
        "https://host.example/a?sig=1",
    )


def test_zero_size_files() -> None:
    parsed = parse_manifest(doc({"path": "e", "size": 0}, whole(path="w", size=0)))
    assert parsed.files[0] == FileEntry("e", 0)
    assert parsed.files[1].url == "objects/f"


def test_part_sizes_of_zero_add_up() -> None:
    parsed = parse_manifest(doc(parted(part(length=0), size=0)))
    assert parsed.files[0].parts[0].size == 0


def test_largest_values_accepted() -> None:
    top = BIG - 1
    parsed = parse_manifest(doc(parted(part(length=top), size=top)))
    assert parsed.files[0].size == top


@pytest.mark.parametrize(
    ("path", "target"),
    [
        ("l", "f"),
        ("d/l", "../f"),
        ("d/e/l", "../../f"),
        ("d/l", ".."),
        ("l", "d/./x/../f"),
        ("l", "x"),  # dangling targets are the link's business
    ],
)
def test_links_inside_destination(path: str, target: str) -> None:
    parsed = parse_manifest(doc(whole(), link(path, target)))
    assert parsed.links == (LinkEntry(path, target),)


def test_siblings_and_common_prefixes_are_fine() -> None:
    paths = ["a/b", "a/c", "ab", "a-b/c", "a/bc/d", "b/a/b"]
    parsed = parse_manifest(doc(*(whole(path=p) for p in paths)))
    assert [entry.path for entry in parsed.files] == paths


# Mirrors.


def test_mirrors_join_in_order() -> None:
    parsed = parse_manifest(example())
    assert parsed.mirrors("objects/tool") == (
        "https://cdn-a.example/depot/objects/tool",
        "https://cdn-b.example/depot/objects/tool",
    )
    assert parsed.mirrors("https://elsewhere.example/x") == (
        "https://elsewhere.example/x",
    )


@pytest.mark.parametrize("url", [
    "objects/tool", "a//b", "a/", "./a", "a/./b", "a/../b", "a/..", "..", "-x", "~y/%2F/z",
    "a.b/c.d", "a;p", "a?q=1", "a#f", "a b", "a:b", "b:/x", "//host/x", "/root/x", "a/.b/..c",
])
def test_mirrors_join_as_urljoin_does(url: str) -> None:
    """A plain path is appended without urljoin's parsing; every URL joins as urljoin would."""
    bases = ["https://cdn-a.example/depot/", "http://h:8/a/b/", "https://c.example/"]
    parsed = parse_manifest({"format": "mpdl/1", "base_urls": bases,
                             "files": [{"path": "x", "size": 1, "url": "x"}]})
    if urlsplit(url).scheme:
        assert parsed.mirrors(url) == (url,)
    else:
        assert parsed.mirrors(url) == tuple(urljoin(base, url) for base in parsed.base_urls)


def test_base_url_gets_trailing_slash() -> None:
    parsed = parse_manifest(
        doc(
            whole(url="x/y"),
            base_urls=["https://b.example/depot", "http://a.example", "https://c/d/"],
        )
    )
    assert parsed.base_urls == (
        "https://b.example/depot/",
        "http://a.example/",
        "https://c/d/",
    )
    assert parsed.mirrors("x/y") == (
        "https://b.example/depot/x/y",
        "http://a.example/x/y",
        "https://c/d/x/y",
    )


# single_url.


def test_single_url() -> None:
    made = Manifest.single_url("https://h.example/file.iso", "file.iso")
    assert made == Manifest((), (FileEntry("file.iso", None, url=made.files[0].url),))
    assert made.files[0].url == "https://h.example/file.iso"
    sized = Manifest.single_url("http://h.example/f", "dir/f", size=42)
    assert sized.files[0].size == 42
    assert sized.mirrors("http://h.example/f") == ("http://h.example/f",)


@pytest.mark.parametrize(
    ("url", "path", "size", "where"),
    [
        ("relative/f", "f", None, "url"),
        ("ftp://h.example/f", "f", None, "url"),
        ("https://h.example/f", "../f", None, "path"),
        ("https://h.example/f", ".mpdl/x", None, "path"),
        ("https://h.example/f", "f", -1, "size"),
        ("https://h.example/f", "f", True, "size"),
    ],
)
def test_single_url_refusals(url: str, path: str, size: object, where: str) -> None:
    with pytest.raises(ManifestError, match=rf"^{where}: "):
        Manifest.single_url(url, path, size)  # type: ignore[arg-type]


# Refusals.


def with_files(*files: object) -> dict:
    return {"format": FORMAT, "base_urls": BASES, "files": list(files)}


def bad_path(path: object) -> dict:
    return doc(whole(path=path))  # type: ignore[arg-type]


REFUSALS = [
    # The top level.
    pytest.param([], "manifest", "object", id="top-array"),
    pytest.param("mpdl/1", "manifest", "object", id="top-string"),
    pytest.param(None, "manifest", "object", id="top-null"),
    pytest.param({"files": []}, "format", "missing", id="format-missing"),
    pytest.param({"format": "mpdl/2", "files": []}, "format", "mpdl/2", id="format-2"),
    pytest.param(
        {"format": "MPDL/1", "files": []}, "format", "'MPDL/1'", id="format-case"
    ),
    pytest.param(
        {"format": 1, "files": []}, "format", "unsupported 1", id="format-number"
    ),
    pytest.param({"format": FORMAT}, "files", "missing", id="files-missing"),
    pytest.param({"format": FORMAT, "files": {}}, "files", "array", id="files-object"),
    pytest.param({"format": FORMAT, "files": "f"}, "files", "array", id="files-str"),
    pytest.param(with_files(5), "files[0]", "object", id="entry-number"),
    pytest.param(with_files(whole(), []), "files[1]", "object", id="entry-array"),
    # Paths.
    pytest.param(doc({"size": 0}), "files[0].path", "missing", id="path-missing"),
    pytest.param(bad_path(5), "files[0].path", "string", id="path-number"),
    pytest.param(bad_path(""), "files[0].path", "empty", id="path-empty"),
    pytest.param(bad_path("/etc/x"), "files[0].path", "absolute", id="path-absolute"),
    pytest.param(bad_path("/"), "files[0].path", "absolute", id="path-root"),
    pytest.param(bad_path("a\\b"), "files[0].path", "backslash", id="path-backslash"),
    pytest.param(bad_path("a\0b"), "files[0].path", "NUL", id="path-nul"),
    pytest.param(bad_path("a//b"), "files[0].path", "empty component", id="path-a//b"),
    pytest.param(bad_path("a/"), "files[0].path", "empty component", id="path-slash"),
    pytest.param(bad_path("."), "files[0].path", "'.' is not", id="path-dot"),
    pytest.param(bad_path(".."), "files[0].path", "'..' is not", id="path-dotdot"),
    pytest.param(bad_path("a/./b"), "files[0].path", "'.' is not", id="path-a/./b"),
    pytest.param(bad_path("a/../b"), "files[0].path", "'..' is", id="path-a/../b"),
    pytest.param(bad_path("../x"), "files[0].path", "'..' is", id="path-../x"),
    pytest.param(bad_path("a/.."), "files[0].path", "'..' is", id="path-a/.."),
    pytest.param(bad_path("C:"), "files[0].path", "drive", id="path-drive"),
    pytest.param(bad_path("c:/x"), "files[0].path", "drive", id="path-drive-dir"),
    pytest.param(bad_path("D:x"), "files[0].path", "drive", id="path-drive-rel"),
    pytest.param(bad_path(".mpdl"), "files[0].path", "reserved", id="path-state"),
    pytest.param(bad_path(".mpdl/x"), "files[0].path", "reserved", id="path-state-in"),
    pytest.param(
        bad_path(".MPDL/x"),
        "files[0].path",
        "'.MPDL' is reserved",
        id="path-state-case",
    ),
    pytest.param(
        doc(link("../l", "f")), "files[0].path", "'..'", id="link-path-dotdot"
    ),
    pytest.param(doc(link("", "f")), "files[0].path", "empty", id="link-path-empty"),
    # Entries at the same place, or inside one another.
    pytest.param(
        doc(whole(path="a"), whole(path="b"), whole(path="a")),
        "files[2].path",
        "files[0]",
        id="duplicate",
    ),
    pytest.param(
        doc(whole(path="a"), link("a", "b")), "files[1].path", "files[0]", id="dup-link"
    ),
    pytest.param(
        doc(whole(path="a"), whole(path="a/b")),
        "files[1].path",
        "inside 'a'",
        id="file-under-file",
    ),
    pytest.param(
        doc(whole(path="a/b/c"), whole(path="a")),
        "files[1].path",
        "parent folder of files[0]",
        id="file-over-file",
    ),
    pytest.param(
        doc(whole(path="x/a/b/c"), whole(path="x/a/b")),
        "files[1].path",
        "parent folder",
        id="file-over-deep-file",
    ),
    pytest.param(
        doc(link("lib", "real"), whole(path="lib/x")),
        "files[1].path",
        "inside 'lib'",
        id="file-under-link",
    ),
    pytest.param(
        doc(link("d/lib", "x"), link("d/lib/y", "z")),
        "files[1].path",
        "inside 'd/lib'",
        id="link-under-link",
    ),
    pytest.param(
        doc(whole(path="d/lib/x"), link("d/lib", "x")),
        "files[1].path",
        "parent folder",
        id="link-over-file",
    ),
    # Integers.
    pytest.param(doc({"path": "f"}), "files[0].size", "missing", id="size-missing"),
    pytest.param(doc(whole(size=-1)), "files[0].size", "negative", id="size-negative"),
    pytest.param(doc(whole(size=3.0)), "files[0].size", "integer", id="size-float"),
    pytest.param(doc(whole(size="3")), "files[0].size", "integer", id="size-string"),
    pytest.param(doc(whole(size=True)), "files[0].size", "boolean", id="size-true"),
    pytest.param(doc(whole(size=False)), "files[0].size", "boolean", id="size-false"),
    pytest.param(doc(whole(size=BIG)), "files[0].size", "2**63-1", id="size-big"),
    pytest.param(
        doc(parted(part(offset=-1))), "files[0].parts[0].offset", "neg", id="off-neg"
    ),
    pytest.param(
        doc(parted(part(offset=True))),
        "files[0].parts[0].offset",
        "boolean",
        id="off-bool",
    ),
    pytest.param(
        doc(parted(part(offset=1.5))),
        "files[0].parts[0].offset",
        "integer",
        id="off-float",
    ),
    pytest.param(
        doc(parted(part(offset=BIG))),
        "files[0].parts[0].offset",
        "2**63-1",
        id="off-big",
    ),
    pytest.param(
        doc(parted(part(length=-5), size=0)),
        "files[0].parts[0].length",
        "negative",
        id="length-negative",
    ),
    pytest.param(
        doc(parted(part(length=True), size=1)),
        "files[0].parts[0].length",
        "boolean",
        id="length-bool",
    ),
    pytest.param(
        doc(parted(part(length=BIG), size=0)),
        "files[0].parts[0].length",
        "2**63-1",
        id="length-big",
    ),
    pytest.param(
        doc(parted(part(offset=BIG - 5, length=10))),
        "files[0].parts[0].length",
        "offset + length",
        id="offset-plus-length",
    ),
    pytest.param(
        doc(parted(part(size=-1, compression="zlib"), size=0)),
        "files[0].parts[0].size",
        "negative",
        id="part-size-negative",
    ),
    pytest.param(
        doc(parted(part(size=True, compression="zlib"), size=1)),
        "files[0].parts[0].size",
        "boolean",
        id="part-size-bool",
    ),
    # executable.
    pytest.param(
        doc(whole(executable="yes")),
        "files[0].executable",
        "true or false",
        id="exec-string",
    ),
    pytest.param(
        doc(whole(executable=1)), "files[0].executable", "true or false", id="exec-1"
    ),
    # url and parts.
    pytest.param(
        doc(whole(parts=[part(length=3)])), "files[0].parts", "both", id="url-and-parts"
    ),
    pytest.param(doc({"path": "f", "size": 3}), "files[0]", "3 bytes", id="neither"),
    pytest.param(doc(parted(size=0)), "files[0].parts", "non-empty", id="parts-empty"),
    pytest.param(
        doc({"path": "f", "size": 1, "parts": {"url": "x", "length": 1}}),
        "files[0].parts",
        "non-empty",
        id="parts-object",
    ),
    pytest.param(
        doc({"path": "f", "size": 1, "parts": "x"}),
        "files[0].parts",
        "array",
        id="parts-string",
    ),
    pytest.param(
        doc({"path": "f", "size": 1, "parts": [5]}),
        "files[0].parts[0]",
        "object",
        id="part-number",
    ),
    pytest.param(
        doc({"path": "bad\ud800", "size": 0}), "files[0].path", "not valid Unicode",
        id="path-lone-surrogate",
    ),
    pytest.param(
        doc({"path": "l", "link": "x\ud800"}), "files[0].link", "not valid Unicode",
        id="link-lone-surrogate",
    ),
    pytest.param(
        doc({"path": "f", "size": 1, "url": "obj\udfff"}), "files[0].url", "not valid Unicode",
        id="url-lone-surrogate",
    ),
    pytest.param(
        doc(parted({"length": 4})), "files[0].parts[0].url", "missing", id="part-no-url"
    ),
    pytest.param(
        doc({"path": "f", "size": 4, "parts": [{"url": "x"}]}),
        "files[0].parts[0].length",
        "missing",
        id="part-no-length",
    ),
    pytest.param(
        doc(parted(part(length=10, size=12))),
        "files[0].parts[0].size",
        "not compressed",
        id="uncompressed-size",
    ),
    pytest.param(
        doc(parted(part(size=12, compression="gzip"))),
        "files[0].parts[0].compression",
        "unknown compression 'gzip'",
        id="compression-gzip",
    ),
    pytest.param(
        doc(parted(part(size=12, compression=1))),
        "files[0].parts[0].compression",
        "unknown",
        id="compression-number",
    ),
    pytest.param(
        doc(parted(part(), part(url="b"), size=21)),
        "files[0].parts",
        "add up to 20",
        id="sizes-short",
    ),
    pytest.param(
        doc(parted(part(size=50, compression="zlib"), size=49)),
        "files[0].parts",
        "add up to 50",
        id="sizes-long",
    ),
    # Hashes.
    pytest.param(
        doc(whole(hash="crc32:00000000")),
        "files[0].hash",
        "unknown hash algorithm 'crc32'",
        id="hash-unknown",
    ),
    pytest.param(doc(whole(hash=MD5)), "files[0].hash", "':'", id="hash-no-colon"),
    pytest.param(doc(whole(hash=5)), "files[0].hash", "string", id="hash-number"),
    pytest.param(doc(whole(hash="md5:abc")), "files[0].hash", "32", id="hash-short"),
    pytest.param(
        doc(whole(hash="md5:" + "z" * 32)), "files[0].hash", "0-9a-f", id="hash-nonhex"
    ),
    pytest.param(
        doc(parted(part(hash="sha999:00"))),
        "files[0].parts[0].hash",
        "unknown",
        id="part-hash-unknown",
    ),
    # URLs.
    pytest.param(doc(whole(url=5)), "files[0].url", "string", id="url-number"),
    pytest.param(doc(whole(url="")), "files[0].url", "empty", id="url-empty"),
    pytest.param(doc(whole(url="a b")), "files[0].url", "whitespace", id="url-space"),
    pytest.param(doc(whole(url="a\tb")), "files[0].url", "whitespace", id="url-tab"),
    pytest.param(doc(whole(url="a\nb")), "files[0].url", "control", id="url-newline"),
    pytest.param(doc(whole(url="a\x00")), "files[0].url", "control", id="url-nul"),
    pytest.param(doc(whole(url="a\x7f")), "files[0].url", "control", id="url-del"),
    pytest.param(
        doc(whole(url="ftp://h.example/x")), "files[0].url", "'ftp'", id="url-ftp"
    ),
    pytest.param(
        doc(whole(url="file:///etc/passwd")), "files[0].url", "'file'", id="url-file"
    ),
    pytest.param(doc(whole(url="http:///x")), "files[0].url", "host", id="url-nohost"),
    pytest.param(
        doc(whole(url="//h.example/x")), "files[0].url", "scheme", id="url-//"
    ),
    pytest.param(doc(whole(url="http://[::1/x")), "files[0].url", "URL", id="url-ipv6"),
    pytest.param(
        doc(whole(url="x"), base_urls=[]), "files[0].url", "base_urls", id="rel-no-base"
    ),
    pytest.param(
        {"format": FORMAT, "files": [whole(url="x")]},
        "files[0].url",
        "base_urls",
        id="rel-base-missing",
    ),
    pytest.param(
        doc(parted(part(url="x")), base_urls=None),
        "files[0].parts[0].url",
        "base_urls",
        id="rel-part-no-base",
    ),
    pytest.param(
        doc(parted(part(url="ftp://h/x"))),
        "files[0].parts[0].url",
        "'ftp'",
        id="part-url-ftp",
    ),
    # base_urls.
    pytest.param(
        doc(base_urls="https://a.example/"), "base_urls", "array", id="bases-string"
    ),
    pytest.param(doc(base_urls=[5]), "base_urls[0]", "string", id="bases-number"),
    pytest.param(doc(base_urls=[""]), "base_urls[0]", "empty", id="bases-empty-url"),
    pytest.param(
        doc(base_urls=[BASES[0], "ftp://a.example/"]),
        "base_urls[1]",
        "'ftp'",
        id="bases-ftp",
    ),
    pytest.param(
        doc(base_urls=["depot/"]), "base_urls[0]", "absolute", id="bases-relative"
    ),
    pytest.param(
        doc(base_urls=["https://a.example/d?k=1"]),
        "base_urls[0]",
        "query",
        id="bases-q",
    ),
    pytest.param(
        doc(base_urls=["https://a.example/d#x"]),
        "base_urls[0]",
        "fragment",
        id="bases-f",
    ),
    pytest.param(
        doc(base_urls=["https://a .example/"]), "base_urls[0]", "space", id="bases-ws"
    ),
    # Links.
    pytest.param(doc(link(target=5)), "files[0].link", "non-empty", id="link-number"),
    pytest.param(doc(link(target="")), "files[0].link", "non-empty", id="link-empty"),
    pytest.param(doc(link(target="/etc")), "files[0].link", "absolute", id="link-abs"),
    pytest.param(doc(link(target="a\\b")), "files[0].link", "backslash", id="link-bs"),
    pytest.param(doc(link(target="a\0b")), "files[0].link", "NUL", id="link-nul"),
    pytest.param(doc(link(target="..")), "files[0].link", "outside", id="link-up"),
    pytest.param(doc(link(target="../x")), "files[0].link", "outside", id="link-up-x"),
    pytest.param(
        doc(link("d/l", "../../x")), "files[0].link", "outside", id="link-up-deep"
    ),
    pytest.param(
        doc(link("d/l", "x/../../../y")), "files[0].link", "outside", id="link-zigzag"
    ),
    pytest.param(doc(link(size=3)), "files[0].size", "link entries", id="link-size"),
    pytest.param(doc(link(size=0)), "files[0].size", "link entries", id="link-size-0"),
    pytest.param(doc(link(url="x")), "files[0].url", "link entries", id="link-url"),
    pytest.param(
        doc(link(parts=[])), "files[0].parts", "link entries", id="link-parts"
    ),
]


@pytest.mark.parametrize(("obj", "where", "fragment"), REFUSALS)
def test_refusals(obj: object, where: str, fragment: str) -> None:
    with pytest.raises(ManifestError) as info:
        parse_manifest(obj)
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message
    assert message.startswith(f"{where}: "), message
    assert fragment in message, message


def test_refusal_message_example() -> None:
    files = [whole(path="a"), whole(path="b"), whole(path="c"), whole(path="x/../y")]
    with pytest.raises(ManifestError) as info:
        parse_manifest(doc(*files))
    assert str(info.value) == "files[3].path: '..' is not allowed"


def test_refusals_report_the_first_bad_entry() -> None:
    with pytest.raises(ManifestError, match=r"^files\[1\]\.size"):
        parse_manifest(doc(whole(), whole(path="g", size=-1), whole(path="/abs")))


# load_manifest.


def test_load_from_path(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(example()), encoding="utf-8")
    assert load_manifest(path) == EXPECTED
    assert load_manifest(str(path)) == EXPECTED


def test_load_from_path_with_bom(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(example()).encode())
    assert load_manifest(path) == EXPECTED


def test_load_from_dict_and_manifest() -> None:
    assert load_manifest(example()) == EXPECTED
    assert load_manifest(EXPECTED) is EXPECTED


def test_load_refuses_other_types() -> None:
    with pytest.raises(TypeError):
        load_manifest(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        load_manifest([example()])  # type: ignore[arg-type]


def load_error(tmp_path: Path, data: bytes) -> str:
    path = tmp_path / "manifest.json"
    path.write_bytes(data)
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_load_invalid_json(tmp_path: Path) -> None:
    message = load_error(tmp_path, b'{"format":\n  mpdl/1}')
    assert message.startswith("manifest: not valid JSON")
    assert "(line 2, column 3)" in message


def test_load_empty_file(tmp_path: Path) -> None:
    message = load_error(tmp_path, b"")
    assert message.startswith("manifest: not valid JSON")


@pytest.mark.parametrize("top", [b"[]", b'"mpdl/1"', b"null", b"3"])
def test_load_non_object(tmp_path: Path, top: bytes) -> None:
    message = load_error(tmp_path, top)
    assert message.startswith("manifest: must be a JSON object")


def test_load_invalid_utf8(tmp_path: Path) -> None:
    message = load_error(tmp_path, b'{"format": "\xff\xfe"}')
    assert message.startswith("manifest: not valid UTF-8")


def test_load_deep_nesting(tmp_path: Path) -> None:
    message = load_error(tmp_path, b"[" * 100_000 + b"]" * 100_000)
    assert message == "manifest: not valid JSON: nested too deeply"


def test_load_overlong_integer(tmp_path: Path) -> None:
    message = load_error(tmp_path, b'{"format": "mpdl/1", "x": ' + b"9" * 10_000 + b"}")
    assert message.startswith("manifest: not valid JSON")


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"^manifest: cannot read .*missing\.json"):
        load_manifest(tmp_path / "missing.json")


def test_load_directory(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"^manifest: cannot read"):
        load_manifest(tmp_path)


def test_load_size_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert manifest_module.MAX_MANIFEST_BYTES == 512 * 1024 * 1024
    data = json.dumps(doc()).encode()
    path = tmp_path / "manifest.json"
    path.write_bytes(data)
    monkeypatch.setattr(manifest_module, "MAX_MANIFEST_BYTES", len(data))
    assert load_manifest(path) == Manifest(tuple(BASES), ())
    monkeypatch.setattr(manifest_module, "MAX_MANIFEST_BYTES", len(data) - 1)
    with pytest.raises(ManifestError, match=r"^manifest: larger than"):
        load_manifest(path)


# --- directory entries --------------------------------------------------------------------------


def test_a_directory_entry_is_a_folder_that_may_hold_files() -> None:
    m = parse_manifest(doc({"path": "saves", "directory": True},
                           {"path": "saves/slot1.dat", "size": 0},
                           {"path": "saves", "directory": True},  # said twice: still one folder
                           {"path": "a/b/c", "directory": True}))
    assert [d.path for d in m.directories] == ["saves", "saves", "a/b/c"]
    assert [f.path for f in m.files] == ["saves/slot1.dat"]


@pytest.mark.parametrize("entries, says", [
    ([{"path": "d", "directory": "yes"}], "files[0].directory: must be true"),
    ([{"path": "d", "directory": True, "size": 0}], "files[0].size: directory entries take"),
    ([{"path": "d", "directory": True, "link": "x"}], "files[0].link: directory entries take"),
    ([{"path": "f", "size": 0}, {"path": "f", "directory": True}], "at or inside the path of"),
    ([{"path": "f", "size": 0}, {"path": "f/sub", "directory": True}], "at or inside the path"),
    ([{"path": "../out", "directory": True}], "files[0].path"),
    ([{"path": ".mpdl/x", "directory": True}], "reserved"),
])
def test_a_directory_entry_that_clashes_or_escapes_is_refused(entries: list, says: str) -> None:
    with pytest.raises(ManifestError, match=re.escape(says)):
        parse_manifest(doc(*entries))


def _read_whole(data: bytes) -> Manifest | str:
    """What json.loads and parse_manifest make of ``data``: the reference for the reading
    that decodes one file at a time."""
    try:
        return parse_manifest(jsonread.decode(data, what="manifest"))
    except ManifestError as exc:
        return str(exc)


def _read_streamed(data: bytes) -> Manifest | str:
    try:
        return manifest_module.manifest_from_bytes(data)
    except ManifestError as exc:
        return str(exc)


def test_a_manifest_file_read_one_entry_at_a_time_is_the_same_as_read_whole() -> None:
    text = json.dumps(example(), indent=1)
    files_last = json.dumps({k: v for k, v in example().items() if k != "files"}
                            | {"files": example()["files"]})
    cases = [
        text, files_last, " \n" + text + "\n ", "\ufeff" + text,
        text.replace('"files": [', '"files": [ ', 1),
        text.replace('"files": [', '"files": "no"', 1).replace("]\n}", "}", 1),
        '{"format": "mpdl/1", "files": []}', '{"format": "mpdl/1", "files": [ ] }',
        '{"format": "mpdl/1", "files": [], "files": [{"path": "a", "size": 0}]}',
        '{"format": "mpdl/1", "files": [{"path": "a", "size": 0}], "files": 3}',
        # broken JSON: the same message as json.loads's, wherever it breaks
        '{"format": "mpdl/1", "files": [{"path": "a", "size": 0},]}',
        '{"format": "mpdl/1", "files": [{"path": "a", "size": 0}}',
        '{"format": "mpdl/1", "files": [{"path": "a", "size": 0}]',
        '{"format": "mpdl/1", "files": [{"path": "a", "size": 0}]} x',
        '{"format": "mpdl/1", "files": [{"path": "a" "size": 0}]}',
        '{"format": "mpdl/1", "files": [], }', '{"format" "mpdl/1"}', '{,}', "[]", "", "nul",
        '{"format": "mpdl/1", "files": [{"path": "a", "size": 1' + "0" * 5000 + "}]}",
        # refused entries, in the order json.loads's tree would refuse them
        '{"format": "mpdl/1", "files": [{"path": "../a", "size": 0}, {"path": 3}]}',
        '{"files": [{"path": "a", "size": 1, "url": "x"}], "format": "mpdl/1"}',
        '{"format": "mpdl/1", "files": [{"path": "a", "size": 0}, {"path": "a/b", "size": 0}]}',
    ]
    for case in cases:
        for encoding in ("utf-8", "utf-16"):
            data = case.encode(encoding)
            assert _read_streamed(data) == _read_whole(data), (case[:80], encoding)
    assert isinstance(_read_streamed(text.encode()), Manifest)
    assert _read_streamed(b"\xff\xfe\x00") == _read_whole(b"\xff\xfe\x00")


def test_a_manifest_file_is_never_decoded_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its files are decoded one by one (a 100,000-file manifest's JSON tree is several times
    its model): the whole-file json.loads is only for the JSON the reading does not follow."""
    def whole(data: bytes) -> object:
        raise AssertionError("decoded whole")

    monkeypatch.setattr(jsonread, "decode", whole)
    data = json.dumps(example()).encode()
    assert manifest_module.manifest_from_bytes(data) == parse_manifest(example())
