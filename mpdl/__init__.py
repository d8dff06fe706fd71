"""mpdl: a multiprocess shared-memory downloader.

manifest -> plan -> tasks -> workers -> ring slots -> writer -> verified files
"""

from .api import Result, download, run
from .errors import (ChildrenKeepDying, DiskError, FetchError, ManifestError, MpdlError,
                     NotEnoughSpace, RingTooSmall, RunStopped, UsageError)
from .manifest import Manifest, load_manifest
from .progress import ProgressEvent
from .verify import Report, Verdict, repair, verify

__all__ = ["run", "download", "Result", "verify", "repair", "Report", "Verdict", "Manifest",
           "load_manifest",
           "ProgressEvent", "MpdlError", "ManifestError", "UsageError", "FetchError",
           "RunStopped", "DiskError", "ChildrenKeepDying", "NotEnoughSpace", "RingTooSmall"]
__version__ = "0.1.0"
