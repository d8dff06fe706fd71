"""Request headers: what arrives at the server (the fault server records every request's
headers), which layer wins (mpdl's defaults < the manifest's < the caller's), and that
Authorization and Cookie never follow a redirect to another host.

(Through real servers and processes: tests/integration/test_headers_live.py.)
"""

from __future__ import annotations

import pickle

import pytest

from mpdl.errors import ManifestError, UsageError
from mpdl.formats.headers import merge_headers, parse_header_line
from mpdl.formats.manifest import parse_manifest
from mpdl.options import Options


# --- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize("line, why", [
    ("X-Token", "expected 'Name: value'"),
    ("Bad Name: x", "not a header name"),
    (": x", "not a header name"),
    ("Range: bytes=0-", "mpdl sets this header"),
    ("accept-encoding: gzip", "mpdl sets this header"),
    ("Proxy-Authorization: Basic eA==", "proxy URL"),
    ("X-Token: a\x7fb", "control character"),
    ("X-Token: \u20ac", "latin-1"),
])
def test_bad_header_lines(line: str, why: str) -> None:
    with pytest.raises(UsageError, match=why):
        parse_header_line(line)


def test_header_line_parts() -> None:
    assert parse_header_line("X-Token:  a: b ") == ("X-Token", "a: b")
    assert parse_header_line("X-Empty:") == ("X-Empty", "")


def test_headers_option_is_pairs_validated_and_picklable() -> None:
    options = Options(headers={"X-A": "1", "user-agent": "me"})
    assert options.headers == (("X-A", "1"), ("user-agent", "me"))
    assert pickle.loads(pickle.dumps(options)) == options
    assert Options(headers=[("X-A", "1"), ("x-a", "2")]).headers == (("x-a", "2"),)
    for bad, why in (({"X-A": "a\r\nEvil: 1"}, "control character"),
                     ({"X-A": 1}, "must be a string"),
                     ({"Bad\nName": "x"}, r"'Bad\\nName'"),
                     ("X-A: 1", "not a string"),
                     ([("X-A",)], "not a \\(name, value\\) pair")):
        with pytest.raises(UsageError, match=why) as caught:
            Options(headers=bad)
        assert "\n" not in str(caught.value)


def test_layers_merge_by_name_in_any_case() -> None:
    merged = merge_headers([("User-Agent", "mpdl"), ("Accept-Encoding", "identity")],
                           [("user-agent", "depot")], [("USER-AGENT", "cli"), ("X-A", "1")])
    assert merged == (("USER-AGENT", "cli"), ("Accept-Encoding", "identity"), ("X-A", "1"))


@pytest.mark.parametrize("headers, field", [
    (["X-A", "1"], "headers: must be an object"),
    ({"X-A": 1}, "headers.X-A: must be a string, not a number"),
    ({"X-A": "a\nb"}, "headers.X-A: the value has a control character"),
    ({"Host": "evil"}, "headers.Host: mpdl sets this header"),
    ({"Bad Name": "x"}, "headers.'Bad Name': not a header name"),
    ({"X\r\nY": "x"}, "headers.'X\\r\\nY': not a header name"),
])
def test_manifest_headers_are_validated(headers: object, field: str) -> None:
    manifest = {"format": "mpdl/1", "files": [], "headers": headers}
    with pytest.raises(ManifestError) as caught:
        parse_manifest(manifest)
    message = str(caught.value)
    assert message.startswith(field), message
    assert "\n" not in message and "\r" not in message


def test_manifest_headers_are_kept() -> None:
    parsed = parse_manifest({"format": "mpdl/1", "files": [],
                             "headers": {"X-Token": " abc ", "User-Agent": "depot/1"}})
    assert parsed.headers == (("X-Token", "abc"), ("User-Agent", "depot/1"))
