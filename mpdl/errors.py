"""The exceptions mpdl raises, as one hierarchy (modelled on urllib3.exceptions).

Everything mpdl raises on purpose derives from MpdlError, so a launcher can catch one class.
"""


class MpdlError(Exception):
    """Base class of every error mpdl raises on purpose."""


class ManifestError(MpdlError, ValueError):
    """The manifest is invalid: nothing was written. The message is one line naming the field."""


class UsageError(MpdlError, ValueError):
    """An option has a value mpdl cannot use (a bad size, a negative count...)."""


class FetchError(MpdlError):
    """An HTTP fetch failed. ``retry`` says whether another attempt may succeed."""

    def __init__(self, message: str, *, retry: bool = True, next_mirror: bool = False) -> None:
        super().__init__(message)
        self.retry = retry
        self.next_mirror = next_mirror


class RangesIgnored(FetchError):
    """The server answered a Range request with the whole object (200): stream it once instead."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retry=False)


class IntegrityError(FetchError):
    """Bytes arrived but do not match what the manifest declares (hash, size, zlib stream)."""


class WriterError(MpdlError):
    """The writer process could not write or finalize a file (disk full, permissions...)."""
