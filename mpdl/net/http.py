"""HTTP: connection pools, opening a checked response, and probing a server's capabilities.

Everything here classifies a failure by the FetchError subclass it raises; nothing here
retries (the coordinator decides that, with a budget). A certificate that does not verify is
a CertificateRefused, never a transient error: asking again cannot change the answer.

Every request carries the pool's headers (headers.py: mpdl's defaults, the manifest's, the
user's); a request's own (Range) are added to them, because urllib3 takes per-request headers
instead of the pool's. On a redirect to another host urllib3's Retry drops Authorization,
Cookie and Proxy-Authorization (its remove_headers_on_redirect default), and mpdl keeps that
default: credentials never follow a redirect to another host
(tests/integration/test_headers_live.py).
"""

from __future__ import annotations

import email.utils
import os
import re
import ssl
import urllib.parse
import warnings
from datetime import datetime, timezone
from typing import Any, NamedTuple

import urllib3
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import InsecureRequestWarning, MaxRetryError, SSLError

from ..errors import AccessDenied, CertificateRefused, FetchError, NotOnMirror, TransientError
from ..formats.headers import CREDENTIALS, DEFAULT_HEADERS, merge_headers
from ..options import Options
from .proxy import Proxy, Routed, proxy_rules

_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$")


def make_pool(options: Options, *, connections: int) -> Routed:
    """One keep-alive pool per host, as many connections as this process runs requests; and,
    when a proxy is set (``options.proxy`` or the environment, mpdl/net/proxy.py), one more per
    proxy, each request routed to the one its URL goes through.

    Every network setting a request depends on comes from ``options``: the one record the
    coordinator hands each worker process (and the environment, which it inherits). TLS is
    verified against ``options.cacert`` when given, else against the system's store, where
    OpenSSL honours SSL_CERT_FILE and SSL_CERT_DIR (urllib3 loads its default verify paths
    when given no CA). Without verification (--insecure, asked for explicitly) urllib3's
    warning on every request is silenced in this process: it would bury mpdl's own lines in
    tracebacks' look-alikes."""
    if not options.verify_tls:
        warnings.simplefilter("ignore", InsecureRequestWarning)

    def pool(proxy: Proxy | None) -> urllib3.PoolManager:
        through: dict[str, Any] = {} if proxy is None else {
            "proxy_url": proxy.url, "proxy_headers": proxy.headers()}
        return (urllib3.ProxyManager if proxy else urllib3.PoolManager)(
            **through,
            num_pools=32,
            maxsize=connections,
            block=False,
            timeout=urllib3.Timeout(connect=options.timeout, read=options.timeout),
            retries=urllib3.Retry(total=None, connect=0, read=0, status=0, other=0, redirect=8),
            cert_reqs="CERT_REQUIRED" if options.verify_tls else "CERT_NONE",
            ca_certs=options.cacert if options.verify_tls else None,
            headers=dict(merge_headers(DEFAULT_HEADERS, options.headers)),
        )

    return Routed(proxy_rules(options.proxy, os.environ), pool)


def range_header(offset: int, length: int | None) -> str:
    return f"bytes={offset}-" if length is None else f"bytes={offset}-{offset + length - 1}"


def parse_content_range(value: str | None) -> tuple[int, int, int | None] | None:
    """'bytes 0-99/1000' -> (0, 99, 1000); total None for '*'; None if absent or malformed."""
    match = _CONTENT_RANGE.match(value or "")
    if not match:
        return None
    first, last, total = match.groups()
    return int(first), int(last), None if total == "*" else int(total)


