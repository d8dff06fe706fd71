"""mpdl.formats.gog on the real GOG samples (tests/support/samples): V1 and V2 depot manifests
convert to mpdl/1 with every file, part and hash, a V2 support file needs its product id, and a
depot's zlib and plain chunks convert alike. Downloads of converted depots, and the CLI's handling
of hostile ones, are tests/integration/test_gog.py's.
"""

from __future__ import annotations

import json
import zlib
from typing import Any

import pytest
from helpers import SAMPLES

from mpdl.errors import ManifestError
from mpdl.formats.gog import SUPPORT_DIR, convert, decode_depot
from mpdl.formats.manifest import parse_manifest


PRODUCT = "1207658930"


BASE = "https://cdn.example/content-system/v2/store/1207658930/"


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def by_path(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["path"]: entry for entry in manifest["files"]}


def test_real_v2_sample() -> None:
    manifest = convert(sample("gog_v2_depot_manifest.json"), [BASE], product_id=PRODUCT)
    parsed = parse_manifest(manifest)
    assert len(parsed.files) == 3 and not parsed.links
    files = by_path(manifest)
    pack = files["CookedPC/pack0.dzip"]  # a backslash path
    assert pack["hash"] == "md5:7da354ae24cee72ee8ef64c42944f530"
    assert pack["size"] == 10485760 + 10485760 + 18954814
    assert pack["parts"][0] == {
        "url": "2e/0d/2e0dc2f5707ec0d88d570240ba918bb2", "offset": 0, "length": 9507293,
        "size": 10485760, "compression": "zlib", "hash": "md5:b013bcdcb851922f7e3357fd7b1828ed"}
    assert parsed.mirrors(pack["parts"][0]["url"]) == (
        BASE + "2e/0d/2e0dc2f5707ec0d88d570240ba918bb2",)
    # One chunk and no file md5: the chunk's md5 is the file's.
    info = files["goggame-1207658930.info"]
    assert info["hash"] == "md5:53318eac2bcdac67c84dfde40e58006d" and "executable" not in info
    # Flagged support and executable: where heroic-gogdl puts it, with the executable bit.
    support = files[f"{SUPPORT_DIR}/{PRODUCT}/galaxy_the_witcher2_ee_3.5.0.26.exe"]
    assert support["executable"] is True
    assert support["hash"] == "md5:143e880fed5ba39967f23785c3cc868b"


def test_real_v2_sample_support_file_needs_a_product_id() -> None:
    with pytest.raises(ManifestError, match=r"depot.items\[2\]: a support file needs"):
        convert(sample("gog_v2_depot_manifest.json"), [BASE])


def test_real_v1_sample() -> None:
    manifest = convert(sample("gog_v1_depot_manifest.json"), [BASE])
    parsed = parse_manifest(manifest)
    assert len(parsed.files) == 3 and not parsed.links
    dzip = by_path(manifest)["CookedPC/dlc_finishers.dzip"]  # the leading "/" dropped
    assert dzip == {"path": "CookedPC/dlc_finishers.dzip", "size": 128,
                    "hash": "md5:4d1daf474729e889b878b9bdef634f76",
                    "parts": [{"url": "1207658930/main.bin", "offset": 13944149457,
                               "length": 128}]}


def test_zlib_and_plain_depots_convert_alike() -> None:
    plain = sample("gog_v2_depot_manifest.json")
    assert decode_depot(zlib.compress(plain)) == decode_depot(plain) == json.loads(plain)
