"""The tls tests that need no server and no process; those with real ones are
tests/integration/test_tls.py.

HTTPS against a real nginx with a CA the test makes: how mpdl is told to trust it, keep-alive
over TLS, and what a certificate that does not verify does to a run.

The CA and the server certificate come from perf/tls.py (the openssl command line). nginx logs
each request with its connection's serial number ($connection): that counts the TLS
connections a run opened, and, read before and after a run, the connections nginx accepted in
between, even those whose handshake failed and that sent no request at all. (Which headers
arrive is tests/unit/test_headers.py's, with the fault server's record of each request.)
"""

from __future__ import annotations


from mpdl.messages import FailKind
from mpdl.retry import Attempts, Failure, RetryPolicy, StopRun


def test_a_refused_certificate_stops_the_run_whatever_the_mirrors() -> None:
    decision = RetryPolicy().decide(Attempts(), Failure(FailKind.STOP, "refused"), mirrors=3,
                                    splittable=True, can_refresh=True, jitter=0.5)
    assert decision == StopRun("refused")
