"""The round trip against the servers people run: nginx, Apache httpd and lighttpd, over HTTP and
HTTPS (a CA made for the test, trusted through SSL_CERT_FILE), nginx again through Squid as a
forward proxy, and Python's http.server, which ignores Range (mpdl falls back to one stream per
object). Each serves a copy of the example depot: the mixed depot and a single URL must arrive
byte-exact, and a run interrupted while it goes (``/capped/``, 10 MiB/s per response) must be
finished by the next one without fetching everything again.

Under CI=true a missing server fails these tests (tests/install.sh installs them all).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from urllib.parse import urlsplit

from helpers import (TOOL, Depot, assert_installed, digest, entry, env_with,
                     mpdl_cli, run, skip_or_fail, with_bases, write_manifest)
from miniproxy import mini_proxy
from realservers import (CAPPED_KIB, Squid, apache, lighttpd, logs_folder, public_folder, publish,
                         python_http_server, squid)

from mpdl.progress import ProgressEvent

from perf import servers
from perf.servers import Server
from perf.tls import Authority, find_openssl, make_authority

MiB = 1024 * 1024
#: The file that makes an interrupted run long enough to interrupt: 1.6 s of /capped/.
BIG = "big.bin"
BIG_SIZE = 16 * MiB


class Published(NamedTuple):
    """The depot served from a folder every server may read; ``capped/`` holds it again, and
    BIG, for the resume test."""

    depot: Depot
    authority: Authority
    folder: Path


@pytest.fixture(scope="module")
def published(depot: Depot) -> Iterator[Published]:
    if find_openssl() is None:
        skip_or_fail("openssl not found: the HTTPS round trips need it")
    with public_folder() as folder:
        www = publish(depot.root, folder / "www")
        capped = publish(depot.root, www / "capped")
        (capped / BIG).write_bytes(os.urandom(BIG_SIZE))
        (capped / BIG).chmod(0o644)
        authority = make_authority(logs_folder(folder, "ca"))
        yield Published(Depot(www, depot.manifest), authority, folder)


class Route(NamedTuple):
    """How a test reaches the depot: the server, and the proxy variables for mpdl (if any)."""

    name: str
    server: Server
    proxy: Squid | None = None

    def env(self, ca: Path) -> dict[str, str]:
        proxy = {"http_proxy": self.proxy.url, "HTTPS_PROXY": self.proxy.url} \
            if self.proxy else {}
        return env_with(SSL_CERT_FILE=str(ca), **proxy)


@contextlib.contextmanager
def _nginx(root: Path, tmp: Path, tls: Any) -> Iterator[Server]:
    if servers.find_nginx() is None:
        skip_or_fail(servers.NGINX_MISSING)
    with servers.nginx(root, tmp, workers=1, file_cache=False, tls=tls) as running:
        yield running


ORIGINS = {"nginx": _nginx, "apache": apache, "lighttpd": lighttpd}


@pytest.fixture(scope="module", params=[*ORIGINS, "squid"])
def route(request: pytest.FixtureRequest, published: Published) -> Iterator[Route]:
    """Each server in turn (started once for this module's tests), "squid": nginx behind Squid."""
    name = str(request.param)
    start = ORIGINS.get(name, _nginx)
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(start(published.depot.root,
                                           logs_folder(published.folder, f"{name}-origin"),
                                           published.authority.server))
        proxy = stack.enter_context(squid(logs_folder(published.folder, "squid"))) \
            if name == "squid" else None
        yield Route(name, server, proxy)


def interrupt_at(limit: int, total: int) -> Callable[[ProgressEvent], None]:
    """A progress callback that presses Ctrl-C once ``limit`` of ``total`` bytes are written
    (not after the last: the run's final event comes when there is nothing to interrupt)."""
    def progress(event: ProgressEvent) -> None:
        if limit <= event.bytes_done < total:
            raise KeyboardInterrupt
    return progress


def object_urls(manifest: dict[str, Any]) -> set[str]:
    urls = set()
    for item in manifest["files"]:
        if item.get("url"):
            urls.add(item["url"])
        urls.update(part["url"] for part in item.get("parts", ()))
    return urls


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_depot_and_single_url_arrive_byte_exact(
    route: Route, published: Published, scheme: str, tmp_path: Path
) -> None:
    base = route.server.url if scheme == "http" else route.server.tls_url
    assert base is not None
    env = route.env(published.authority.ca)
    manifest = write_manifest(tmp_path, published.depot.manifest, base)
    done = mpdl_cli(manifest, "-o", tmp_path / "dest", "--workers", "2", "-q", cwd=tmp_path,
                    env=env)
    assert done.returncode == 0, done.stderr
    assert_installed(tmp_path / "dest", published.depot)

    tool = entry(published.depot.manifest, TOOL)
    out = tmp_path / "tool.bin"
    done = mpdl_cli(base + tool["url"], "-o", out, "--workers", "2", "-q", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == (published.depot.root / tool["url"]).read_bytes()

    if route.proxy is not None:  # Squid's log: every request went through it
        if scheme == "http":
            for url in object_urls(published.depot.manifest):
                assert route.proxy.logged(f" GET {base}{url} "), f"{url} did not go through Squid"
        else:
            assert route.proxy.logged(f" CONNECT {urlsplit(base).netloc} ")


def with_big_file(published: Published, base: str) -> tuple[dict[str, Any], int]:
    """The depot under ``base``/capped/, with BIG added (so a run lasts long enough to be
    interrupted), and the bytes it holds."""
    big = (published.depot.root / "capped" / BIG).read_bytes()
    manifest = with_bases(published.depot.manifest, base + "capped/")
    manifest["files"].append({"path": BIG, "size": BIG_SIZE, "url": BIG,
                              "hash": f"sha256:{digest('sha256', big)}"})
    return manifest, sum(item["size"] for item in manifest["files"] if "size" in item)


def test_an_interrupted_run_is_finished_by_the_next(
    route: Route, published: Published, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Over http the server (or, for lighttpd, a proxy) paces /capped/, so Ctrl-C lands mid-run.
    manifest, total = with_big_file(published, route.server.url)
    dest = tmp_path / "dest"
    if route.proxy is not None:
        monkeypatch.setenv("HTTP_PROXY", route.proxy.url)
    with contextlib.ExitStack() as stack:
        if route.name == "lighttpd":  # it caps no range: a proxy does, at /capped/'s rate
            throttle = stack.enter_context(mini_proxy(rate=CAPPED_KIB * 1024))
            stack.enter_context(pytest.MonkeyPatch.context()).setenv("HTTP_PROXY", throttle.url)
        with pytest.raises(KeyboardInterrupt):
            run(manifest, dest, connections=2, progress=interrupt_at(total // 4, total))
    second = run(manifest, dest, connections=2)
    assert second.ok, second.failed
    assert 0 < second.bytes_fetched < total - total // 8, "the second run fetched it all again"
    assert_installed(dest, Depot(published.depot.root / "capped", manifest))
    if route.proxy is not None:
        assert route.proxy.logged(f" GET {route.server.url}capped/{BIG} ")


def test_python_http_server_ignoring_range(published: Published, tmp_path: Path) -> None:
    with python_http_server(published.depot.root, logs_folder(published.folder, "pyhttp")) as srv:
        manifest = write_manifest(tmp_path, published.depot.manifest, srv.url)
        done = mpdl_cli(manifest, "-o", tmp_path / "dest", "--workers", "2", "-q", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert_installed(tmp_path / "dest", published.depot)

        tool = entry(published.depot.manifest, TOOL)
        out = tmp_path / "tool.bin"
        done = mpdl_cli(srv.url + tool["url"], "-o", out, "-v", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert "ranges not supported: one stream" in done.stderr
        assert out.read_bytes() == (published.depot.root / tool["url"]).read_bytes()


def test_an_interrupted_https_run_is_finished_by_the_next(
    route: Route, published: Published, tmp_path: Path
) -> None:
    """The same over HTTPS (through Squid: CONNECT), paced by mpdl's own speed cap, which
    every server and proxy is subject to alike; the CA and the proxy given as options."""
    assert route.server.tls_url is not None
    manifest, total = with_big_file(published, route.server.tls_url)
    dest = tmp_path / "dest"
    options = {"connections": 2, "cacert": str(published.authority.ca),
               "proxy": route.proxy.url if route.proxy else ""}
    with pytest.raises(KeyboardInterrupt):
        run(manifest, dest, limit_rate=BIG_SIZE // 2,
            progress=interrupt_at(total // 4, total), **options)
    second = run(manifest, dest, **options)
    assert second.ok, second.failed
    assert 0 < second.bytes_fetched < total - total // 8, "the second run fetched it all again"
    assert_installed(dest, Depot(published.depot.root / "capped", manifest))
    if route.proxy is not None:
        assert route.proxy.logged(f" CONNECT {urlsplit(route.server.tls_url).netloc} ")
