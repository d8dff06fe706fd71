"""The speed floor (--speed-limit, --speed-time): the policy alone (no sockets, no clock), its
scaling under the speed cap, the options, then reads on a real socket: one receive per read,
so a trickle is judged, and a trickling response failing its attempt within its window.

(Through real servers and processes: tests/integration/test_speed_floor_live.py.)
"""

from __future__ import annotations


import pytest

from mpdl.errors import UsageError
from mpdl.options import KiB, MiB, Options
from mpdl.core.speedfloor import (CAP_SHARE, DEFAULT_LIMIT, DEFAULT_WINDOW, SpeedFloor, SpeedWatch,
                                  Verdict)

# --- the policy -----------------------------------------------------------------------------


def test_a_window_is_judged_only_once_it_is_over() -> None:
    floor = SpeedFloor(limit=1000, window=10.0)
    assert floor.judge(0, 9.99, 1000) is Verdict.OPEN  # nothing yet, but the window is open
    assert floor.judge(10_000, 10.0, 1000) is Verdict.PASSED
    assert floor.judge(9_999, 10.0, 1000) is Verdict.TOO_SLOW


def test_no_floor_never_fails() -> None:
    assert SpeedFloor(limit=0, window=1.0).judge(0, 1e9, 0) is Verdict.OPEN


def test_a_watch_starts_a_new_window_after_one_passes() -> None:
    """A fast window does not bank credit for a later stall: the stall is judged alone."""
    watch = SpeedWatch(SpeedFloor(limit=1000, window=1.0))
    assert watch.add(10 * KiB, 0.5, 1000) is Verdict.OPEN
    assert watch.add(0, 0.5, 1000) is Verdict.PASSED  # 10 KiB in 1 s
    assert (watch.got, watch.waited) == (0, 0.0)
    assert watch.add(1, 0.6, 1000) is Verdict.OPEN
    assert watch.add(1, 0.6, 1000) is Verdict.TOO_SLOW  # 2 bytes in 1.2 s
    assert SpeedFloor(limit=1000, window=1.0).reason(1024) == "slower than 1.0 KiB/s for 1 s"


def test_a_trickle_of_a_byte_a_second_fails_its_first_window() -> None:
    """The issue's case: a byte every 1.5 s, each read well under --timeout."""
    watch = SpeedWatch(SpeedFloor())
    verdicts = [watch.add(1, 1.5, DEFAULT_LIMIT) for _ in range(int(DEFAULT_WINDOW / 1.5))]
    assert verdicts[-1] is Verdict.TOO_SLOW
    assert set(verdicts[:-1]) == {Verdict.OPEN}


def test_under_a_cap_the_floor_scales_below_each_connections_share() -> None:
    floor = SpeedFloor(limit=10 * KiB, window=30.0)
    assert floor.floor(None, 16) == 10 * KiB
    assert floor.floor(1 * MiB, 16) == 10 * KiB  # a share of 64 KiB/s: the floor as set
    assert floor.floor(16 * KiB, 16) == CAP_SHARE * KiB  # a share of 1 KiB/s: half of it
    assert floor.floor(16 * KiB, 0) == CAP_SHARE * 16 * KiB  # none counted: the whole cap


@pytest.mark.parametrize("rate", [1 * KiB, 16 * KiB, 100 * KiB, 10 * MiB])
def test_a_connection_reading_as_fast_as_the_cap_lets_it_never_fails(rate: int) -> None:
    """16 connections under ``rate``, each reading exactly its share for minutes, and even
    half of it (turns that fell between two windows): never below the floor."""
    policy = SpeedFloor()
    share = rate / 16
    floor = policy.floor(rate, 16)
    for pace in (share, share * CAP_SHARE):
        watch = SpeedWatch(policy)
        for _ in range(600):  # 0.5 s reads for 5 minutes
            assert watch.add(int(pace / 2) + 1, 0.5, floor) is not Verdict.TOO_SLOW


# --- options ----------------------------------------------------------------------------------


def test_the_options_default_from_the_policy_and_read_the_environment() -> None:
    opts = Options.from_env({})
    assert opts.speed_floor == SpeedFloor(DEFAULT_LIMIT, DEFAULT_WINDOW)
    opts = Options.from_env({"MPDL_SPEED_LIMIT": "2K", "MPDL_SPEED_TIME": "5"})
    assert (opts.speed_limit, opts.speed_time) == (2048, 5.0)
    assert Options.from_env({"MPDL_SPEED_LIMIT": "2K"}, speed_limit=0).speed_limit == 0
    assert Options(speed_limit="1M").speed_limit == MiB


@pytest.mark.parametrize("bad", [{"speed_limit": -1}, {"speed_limit": 1.5},
                                 {"speed_limit": "fast"}, {"speed_limit": True},
                                 {"speed_time": 0}, {"speed_time": float("inf")}])
def test_bad_floors_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(UsageError):
        Options(**bad)
