"""The supervisor's inbox to a child hands its records to its feeder thread on request
(Inbox.handed_over): the first worker's first tasks leave before the run forks its other
children, rather than after, when the feeder next gets the GIL."""

from __future__ import annotations

import multiprocessing

from mpdl.procs.supervisor import Inbox


def test_handed_over_waits_until_the_feeder_took_every_record() -> None:
    inbox = Inbox(multiprocessing.get_context())
    try:
        inbox.put(["first tasks"])
        inbox.put(["more"])
        assert inbox.handed_over(timeout=5.0)
        assert not inbox._buffer  # type: ignore[attr-defined]  # taken: in or into the pipe
        assert inbox.get(timeout=5.0) == ["first tasks"]
        assert inbox.get(timeout=5.0) == ["more"]
    finally:
        inbox.close()
        inbox.join_thread()


def test_handed_over_gives_up_at_its_deadline() -> None:
    """Records no feeder takes (here: none was started) are not waited for past the
    deadline: starting a run never hangs on its inbox."""
    inbox = Inbox(multiprocessing.get_context())
    inbox._buffer.append(["stuck"])  # type: ignore[attr-defined]  # as put() does, minus the feeder
    try:
        assert not inbox.handed_over(timeout=0.05)
    finally:
        inbox._buffer.clear()  # type: ignore[attr-defined]
        inbox.close()


def test_release_ends_the_feeder_before_the_queue_is_dropped() -> None:
    """The feeder thread holds two of the queue's named semaphores: left running, it frees
    them in its own thread as it ends, which an exiting interpreter can stop between the
    unlink and the resource tracker's unregister (a "leaked semaphore" warning on a
    launcher's stderr). Released, the inbox has no feeder left to do that."""
    inbox = Inbox(multiprocessing.get_context())
    inbox.put(["records"])
    assert inbox.handed_over(timeout=5.0)
    feeder = inbox._thread  # type: ignore[attr-defined]
    assert feeder.is_alive()
    inbox.release(timeout=5.0)
    assert not feeder.is_alive()


def test_release_without_a_feeder_returns_at_once() -> None:
    inbox = Inbox(multiprocessing.get_context())
    inbox.release(timeout=5.0)
    assert inbox._closed  # type: ignore[attr-defined]
