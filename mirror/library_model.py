"""What a model file's page in the library adds: a preview, its trigger words and the images that used it.

``model_extras(conn, file)`` for a file of kind ``model`` on library.sqlite's connection (which has
the mirror attached as ``civitai``): the preview is the file's ``<name>.preview.png`` sidecar (read
from disk, shrunk to a thumbnail) or else the matched version's first preview saved by
``crawl --images``; trigger words are the matched version's ``trainedWords``; ``used_by`` are the
library's images whose resources resolved to this file or to its Civitai version.
"""
from __future__ import annotations

import base64
import io
import json
import sqlite3
from pathlib import Path
from typing import Any

from PIL import Image

_PREVIEW_SUFFIXES = (".preview.png", ".preview.jpg", ".preview.jpeg", ".preview.webp")
_MAX_PREVIEW_BYTES = 20 * 1024 * 1024


def _sidecar_preview(conn: sqlite3.Connection, path: str) -> str | None:
    stem = str(Path(path).with_suffix(""))
    for suffix in _PREVIEW_SUFFIXES:
        row = conn.execute("SELECT path FROM files WHERE path = ? AND coalesce(missing, 0) = 0",
                           (stem + suffix,)).fetchone()
        if row is None:
            continue
        try:
            if Path(row[0]).stat().st_size > _MAX_PREVIEW_BYTES:
                continue
            with Image.open(row[0]) as image:
                image.thumbnail((256, 256))
                out = io.BytesIO()
                image.convert("RGB").save(out, format="JPEG", quality=85)
        except (OSError, ValueError, Image.DecompressionBombError):
            continue
        return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode("ascii")
    return None


def _attached(conn: sqlite3.Connection) -> bool:
    return any(row[1] == "civitai" for row in conn.execute("PRAGMA database_list"))


def model_extras(conn: sqlite3.Connection, file: dict[str, Any], version_id: int | None) -> dict:
    """Preview, trigger words and the images that used a model file (see the module docstring)."""
    out: dict[str, Any] = {"preview": _sidecar_preview(conn, file["path"]), "preview_saved": None,
                           "trigger_words": [], "used_by": []}
    if version_id is not None and _attached(conn):
        try:
            row = conn.execute("SELECT trainedWords FROM civitai.model_versions WHERE id = ?",
                               (version_id,)).fetchone()
            words = json.loads(row[0]) if row and row[0] else []
            out["trigger_words"] = [w for w in words if isinstance(w, str)]
            if out["preview"] is None:
                saved = conn.execute(
                    "SELECT local_path FROM civitai.images WHERE version_id = ? AND local_path IS NOT NULL "
                    "AND coalesce(type, 'image') = 'image' ORDER BY position, id LIMIT 1",
                    (version_id,)).fetchone()
                out["preview_saved"] = saved[0] if saved else None
        except (sqlite3.Error, ValueError):
            pass
    try:
        out["used_by"] = [{"id": r[0], "path": r[1], "weight": r[2]} for r in conn.execute(
            "SELECT DISTINCT f.id, f.path, r.weight FROM resource_matches rm "
            "JOIN resources r ON r.id = rm.resource_id JOIN files f ON f.id = r.file_id "
            "WHERE rm.local_file_id = ? OR (? IS NOT NULL AND rm.version_id = ?) "
            "ORDER BY f.path LIMIT 200", (file["id"], version_id, version_id))]
    except sqlite3.Error:  # a library not extracted yet
        pass
    return out
