"""A model's and a version's Civitai answer, reassembled from civitai.sqlite's rows.

The one place that turns rows back into Civitai's JSON shapes: ``model_answer`` is
``GET /api/v1/models/{id}``, ``version_answer`` is ``GET /api/v1/model-versions/{id}`` (and the
by-hash answers). The API routes (mirror.api) call these.

Each thing is stored once, as the community archive does: ``models.data`` is the model without
``modelVersions``, ``model_versions.data`` the version without ``files`` and ``model`` (its files
are ``model_files`` rows, ``position`` their order; NULL for a file only older answers listed).
A version whose files cannot all be rows (a file without an id) keeps its ``files`` in its data, as
do versions written before this layout. ``model_snapshots.data`` of the answer the rows give back
exactly is ``ANSWER_IN_ROWS``; ``snapshot_from_rows`` turns it back into the answer when a newer
one supersedes it. Every other snapshot (a superseded answer, a 404 body) is its JSON compressed
with zlib (``pack_snapshot``), a BLOB; ``snapshot_json`` gives the JSON back (also the SQL function
``snapshot_json(data)`` in ``serve``). Text JSON, as mirrors built before kept it, reads the same.
"""
from __future__ import annotations

import sqlite3
import zlib
from typing import Any

import orjson


ANSWER_IN_ROWS = '{"$answer":"rows"}'  # model_snapshots.data: this answer is the current rows


def pack_snapshot(text: bytes | str) -> bytes:
    """``model_snapshots.data`` of an answer the rows do not stand for: its JSON, zlib-compressed."""
    return zlib.compress(text.encode() if isinstance(text, str) else text, 6)


def snapshot_json(data: bytes | str | None) -> str | None:
    """The JSON text a ``model_snapshots.data`` value holds (``ANSWER_IN_ROWS`` as it is: the
    model's answer is ``model_answer``). Serve registers it as the SQL function ``snapshot_json``."""
    if isinstance(data, bytes):
        return zlib.decompress(data).decode()
    return data


def files_as_rows(version: dict) -> bool:
    """Whether a version's ``files`` are stored as ``model_files`` rows only (each has an id)."""
    files = version.get("files")
    return isinstance(files, list) and all(
        isinstance(f, dict) and type(f.get("id")) is int for f in files)


def stored_version(version: dict) -> dict:
    """What ``model_versions.data`` holds of a version: no ``model``, no ``files`` when rows."""
    rows = files_as_rows(version)
    if not rows and "model" not in version:
        return version
    return {k: v for k, v in version.items() if k != "model" and not (rows and k == "files")}


def with_files(version: dict, files: list[dict]) -> dict:
    """A stored version and its files rows (in order) as Civitai answered it."""
    if "files" in version:  # kept in the data (written before this layout, or files without ids)
        return version
    return {**version, "files": files}


def _listed_files(conn: sqlite3.Connection, column: str, key: int) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    try:
        listed = conn.execute(
            f"SELECT version_id, data FROM model_files WHERE {column} = ? "
            "AND position IS NOT NULL ORDER BY version_id, position", (key,)).fetchall()
    except sqlite3.OperationalError:  # a mirror built before model_files.position: files in data
        return out
    for version_id, data in listed:
        out.setdefault(version_id, []).append(orjson.loads(data))
    return out


def _model_brief(model_data: dict, mode: str | None) -> dict[str, Any]:
    brief = {"name": model_data.get("name"), "type": model_data.get("type"),
             "nsfw": model_data.get("nsfw"), "poi": model_data.get("poi")}
    if model_data.get("minor") is not None:
        brief["minor"] = model_data.get("minor")
    if mode:
        brief["mode"] = mode
    return brief


def model_answer(conn: sqlite3.Connection, model_id: int) -> dict[str, Any] | None:
    """``GET /api/v1/models/{id}``: the model with its current versions in Civitai's order."""
    row = conn.execute("SELECT data FROM models WHERE id = ?", (model_id,)).fetchone()
    if row is None:
        return None
    model = orjson.loads(row[0])
    files = _listed_files(conn, "model_id", model_id)
    versions = []
    for version_id, data in conn.execute(
            "SELECT id, data FROM model_versions WHERE model_id = ? AND _archived = 0 "
            "ORDER BY position, id DESC", (model_id,)):
        version = orjson.loads(data)
        version.pop("model", None)
        versions.append(with_files(version, files.get(version_id, [])))
    model["modelVersions"] = versions
    return model


def snapshot_from_rows(conn: sqlite3.Connection, model_id: int) -> bytes | None:
    """The answer a model's ``ANSWER_IN_ROWS`` snapshot stands for, as JSON in the snapshots' own
    form (keys sorted: the same text, hence the same ``sha``, as when it was read); None: no rows."""
    model = model_answer(conn, model_id)
    return None if model is None else orjson.dumps(model, option=orjson.OPT_SORT_KEYS)


def version_answer(conn: sqlite3.Connection, version_id: int,
                   file_id: int | None = None) -> dict[str, Any] | None:
    """``GET /api/v1/model-versions/{id}`` (and by-hash): the version with ``modelId`` and ``model``.

    ``file_id``: the file a hash matched; added to ``files`` when the newest answer no longer lists it
    (an Archived model), so an offline by-hash answer always names the file it found.
    """
    row = conn.execute(
        "SELECT v.data, v.model_id, m.data, m.mode FROM model_versions v "
        "JOIN models m ON m.id = v.model_id WHERE v.id = ?", (version_id,)).fetchone()
    if row is None:
        return None
    version = with_files(orjson.loads(row[0]),
                         _listed_files(conn, "version_id", version_id).get(version_id, []))
    model_data = orjson.loads(row[2])
    out = {"id": version_id, "modelId": row[1]}
    out.update({k: v for k, v in version.items() if k not in ("id", "modelId", "model")})
    out["model"] = {**_model_brief(model_data, row[3]), **(version.get("model") or {})}
    if row[3]:
        out["model"]["mode"] = row[3]
    files = list(out.get("files") or [])
    if file_id is not None and not any(f.get("id") == file_id for f in files if isinstance(f, dict)):
        extra = conn.execute("SELECT data FROM model_files WHERE id = ?", (file_id,)).fetchone()
        if extra:
            files.append(orjson.loads(extra[0]))
    out["files"] = files
    return out
