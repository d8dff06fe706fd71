"""mpdl: a multiprocess shared-memory downloader.

manifest -> plan -> tasks -> workers -> ring slots -> writer -> verified files

The subpackages follow that flow: formats (the manifest read and checked) -> core (the plan,
then every decision of the run, without I/O) -> procs (the worker processes, the shared ring)
with net (HTTP into ring slots) -> disk (the writer process, the journal) -> verified files.
The public API is here (api, preview, verify, options, progress, errors).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (ChildrenKeepDying, DiskError, FetchError, ManifestError, MpdlError,
                     NotEnoughSpace, RingTooSmall, RunStopped, UsageError)

if TYPE_CHECKING:
    from .api import run
    from .downloads import download
    from .result import Result
    from .procs.control import Control
    from .formats.manifest import Manifest, load_manifest
    from .preview import Preview, plan
    from .progress import ProgressEvent
    from .verify import Report, Verdict, repair, verify

# Imported on first use, so ``import mpdl`` and ``python -m mpdl --help`` load only what they
# use (the start-up is the command's first cost). Each value: the module under mpdl.
_LAZY = {"run": "api", "download": "downloads", "Result": "result", "Control": "procs.control",
         "plan": "preview", "Preview": "preview", "Manifest": "formats.manifest",
         "load_manifest": "formats.manifest", "ProgressEvent": "progress", "Report": "verify",
         "Verdict": "verify", "repair": "verify", "verify": "verify"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__all__ = ["run", "download", "Result", "Control", "plan", "Preview", "verify", "repair",
           "Report", "Verdict", "Manifest", "load_manifest",
           "ProgressEvent", "MpdlError", "ManifestError", "UsageError", "FetchError",
           "RunStopped", "DiskError", "ChildrenKeepDying", "NotEnoughSpace", "RingTooSmall"]
__version__ = "0.1.0"
