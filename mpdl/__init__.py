"""mpdl: a multiprocess shared-memory downloader.

manifest -> plan -> tasks -> workers -> ring slots -> writer -> verified files
"""

from .api import Result, download, run
from .control import Control
from .errors import (ChildrenKeepDying, DiskError, FetchError, ManifestError, MpdlError,
                     NotEnoughSpace, RingTooSmall, RunStopped, UsageError)
from .manifest import Manifest, load_manifest
from .preview import Preview, plan
from .progress import ProgressEvent
from .verify import Report, Verdict, repair, verify

__all__ = ["run", "download", "Result", "Control", "plan", "Preview", "verify", "repair",
           "Report", "Verdict", "Manifest", "load_manifest",
           "ProgressEvent", "MpdlError", "ManifestError", "UsageError", "FetchError",
           "RunStopped", "DiskError", "ChildrenKeepDying", "NotEnoughSpace", "RingTooSmall"]
__version__ = "0.1.0"
