"""Proxy settings as mpdl reads them, curl's way: the environment's variables and --proxy (the
option wins, empty turns the environment off), NO_PROXY entries, proxy URLs and the Basic
credentials they carry (never shown in an error), and how a proxy's failures are classified.
Runs through a real Squid and tests/support/miniproxy.py are tests/integration/test_proxy.py's.
"""

from __future__ import annotations

import base64

import pytest
from urllib3.exceptions import NewConnectionError
from urllib3.exceptions import ProxyError as Urllib3ProxyError

from mpdl.errors import (ProxyAuthRequired, ProxyRefused, ProxyUnavailable, TransientError,
                         UsageError)
from mpdl.core.messages import FailKind
from mpdl.options import Options
from mpdl.net.proxy import Bypass, Proxy, parse_proxy, proxy_failure, proxy_rules


P1, P2, P3 = "http://p1:8080", "http://p2:8080", "http://p3:8080"


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
