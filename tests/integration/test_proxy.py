"""Proxies: which proxy a URL goes through (mpdl/proxy.py, tested directly), NO_PROXY and
``--proxy ''`` bypassing one, credentials from the proxy URL, and what the user sees when the
proxy refuses (407, a refused CONNECT), cannot reach the server (502) or does not answer.

The proxies here are a real Squid that wants Basic credentials, and tests/miniproxy.py, which
can demand credentials and fail on purpose; the round trips through Squid are in
test_real_servers.py.
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
from urllib3.exceptions import NewConnectionError
from urllib3.exceptions import ProxyError as Urllib3ProxyError

from mpdl.errors import (ProxyAuthRequired, ProxyRefused, ProxyUnavailable, TransientError,
                         UsageError)
from mpdl.messages import FailKind
from mpdl.options import Options
from mpdl.proxy import Bypass, Proxy, parse_proxy, proxy_failure, proxy_rules
from perf import servers
from perf.servers import Server, free_port
from perf.tls import Authority, find_openssl, make_authority

P1, P2, P3 = "http://p1:8080", "http://p2:8080", "http://p3:8080"

# --- which proxy for which URL: the environment, as curl reads it -----------------------------


@pytest.mark.parametrize(("env", "url", "expected"), [
    ({"https_proxy": P1}, "https://example.com/a", P1),
    ({"https_proxy": P1}, "http://example.com/a", None),
    ({"HTTPS_PROXY": P1}, "https://example.com/a", P1),
    ({"http_proxy": P1}, "http://example.com/a", P1),
    ({"http_proxy": P1}, "https://example.com/a", None),
    ({"HTTP_PROXY": P1}, "http://example.com/a", P1),
    ({"https_proxy": P1, "HTTPS_PROXY": P2}, "https://example.com/a", P1),  # lower-case wins
    ({"all_proxy": P3, "http_proxy": P1}, "https://example.com/a", P3),  # the fallback
    ({"ALL_PROXY": P3, "http_proxy": P1}, "http://example.com/a", P1),  # the scheme's wins
    ({"https_proxy": "", "HTTPS_PROXY": P2}, "https://example.com/a", P2),  # empty is unset
    ({"HTTP_PROXY": P1, "REQUEST_METHOD": "GET"}, "http://example.com/a", None),  # httpoxy
    ({"http_proxy": P1, "REQUEST_METHOD": "GET"}, "http://example.com/a", P1),
    ({}, "https://example.com/a", None),
], ids=lambda v: str(v) if not isinstance(v, dict) else ",".join(v))
def test_the_environment_picks_the_proxy_like_curl(
    env: dict[str, str], url: str, expected: str | None
) -> None:
    proxy = proxy_rules(None, env).for_url(url)
    assert (proxy.url if proxy else None) == expected


@pytest.mark.parametrize(("no_proxy", "host", "port", "direct"), [
    ("example.com", "example.com", 443, True),
    ("example.com", "cdn.example.com", 443, True),  # subdomains too
    (".example.com", "example.com", 443, True),
    (".example.com", "a.b.example.com", 443, True),
    ("example.com", "badexample.com", 443, False),  # a suffix of labels, not of characters
    ("EXAMPLE.com.", "Example.COM", 443, True),
    ("*", "anything.org", 80, True),
    ("a.org, example.com  b.org", "example.com", 80, True),  # commas or spaces
    ("example.com:8443", "example.com", 8443, True),
    ("example.com:8443", "example.com", 443, False),
    ("127.0.0.1", "127.0.0.1", 80, True),
    ("127.0.0.1", "127.0.0.2", 80, False),
    ("10.0.0.0/8", "10.1.2.3", 80, True),
    ("10.0.0.0/8", "11.1.2.3", 80, False),
    ("::1", "::1", 80, True),
    ("[::1]:8080", "::1", 8080, True),
    ("[::1]:8080", "::1", 80, False),
    ("127.0.0.1", "localhost", 80, False),  # no DNS: a name is not an address
    ("", "example.com", 80, False),
])
def test_no_proxy_entries(no_proxy: str, host: str, port: int, direct: bool) -> None:
    assert Bypass.parse(no_proxy).matches(host, port) is direct


def test_no_proxy_applies_to_the_environment_and_to_the_option() -> None:
    env = {"https_proxy": P1, "NO_PROXY": "internal.example"}
    assert proxy_rules(None, env).for_url("https://mirror.internal.example/x") is None
    assert proxy_rules(None, env).for_url("https://example.org/x") == Proxy(P1)
    assert proxy_rules(P2, env).for_url("https://mirror.internal.example/x") is None
    assert proxy_rules(P2, env).for_url("http://example.org/x") == Proxy(P2)


def test_the_option_wins_and_empty_turns_the_environment_off() -> None:
    env = {"https_proxy": P1, "http_proxy": P1}
    assert proxy_rules(P2, env).for_url("https://example.org/x") == Proxy(P2)
    assert proxy_rules("", env).for_url("https://example.org/x") is None
    assert proxy_rules("", env).proxies() == set()


@pytest.mark.parametrize(("text", "url", "credentials"), [
    ("proxy.lan", "http://proxy.lan:1080", None),  # curl's defaults: http, port 1080
    ("http://proxy.lan:3128/", "http://proxy.lan:3128", None),
    ("https://proxy.lan", "https://proxy.lan:443", None),
    ("HTTP://u:p%40ss%3Aw@Proxy.lan:3128", "http://proxy.lan:3128", "u:p@ss:w"),
    ("http://u@proxy.lan:3128", "http://proxy.lan:3128", "u:"),
    ("http://[::1]:3128", "http://[::1]:3128", None),
])
def test_proxy_urls(text: str, url: str, credentials: str | None) -> None:
    proxy = parse_proxy(text, "proxy")
    assert (proxy.url, proxy.credentials) == (url, credentials)
    assert "p@ss" not in repr(proxy) and "p@ss" not in str(proxy)


def test_credentials_become_a_basic_proxy_authorization() -> None:
    proxy = parse_proxy("http://user:p%40ss@proxy.lan:3128", "proxy")
    token = base64.b64encode(b"user:p@ss").decode()
    assert proxy.headers() == {"proxy-authorization": f"Basic {token}"}
    assert parse_proxy("proxy.lan:3128", "proxy").headers() == {}


@pytest.mark.parametrize(("text", "said"), [
    ("socks5://proxy.lan:1080", "socks5 proxies are not supported"),
    ("http://u:secret@proxy.lan:99999", "not a proxy URL"),
    ("http://proxy.lan:3128/path", "a proxy URL is scheme://host:port"),
    ("http://:3128", "no host"),
])
def test_bad_proxy_urls_are_usage_errors_naming_their_source(text: str, said: str) -> None:
    with pytest.raises(UsageError, match=said) as raised:
        Options.from_env({"HTTPS_PROXY": text})
    assert str(raised.value).startswith("HTTPS_PROXY: ")
    assert "secret" not in str(raised.value)
    with pytest.raises(UsageError, match=said):
        Options(proxy=text)


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


def test_proxy_failures_are_classified() -> None:
    proxy = Proxy("http://p1:8080", "u:p")
    url = "https://example.com:8443/a"

    def tunnel(status: str) -> Urllib3ProxyError:
        return Urllib3ProxyError("Unable to connect to proxy",
                                 OSError(f"Tunnel connection failed: {status}"))

    denied = proxy_failure(proxy, url, tunnel("407 Proxy Authentication Required"))
    assert isinstance(denied, ProxyAuthRequired) and denied.kind is FailKind.STOP
    assert (denied.proxy, denied.status) == ("http://p1:8080", 407)
    assert "refused the credentials" in str(denied)
    refused = proxy_failure(proxy, url, tunnel("403 Forbidden"))
    assert type(refused) is ProxyRefused and refused.kind is FailKind.MIRROR  # per host
    assert str(refused) == ("proxy http://p1:8080 refused to connect to example.com:8443: "
                            "403 Forbidden")
    gateway = proxy_failure(proxy, url, tunnel("502 Bad Gateway"))
    assert isinstance(gateway, ProxyUnavailable) and isinstance(gateway, TransientError)
    assert gateway.kind is FailKind.RETRY
    assert str(gateway) == "proxy http://p1:8080 could not reach example.com:8443: 502 Bad Gateway"
    dead = proxy_failure(proxy, url, Urllib3ProxyError(
        "Unable to connect to proxy", NewConnectionError(
            None, "Failed to establish a new connection: [Errno 111] Connection refused")))
    assert isinstance(dead, ProxyUnavailable)
    assert str(dead) == "proxy http://p1:8080 does not answer: [Errno 111] Connection refused"


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


@pytest.mark.parametrize("url", [
    "http://alice:s3cr/et@proxy.corp:3128",  # an unencoded / in the password
    "http://alice:s3cr?et@proxy.corp:3128",  # ? and # end urllib's netloc early
    "http://ghp_T0KEN1234@proxy.corp:3128/path",  # a token alone, as the user name
    "http://alice:s3cr3t@proxy.corp:port",
])
def test_a_bad_proxy_url_never_shows_its_credentials(url: str) -> None:
    with pytest.raises(UsageError) as caught:
        Options(proxy=url)
    message = str(caught.value)
    assert "\n" not in message and "proxy.corp" in message
    for secret in ("s3cr", "et@", "T0KEN", "alice"):
        assert secret not in message, message


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
