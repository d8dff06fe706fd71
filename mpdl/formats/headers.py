"""Request headers: mpdl's defaults, the ones a user or a manifest adds, and their order.

Every request of a run carries the same headers: mpdl's defaults, then the manifest's
``headers`` object, then the caller's (``--header``, ``headers=``); a later layer wins by name,
whatever its case, so a User-Agent given by the user replaces mpdl's. Per-request headers
(Range) are added on top of those by http.py, never instead of them.

A redirect's target on another host gets no CREDENTIALS (Authorization, Cookie), whether
urllib3 follows the redirect or the scheduler sends later ranges there (``same_host``).

Rules: a header is a token name and a value without control characters (no CR or LF can
split a request), both as latin-1 as HTTP/1.1 sends them. Names that mpdl itself must control
for its bytes to be right (Range, Accept-Encoding, the framing headers, Host) or that belong
to the proxy (Proxy-Authorization: credentials go in the proxy URL) are refused. ``problem``
says what is wrong as text, and each caller raises its own one-line error naming the field:
a UsageError for the option (here) and --header, a ManifestError for the manifest's.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

from ..errors import UsageError

USER_AGENT = "mpdl/0.1"
#: Sent on every request unless a layer above replaces them. identity: mpdl writes the bytes
#: the server has, a gzip body would be neither the size nor the hash the manifest says.
DEFAULT_HEADERS: tuple[tuple[str, str], ...] = (
    ("User-Agent", USER_AGENT), ("Accept-Encoding", "identity"))
#: Lower-case names nobody may set: mpdl's own, or the proxy's.
RESERVED = frozenset({"range", "accept-encoding", "content-length", "transfer-encoding",
                      "connection", "host", "proxy-authorization"})

Headers = tuple[tuple[str, str], ...]
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # every control character but TAB


def problem(name: object, value: object) -> str | None:
    """Why ``name: value`` cannot be sent as a header, or None when it can; the caller says
    which header (the message does not repeat the name)."""
    if not isinstance(name, str) or not _TOKEN.match(name):
        return "not a header name (letters, digits and !#$%&'*+-.^_`|~ only)"
    if name.lower() == "proxy-authorization":
        return "not sent to servers: give proxy credentials in the proxy URL"
    if name.lower() in RESERVED:
        return "mpdl sets this header itself"
    if not isinstance(value, str):
        return f"the value must be a string, not {type(value).__name__}"
    if _CONTROL.search(value):
        return "the value has a control character (CR, LF...)"
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return "the value has characters a header cannot carry (latin-1 only)"
    return None


def shown(name: object) -> str:
    """A header name for a one-line message: as is when valid, else quoted with escapes."""
    return name if isinstance(name, str) and _TOKEN.match(name) else repr(name)


def headers_option(value: Mapping[str, str] | Iterable[tuple[str, str]]) -> Headers:
    """The ``headers`` option as (name, value) pairs: from a mapping or pairs, each valid."""
    if isinstance(value, (str, bytes)):
        raise UsageError("headers: expected a mapping or (name, value) pairs, not a string")
    pairs = list(value.items()) if isinstance(value, Mapping) else list(value)
    out = []
    for pair in pairs:
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise UsageError(f"headers: {pair!r} is not a (name, value) pair")
        name, text = pair[0], pair[1].strip() if isinstance(pair[1], str) else pair[1]
        why = problem(name, text)
        if why:
            raise UsageError(f"headers: {shown(name)}: {why}")
        out.append((name, text))
    return merge_headers(out)


def parse_header_line(text: str) -> tuple[str, str]:
    """``'Name: value'`` (what --header takes, as curl's -H) -> (name, value)."""
    name, colon, value = text.partition(":")
    if not colon:
        raise UsageError(f"--header {text!r}: expected 'Name: value'")
    value = value.strip()
    why = problem(name, value)
    if why:
        raise UsageError(f"--header {text!r}: {why}")
    return name, value


def merge_headers(*layers: Iterable[tuple[str, str]]) -> Headers:
    """The layers in order, a later header replacing an earlier one of the same name (in any
    case), in the place the name first had."""
    merged: dict[str, tuple[str, str]] = {}
    for layer in layers:
        for name, value in layer:
            merged[name.lower()] = (name, value)
    return tuple(merged.values())


#: What never goes to another host than the one the user named (urllib3 drops the same on a
#: redirect across hosts; the scheduler's reuse of a redirect's target must too).
CREDENTIALS = frozenset({"authorization", "cookie"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


def same_host(a: str, b: str) -> bool:
    """Whether two URLs name the same scheme, host and port."""
    def where(url: str) -> tuple[str, str, int | None]:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        return scheme, (parts.hostname or ""), parts.port or _DEFAULT_PORTS.get(scheme)
    return where(a) == where(b)
