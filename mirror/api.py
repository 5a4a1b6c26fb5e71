"""Civitai's JSON shapes rebuilt from civitai.sqlite (pure functions over a sqlite3 connection).

Used by the Datasette plugin (mirror.plugin) for the offline Civitai-compatible routes. The mirror
answers for models that are Archived or gone upstream too: that is what it is for.
"""
from __future__ import annotations

import sqlite3
from typing import Any
from urllib.parse import urlencode

from mirror.answers import model_answer, version_answer
from mirror.hashes import normalize_hash
from mirror.lookup import files_for_sha256, lookup_with_conn

MAX_ID = 2147483647
MAX_BY_HASH = 100
MAX_PAGE = MAX_ID  # (page - 1) * limit stays far inside SQLite's 64-bit OFFSET
MAX_LIST_VALUES = 100  # ids=, types=: one SQL parameter each


class BadRequest(ValueError):
    """Bad input: answered with 400 and ``{"error": message}``."""


def parse_id(text: str, what: str = "id") -> int:
    """Civitai's rule: a positive int4, else 400."""
    try:
        value = int(str(text).strip())
    except ValueError:
        raise BadRequest(f"{what} must be a positive integer, not {text!r}") from None
    if value <= 0 or value > MAX_ID:
        raise BadRequest(f"{what} must be between 1 and {MAX_ID}")
    return value


# The answers themselves are assembled from the rows in mirror.answers.
model_response = model_answer
version_response = version_answer


def version_by_hash(conn: sqlite3.Connection, value: str) -> dict[str, Any] | None:
    """``GET /api/v1/model-versions/by-hash/{hash}`` through the one lookup function."""
    if not value or not value.strip():
        raise BadRequest("hash is required")
    result = lookup_with_conn(conn, value)
    if result.get("error") == "not a hexadecimal hash":
        raise BadRequest(f"not a hash: {value!r}")
    if result["version_id"] is None:
        return None
    return version_response(conn, result["version_id"], result["file_id"])


def versions_by_hashes(conn: sqlite3.Connection, body: Any) -> list[dict[str, Any]]:
    """``POST /api/v1/model-versions/by-hash``: ≤100 SHA256 strings; one answer per matched file."""
    if not isinstance(body, list):
        raise BadRequest("body must be a JSON array of SHA256 hashes")
    if len(body) > MAX_BY_HASH:
        raise BadRequest(f"at most {MAX_BY_HASH} hashes per request")
    out = []
    seen: set[int] = set()
    for value in body:
        if not isinstance(value, str) or len(normalize_hash(value)) != 64:
            raise BadRequest(f"every hash must be a 64-character SHA256, not {value!r}")
        for file_id, version_id, _model_id in files_for_sha256(conn, value):
            if file_id in seen:
                continue
            seen.add(file_id)
            answer = version_response(conn, version_id, file_id)
            if answer is not None:
                out.append(answer)
    return out


def _list_arg(text: str, name: str) -> list[str]:
    values = [part.strip() for part in text.split(",") if part.strip()]
    if len(values) > MAX_LIST_VALUES:
        raise BadRequest(f"at most {MAX_LIST_VALUES} {name} per request")
    return values


def models_list(conn: sqlite3.Connection, args: dict[str, str], base_url: str = "") -> dict:
    """``GET /api/v1/models``: ``ids``, ``types``, ``username``, ``baseModels``, ``limit``, ``page``."""
    try:
        limit = int(args.get("limit", 100))
        page = int(args.get("page", 1))
    except ValueError:
        raise BadRequest("limit and page must be integers") from None
    if not 0 <= limit <= 100:
        raise BadRequest("limit must be between 0 and 100")
    if not 1 <= page <= MAX_PAGE:
        raise BadRequest(f"page must be between 1 and {MAX_PAGE}")
    where, params = [], []
    if args.get("ids"):
        ids = [parse_id(part, "ids") for part in _list_arg(args["ids"], "ids")]
        where.append(f"id IN ({','.join('?' * len(ids))})")
        params.extend(ids)
    if args.get("types"):
        types = _list_arg(args["types"], "types")
        where.append(f"type IN ({','.join('?' * len(types))})")
        params.extend(types)
    if args.get("username"):
        where.append("username = ?")
        params.append(args["username"])
    if args.get("baseModels"):
        where.append("EXISTS (SELECT 1 FROM model_versions v WHERE v.model_id = models.id "
                     "AND v.base_model = ?)")
        params.append(args["baseModels"])
    sql = "SELECT id FROM models"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY id DESC LIMIT ? OFFSET ?"
    ids = [r[0] for r in conn.execute(sql, [*params, limit + 1, (page - 1) * limit])]
    has_more = len(ids) > limit
    items = [m for m in (model_response(conn, i) for i in ids[:limit]) if m is not None]
    metadata: dict[str, Any] = {"currentPage": page, "pageSize": limit}
    if has_more:
        query = urlencode({**args, "page": str(page + 1)})
        metadata["nextPage"] = f"{base_url}/api/v1/models?{query}"
    return {"items": items, "metadata": metadata}
