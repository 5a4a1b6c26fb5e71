"""Where things go in a dump folder, and the bytes of a model file. Pure: no I/O here.

Layout (dumptool's)::

    DIR/12340000/12345678.json            model 12345678 (block = id // 10000 * 10000, 8 digits)
    DIR/12340000/12345678.<UTC>.json      a worse answer kept beside the good copy (never clobber)
    DIR/downloaded.txt  id, host, UTC     saved models
    DIR/notfound.txt    id, hosts, UTC    every host said 404
    DIR/errors.txt      id, reason, UTC   ids whose latest attempt failed
    DIR/crawled.txt     id, UTC           ids covered by --crawl
    DIR/missing.txt     id                json on disk but not in downloaded.txt (rewritten every run)
    DIR/history.txt     id, reason, side file, UTC   answers kept beside the good copy
    DIR/images/<block>/<image id>.<ext>   preview images (crawl --images), logs in DIR/images/

Ids in names are zero-padded to 8 digits (longer once ids pass 99,999,999); so is the id that starts
every log line. The patterns below are the one definition of these names: the mirror's build
reads the dump through them.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import orjson

LOGS = ("downloaded.txt", "notfound.txt", "errors.txt", "crawled.txt", "missing.txt")
BLOCK_DIR = re.compile(r"^\d{8,}$")
MODEL_FILE = re.compile(r"^(\d{8,})\.json$")
# a side file: the UTC stamp of when it was kept, "-N" when two are kept in the same second
SIDE_FILE = re.compile(r"^(\d{8,})\.(\d{8}T\d{6}Z)(?:-(\d+))?\.json$")


def pad(n: int) -> str:
    return f"{n:08d}"


def block_of(n: int) -> str:
    return pad(n // 10000 * 10000)


def model_path(root: Path, model_id: int) -> Path:
    return root / block_of(model_id) / f"{pad(model_id)}.json"


def image_path(root: Path, image_id: int, ext: str) -> Path:
    return root / "images" / block_of(image_id) / f"{pad(image_id)}.{ext}"


def dumps(data: object) -> bytes:
    """Deterministic pretty JSON (Civitai's key order kept), so re-crawls give the same bytes.

    A string with a lone surrogate (valid JSON as the escape ``\\ud83d``, received that way) is kept
    as that escape: orjson refuses to write it, so such a record is written by the standard
    library, in the same layout."""
    try:
        return orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n"
    except orjson.JSONEncodeError:
        text = json.dumps(data, ensure_ascii=False, indent=2, allow_nan=False)
        return _LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text).encode("utf-8") + b"\n"


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # in a str from JSON, only a lone one is left


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def loads_lone_surrogates(body: bytes) -> object:
    """Parse JSON that orjson refuses for a lone surrogate escape (``"\\ud83d"``) with the standard
    library, which keeps it; NaN/Infinity, bad UTF-8 and nesting too deep raise ValueError."""
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except RecursionError:
        raise ValueError("JSON nested too deep") from None
