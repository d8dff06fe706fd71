"""The v1-100k reference: a plain single-threaded Python loop that writes a manifest's files
from memory, with no network, no hashing, no journal and no staging.

It reads the manifest and the served objects its parts name (from the page cache: the harness
warmed them), then for each file makes its folder, opens it, writes its bytes and closes it.
That is the floor for writing many small files from one Python process onto this disk, which
mpdl's time on the same files is measured against.

    python -m perf.writeloop MANIFEST.json --served DIR -o DEST
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def write_all(manifest: dict[str, object], served: Path, dest: Path) -> int:
    """Every file of ``manifest`` (parts without compression) into ``dest``; the bytes written."""
    blobs: dict[str, bytes] = {}
    made: set[Path] = set()
    total = 0
    files = manifest["files"]
    assert isinstance(files, list)
    for entry in files:
        path = dest / entry["path"]
        if path.parent not in made:
            path.parent.mkdir(parents=True, exist_ok=True)
            made.add(path.parent)
        with open(path, "wb") as out:
            for part in entry.get("parts", ()):
                url = part["url"]
                if url not in blobs:
                    blobs[url] = (served / url).read_bytes()
                offset = part.get("offset", 0)
                total += out.write(memoryview(blobs[url])[offset:offset + part["length"]])
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.writeloop",
                                     description="Write a manifest's files from memory in one "
                                                 "plain loop: the v1-100k reference.")
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--served", type=Path, required=True,
                        help="the folder the manifest's relative URLs name files in")
    parser.add_argument("-o", "--output", type=Path, required=True, help="DEST")
    args = parser.parse_args(argv)
    manifest = json.loads(args.manifest.read_text())
    os.makedirs(args.output, exist_ok=True)
    write_all(manifest, args.served, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
