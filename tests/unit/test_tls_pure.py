"""A TLS certificate refused stops the run, whatever the mirrors (the retry policy's decision).
HTTPS against a real nginx with a CA the test makes is tests/integration/test_tls.py's.
"""

from __future__ import annotations

from mpdl.core.messages import FailKind
from mpdl.core.retry import Attempts, Failure, RetryPolicy, StopRun


def test_a_refused_certificate_stops_the_run_whatever_the_mirrors() -> None:
    decision = RetryPolicy().decide(Attempts(), Failure(FailKind.STOP, "refused"), mirrors=3,
                                    splittable=True, can_refresh=True, jitter=0.5)
    assert decision == StopRun("refused")
