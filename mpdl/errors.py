"""The exceptions mpdl raises, as one hierarchy (modelled on urllib3.exceptions).

Everything mpdl raises on purpose derives from MpdlError, so a launcher can catch one class.
"""

from typing import Optional

from .messages import FailKind


class MpdlError(Exception):
    """Base class of every error mpdl raises on purpose."""


class ManifestError(MpdlError, ValueError):
    """The manifest is invalid: nothing was written. The message is one line naming the field."""


class UsageError(MpdlError, ValueError):
    """An option has a value mpdl cannot use (a bad size, a negative count...)."""


class FetchError(MpdlError):
    """An HTTP fetch failed; ``kind`` says what may still succeed (see messages.FailKind)."""

    def __init__(self, message: str, kind: FailKind = FailKind.RETRY,
                 retry_after: Optional[float] = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.retry_after = retry_after
        self.fetched = 0  # network bytes the failed attempt had read and not reported


class IntegrityError(FetchError):
    """Bytes arrived but do not match what the manifest declares (hash, size, zlib stream)."""

    def __init__(self, message: str, kind: FailKind = FailKind.CORRUPT) -> None:
        super().__init__(message, kind)


class WriterError(MpdlError):
    """The writer process could not write or finalize a file (disk full, permissions...)."""


class JournalError(MpdlError):
    """The journal could not be written (disk full, read-only): the run stops, naming it."""
