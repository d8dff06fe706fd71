"""``mpdl.download``: one URL (or several) into files, each probed, then fetched in this
process when small (mpdl/net/direct.py) or by a run (``mpdl.run``) otherwise.

Rule: nothing of a run (mpdl/api.py, its scheduler, processes and disk modules) is imported
before the probes are on the wire: the command's start-up up to its first request is what a
user waits on before any byte (perf/startup.py measures it), and a small file fetched in this
process never needs them at all.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import UsageError
from .net import direct, urls
from .options import Options
from .result import Result

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .formats.hashing import HashSpec
    from .options import RunOptions
    from .procs.control import Control
    from .progress import ProgressCallback


def download(url: str, dest: str | os.PathLike, *, checksum: str | HashSpec | None = None,
             mirrors: Sequence[str] = (), progress: ProgressCallback | None = None,
             control: Control | None = None, **options: Unpack[RunOptions]) -> Result:
    """Fetch one URL into the file ``dest``, checked against ``checksum`` when given
    ("sha256:HEX", aria2c's "sha-256=HEX", or pip's ``URL#sha256=HEX``; sha1, sha256, sha384,
    sha512, md5 and the xxh family). ``mirrors`` are other URLs of the same bytes, tried when
    the URL fails.

    The file appears at ``dest`` only once complete and verified (a wrong checksum leaves no
    file there, and nothing beside it); a file already there with the checksum is not fetched
    again (no request at all). A failed or interrupted download keeps its durable bytes in
    ``.NAME.mpdl`` beside ``dest``, and the same call resumes from them. Under ``min_size``
    bytes (default direct.DEFAULT_MIN_SIZE; MPDL_MIN_SIZE) it runs in this process, without
    worker processes or shared memory; ``options`` as for ``run``.
    """
    target = Path(dest)
    if target.is_dir():
        raise UsageError(f"{dest} is a folder; give the file to write")
    item = urls.wanted(url, checksum, mirrors, out=target.name)
    return download_all([item], target.parent, state_dir=target.parent / f".{target.name}.mpdl",
                        progress=progress, control=control, **options)


def download_all(items: Sequence[urls.Wanted], folder: str | os.PathLike, *, state_dir: Path,
                 progress: ProgressCallback | None = None, control: Control | None = None,
                 **options: Unpack[RunOptions]) -> Result:
    """Fetch ``items`` (urls.Wanted) into ``folder``: those in place by their checksum are
    skipped without a request, the rest probed into a manifest (urls.plan) and run with a
    state folder that goes once the run ends with nothing to resume."""
    started = time.monotonic()
    if Options.from_env(**options).min_size is None:  # URL downloads: small ones in-process
        options["min_size"] = direct.DEFAULT_MIN_SIZE
    opts = Options.from_env(**options)
    result = Result()
    with direct.lending(opts) as pool:  # a small file comes on its probe's connection
        planned = urls.plan(items, Path(folder), pool, opts)
        if planned.manifest is not None:
            # The run's modules come now, once the probes are out (the module's rule).
            from .api import run
            # keep_removed: a folder of downloads is not an install; its other files stay.
            result = run(planned.manifest, folder, progress=progress, state_dir=state_dir,
                         keep_state=False, keep_removed=True, streamed=planned.streamed,
                         redirects=planned.redirects, control=control, **options)
            if not any(Path(state_dir, "staging").glob("*")):  # nothing a re-run resumes
                shutil.rmtree(state_dir, ignore_errors=True)
    result.skipped[:0] = planned.skipped
    result.elapsed = time.monotonic() - started
    return result
