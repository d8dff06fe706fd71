"""Where a redirected object is asked next: its final URL is the last Location, resolved against
the URL that sent it. Runs against an origin and a CDN are tests/integration/test_redirects.py's.
"""

from __future__ import annotations

import urllib3
from urllib3.util.retry import RequestHistory, Retry

from mpdl.net.fetch import final_url


def test_the_final_url_is_the_last_location_resolved_against_the_url_that_sent_it() -> None:
    """urllib3 keeps each Location as the server sent it: a relative one is resolved here."""
    history = (RequestHistory("GET", "http://origin.invalid/a/main.bin", None, 302,
                              "https://cdn.invalid/x/main.bin?sig=1"),
               RequestHistory("GET", "https://cdn.invalid/x/main.bin?sig=1", None, 307,
                              "../y/main.bin?sig=2"))
    response = urllib3.HTTPResponse(status=206, retries=Retry(history=history))
    assert final_url(response, "http://origin.invalid/a/main.bin") == \
        "https://cdn.invalid/y/main.bin?sig=2"
    plain = urllib3.HTTPResponse(status=206, retries=Retry())
    assert final_url(plain, "http://origin.invalid/a") == "http://origin.invalid/a"
