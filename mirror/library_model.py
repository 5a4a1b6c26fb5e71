"""What a model file's page in the library adds: a preview, its trigger words and the images that used it.

``model_extras(conn, file)`` for a file of kind ``model`` on library.sqlite's connection (which has
the mirror attached as ``civitai``): the preview is the file's ``<name>.preview.png`` sidecar (read
from disk, shrunk to a thumbnail) or else the matched version's first preview saved by
``crawl --images``; trigger words are the matched version's ``trainedWords``; ``used_by`` are the
library's images whose resources resolved to this file or to its Civitai version.

``overview_preview(conn, file_id)`` is the same choice for a row of the library overview, as the
sidecar's file id or the saved preview's ``local_path`` (the plugin serves both through
``/-/civitai-images/``); ``preview_sidecar_path`` is what that route may serve for a file id.
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


def _sidecars(conn: sqlite3.Connection, path: str) -> list[tuple[int, str]]:
    """(id, path) of the preview sidecars the scan found beside a model file, in suffix order."""
    stem = str(Path(path).with_suffix(""))
    found = []
    for suffix in _PREVIEW_SUFFIXES:
        row = conn.execute("SELECT id, path FROM files WHERE path = ? AND coalesce(missing, 0) = 0",
                           (stem + suffix,)).fetchone()
        if row is not None:
            found.append((row[0], row[1]))
    return found


def preview_sidecar_path(conn: sqlite3.Connection, file_id: int) -> str | None:
    """The path of file ``file_id`` when it is a preview sidecar the latest scan found, else None."""
    row = conn.execute("SELECT path FROM files WHERE id = ? AND kind = 'sidecar' "
                       "AND coalesce(missing, 0) = 0", (file_id,)).fetchone()
    return row[0] if row and row[0].lower().endswith(_PREVIEW_SUFFIXES) else None


def _saved_preview(conn: sqlite3.Connection, version_id: int) -> str | None:
    """``local_path`` of the version's first preview image saved by ``crawl --images``."""
    saved = conn.execute(
        "SELECT local_path FROM civitai.images WHERE version_id = ? AND local_path IS NOT NULL "
        "AND coalesce(type, 'image') = 'image' ORDER BY position, id LIMIT 1", (version_id,)).fetchone()
    return saved[0] if saved else None


def overview_preview(conn: sqlite3.Connection, file_id: int) -> tuple[str, str | int] | None:
    """A model file's thumbnail for the overview: ``("sidecar", id)`` or ``("saved", local_path)``."""
    row = conn.execute("SELECT path, kind FROM files WHERE id = ?", (file_id,)).fetchone()
    if row is None or row[1] != "model":
        return None
    sidecars = _sidecars(conn, row[0])
    if sidecars:
        return "sidecar", sidecars[0][0]
    try:
        match = conn.execute("SELECT version_id FROM matches WHERE file_id = ?", (file_id,)).fetchone()
        if match and match[0] is not None and _attached(conn):
            saved = _saved_preview(conn, match[0])
            return ("saved", saved) if saved else None
    except sqlite3.Error:  # a library not matched yet, or a mirror without images
        pass
    return None


def _sidecar_preview(conn: sqlite3.Connection, path: str) -> str | None:
    for _, sidecar in _sidecars(conn, path):
        try:
            if Path(sidecar).stat().st_size > _MAX_PREVIEW_BYTES:
                continue
            with Image.open(sidecar) as image:
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
                out["preview_saved"] = _saved_preview(conn, version_id)
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
