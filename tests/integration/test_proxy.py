"""Proxies: which proxy a URL goes through (mpdl/net/proxy.py, tested directly), NO_PROXY and
``--proxy ''`` bypassing one, credentials from the proxy URL, and what the user sees when the
proxy refuses (407, a refused CONNECT), cannot reach the server (502) or does not answer.

The proxies here are a real Squid that wants Basic credentials, and
tests/support/miniproxy.py, which can demand credentials and fail on purpose; the round trips
through Squid are in test_real_servers.py.

(What needs no server nor process: tests/unit/test_proxy_pure.py.)

(What needs no server nor process: tests/unit/test_proxy_pure.py.)
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from helpers import (TOOL, Depot, Nginx, assert_installed, assert_one_error_line, entry,
                     files_of,
                     env_with, mpdl_cli, run, skip_or_fail, with_bases, write_manifest)
from miniproxy import MiniProxy, mini_proxy
from realservers import Squid, logs_folder, public_folder, squid

from perf import servers
from perf.servers import Server, free_port
from perf.tls import Authority, find_openssl, make_authority


# --- which proxy for which URL: the environment, as curl reads it -----------------------------


@pytest.mark.parametrize("where", ["manifest", "url"])
def test_a_bad_proxy_variable_is_a_usage_error_before_any_request(
    depot: Depot, nginx: Nginx, tmp_path: Path, where: str
) -> None:
    source = write_manifest(tmp_path, depot.manifest, nginx.url) if where == "manifest" \
        else tool_url(depot, nginx.url)
    done = mpdl_cli(source, "-o", tmp_path / "out", cwd=tmp_path,
                    env=env_with(http_proxy="socks5://u:secret@127.0.0.1:1080"))
    assert done.returncode == 2, done.stderr
    line = assert_one_error_line(done.stderr)
    assert line == "mpdl: error: http_proxy: socks5 proxies are not supported (http:// or https://)"
    assert not (tmp_path / "out").exists()


# --- through a proxy, for real ------------------------------------------------------------------


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    if find_openssl() is None:
        skip_or_fail("openssl not found: the HTTPS tests need it")
    return make_authority(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def tls_nginx(depot: Depot, authority: Authority,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """nginx serving the depot over HTTPS (and HTTP), its certificate signed by ``authority``."""
    if servers.find_nginx() is None:
        skip_or_fail(servers.NGINX_MISSING)
    with servers.nginx(depot.root, tmp_path_factory.mktemp("tls-nginx"), workers=1,
                       file_cache=False, tls=authority.server) as running:
        yield running


def base_url(server: Server, scheme: str) -> str:
    """The server's http or https URL."""
    base = server.url if scheme == "http" else server.tls_url
    assert base is not None
    return base


def tool_url(depot: Depot, base: str) -> str:
    return base + entry(depot.manifest, TOOL)["url"]


def assert_tool(depot: Depot, out: Path) -> None:
    assert out.read_bytes() == (depot.root / entry(depot.manifest, TOOL)["url"]).read_bytes()


def test_no_proxy_bypasses_the_proxy(depot: Depot, nginx: Nginx, tmp_path: Path) -> None:
    with mini_proxy() as proxy:
        manifest = write_manifest(tmp_path, depot.manifest, nginx.url)
        done = mpdl_cli(manifest, "-o", tmp_path / "d", "-q", "--workers", "2", cwd=tmp_path,
                        env=env_with(HTTP_PROXY=proxy.url, NO_PROXY="localhost, 127.0.0.1"))
        assert done.returncode == 0, done.stderr
        assert_installed(tmp_path / "d", depot)
        assert proxy.log == []
        # The same run without NO_PROXY goes through it: the check above can see a request.
        done = mpdl_cli(manifest, "-o", tmp_path / "e", "-q", "--workers", "2", cwd=tmp_path,
                        env=env_with(HTTP_PROXY=proxy.url))
        assert done.returncode == 0, done.stderr
        assert proxy.log and all(r.line.startswith(f"GET {nginx.url}") for r in proxy.log)


