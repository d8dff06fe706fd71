"""Hash algorithms by name: digests agree with hashlib and xxhash, specs parse strictly; a
part hash is checked over the slots its output fills."""

from __future__ import annotations

import dataclasses
import hashlib
import os

import pytest
import xxhash

from mpdl.errors import IntegrityError
from mpdl.net.fetch import Checker
from mpdl.formats.hashing import ALGORITHMS, HashSpec, hash_file, new_hasher, parse_hash
from mpdl.core.messages import Check

REFERENCES = {
    "xxh3_64": xxhash.xxh3_64,
    "xxh3_128": xxhash.xxh3_128,
    "xxh64": xxhash.xxh64,
    "md5": hashlib.md5,
    "sha1": hashlib.sha1,
    "sha256": hashlib.sha256,
    "sha384": hashlib.sha384,
    "sha512": hashlib.sha512,
    "xxh32": xxhash.xxh32,
}
DATA = bytes(range(256)) * 41 + b"tail"


def reference(algo: str, data: bytes) -> str:
    return REFERENCES[algo](data).hexdigest()


def test_algorithms_table() -> None:
    assert ALGORITHMS == {
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


@pytest.mark.parametrize("algo", sorted(ALGORITHMS))
def test_digest_length_matches_table(algo: str) -> None:
    assert len(new_hasher(algo).hexdigest()) == ALGORITHMS[algo]


@pytest.mark.parametrize("algo", sorted(ALGORITHMS))
def test_new_hasher_matches_reference(algo: str) -> None:
    hasher = new_hasher(algo)
    hasher.update(DATA[:1000])
    hasher.update(memoryview(DATA)[1000:])
    assert hasher.hexdigest() == reference(algo, DATA)


def test_known_answers() -> None:
    assert new_hasher("md5").hexdigest() == "d41d8cd98f00b204e9800998ecf8427e"
    sha = new_hasher("sha256")
    sha.update(b"abc")
    assert sha.hexdigest() == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


@pytest.mark.parametrize("algo", sorted(ALGORITHMS))
def test_hash_file_larger_than_buffer(tmp_path, algo: str) -> None:
    path = tmp_path / "blob"
    path.write_bytes(DATA)
    # 1000 does not divide len(DATA): the last read is a short one.
    assert hash_file(path, algo, buffer_size=1000) == reference(algo, DATA)
    assert hash_file(str(path), algo, buffer_size=1) == reference(algo, DATA)


def test_hash_file_default_buffer(tmp_path) -> None:
    data = os.urandom((1 << 20) * 2 + 12345)
    path = tmp_path / "big"
    path.write_bytes(data)
    assert hash_file(path, "xxh3_128") == xxhash.xxh3_128(data).hexdigest()
    assert hash_file(path, "sha256") == hashlib.sha256(data).hexdigest()


def test_hash_file_empty(tmp_path) -> None:
    path = tmp_path / "empty"
    path.write_bytes(b"")
    assert hash_file(path, "md5") == hashlib.md5(b"").hexdigest()


def test_hash_file_refuses_bad_input(tmp_path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(b"x")
    with pytest.raises(ValueError, match="buffer_size"):
        hash_file(path, "md5", buffer_size=0)
    with pytest.raises(ValueError, match="unknown"):
        hash_file(path, "crc32")
    with pytest.raises(FileNotFoundError):
        hash_file(tmp_path / "missing", "md5")


@pytest.mark.parametrize("algo", sorted(ALGORITHMS))
def test_parse_hash_round_trip(algo: str) -> None:
    digest = reference(algo, DATA)
    spec = parse_hash(f"{algo}:{digest.upper()}")
    assert spec == HashSpec(algo, digest)
    assert str(spec) == f"{algo}:{digest}"
    assert parse_hash(str(spec)) == spec
    hasher = spec.new()
    hasher.update(DATA)
    assert spec.matches(hasher.hexdigest())
    assert spec.matches(digest.upper())
    assert not spec.matches(reference(algo, b"other"))


def test_new_gives_fresh_hashers() -> None:
    spec = parse_hash("md5:" + hashlib.md5(b"").hexdigest())
    spec.new().update(b"data")
    assert spec.matches(spec.new().hexdigest())


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (None, ["string", "NoneType"]),
        (5, ["string", "int"]),
        (b"md5:" + b"0" * 32, ["string", "bytes"]),
        ("md5" + "0" * 32, ["':'"]),
        ("", ["':'"]),
        ("crc32:" + "0" * 8, ["unknown", "crc32"]),
        ("MD5:" + "0" * 32, ["unknown", "MD5"]),
        (":" + "0" * 32, ["unknown"]),
        ("md5:" + "0" * 31, ["32", "31"]),
        ("sha256:" + "0" * 65, ["64", "65"]),
        ("sha1:", ["40", "0"]),
        ("md5:" + "g" * 32, ["0-9a-f"]),
        ("md5:" + "0" * 30 + " 0", ["0-9a-f"]),
        ("md5: " + "0" * 32, ["33"]),
    ],
)
def test_parse_hash_refusals(text: object, words: list[str]) -> None:
    with pytest.raises(ValueError) as info:
        parse_hash(text)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_hash_spec_validates_on_construction() -> None:
    with pytest.raises(ValueError, match="unknown"):
        HashSpec("crc32", "00000000")
    with pytest.raises(ValueError, match="0-9a-f"):
        HashSpec("md5", "A" * 32)