def status_error(url: str, status: int, reason: str = "",
                 retry_after: str | None = None) -> FetchError:
    """The FetchError for an HTTP status that brought no usable body."""
    text = f"HTTP {status}{' ' + reason if reason else ''} from {url}"
    if status in (401, 403):
        return AccessDenied(text + " (access denied; a signed URL may have expired)")
    if status == 429 or status >= 500:
        return TransientError(text, parse_retry_after(retry_after))
    return NotOnMirror(text)  # 404, 410, 416, and any other status this mirror answers


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds from now: delta-seconds or an HTTP date; None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def open_response(pool: Routed, url: str, headers: dict[str, str], *,
                  credentials: bool = True) -> urllib3.BaseHTTPResponse:
    """GET ``url`` without reading the body, with the pool's headers and ``headers`` (but for
    CREDENTIALS, unless ``credentials``)."""
    sent = {**pool.headers, **headers}
    if not credentials:
        sent = {name: value for name, value in sent.items() if name.lower() not in CREDENTIALS}
    try:
        return pool.request("GET", url, headers=sent, preload_content=False,
                            decode_content=False)
    except (Urllib3Error, OSError) as exc:
        raise network_error(url, exc) from None


def network_error(url: str, exc: Urllib3Error | OSError) -> FetchError:
    """The FetchError for a request that got no response: a CertificateRefused when the
    server's certificate did not verify, else a TransientError (refused, reset, timed out)."""
    reason = exc.reason if isinstance(exc, MaxRetryError) and exc.reason else exc
    cause = reason.args[0] if isinstance(reason, SSLError) and reason.args else reason
    if isinstance(cause, ssl.SSLCertVerificationError):
        pool = getattr(exc, "pool", None)  # the host refused, which a redirect may have changed
        host = f"{pool.host}:{pool.port}" if pool is not None else _host(url)
        return CertificateRefused(host, cause.verify_message or str(cause))
    return TransientError(f"{url}: {str(reason).splitlines()[0]}")


def _host(url: str) -> str:
    parts = urllib3.util.parse_url(url)
    return f"{parts.host}:{parts.port}" if parts.port else str(parts.host)


def discard(response: urllib3.BaseHTTPResponse) -> None:
    """Drop a response whose body is not wanted: close its connection rather than read it."""
    response.close()
    response.release_conn()


class ServerInfo(NamedTuple):
    """What a probe learned: the object's size (None: unknown), whether ranges work, and
    ``url``, where the object answered once redirects were followed (the URL probed when
    none redirected)."""

    size: int | None
    ranges: bool
    url: str


def probe(pool: Routed, url: str) -> ServerInfo:
    """HEAD for Accept-Ranges and Content-Length; when HEAD is refused, a 'bytes=0-0' GET."""
    try:
        head = pool.request("HEAD", url, preload_content=True)
    except (Urllib3Error, OSError) as exc:
        raise network_error(url, exc) from None
    if head.status == 200:
        length = head.headers.get("Content-Length")
        size = int(length) if length and length.isdigit() else None
        ranges = "bytes" in head.headers.get("Accept-Ranges", "").lower()
        if size is not None and ranges:
            return ServerInfo(size, True, final_url(head, url))
    elif head.status in (404, 410, 401, 403):
        raise status_error(url, head.status, head.reason or "")
    response = open_response(pool, url, {"Range": "bytes=0-0"})
    try:
        final = final_url(response, url)
        if response.status == 206:
            parsed = parse_content_range(response.headers.get("Content-Range"))
            if parsed and parsed[0] == 0 and parsed[2] is not None:
                return ServerInfo(parsed[2], True, final)
            return ServerInfo(None, False, final)
        if response.status == 200:
            length = response.headers.get("Content-Length")
            return ServerInfo(int(length) if length and length.isdigit() else None, False,
                              final)
        raise status_error(url, response.status, response.reason or "")
    finally:
        discard(response)


def final_url(response: urllib3.BaseHTTPResponse, asked: str) -> str:
    """Where the response came from once urllib3 followed its redirects: the Location of the
    last one, against the URL that sent it (it may be relative), else ``asked``."""
    history = response.retries.history if response.retries is not None else ()
    last = history[-1] if history else None
    if last is None or not last.redirect_location:
        return asked
    return urllib.parse.urljoin(last.url or asked, last.redirect_location)
