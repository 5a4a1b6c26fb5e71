"""Reading the crawler's dump folder: which files it holds, and the snapshots in each.

The dump holds ``DIR/12340000/12345678.json`` model answers and never-clobber side files
``DIR/12340000/12345678.<UTC>.json`` (names as ``crawler.layout`` writes them). Documents are
classified by ``parse_document``, by what they hold rather than where they lie:

* a model (``GET /models/{id}``, or one list item): a ``model`` snapshot;
* a list page (``{"items": [...]}``) or a JSON array: one snapshot per model inside;
* a model version (``GET /model-versions/{id}`` / by-hash): a ``version`` snapshot of its model;
* an error answer (``{"error": "No model with id N"}``, any ``{"error": ...}`` or bare string body in a
  side file, including ``<id>.<UTC>-N.json``) saved beside a good copy: a ``notfound`` snapshot of
  the model its file name gives;
* anything else (enums, other sites' shapes) is skipped with a reason; broken JSON raises
  ValueError.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import orjson

from crawler.clock import utc_iso
from crawler.layout import MODEL_FILE, SIDE_FILE, loads_lone_surrogates

log = logging.getLogger(__name__)


@dataclass
class Snapshot:
    model_id: int
    kind: str  # model | version | notfound
    fetched_at: str
    path: str
    sha: str
    text: str | bytes  # the answer's JSON (bytes straight from the file or orjson; str from the db)
    data: Any = None  # parsed dict (None for notfound)



def side_stamp_to_iso(stamp: str) -> str:
    """``20261122T010203Z`` -> ``2026-11-22T01:02:03Z``."""
    return f"{stamp[0:4]}-{stamp[4:6]}-{stamp[6:8]}T{stamp[9:11]}:{stamp[11:13]}:{stamp[13:15]}Z"



def _is_model(doc: Any) -> bool:
    return isinstance(doc, dict) and isinstance(doc.get("id"), int) and isinstance(
        doc.get("modelVersions"), list)


def _is_version(doc: Any) -> bool:
    return (isinstance(doc, dict) and isinstance(doc.get("id"), int)
            and isinstance(doc.get("modelId"), int)
            and ("files" in doc or isinstance(doc.get("model"), dict)))



def iter_dump_files(dump: Path) -> Iterator[tuple[str, os.stat_result]]:
    """Every ``*.json`` under the dump except the images archive, as (relative path, stat)."""
    stack = [dump]
    found: list[tuple[str, os.stat_result]] = []
    cut = len(os.path.join(str(dump), ""))  # entry.path[cut:] is the relative path (no relpath)
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError as exc:  # unreadable folder: report, go on
            log.warning("cannot read %s: %s", folder, exc)
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=False):
                if folder == dump and entry.name == "images":
                    continue
                stack.append(Path(entry.path))
            elif entry.name.endswith(".json") and entry.is_file():
                found.append((entry.path[cut:], entry.stat()))
    found.sort(key=lambda item: item[0])
    yield from found


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _loads(raw: bytes) -> tuple[Any, bytes]:
    """(document, its JSON as valid UTF-8). A body with a lone surrogate escape (``"\\ud83d"``, an emoji
    cut in half upstream) is valid JSON the crawler keeps as received; SQLite text cannot hold the
    surrogate, so the mirror's copy has U+FFFD in its place (the dump file stays as it was)."""
    try:
        return orjson.loads(raw), raw
    except orjson.JSONDecodeError as exc:
        if "surrogate" not in str(exc):
            raise ValueError(f"broken JSON: {exc}") from None
    try:
        doc = loads_lone_surrogates(raw)
    except ValueError as exc:
        raise ValueError(f"broken JSON: {exc}") from None
    text = _LONE_SURROGATE.sub("\ufffd", json.dumps(doc, ensure_ascii=False))
    return orjson.loads(text), text.encode("utf-8")


def parse_document(raw: bytes, rel_path: str, mtime: float) -> tuple[list[Snapshot], str | None]:
    """Bytes of one dump file -> (snapshots, skip reason). Raises ValueError on broken JSON."""
    whole_sha = hashlib.blake2b(raw, digest_size=16).hexdigest()
    doc, raw = _loads(raw)
    name = os.path.basename(rel_path)
    side = SIDE_FILE.match(name)
    main = MODEL_FILE.match(name)
    fetched_at = side_stamp_to_iso(side.group(2)) if side else utc_iso(mtime)
    name_id = int((side or main).group(1)) if (side or main) else None

    if _is_model(doc):
        return [Snapshot(doc["id"], "model", fetched_at, rel_path, whole_sha, raw, doc)], None
    if _is_version(doc):
        return [Snapshot(doc["modelId"], "version", fetched_at, rel_path, whole_sha, raw, doc)], None
    items = doc.get("items") if isinstance(doc, dict) else doc if isinstance(doc, list) else None
    if isinstance(items, list):
        snaps = []
        for item in items:
            if _is_model(item) or _is_version(item):
                text = orjson.dumps(item, option=orjson.OPT_SORT_KEYS)
                sha = hashlib.blake2b(text, digest_size=16).hexdigest()
                kind = "model" if _is_model(item) else "version"
                model_id = item["id"] if kind == "model" else item["modelId"]
                snaps.append(Snapshot(model_id, kind, fetched_at, rel_path, sha, text, item))
        if snaps:
            return snaps, None
        return [], "a list without Civitai models or versions"
    if name_id is not None and (
            (isinstance(doc, dict) and "error" in doc and (side or len(doc) <= 3))
            or (side and (doc is None or isinstance(doc, str)))):
        # a 404 body: the crawler keeps it beside the good copy on a refresh (history.txt)
        return [Snapshot(name_id, "notfound", fetched_at, rel_path, whole_sha, raw)], None
    return [], "not a Civitai model, model version or list page"
