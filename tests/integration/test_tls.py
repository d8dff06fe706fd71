"""HTTPS against a real nginx with a CA the test makes: how mpdl is told to trust it, keep-alive
over TLS, and what a certificate that does not verify does to a run.

The CA and the server certificate come from perf/tls.py (the openssl command line). nginx logs
each request with its connection's serial number ($connection): that counts the TLS
connections a run opened, and, read before and after a run, the connections nginx accepted in
between, even those whose handshake failed and that sent no request at all. (Which headers
arrive is tests/integration/test_headers_live.py's, with the fault server's record of each request.)

(What needs no server nor process: tests/unit/test_tls_pure.py.)
"""

from __future__ import annotations

import http.client
import itertools
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
from helpers import (TOOL, Depot, LoggedRequest, Nginx, assert_installed, assert_one_error_line,
                     entry, env_with, mpdl_cli, run, skip_or_fail, write_manifest)

from mpdl.errors import UsageError
from mpdl.options import Options
from mpdl.core.plan import BATCH_SPREAD
from perf import servers, tls

CONNECTIONS = 4
_probes = itertools.count()


class TlsNginx(NamedTuple):
    """nginx serving the depot over HTTP (``plain``, whose access log counts both ports'
    requests) and over HTTPS with a certificate of the test's CA."""

    plain: Nginx
    tls_url: str
    tls_port: int
    ca: Path

    def requests(self) -> list[LoggedRequest]:
        return self.plain.requests()

    def serial(self) -> int:
        """nginx's connection serial number now: one plain request, read back from the log
        (nginx writes a line once it is done with the request, maybe after the answer)."""
        path = f"/serial-probe-{next(_probes)}"
        conn = http.client.HTTPConnection(servers.HOST, self.plain.port, timeout=10)
        try:
            conn.request("HEAD", path)
            conn.getresponse().read()
        finally:
            conn.close()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            found = [r for r in self.requests() if r.uri == path]
            if found:
                return found[0].connection
            time.sleep(0.02)
        raise AssertionError(f"nginx did not log the request for {path}")


@pytest.fixture(scope="module")
def tls_nginx(depot: Depot, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsNginx]:
    if servers.find_nginx() is None:
        skip_or_fail(servers.NGINX_MISSING)
    if tls.find_openssl() is None:
        skip_or_fail(tls.OPENSSL_MISSING)
    tmp = tmp_path_factory.mktemp("tls-nginx")
    authority = tls.make_authority(tmp / "ca")
    log = tmp / "access.log"
    with servers.nginx(depot.root, tmp / "nginx", workers=1, file_cache=False,
                       tls=authority.server, access_log=log) as server:
        assert server.tls_url is not None
        tls_port = int(server.tls_url.rstrip("/").rsplit(":", 1)[1])
        yield TlsNginx(Nginx(server.url, depot.root, server.port, log), server.tls_url,
                       tls_port, authority.ca)


def untrusting_env(**changes: str) -> dict[str, str]:
    """The CLI's environment without any CA setting of this machine's."""
    env = env_with(**changes)
    for name in ("SSL_CERT_FILE", "SSL_CERT_DIR", "MPDL_CACERT"):
        if name not in changes:
            env.pop(name, None)
    return env


def fetch_depot(tls_nginx: TlsNginx, depot: Depot, tmp_path: Path, *options: str,
                env: dict[str, str] | None = None):
    manifest = write_manifest(tmp_path, depot.manifest, tls_nginx.tls_url)
    dest = tmp_path / "game"
    done = mpdl_cli(manifest, "-o", dest, "--workers", "2", "--connections", str(CONNECTIONS),
                    "--chunk-size", "64K", *options, cwd=tmp_path,
                    env=untrusting_env() if env is None else env)
    return done, dest


def gets_since(tls_nginx: TlsNginx, before: int) -> list[LoggedRequest]:
    return [r for r in tls_nginx.requests()[before:] if r.method == "GET"]


# --- trusting a private CA ---------------------------------------------------------------------


