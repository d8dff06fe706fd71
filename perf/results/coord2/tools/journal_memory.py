"""The journal's memory for 100,000 finished files (tracemalloc): recorded by this run, and read
back by the next.

    python3 perf/results/coord2/tools/journal_memory.py REPO
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
import tracemalloc
from pathlib import Path

sys.path.insert(0, sys.argv[1])
from mpdl.disk.journal import Journal  # noqa: E402
from mpdl.formats.manifest import parse_manifest  # noqa: E402

N = 100_000
T0 = 1_700_000_000_000_000_000

manifest = parse_manifest({"format": "mpdl/1", "base_urls": ["http://127.0.0.1:9/"], "files": [
    {"path": f"d/{i:06d}", "size": 4, "hash": "md5:" + hashlib.md5(b"%d" % i).hexdigest(),
     "url": f"o/{i}"} for i in range(N)]})
with tempfile.TemporaryDirectory() as tmp:
    journal = Journal(Path(tmp))
    tracemalloc.start()
    for i, entry in enumerate(manifest.files):
        journal._finished(entry, T0 + i)
    journal._append({"done": [[e.path, e.identity, T0 + i] for i, e in enumerate(manifest.files)]})
    journal.close()
    print(f"this run's records {tracemalloc.get_traced_memory()[0] / 2**20:.2f} MiB")
    tracemalloc.stop()
    tracemalloc.start()
    again = Journal(Path(tmp))
    current, peak = tracemalloc.get_traced_memory()
    print(f"read back {current / 2**20:.2f} MiB (peak {peak / 2**20:.2f})")
