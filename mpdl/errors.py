"""The exceptions mpdl raises, as one hierarchy whose shape is the classification (as urllib3's).

Everything mpdl raises on purpose derives from MpdlError, so a launcher can catch one class.
A failed fetch says what may still succeed by its class alone: each FetchError subclass carries
its ``kind`` (the FailKind a worker reports) as a class attribute, so a class and a kind can
never disagree. Facts travel as fields given to the constructor, not attributes set later.
"""

from __future__ import annotations

from typing import ClassVar

from .core.messages import FailKind


class MpdlError(Exception):
    """Base class of every error mpdl raises on purpose."""


class ManifestError(MpdlError, ValueError):
    """The manifest is invalid: nothing was written. The message is one line naming the field."""


class UsageError(MpdlError, ValueError):
    """An option has a value mpdl cannot use (a bad size, a negative count...)."""


# -- fetching: raised in a worker, reported as a Failed record of the class's kind -------------


class FetchError(MpdlError):
    """An HTTP fetch failed. Subclasses say what may still succeed; this base is a bug's."""

    kind: ClassVar[FailKind] = FailKind.FATAL


class TransientError(FetchError):
    """Connection refused or reset, a timeout, a short body, 5xx, 429: back off and retry.
    ``retry_after`` is the server's Retry-After in seconds, when it sent one."""

    kind = FailKind.RETRY

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ProxyUnavailable(TransientError):
    """The proxy at ``proxy`` does not answer, or could not reach the server (502, 504): back
    off and retry, within the same budget as any transient failure."""

    def __init__(self, proxy: str, message: str) -> None:
        super().__init__(message)
        self.proxy = proxy


class ProxyRefused(FetchError):
    """The proxy at ``proxy`` refused to take the request where it goes, with ``status`` (a
    CONNECT its rules forbid, 403): like a mirror that has not got the object, another mirror
    may be allowed, and once none is left the file fails with this line."""

    kind = FailKind.MIRROR

    def __init__(self, proxy: str, status: int, message: str) -> None:
        super().__init__(message)
        self.proxy, self.status = proxy, status


class ProxyAuthRequired(ProxyRefused):
    """407: the proxy wants credentials, or refused the ones in the proxy URL. Every request
    through it would be refused the same way: the run stops, with this one line (as for a
    refused certificate)."""

    kind = FailKind.STOP


class NotOnMirror(FetchError):
    """This mirror does not have the object (404, 410, 416, another length): try the next."""

    kind = FailKind.MIRROR


class AccessDenied(FetchError):
    """401, 403: fail fast, unless the caller can refresh the (signed) URL."""

    kind = FailKind.AUTH


class RangesIgnored(FetchError):
    """The server answered a Range request with the whole object: stream the object once."""

    kind = FailKind.RANGES


class CertificateRefused(FetchError):
    """The TLS certificate of ``host`` did not verify (``reason``: OpenSSL's words). Every
    request to that host would be refused the same way, so it is never retried: the run
    stops, with this one line saying how to trust the server."""

    kind = FailKind.STOP

    def __init__(self, host: str, reason: str) -> None:
        super().__init__(f"the TLS certificate of {host} was refused ({reason}); pass the CA "
                         "that signed it with --cacert FILE (cacert= in the API) or "
                         "SSL_CERT_FILE, or skip the check with --insecure")
        self.host, self.reason = host, reason


class IntegrityError(FetchError):
    """Bytes arrived but do not match what the manifest declares (hash, zlib stream): fetched
    once more, then the file fails."""

    kind = FailKind.CORRUPT


# -- the run: raised in the coordinating process, they stop the run ---------------------------


class RunStopped(MpdlError):
    """The run cannot go on; files not finished stay staged for a re-run."""


class DiskError(RunStopped):
    """Writing ``path`` failed in a way that concerns the disk (full, read-only, permissions)."""

    def __init__(self, path: str, reason: str, writing: str | None = None) -> None:
        where = f" (writing {writing})" if writing else ""
        super().__init__(f"{path}: {reason}{where}")
        self.path, self.reason, self.writing = path, reason, writing


class JournalError(RunStopped):
    """The journal at ``path`` could not be written (disk full, read-only)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


class NotDurable(RunStopped):
    """The run's last checkpoint could not make the written files durable (``reason``: the
    failed fsync's path and error): its finished files are in place but not journaled, so
    the run is not complete; a re-run checks them by their hash."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"{reason} (the written files could not be made durable; the journal "
                         "does not record them)")
        self.reason = reason


class ChildrenKeepDying(RunStopped):
    """Worker or writer processes died more often than the respawn budget allows."""

    def __init__(self, role: str, exit_code: int | None) -> None:
        super().__init__(f"{role} processes keep dying (last exit code {exit_code})")
        self.role, self.exit_code = role, exit_code


class NotEnoughSpace(MpdlError):
    """The files to write do not fit on the destination's disk (checked before any request)."""

    def __init__(self, path: str, needed: int, free: int) -> None:
        from .progress import human_bytes

        super().__init__(f"not enough space on {path}: {human_bytes(needed)} to write, "
                         f"{human_bytes(free)} free")
        self.path, self.needed, self.free = path, needed, free


class RingTooSmall(MpdlError):
    """The shared-memory filesystem cannot hold the two slots a run needs at least."""

    def __init__(self, folder: str, slot_size: int) -> None:
        super().__init__(f"not enough shared memory: {folder} cannot hold two slots of "
                         f"{slot_size // 1024} KiB; free some or lower --chunk-size")
        self.folder, self.slot_size = folder, slot_size
