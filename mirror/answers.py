"""A model's and a version's Civitai answer, reassembled from civitai.sqlite's rows.

The one place that turns rows back into Civitai's JSON shapes: ``model_answer`` is
``GET /api/v1/models/{id}``, ``version_answer`` is ``GET /api/v1/model-versions/{id}`` (and the
by-hash answers). The API routes (mirror.api) call these; a change in how the rows store the JSON
changes only this module.
"""
from __future__ import annotations

import sqlite3
from typing import Any

import orjson


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
    versions = []
    for (data,) in conn.execute(
            "SELECT data FROM model_versions WHERE model_id = ? AND _archived = 0 "
            "ORDER BY position, id DESC", (model_id,)):
        version = orjson.loads(data)
        version.pop("model", None)
        versions.append(version)
    model["modelVersions"] = versions
    return model


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
    version = orjson.loads(row[0])
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
