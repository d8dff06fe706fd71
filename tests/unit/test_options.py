"""Options: sizes, environment defaults, and flags that win over them."""

from __future__ import annotations

import pytest

from mpdl.cli import build_parser
from mpdl.errors import UsageError
from mpdl.options import Options, parse_size
from mpdl.procs.ring import slots_that_fit
from mpdl.core.slots import Phase, SlotPool


@pytest.mark.parametrize("text,value", [("4096", 4096), ("512K", 512 * 1024), ("8M", 8 << 20),
                                        ("8m", 8 << 20), ("1.5G", 3 << 29), ("2MiB", 2 << 20),
                                        ("64KB", 64 << 10)])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "12Q", "-1M", "M", "1 2M"])
def test_parse_size_refuses(text):
    with pytest.raises(UsageError):
        parse_size(text)


def test_environment_gives_defaults_and_overrides_win():
    env = {"MPDL_WORKERS": "3", "MPDL_CONNECTIONS": "5", "MPDL_CHUNK_SIZE": "512K",
           "MPDL_MEMORY": "64M", "MPDL_NO_PARALLEL": "1", "MPDL_START_METHOD": "spawn"}
    options = Options.from_env(env, connections=7, memory=None)
    assert (options.workers, options.connections, options.chunk_size, options.memory) == (
        3, 7, 512 << 10, 64 << 20)
    assert options.parallel is False and options.start_method == "spawn"
    assert Options.from_env({}).max_attempts == 5
    assert Options.from_env({"MPDL_TRIES": "2"}).max_attempts == 2
    assert Options.from_env({"MPDL_TRIES": "2"}, max_attempts=3).max_attempts == 3
    assert Options.from_env({}).checkpoint_every == 3.0
    assert Options.from_env({"MPDL_CHECKPOINT_EVERY": "0.5"}).checkpoint_every == 0.5


@pytest.mark.parametrize("env", [{"MPDL_WORKERS": "x"}, {"MPDL_WORKERS": "0"},
                                 {"MPDL_CHUNK_SIZE": "1K"}, {"MPDL_CHUNK_SIZE": "3M"},
                                 {"MPDL_START_METHOD": "thread"}, {"MPDL_TRIES": "0"},
                                 {"MPDL_CHECKPOINT_EVERY": "0"},
                                 {"MPDL_CHECKPOINT_EVERY": "inf"}])
def test_bad_environment_values_are_usage_errors(env):
    with pytest.raises(UsageError):
        Options.from_env(env)


def test_unknown_option_is_a_type_error():
    with pytest.raises(TypeError):
        Options.from_env({}, colour="blue")


def test_default_workers_come_from_the_machine():
    assert Options.from_env({}).workers >= 2


def test_slot_pool_tracks_owners_and_reuses_the_last_freed_slot():
    pool = SlotPool(3)
    a, b, c = pool.acquire(1, 1, 0), pool.acquire(2, 1, 0), pool.acquire(3, 1, 1)
    assert pool.acquire(4, 1, 0) is None and pool.free == 0
    assert pool.holder(b).task_id == 2 and pool.holder(c).worker == 1
    pool.release(a)
    pool.release(c)
    assert pool.acquire(5, 1, 0) == c and pool.holder(c).task_id == 5
    assert pool.free == 1 and a != c


def test_slot_pool_frees_what_a_dead_child_held():
    pool = SlotPool(4)
    writing = pool.acquire(1, 1, 0)
    pool.to_writer(writing, ())
    filling_0, filling_1 = pool.acquire(2, 1, 0), pool.acquire(3, 1, 1)
    assert pool.writing(1, 1) == 1 and pool.writing(1, 2) == 0
    pool.release_worker(0)  # its FILLING slot only: the writer still has task 1's
    assert pool.holder(filling_0) is None and pool.holder(writing).phase is Phase.WRITING
    pool.release_writer()
    assert pool.holder(writing) is None and pool.holder(filling_1) is not None
    pool.release_filling(3, 1)
    assert pool.free == 4


def test_slots_that_fit_read_the_real_shared_memory_folder():
    assert slots_that_fit(4096, 3) == 3
    assert slots_that_fit(1 << 50, 10) == 0  # a petabyte slot fits nowhere


def test_the_flags_for_tries_and_checkpoints_reach_the_options():
    args = build_parser().parse_args(["d.json", "-o", "g", "--tries", "2",
                                      "--checkpoint-every", "0.5"])
    assert (args.tries, args.checkpoint_every) == (2, 0.5)


@pytest.mark.parametrize("flag", ["--timeout", "--speed-time", "--checkpoint-every"])
@pytest.mark.parametrize("value", ["0", "-1", "inf", "nan", "soon"])
def test_seconds_flags_take_a_positive_finite_number(flag, value, capsys):
    with pytest.raises(SystemExit) as caught:
        build_parser().parse_args(["d.json", "-o", "g", flag, value])
    assert caught.value.code == 2
    assert flag in capsys.readouterr().err
