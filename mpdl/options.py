"""Run options: defaults from the machine, then MPDL_* variables, then the caller's values."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, TypedDict

from .errors import UsageError
from .formats.headers import Headers, headers_option
from .net.proxy import parse_proxy, proxy_rules
from .core.checkpoints import CHECKPOINT_SECONDS
from .core.retry import MAX_ATTEMPTS
from .core.speedfloor import DEFAULT_LIMIT, DEFAULT_WINDOW, SpeedFloor

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": KiB, "m": MiB, "g": GiB, "t": 1024 * GiB}


def parse_size(text: str) -> int:
    """'8M', '512K', '1.5G', '4096' -> bytes (binary units: K is 1024)."""
    match = _SIZE.match(str(text))
    if not match:
        raise UsageError(f"not a size: {text!r} (use e.g. 512K, 8M, 1G)")
    number, unit, _ = match.groups()
    return int(float(number) * _UNITS[unit.lower()])


def parse_rate(value: object) -> int | None:
    """A speed cap: bytes per second as a number or a size ('10M' is 10 MiB/s); 0 or None is
    no cap. The one check of a cap, from an option or from a progress callback."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = parse_size(value)
        except UsageError as exc:
            raise UsageError(f"limit_rate: {exc}") from None
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not (value == 0 or 1 <= value < float("inf"))):
        raise UsageError(f"limit_rate must be bytes per second (a number or a size such as "
                         f"10M; 0: no cap), not {value!r}")
    return int(value) or None


def _default_workers() -> int:
    # Workers spend their CPU on socket reads, zlib and part hashes; the writer and the
    # coordinator need a core's share too, so one worker per core, and at least two.
    return max(2, min(8, os.cpu_count() or 2))


class RunOptions(TypedDict, total=False):
    """The options ``mpdl.run`` and ``mpdl.repair`` take as keywords: the fields of Options
    (None: from MPDL_* variables, else the default), typed so that a misspelt one
    (``conections=4``) is an error where it is written, for a type checker, and a TypeError
    at the call (Options.from_env) before the run does anything."""

    workers: int | None
    connections: int | None
    chunk_size: int | None
    memory: int | None
    timeout: float | None
    parallel: bool | None
    verify_tls: bool | None
    cacert: str | os.PathLike[str] | None
    headers: Mapping[str, str] | Iterable[tuple[str, str]] | None
    max_attempts: int | None
    checkpoint_every: float | None
    start_method: str | None
    proxy: str | None
    limit_rate: int | str | None
    speed_limit: int | str | None
    speed_time: float | None
    min_size: int | str | None


