"""Issue 18: CPU per object on a batch's lean path (net/batchfetch._fetch_one over
net/leanget.Lean), in one process and thread, against perf's nginx serving the ``small``
scenario: 3,000 objects, three rounds.

python perf/results/writer/reqcpu.py TREE   (TREE: a checkout whose mpdl/ is measured)
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
sys.path.insert(0, sys.argv[1])

from perf import servers  # noqa: E402

from mpdl.net.batchfetch import _fetch_one  # noqa: E402
from mpdl.net.fetch import Cursor, Meter  # noqa: E402
from mpdl.net.http import make_pool  # noqa: E402
from mpdl.net.leanget import Lean  # noqa: E402
from mpdl.options import Options  # noqa: E402

CACHE = Path("/root/.cache/mpdl-perf/full")


def main() -> None:
    meta = json.loads((CACHE / "small" / "scenario.json").read_text())
    files = meta["manifest"]["files"][:3000]
    with tempfile.TemporaryDirectory() as tmp, servers.nginx(CACHE, Path(tmp) / "nginx") as web:
        lean = Lean(make_pool(Options(proxy=""), connections=1))
        ring = types.SimpleNamespace(fills=[0])
        buffer = memoryview(bytearray(1 << 20))
        for _ in range(3):
            started = time.process_time()
            for item in files:
                url, size = web.url + "small/" + item["url"], item["size"]
                _fetch_one(url, size, True, lean.pool, buffer[:size], Meter(), Cursor(size),
                           None, None, ring, 0, 0, lean)  # type: ignore[arg-type]
            spent = time.process_time() - started
            print(f"{sys.argv[1]}: {spent / len(files) * 1e6:.1f} us CPU per object", flush=True)
        lean.close_all()


if __name__ == "__main__":
    main()
