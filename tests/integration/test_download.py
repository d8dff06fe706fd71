"""One URL and its checksum (``mpdl.download``, ``python -m mpdl URL --checksum``), several URLs,
``-i FILE``, mirrors: against a FaultServer serving files written here, and nginx."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import xxhash
from faultserver import Fault, FaultServer
from helpers import TOOL, Depot, assert_one_error_line, entry, env_with, mpdl_cli

import mpdl
from mpdl.formats.hashing import parse_checksum, split_fragment

SIZE = 100_000


@pytest.fixture
def served(tmp_path: Path) -> tuple[FaultServer, dict[str, bytes]]:
    root = tmp_path / "root"
    root.mkdir()
    files = {f"f{i}.bin": hashlib.shake_128(f"file {i}".encode()).digest(SIZE + i)
             for i in range(3)}
    for name, data in files.items():
        (root / name).write_bytes(data)
    with FaultServer(root) as server:
        yield server, files


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def cli(*args: object, cwd: Path, **env: str):
    return mpdl_cli(*args, "--workers", "2", cwd=cwd, env=env_with(**env))


def gets(server: FaultServer, path: str) -> list:
    return [r for r in server.requests if r.path == path and r.method == "GET"]


# --- checksum syntax (pure) ------------------------------------------------------------------


@pytest.mark.parametrize("text", ["sha256:{h}", "SHA256:{H}", "sha-256={h}", "sha256={h}"])
def test_checksum_spellings(text: str) -> None:
    digest = sha256(b"x")
    assert str(parse_checksum(text.format(h=digest, H=digest.upper()))) == f"sha256:{digest}"


def test_checksum_algorithms() -> None:
    for algo, digest in [("sha384", hashlib.sha384(b"x").hexdigest()),
                         ("sha-512", hashlib.sha512(b"x").hexdigest()),
                         ("md5", hashlib.md5(b"x").hexdigest()),
                         ("xxh128", xxhash.xxh3_128_hexdigest(b"x")),
                         ("xxh32", xxhash.xxh32_hexdigest(b"x"))]:
        spec = parse_checksum(f"{algo}:{digest}")
        hasher = spec.new()
        hasher.update(b"x")
        assert spec.matches(hasher.hexdigest())
    with pytest.raises(ValueError, match="unknown hash algorithm"):
        parse_checksum("crc32:00000000")
    with pytest.raises(ValueError, match="64 hex digits"):
        parse_checksum("sha256:abc")


def test_pip_fragment() -> None:
    digest = sha256(b"x")
    assert split_fragment(f"https://h/p.whl#sha256={digest}") == (
        "https://h/p.whl", parse_checksum(f"sha256:{digest}"))
    assert split_fragment("https://h/p.tar.gz#egg=p") == ("https://h/p.tar.gz", None)


# --- one URL ---------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["--checksum", "aria2", "fragment"])
def test_cli_checksum_forms(served, tmp_path: Path, form: str) -> None:
    server, files = served
    url, digest = server.url + "f0.bin", sha256(files["f0.bin"])
    args = {"--checksum": [url, "--checksum", f"sha256:{digest}"],
            "aria2": [url, "--checksum", f"sha-256={digest}"],
            "fragment": [f"{url}#sha256={digest}"]}[form]
    done = cli(*args, "-o", tmp_path / "out.bin", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out.bin").read_bytes() == files["f0.bin"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin", "root"]


@pytest.mark.parametrize("min_size", ["0", "1M"])  # through the processes, and in-process
@pytest.mark.parametrize("form", ["--checksum", "fragment"])
def test_cli_wrong_checksum_leaves_nothing(served, tmp_path: Path, min_size: str,
                                           form: str) -> None:
    server, _ = served
    wrong = "0" * 64
    args = [server.url + "f0.bin", "--checksum", f"sha256:{wrong}"] if form == "--checksum" \
        else [server.url + f"f0.bin#sha256={wrong}"]
    done = cli(*args, "-o", tmp_path / "out.bin", "--min-size", min_size, cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert "sha256" in done.stderr and "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root"]  # no file, no state
    assert len(gets(server, "f0.bin")) == 2  # fetched once more, then it fails


def test_api_download_verified_then_not_fetched_again(served, tmp_path: Path) -> None:
    server, files = served
    out = tmp_path / "d" / "out.bin"
    digest = f"sha256:{sha256(files['f1.bin'])}"
    result = mpdl.download(server.url + "f1.bin", out, checksum=digest)
    assert result.ok and result.completed == ["out.bin"], result
    assert out.read_bytes() == files["f1.bin"]
    asked = len(server.requests)
    again = mpdl.download(server.url + "f1.bin", out, checksum=digest)
    assert again.ok and again.skipped == ["out.bin"] and again.completed == []
    assert len(server.requests) == asked  # not even a HEAD
    out.write_bytes(b"changed")  # no longer the checksum's: fetched again
    third = mpdl.download(server.url + "f1.bin", out, checksum=digest)
    assert third.completed == ["out.bin"] and out.read_bytes() == files["f1.bin"]


def test_cli_finished_file_not_fetched_again(served, tmp_path: Path) -> None:
    server, files = served
    url = f"{server.url}f2.bin#sha256={sha256(files['f2.bin'])}"
    for _ in range(2):
        done = cli(url, "-o", tmp_path / "f2.bin", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    assert len(gets(server, "f2.bin")) == 1


@pytest.mark.parametrize("min_size", ["0", "1M"])
def test_a_500_on_one_url_is_retried(served, tmp_path: Path, min_size: str) -> None:
    server, files = served
    server.set_fault("f0.bin", Fault(status=500, fail_times=3))  # HEAD, GET 0-0, HEAD again
    done = cli(server.url + "f0.bin", "-o", tmp_path / "out.bin", "--min-size", min_size,
               cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out.bin").read_bytes() == files["f0.bin"]
    assert [r.status for r in server.requests][:3] == [500, 500, 500]


def test_a_500_every_time_gives_up(served, tmp_path: Path) -> None:
    server, _ = served
    server.set_fault("f0.bin", Fault(status=500))
    done = cli(server.url + "f0.bin", "-o", tmp_path / "out.bin", cwd=tmp_path)
    assert done.returncode == 1
    assert "500" in assert_one_error_line(done.stderr)
    assert not (tmp_path / "out.bin").exists()


def test_mirror_serves_when_the_url_lacks_the_file(served, tmp_path: Path) -> None:
    server, files = served
    digest = f"sha256:{sha256(files['f0.bin'])}"
    result = mpdl.download(server.url + "gone.bin", tmp_path / "out.bin", checksum=digest,
                           mirrors=[server.url + "f0.bin"])
    assert result.ok, result
    assert (tmp_path / "out.bin").read_bytes() == files["f0.bin"]
    done = cli(server.url + "gone.bin", "--mirror", server.url + "f0.bin", "--checksum", digest,
               "-o", tmp_path / "cli.bin", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "cli.bin").read_bytes() == files["f0.bin"]


# --- several URLs, -i ------------------------------------------------------------------------


def test_several_urls_into_a_folder(served, tmp_path: Path) -> None:
    server, files = served
    urls = [f"{server.url}{name}#sha256={sha256(data)}" for name, data in files.items()]
    done = cli(*urls, "-o", tmp_path / "out", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == files
    done = cli(*urls, "-o", tmp_path / "out", cwd=tmp_path)  # all in place: no GET
    assert done.returncode == 0, done.stderr
    assert sum(len(gets(server, name)) for name in files) == len(files)


def test_input_file_as_aria2c_reads_it(served, tmp_path: Path) -> None:
    server, files = served
    listing = tmp_path / "list.txt"
    listing.write_text(
        "# a comment\n"
        f"{server.url}f0.bin\n  out=renamed/zero.bin\n"
        f"  checksum=sha-256={sha256(files['f0.bin'])}\n\n"
        f"{server.url}missing.bin\t{server.url}f1.bin\n"
        f"\tchecksum=sha256={sha256(files['f1.bin'])}\n")
    done = cli("-i", listing, "-o", tmp_path / "out", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out/renamed/zero.bin").read_bytes() == files["f0.bin"]
    assert (tmp_path / "out/missing.bin").read_bytes() == files["f1.bin"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["missing.bin", "renamed"]


def test_input_file_wrong_checksum_fails_that_file(served, tmp_path: Path) -> None:
    server, files = served
    listing = tmp_path / "list.txt"
    listing.write_text(f"{server.url}f0.bin\n checksum=md5:{'0' * 32}\n{server.url}f1.bin\n")
    done = cli("-i", listing, "-o", tmp_path / "out", cwd=tmp_path)
    assert done.returncode == 1
    assert "f0.bin" in done.stderr and "md5" in done.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["f1.bin"]


def test_a_folder_where_a_file_goes_fails_that_file_alone(served, tmp_path: Path) -> None:
    server, files = served
    (tmp_path / "out/taken").mkdir(parents=True)
    listing = tmp_path / "list.txt"
    listing.write_text(f"{server.url}f0.bin\n out=taken\n{server.url}f1.bin\n")
    done = cli("-i", listing, "-o", tmp_path / "out", cwd=tmp_path)
    assert done.returncode == 1
    assert "taken" in done.stderr and "Traceback" not in done.stderr
    assert (tmp_path / "out/f1.bin").read_bytes() == files["f1.bin"]
    assert (tmp_path / "out/taken").is_dir()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["f1.bin", "taken"]


@pytest.mark.parametrize("line", ["  dir=/tmp", "  out=../escape.bin"])
def test_input_file_refuses_what_it_cannot_honour(served, tmp_path: Path, line: str) -> None:
    server, _ = served
    listing = tmp_path / "list.txt"
    listing.write_text(f"{server.url}f0.bin\n{line}\n")
    done = cli("-i", listing, "-o", tmp_path / "out", cwd=tmp_path)
    assert done.returncode == 2
    assert_one_error_line(done.stderr)
    assert not (tmp_path / "escape.bin").exists() and not (tmp_path / "out").exists()
    assert server.requests == []


def test_nginx_large_file_with_its_checksum(nginx, depot: Depot, tmp_path: Path) -> None:
    """bin/tool (1 MiB) from nginx through the processes, checked by its xxh3_128."""
    item = entry(depot.manifest, TOOL)
    done = cli(nginx.url + item["url"], "--checksum", item["hash"], "--chunk-size", "64K",
               "-o", tmp_path / "tool", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "tool").read_bytes() == (depot.root / item["url"]).read_bytes()