def test_cacert_verifies_a_private_ca_and_keeps_connections_alive(
    tls_nginx: TlsNginx, depot: Depot, tmp_path: Path
) -> None:
    before = len(tls_nginx.requests())
    done, dest = fetch_depot(tls_nginx, depot, tmp_path, "--cacert", tls_nginx.ca)
    assert done.returncode == 0, done.stderr
    assert_installed(dest, depot)
    gets = gets_since(tls_nginx, before)
    assert all(r.status in (200, 206) for r in gets), gets
    # The handshake is paid once per connection: many requests, few connections.
    connections = {r.connection for r in gets}
    assert len(connections) <= 2 * CONNECTIONS < len(gets), (len(connections), len(gets))


def test_ssl_cert_file_is_honoured(tls_nginx: TlsNginx, depot: Depot, tmp_path: Path,
                                   start_method: str) -> None:
    """OpenSSL reads it in each worker process, however it was started."""
    done, dest = fetch_depot(tls_nginx, depot, tmp_path,
                             env=untrusting_env(SSL_CERT_FILE=str(tls_nginx.ca)))
    assert done.returncode == 0, done.stderr
    assert_installed(dest, depot)


def test_mpdl_cacert_variable(tls_nginx: TlsNginx, depot: Depot, tmp_path: Path) -> None:
    done, dest = fetch_depot(tls_nginx, depot, tmp_path,
                             env=untrusting_env(MPDL_CACERT=str(tls_nginx.ca)))
    assert done.returncode == 0, done.stderr
    assert_installed(dest, depot)


def test_insecure_skips_the_check(tls_nginx: TlsNginx, depot: Depot, tmp_path: Path) -> None:
    done, dest = fetch_depot(tls_nginx, depot, tmp_path, "--insecure")
    assert done.returncode == 0, done.stderr
    assert all(line.startswith("mpdl: ") for line in done.stderr.splitlines()), (
        f"urllib3's warnings reached stderr:\n{done.stderr}")
    assert_installed(dest, depot)


def test_api_cacert(tls_nginx: TlsNginx, depot: Depot, tmp_path: Path,
                    monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SSL_CERT_FILE", "SSL_CERT_DIR", "MPDL_CACERT"):
        monkeypatch.delenv(name, raising=False)
    manifest = write_manifest(tmp_path, depot.manifest, tls_nginx.tls_url)
    refused = run(manifest, tmp_path / "refused", chunk_size=64 * 1024)
    assert not refused.ok and refused.error and "certificate" in refused.error
    result = run(manifest, tmp_path / "game", cacert=tls_nginx.ca, chunk_size=64 * 1024)
    assert result.ok, (result.error, result.failed)
    assert_installed(tmp_path / "game", depot)


def test_single_url_with_cacert(tls_nginx: TlsNginx, depot: Depot, tmp_path: Path) -> None:
    url = entry(depot.manifest, TOOL)["url"]
    out = tmp_path / "tool.bin"
    done = mpdl_cli(tls_nginx.tls_url + url, "-o", out, "--workers", "2", "--chunk-size", "64K",
                    "--cacert", tls_nginx.ca, cwd=tmp_path, env=untrusting_env())
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == (depot.root / url).read_bytes()


# --- a certificate that does not verify ---------------------------------------------------------


def assert_refusal(line: str, tls_nginx: TlsNginx) -> None:
    assert f"certificate of {servers.HOST}:{tls_nginx.tls_port} was refused" in line, line
    for hint in ("--cacert FILE", "SSL_CERT_FILE", "--insecure"):
        assert hint in line, line


def test_untrusted_certificate_stops_the_run_at_once_with_one_line(
    tls_nginx: TlsNginx, depot: Depot, tmp_path: Path
) -> None:
    before = tls_nginx.serial()
    done, dest = fetch_depot(tls_nginx, depot, tmp_path)
    during = tls_nginx.serial() - before - 1  # connections nginx accepted during the run
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("mpdl: error:")]
    assert len(errors) == 1, done.stderr
    assert_refusal(errors[0], tls_nginx)
    # No file listed as failed one by one: the one line said why; the summary counts them.
    rest = [line for line in lines if line not in errors]
    assert len(rest) == 1 and re.match(r"mpdl: \d+ of \d+ files in place", rest[0]), (
        done.stderr)
    # Each connection the run had tried once, and none again: no retries, no backoff.
    assert 1 <= during <= CONNECTIONS, f"{during} connections for a refused certificate"
    assert not [p for p in dest.rglob("*") if p.is_file() and p.stat().st_size
                and ".mpdl" not in p.parts], "bytes were written"