def test_hash_spec_is_frozen() -> None:
    spec = HashSpec("md5", "0" * 32)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.algo = "sha1"  # type: ignore[misc]


def test_new_hasher_unknown() -> None:
    with pytest.raises(ValueError, match="unknown hash algorithm 'whirlpool'"):
        new_hasher("whirlpool")


def _fed(checks: tuple[Check, ...], data: bytes, slot: int) -> Checker:
    """A Checker fed ``data`` as a worker hands it over, one slot of ``slot`` bytes at a time."""
    checker = Checker("http://x/part", checks)
    for start in range(0, len(data), slot):
        filled = min(slot, len(data) - start)
        with memoryview(data[start:start + filled]) as view:
            checker.feed(view, start, filled)
    return checker


def test_a_part_hash_spans_slots_and_is_decided_by_its_last_byte() -> None:
    """A 10 MiB-style part over slots of a fifth of it, with a small part straddling two."""
    whole = Check(offset=0, length=len(DATA), hash=f"md5:{reference('md5', DATA)}")
    middle = Check(offset=1000, length=3000, hash=f"sha1:{reference('sha1', DATA[1000:4000])}")
    _fed((whole, middle), DATA, slot=len(DATA) // 5 + 1).finish()
    wrong = DATA[:-1] + bytes([DATA[-1] ^ 1])
    checker = Checker("http://x/part", (whole,))
    with memoryview(wrong) as view:
        checker.feed(view, 0, len(wrong) - 1)  # all but the last byte: not decided yet
        with pytest.raises(IntegrityError, match="output offset 0 has md5"):
            checker.feed(view[len(wrong) - 1:], len(wrong) - 1, 1)


def test_an_output_that_ends_inside_a_checked_part_fails() -> None:
    check = Check(offset=0, length=len(DATA), hash=f"md5:{reference('md5', DATA)}")
    with pytest.raises(IntegrityError, match="ended inside a checked part"):
        _fed((check,), DATA[:-10], slot=4096).finish()


def test_hash_spec_text_is_one_string_shared() -> None:
    """A plan's checks and the writer's records take ``str(spec)``: the spec's own string,
    not a copy per call (a 100,000-file manifest would hold each hash twice)."""
    spec = parse_hash("md5:" + "AB" * 16)
    assert str(spec) == "md5:" + "ab" * 16 and str(spec) is str(spec)
    assert (spec.algo, spec.hexdigest) == ("md5", "ab" * 16)
    assert spec == HashSpec("md5", "ab" * 16) and hash(spec) == hash(HashSpec("md5", "ab" * 16))