@dataclass(frozen=True)
class Options:
    """Everything a run can be tuned with. See ``from_env`` for where values come from."""

    # Defaults, as measured with perf/ (README "Performance"): 16 connections hide round trips
    # and per-connection caps (nginx limit_rate, CDNs) without flooding one server; 2 MiB
    # chunks are the slots and the grid ranges are cut on (objects start as about one range
    # per connection, and idle connections bisect what is left, so the last wave is short);
    # a 64 MiB ring holds 32 such slots, enough for every connection plus as many waiting for
    # the writer, and touches little memory (a 256 MiB ring ran no faster and cost 200 MiB
    # more of the machine's memory).
    workers: int = field(default_factory=_default_workers)  # from the machine
    connections: int = 16  # concurrent requests in all workers together
    chunk_size: int = 2 * MiB  # the slot size, and the grid ranges are cut on: a power of two
    memory: int = 64 * MiB  # the ring's budget: the cap on payload held in memory
    timeout: float = 30.0  # seconds to connect, and without a byte while reading
    parallel: bool = True  # False: one stream per object (MPDL_NO_PARALLEL=1)
    verify_tls: bool = True
    cacert: str | None = None  # a PEM file of CAs to trust instead of the system's (MPDL_CACERT)
    # Added to every request, after mpdl's defaults (headers.py: a later one wins by name);
    # a mapping or (name, value) pairs, kept as pairs: immutable, and pickled to each worker.
    headers: Headers = ()
    max_attempts: int = MAX_ATTEMPTS  # per task, over all mirrors
    # Seconds between checkpoints (checkpoints.py): what a SIGKILL or a power cut may lose of
    # the bytes written; each one costs an fsync (or a syncfs) of the files that grew.
    checkpoint_every: float = CHECKPOINT_SECONDS
    start_method: str | None = None  # None: osdeps.default_start_method picks
    # None: the environment's (HTTPS_PROXY...); "": none (mpdl/net/proxy.py)
    proxy: str | None = None
    limit_rate: int | None = None  # bytes/s for the whole run (parse_rate); None: no cap
    # A connection slower than speed_limit bytes/s over speed_time seconds of reading has
    # failed its attempt (speedfloor.py says why these defaults); 0: no floor.
    speed_limit: int = DEFAULT_LIMIT
    speed_time: float = DEFAULT_WINDOW
    # A download missing fewer bytes than this is fetched in the calling process, without
    # worker processes or shared memory (direct.py); 0: never. None: direct.DEFAULT_MIN_SIZE
    # for URL downloads (mpdl.download, the CLI's URLs), never for a manifest's run.
    min_size: int | None = None

    def __post_init__(self) -> None:
        for name in ("workers", "connections", "chunk_size", "memory", "max_attempts"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UsageError(f"{name} must be a positive whole number, not {value!r}")
        if not self.timeout > 0:
            raise UsageError(f"timeout must be positive, not {self.timeout!r}")
        for name in ("speed_time", "checkpoint_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not (
                    isinstance(value, (int, float)) and 0 < value < float("inf")):
                raise UsageError(f"{name} must be a positive number of seconds, not {value!r}")
        object.__setattr__(self, "speed_limit", _speed_limit(self.speed_limit))
        if self.min_size is not None:
            object.__setattr__(self, "min_size", _min_size(self.min_size))
        if self.chunk_size < 64 * KiB:
            raise UsageError("chunk size must be at least 64K")
        if self.chunk_size & (self.chunk_size - 1):  # the grid a cache's slices divide
            raise UsageError(f"chunk size must be a power of two (64K, 1M, 2M, ...), not "
                             f"{self.chunk_size}")
        object.__setattr__(self, "limit_rate", parse_rate(self.limit_rate))
        if self.start_method not in (None, "fork", "spawn", "forkserver"):
            raise UsageError(f"unknown start method {self.start_method!r}")
        object.__setattr__(self, "headers", headers_option(self.headers))
        if self.cacert is not None:
            object.__setattr__(self, "cacert", os.fspath(self.cacert))
            _check_cacert(self.cacert)
        if self.proxy:
            parse_proxy(self.proxy, "proxy")

    @property
    def speed_floor(self) -> SpeedFloor:
        """The floor every connection is held to (speedfloor.py)."""
        return SpeedFloor(self.speed_limit, self.speed_time)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Options:
        """Defaults, then MPDL_* environment variables, then ``overrides`` that are not None."""
        env = os.environ if env is None else env
        values: dict = {}
        readers: dict[str, tuple[str, Callable[[str], object]]] = {
            "MPDL_WORKERS": ("workers", _count),
            "MPDL_CONNECTIONS": ("connections", _count),
            "MPDL_CHUNK_SIZE": ("chunk_size", parse_size),
            "MPDL_MEMORY": ("memory", parse_size),
            "MPDL_TIMEOUT": ("timeout", float),
            "MPDL_TRIES": ("max_attempts", _count),
            "MPDL_CHECKPOINT_EVERY": ("checkpoint_every", float),
            "MPDL_START_METHOD": ("start_method", str),
            "MPDL_CACERT": ("cacert", str),
            "MPDL_LIMIT_RATE": ("limit_rate", parse_size),
            "MPDL_SPEED_LIMIT": ("speed_limit", parse_size),
            "MPDL_SPEED_TIME": ("speed_time", float),
            "MPDL_MIN_SIZE": ("min_size", parse_size),
        }
        for var, (name, read) in readers.items():
            if env.get(var):
                try:
                    values[name] = read(env[var])
                except ValueError as exc:
                    raise UsageError(f"{var}: {exc}") from None
        if env.get("MPDL_NO_PARALLEL", "") not in ("", "0"):
            values["parallel"] = False
        known = {f.name for f in fields(cls)}
        for name, value in overrides.items():
            if name not in known:
                raise TypeError(f"unknown option {name!r}")
            if value is not None:
                values[name] = value
        proxy_rules(values.get("proxy"), env)  # a bad HTTPS_PROXY... fails here, not in a worker
        return replace(cls(), **values) if values else cls()


def _byte_count(name: str, value: object, meaning: str) -> int:
    """A count of bytes given as a whole number or a size ('1K', '1M'); ``meaning`` says what
    it is and what 0 means, for the one-line error."""
    if isinstance(value, str):
        try:
            value = parse_size(value)
        except UsageError as exc:
            raise UsageError(f"{name}: {exc}") from None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UsageError(f"{name} must be {meaning}, not {value!r}")
    return value


def _speed_limit(value: object) -> int:
    """The floor in bytes per second; 0 is no floor."""
    return _byte_count("speed_limit", value, "bytes per second (a whole number or a size such "
                       "as 1K; 0: no floor)")


def _min_size(value: object) -> int:
    """Bytes under which a download runs in this process; 0 turns that path off."""
    return _byte_count("min_size", value, "bytes (a whole number or a size such as 1M; 0: "
                       "never in this process)")


def _check_cacert(path: str) -> None:
    """A CA file that cannot be read would refuse every server: say so before any request."""
    if not os.path.isfile(path):
        raise UsageError(f"cacert: {path}: no such file")
    import ssl  # here: a run without --cacert needs no ssl in the coordinator
    try:
        ssl.create_default_context(cafile=path)
    except (ssl.SSLError, OSError) as exc:
        raise UsageError(f"cacert: {path}: not a readable PEM file of CA certificates "
                         f"({exc.strerror or exc})") from None


def _count(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"not a whole number: {text!r}") from None