def test_untrusted_certificate_of_a_single_url_is_one_line(
    tls_nginx: TlsNginx, depot: Depot, tmp_path: Path
) -> None:
    before = tls_nginx.serial()
    url = tls_nginx.tls_url + entry(depot.manifest, TOOL)["url"]
    done = mpdl_cli(url, "-o", tmp_path / "tool.bin", cwd=tmp_path, env=untrusting_env())
    during = tls_nginx.serial() - before - 1
    assert done.returncode == 1, done.stderr
    assert_refusal(assert_one_error_line(done.stderr), tls_nginx)
    assert during == 1, f"the probe opened {during} connections"
    assert not (tmp_path / "tool.bin").exists()


# --- the pure parts -----------------------------------------------------------------------------


def test_cacert_must_be_a_ca_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such file"):
        Options(cacert=str(tmp_path / "missing.pem"))
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(UsageError, match="not a readable PEM file"):
        Options(cacert=str(junk))
    done = mpdl_cli("http://127.0.0.1:9/x", "-o", tmp_path / "x", "--cacert", junk,
                    cwd=tmp_path, env=untrusting_env())
    assert done.returncode == 2, done.stderr
    assert "junk.pem" in assert_one_error_line(done.stderr)


def test_cacert_accepts_a_path(tls_nginx: TlsNginx) -> None:
    assert Options(cacert=tls_nginx.ca).cacert == os.fspath(tls_nginx.ca)


# --- batches of small files on the fetch threads' own connections (mpdl/net/leanget.py) ---------


@pytest.fixture(scope="module")
def small_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TlsNginx, dict]]:
    """nginx serving 4 * BATCH_SPREAD files of 1-3 KiB over HTTPS, and their manifest: batches
    of 4 (plan.batched)."""
    if servers.find_nginx() is None:
        skip_or_fail(servers.NGINX_MISSING)
    if tls.find_openssl() is None:
        skip_or_fail(tls.OPENSSL_MISSING)
    tmp = tmp_path_factory.mktemp("tls-small")
    (tmp / "srv" / "o").mkdir(parents=True)
    files = []
    for i in range(4 * BATCH_SPREAD):
        data = os.urandom(1024 + i * 37 % 2048)
        (tmp / "srv" / "o" / f"{i:03d}").write_bytes(data)
        files.append({"path": f"f/{i:03d}.bin", "size": len(data), "url": f"o/{i:03d}"})
    authority = tls.make_authority(tmp / "ca")
    log = tmp / "access.log"
    with servers.nginx(tmp / "srv", tmp / "nginx", workers=1, file_cache=False,
                       tls=authority.server, access_log=log) as server:
        assert server.tls_url is not None
        tls_port = int(server.tls_url.rstrip("/").rsplit(":", 1)[1])
        plain = Nginx(server.url, tmp / "srv", server.port, log)
        yield (TlsNginx(plain, server.tls_url, tls_port, authority.ca),
               {"format": "mpdl/1", "base_urls": [server.tls_url], "files": files})


def test_batches_over_tls_are_verified_and_keep_their_connections(
    small_tls: tuple[TlsNginx, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, manifest = small_tls
    for name in ("SSL_CERT_FILE", "SSL_CERT_DIR", "MPDL_CACERT"):
        monkeypatch.delenv(name, raising=False)
    before = len(server.requests())
    refused = run(manifest, tmp_path / "refused", connections=CONNECTIONS)
    assert not refused.ok and refused.error and "certificate" in refused.error, refused.error
    assert not gets_since(server, before), "a request went out on an unverified connection"
    result = run(manifest, tmp_path / "d", connections=CONNECTIONS, cacert=server.ca)
    assert result.ok, (result.error, result.failed)
    for item in manifest["files"]:
        assert ((tmp_path / "d" / item["path"]).read_bytes()
                == (server.plain.root / item["url"]).read_bytes())
    gets = gets_since(server, before)
    assert len(gets) == len(manifest["files"]) and all(r.status == 200 for r in gets)
    connections = {r.connection for r in gets}
    assert len(connections) <= CONNECTIONS < len(gets), (len(connections), len(gets))
