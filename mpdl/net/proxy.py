"""Proxies: which one a URL goes through (from ``proxy=`` and the environment, read as curl
reads it), and the pools of a process that route each request to it.

The rules, one home for them (README "Proxies" says the same for users):

- ``Options.proxy`` None: the environment decides. An ``https`` URL goes through
  ``https_proxy`` (else ``HTTPS_PROXY``), an ``http`` URL through ``http_proxy`` (else
  ``HTTP_PROXY``); without those, ``all_proxy`` (else ``ALL_PROXY``). The lower-case name
  wins, as in curl. curl never reads upper-case ``HTTP_PROXY``, because a CGI program finds
  a request's ``Proxy:`` header there ("httpoxy"); the issue and pip/requests users expect it
  read, so mpdl reads it, except when ``REQUEST_METHOD`` is set (a CGI program), as Python's
  urllib does. An empty variable is an unset one.
- ``Options.proxy`` a URL: every http and https URL goes through it; ``""``: no proxy at all,
  whatever the environment says.
- ``no_proxy`` (else ``NO_PROXY``) applies to both, as in curl: entries separated by commas
  or spaces; ``*`` alone bypasses every host; a name matches itself and its subdomains
  (``example.com`` and ``.example.com`` both match ``example.com`` and ``a.example.com``, not
  ``badexample.com``); an IP address or network (``10.0.0.0/8``, ``::1``) matches URLs that
  name an address in it (no DNS look-up); ``:PORT`` after an entry limits it to that port.
- A proxy URL is ``[http://|https://][USER:PASSWORD@]HOST[:PORT]``: without a scheme it is
  http, without a port 1080 (curl's default) or 443 for https. Credentials (percent-encoded
  where needed) become a ``Proxy-Authorization: Basic`` header sent to the proxy only; they
  never appear in a message. SOCKS proxies are refused with a UsageError.

HTTPS goes through the proxy with CONNECT (urllib3's ProxyManager), so the proxy sees the host
name and port and nothing else; plain HTTP is forwarded by the proxy. Failures the proxy
causes are ProxyAuthRequired (407: the run stops), ProxyRefused (a CONNECT it refuses for
that host: like a missing mirror, another mirror is tried) or ProxyUnavailable (it does not
answer, or cannot reach the server: 502, 504; retried within the run's budget), each naming
the proxy.

A redirect is followed by the pool that sent the first request (urllib3 follows it inside
that manager), so a redirect from a proxied host to a NO_PROXY one, or back, keeps the first
host's route.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:  # imported where a request is sent: the coordinator reads rules only
    import urllib3
    from urllib3.exceptions import ProxyError as Urllib3ProxyError

from ..errors import ProxyAuthRequired, ProxyRefused, ProxyUnavailable, UsageError

#: The port of a proxy URL that names none, per scheme (curl's 1080 for http).
DEFAULT_PORTS = {"http": 1080, "https": 443}
#: What http.client says when a CONNECT is answered with anything but 200.
_TUNNEL_REFUSED = re.compile(r"Tunnel connection failed: (\d{3})\s*(.*)")
_NO_CONNECTION = "Failed to establish a new connection: "
#: Statuses of a forwarded (plain http) request that are the proxy's own words.
_GATEWAY_STATUSES = (502, 504)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Proxy:
    """A proxy: ``url`` (scheme://host:port, no credentials: what messages name) and the
    ``user:password`` for its Proxy-Authorization, if the URL had any."""

    url: str
    credentials: str | None = field(default=None, repr=False)  # never shown

    def __str__(self) -> str:
        return self.url

    def headers(self) -> dict[str, str]:
        """What every request to the proxy carries (CONNECTs included)."""
        if self.credentials is None:
            return {}
        from urllib3 import make_headers
        return dict(make_headers(proxy_basic_auth=self.credentials))


def parse_proxy(text: str, source: str) -> Proxy:
    """A proxy URL as a Proxy; ``source`` (the option or variable it came from) names it in the
    UsageError a bad one raises."""
    raw = text.strip()
    if "://" not in raw:
        raw = "http://" + raw
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError:  # urllib's words would quote the credentials: say nothing of them
        raise UsageError(f"{source}: not a proxy URL: {_redacted(text)!r} (give it as "
                         "http://[USER:PASSWORD@]HOST[:PORT], with / ? # @ : percent-encoded "
                         "in USER and PASSWORD)") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise UsageError(f"{source}: {scheme} proxies are not supported (http:// or https://)")
    if not parts.hostname:
        raise UsageError(f"{source}: not a proxy URL: {_redacted(text)!r} (no host)")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise UsageError(f"{source}: a proxy URL is scheme://host:port, "
                         f"not {_redacted(text)!r}")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    credentials = None
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
    return Proxy(f"{scheme}://{host}:{port or DEFAULT_PORTS[scheme]}", credentials)


def _redacted(text: str) -> str:
    """A proxy URL as a message may show it: without its credentials, whatever they hold
    (everything up to the last @ before the host is the user's: a token alone in the user
    name, or a password with an unencoded / ? #)."""
    scheme, sep, rest = text.strip().rpartition("://")
    if "@" not in rest:
        return text.strip()
    return f"{scheme}{sep}***@{rest.rpartition('@')[2]}"


@dataclass(frozen=True)
class Bypass:
    """NO_PROXY: the hosts reached directly. ``names`` and ``networks`` pair an entry with the
    one port it is limited to (None: every port)."""

    everything: bool = False
    names: tuple[tuple[str, int | None], ...] = ()
    networks: tuple[tuple[Network, int | None], ...] = ()

    @classmethod
    def parse(cls, text: str) -> Bypass:
        names: list[tuple[str, int | None]] = []
        networks: list[tuple[Network, int | None]] = []
        for item in text.replace(",", " ").split():
            if item == "*":
                return cls(everything=True)
            host, port = _split_port(item)
            try:
                networks.append((ipaddress.ip_network(host, strict=False), port))
            except ValueError:
                name = host.lower().lstrip("*").lstrip(".").rstrip(".")
                if name:
                    names.append((name, port))
        return cls(False, tuple(names), tuple(networks))

    def matches(self, host: str, port: int) -> bool:
        """Whether a URL naming ``host`` (without brackets) and ``port`` goes direct."""
        if self.everything:
            return True
        host = host.lower().rstrip(".")
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return any((host == name or host.endswith("." + name)) and only in (None, port)
                       for name, only in self.names)
        return any(address in network and only in (None, port)
                   for network, only in self.networks)


def _split_port(item: str) -> tuple[str, int | None]:
    """'host:8080' -> ('host', 8080); '[::1]:8080' -> ('::1', 8080); '::1' -> ('::1', None)."""
    if item.startswith("["):
        host, _, rest = item[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    host, colon, port = item.rpartition(":")
    if colon and port.isdigit() and ":" not in host:
        return host, int(port)
    return item, None


@dataclass(frozen=True)
class ProxyRules:
    """Which proxy each URL goes through: one per scheme (None: direct), and the bypass."""

    http: Proxy | None = None
    https: Proxy | None = None
    bypass: Bypass = Bypass()

    def proxies(self) -> set[Proxy]:
        return {p for p in (self.http, self.https) if p is not None}

    def for_url(self, url: str) -> Proxy | None:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        proxy = self.https if scheme == "https" else self.http if scheme == "http" else None
        if proxy is None or not parts.hostname:
            return proxy
        port = parts.port or (443 if scheme == "https" else 80)
        return None if self.bypass.matches(parts.hostname, port) else proxy


def _variable(env: Mapping[str, str], name: str) -> tuple[str, str] | None:
    """(variable, value) of the lower-case name, else of the upper-case one; None if unset."""
    for var in (name, name.upper()):
        if var == "HTTP_PROXY" and env.get("REQUEST_METHOD"):
            continue  # a CGI program: HTTP_PROXY is a header the client chose
        if env.get(var, "").strip():
            return var, env[var]
    return None


def proxy_rules(option: str | None, env: Mapping[str, str]) -> ProxyRules:
    """The rules for a run: ``option`` is ``Options.proxy`` (None: the environment's, "": no
    proxy). Raises UsageError, naming the option or variable, for a proxy URL it cannot use."""
    found = _variable(env, "no_proxy")
    bypass = Bypass.parse(found[1]) if found else Bypass()
    if option is not None:
        if not option.strip():
            return ProxyRules()
        proxy = parse_proxy(option, "proxy")
        return ProxyRules(proxy, proxy, bypass)
    fallback = _variable(env, "all_proxy")
    chosen = {}
    for scheme in ("http", "https"):
        found = _variable(env, f"{scheme}_proxy") or fallback
        chosen[scheme] = parse_proxy(found[1], found[0]) if found else None
    return ProxyRules(chosen["http"], chosen["https"], bypass)


# -- the pools of one process -------------------------------------------------------------------


class Routed:
    """A process's pools: a direct one, and one ProxyManager per proxy, each request sent
    through the one ``rules`` pick for its URL. It offers what callers use of a PoolManager:
    ``request`` and ``clear``. Failures the proxy causes come out as ProxyRefused or
    ProxyUnavailable; everything else as urllib3 raises it.

    ``make(proxy)`` builds a pool (``proxy`` None: the direct one). All are made here, before
    any fetch thread shares this object, so nothing needs a lock.
    """

    def __init__(self, rules: ProxyRules,
                 make: Callable[[Proxy | None], urllib3.PoolManager]) -> None:
        self.rules = rules
        self.pools = {proxy: make(proxy) for proxy in (None, *rules.proxies())}

    @property
    def headers(self) -> Mapping[str, str]:
        """The headers every request carries (all the pools were made with the same)."""
        return self.pools[None].headers

    def request(self, method: str, url: str, **kw: Any) -> urllib3.BaseHTTPResponse:
        proxy = self.rules.for_url(url)
        pool = self.pools[proxy]
        if proxy is None:
            return pool.request(method, url, **kw)
        from urllib3.exceptions import MaxRetryError
        from urllib3.exceptions import ProxyError as Urllib3ProxyError
        try:
            response = pool.request(method, url, **kw)
        except MaxRetryError as exc:
            if isinstance(exc.reason, Urllib3ProxyError):
                raise proxy_failure(proxy, url, exc.reason) from None
            raise
        except Urllib3ProxyError as exc:
            raise proxy_failure(proxy, url, exc) from None
        status = response.status
        forwarded = urlsplit(url).scheme.lower() == "http"  # not in a tunnel: the proxy answers
        if status == 407 or (forwarded and status in _GATEWAY_STATUSES):
            reason = response.reason or ""
            response.close()
            response.release_conn()
            if status == 407:
                raise proxy_status_error(proxy, url, status, reason)
            raise ProxyUnavailable(proxy.url, f"HTTP {status} {reason} from proxy {proxy} for "
                                              f"{url}")
        return response

    def clear(self) -> None:
        for pool in self.pools.values():
            pool.clear()


def proxy_failure(proxy: Proxy, url: str,
                  exc: Urllib3ProxyError) -> ProxyRefused | ProxyUnavailable:
    """What urllib3's ProxyError means: a CONNECT answered with a status, or no answer."""
    cause = exc.args[1] if len(exc.args) > 1 else exc
    refused = _TUNNEL_REFUSED.search(str(cause))
    if refused:
        return proxy_status_error(proxy, url, int(refused.group(1)), refused.group(2).strip())
    text = str(getattr(cause, "reason", None) or cause).splitlines()[0] or type(cause).__name__
    text = text.split(_NO_CONNECTION)[-1]  # urllib3's prefix names the server, not the proxy
    return ProxyUnavailable(proxy.url, f"proxy {proxy} does not answer: {text}")


def proxy_status_error(proxy: Proxy, url: str, status: int,
                       reason: str) -> ProxyRefused | ProxyUnavailable:
    """The error for a status the proxy answered for ``url`` instead of the server."""
    parts = urlsplit(url)
    target = f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
    said = f"{status}{' ' + reason if reason else ''}"
    if status == 407:
        hint = ("it refused the credentials in the proxy URL" if proxy.credentials else
                "it wants credentials: give them as http://USER:PASSWORD@host:port")
        return ProxyAuthRequired(proxy.url, status, f"proxy {proxy} answered {said} ({hint})")
    if status >= 500:
        return ProxyUnavailable(proxy.url, f"proxy {proxy} could not reach {target}: {said}")
    return ProxyRefused(proxy.url, status, f"proxy {proxy} refused to connect to {target}: "
                                           f"{said}")