def test_empty_proxy_option_ignores_the_environment(depot: Depot, nginx: Nginx,
                                                    tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    out = tmp_path / "tool.bin"
    done = mpdl_cli(tool_url(depot, nginx.url), "-o", out, "--proxy", "", cwd=tmp_path,
                    env=env_with(HTTP_PROXY=dead, https_proxy=dead, ALL_PROXY=dead))
    assert done.returncode == 0, done.stderr
    assert_tool(depot, out)


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_credentials_in_the_proxy_url_reach_the_proxy_only(
    depot: Depot, tls_nginx: Server, authority: Authority, tmp_path: Path, scheme: str
) -> None:
    base = base_url(tls_nginx, scheme)
    with mini_proxy(credentials="mpdl:s3cr:t@") as proxy:
        with_auth = proxy.url.replace("//", "//mpdl:s3cr%3At%40@")
        out = tmp_path / "tool.bin"
        done = mpdl_cli(tool_url(depot, base), "-o", out, "--proxy", with_auth, "-v",
                        "--workers", "2", cwd=tmp_path,
                        env=env_with(SSL_CERT_FILE=str(authority.ca)))
        assert done.returncode == 0, done.stderr
        assert_tool(depot, out)
        token = "Basic " + base64.b64encode(b"mpdl:s3cr:t@").decode()
        assert proxy.log and all(r.authorization == token for r in proxy.log)
        if scheme == "https":  # CONNECT: the proxy sees the host and port, nothing else
            assert all(r.line.startswith("CONNECT 127.0.0.1:") for r in proxy.log)
    assert "s3cr" not in done.stderr


@pytest.fixture(scope="module")
def squid_signing_in() -> Iterator[Squid]:
    """A real Squid that wants Basic credentials (mpdl, "pa:ss@word")."""
    with public_folder() as folder, squid(logs_folder(folder, "squid"),
                                          credentials="mpdl:pa:ss@word") as running:
        yield running


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_squid_with_basic_auth(
    depot: Depot, tls_nginx: Server, authority: Authority, squid_signing_in: Squid,
    tmp_path: Path, scheme: str
) -> None:
    base = base_url(tls_nginx, scheme)
    signed = squid_signing_in.url.replace("//", "//mpdl:pa%3Ass%40word@")
    out = tmp_path / "tool.bin"
    done = mpdl_cli(tool_url(depot, base), "-o", out, "--workers", "2", cwd=tmp_path,
                    env=env_with(SSL_CERT_FILE=str(authority.ca), http_proxy=signed,
                                 https_proxy=signed))
    assert done.returncode == 0, done.stderr
    assert_tool(depot, out)
    # Squid's log names the user it let in, for each request (or the CONNECT tunnel).
    what = f" GET {tool_url(depot, base)} mpdl " if scheme == "http" else \
        f" CONNECT {urlsplit(base).netloc} mpdl "
    assert squid_signing_in.logged(what), squid_signing_in.access_log.read_text()

    line = proxy_cli(depot, base, squid_signing_in.url.replace("//", "//mpdl:wrong@"),
                     tmp_path, authority)
    assert line == (f"mpdl: error: proxy {squid_signing_in.url} answered 407 Proxy "
                    "Authentication Required (it refused the credentials in the proxy URL)")


def proxy_cli(depot: Depot, base: str, proxy: MiniProxy | str, tmp_path: Path,
              authority: Authority) -> str:
    """Fetch the depot's tool through ``proxy``; return the one error line it must end with."""
    out = tmp_path / "refused.bin"
    url = proxy if isinstance(proxy, str) else proxy.url
    done = mpdl_cli(tool_url(depot, base), "-o", out, "--proxy", url, cwd=tmp_path,
                    env=env_with(SSL_CERT_FILE=str(authority.ca)))
    assert done.returncode == 1, done.stderr
    assert not out.exists()
    return assert_one_error_line(done.stderr)


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_proxy_wanting_credentials_is_one_line_naming_it(
    depot: Depot, tls_nginx: Server, authority: Authority, tmp_path: Path, scheme: str
) -> None:
    base = base_url(tls_nginx, scheme)
    with mini_proxy(credentials="mpdl:right") as proxy:
        line = proxy_cli(depot, base, proxy, tmp_path, authority)
        assert line == (f"mpdl: error: proxy {proxy.url} answered 407 Proxy Authentication "
                        "Required (it wants credentials: give them as "
                        "http://USER:PASSWORD@host:port)")
        wrong = proxy.url.replace("//", "//mpdl:wrong@")
        line = proxy_cli(depot, base, wrong, tmp_path, authority)
        assert "407" in line and "refused the credentials" in line and "wrong" not in line


def test_a_refused_connect_is_one_line_naming_the_proxy(
    depot: Depot, tls_nginx: Server, authority: Authority, tmp_path: Path
) -> None:
    assert tls_nginx.tls_url is not None
    with mini_proxy(status=403) as proxy:
        line = proxy_cli(depot, tls_nginx.tls_url, proxy, tmp_path, authority)
    assert line == (f"mpdl: error: proxy {proxy.url} refused to connect to "
                    f"{urlsplit(tls_nginx.tls_url).netloc}: 403 Forbidden")


def test_a_proxy_that_does_not_answer_is_one_line_naming_it(
    depot: Depot, tls_nginx: Server, authority: Authority, tmp_path: Path
) -> None:
    assert tls_nginx.tls_url is not None
    dead = f"http://127.0.0.1:{free_port()}"
    line = proxy_cli(depot, tls_nginx.tls_url, dead, tmp_path, authority)
    assert line.startswith(f"mpdl: error: proxy {dead} does not answer: ")
    assert "Connection refused" in line


def test_a_407_stops_the_run_at_once_without_retries(
    depot: Depot, nginx: Nginx, tmp_path: Path
) -> None:
    manifest = with_bases(depot.manifest, nginx.url)
    with mini_proxy(credentials="mpdl:right") as proxy:
        result = run(manifest, tmp_path / "d", proxy=proxy.url, connections=4)
    assert not result.ok and result.error is not None
    assert result.error.startswith(f"proxy {proxy.url} answered 407"), result.error
    assert {f["path"] for f in files_of(depot.manifest) if f["size"]} <= set(result.failed)
    # The first 407s end the run: no file is retried, and few requests were sent at all.
    assert proxy.log and len(proxy.log) <= 8, len(proxy.log)
    assert all(r.authorization is None for r in proxy.log)


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_bad_gateway_is_retried_within_the_budget(
    depot: Depot, tls_nginx: Server, authority: Authority, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, scheme: str
) -> None:
    base = base_url(tls_nginx, scheme)
    monkeypatch.setenv("SSL_CERT_FILE", str(authority.ca))
    tool = entry(depot.manifest, TOOL)
    manifest = {"format": "mpdl/1", "base_urls": [base], "files": [tool]}
    with mini_proxy(status=502) as proxy:
        result = run(manifest, tmp_path / "d", proxy=proxy.url, max_attempts=2, connections=1)
    if scheme == "http":  # the proxy's own answer to a request it forwarded
        said = f"HTTP 502 Bad Gateway from proxy {proxy.url} for {base}{tool['url']}"
    else:  # its answer to the CONNECT
        said = f"proxy {proxy.url} could not reach {urlsplit(base).netloc}: 502 Bad Gateway"
    assert result.failed == {TOOL: f"gave up after 2 attempts (last: {said})"}
    assert len(proxy.log) == 2


def test_a_connect_refused_for_one_mirror_falls_back_to_the_next(
    depot: Depot, tls_nginx: Server, authority: Authority, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """A proxy that forbids one host (403 to its CONNECT) is that mirror missing, not the
    run's end: the mirror reached directly (NO_PROXY) serves every file."""
    assert tls_nginx.tls_url is not None
    port = urlsplit(tls_nginx.tls_url).port
    bases = [f"https://localhost:{port}/", f"https://127.0.0.1:{port}/"]
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with mini_proxy(status=403) as proxy:
        result = run(with_bases(depot.manifest, bases), tmp_path / "d", proxy=proxy.url,
                     cacert=str(authority.ca))
        assert proxy.log, "the first mirror was not tried through the proxy"
    assert result.ok and result.error is None, (result.failed, result.error)
    assert_installed(tmp_path / "d", depot)
