"""Civitai's list endpoints answered from civitai.sqlite: ``/models``, ``/creators``, ``/tags``,
``/images`` and ``/enums`` (pure functions over a sqlite3 connection, called by mirror.plugin).

Paging is Civitai's: ``page`` answers ``metadata.currentPage``/``pageSize`` and ``nextPage``;
``cursor`` (opaque to clients: here the offset of the next item) answers ``nextCursor`` and a
``nextPage`` that carries it. Both keep going until the key is absent.
"""
from __future__ import annotations

import os
import re
import sqlite3
from typing import Any
from urllib.parse import urlencode

from mirror.api import MAX_ID, BadRequest, model_response, parse_id

MAX_PAGE = MAX_ID  # (page - 1) * limit stays far inside SQLite's 64-bit OFFSET
MAX_LIST_VALUES = 100  # ids=, types=, baseModels=: one SQL parameter each
MAX_QUERY_WORDS = 32
#: ``sort`` of ``/models``, Civitai's names; without one the newest first (the mirror's own order)
MODEL_SORTS = {
    "Highest Rated": "COALESCE(thumbsUpCount, 0) DESC, COALESCE(rating, 0) DESC, id DESC",
    "Most Downloaded": "COALESCE(downloadCount, 0) DESC, id DESC",
    "Most Liked": "COALESCE(thumbsUpCount, 0) DESC, id DESC",
    "Most Discussed": "COALESCE(commentCount, 0) DESC, id DESC",
    "Most Collected": "COALESCE(favoriteCount, 0) DESC, id DESC",
    "Most Images": "(SELECT count(*) FROM images i WHERE i.model_id = models.id) DESC, id DESC",
    "Newest": "id DESC",
    "Oldest": "id ASC",
}
_WORD = re.compile(r"\w+")


def _list_arg(text: str, name: str) -> list[str]:
    values = [part.strip() for part in text.split(",") if part.strip()]
    if len(values) > MAX_LIST_VALUES:
        raise BadRequest(f"at most {MAX_LIST_VALUES} {name} per request")
    return values


def _int_arg(args: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    text = args.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise BadRequest(f"{name} must be an integer, not {text!r}") from None
    if not low <= value <= high:
        raise BadRequest(f"{name} must be between {low} and {high}")
    return value


def _bool_arg(args: dict[str, str], name: str) -> bool | None:
    text = (args.get(name) or "").strip().lower()
    if not text:
        return None
    if text in ("true", "1"):
        return True
    if text in ("false", "0"):
        return False
    raise BadRequest(f"{name} must be true or false, not {args[name]!r}")


def fts_query(text: str) -> str | None:
    """A full-text query of the words in ``text`` (each quoted; the last one a prefix, as a
    search box does), or None when it has no words. FTS5 syntax in ``text`` is never interpreted."""
    words = _WORD.findall(text)[:MAX_QUERY_WORDS]
    if not words:
        return None
    return " ".join(f'"{w}"' for w in words) + "*"


def paging(args: dict[str, str], default_limit: int, max_limit: int) -> tuple[int, int, int | None]:
    """(limit, offset, page): ``cursor`` wins over ``page``; page is None when paging by cursor."""
    limit = _int_arg(args, "limit", default_limit, 0, max_limit)
    if args.get("cursor"):
        return limit, _int_arg(args, "cursor", 0, 0, MAX_PAGE * 100), None
    page = _int_arg(args, "page", 1, 1, MAX_PAGE)
    return limit, (page - 1) * limit, page


def page_metadata(path: str, args: dict[str, str], base_url: str, limit: int, offset: int,
                  page: int | None, has_more: bool) -> dict[str, Any]:
    metadata: dict[str, Any] = {}
    if page is not None:
        metadata.update(currentPage=page, pageSize=limit)
    if has_more and limit:
        metadata["nextCursor"] = str(offset + limit)
        following = ({"page": str(page + 1)} if page is not None
                     else {"cursor": metadata["nextCursor"]})
        metadata["nextPage"] = f"{base_url}{path}?{urlencode({**args, **following})}"
    return metadata


def models_list(conn: sqlite3.Connection, args: dict[str, str], base_url: str = "") -> dict:
    """``GET /api/v1/models``: ``ids``, ``query``, ``tag``, ``types``, ``username``, ``baseModels``,
    ``nsfw``, ``sort``, ``limit`` with ``page`` or ``cursor``. Unknown parameters are ignored."""
    limit, offset, page = paging(args, 100, 100)
    sort = args.get("sort") or None
    if sort is not None and sort not in MODEL_SORTS:
        raise BadRequest(f"sort must be one of {', '.join(MODEL_SORTS)}, not {sort!r}")
    where, params = [], []
    if args.get("ids"):
        ids = [parse_id(part, "ids") for part in _list_arg(args["ids"], "ids")]
        where.append(f"id IN ({','.join('?' * len(ids))})")
        params.extend(ids)
    if args.get("query"):
        match = fts_query(args["query"])
        if match is None:
            return {"items": [], "metadata": page_metadata(
                "/api/v1/models", args, base_url, limit, offset, page, False)}
        where.append("id IN (SELECT rowid FROM models_fts WHERE models_fts MATCH ?)")
        params.append(match)
    if args.get("tag"):
        where.append("id IN (SELECT mt.models_id FROM models_tags mt WHERE mt.tags_id IN "
                     "(SELECT t.id FROM tags t WHERE t.name = ? COLLATE NOCASE))")
        params.append(args["tag"].strip())
    for name, column in (("types", "type"), ("username", "username")):
        if args.get(name):
            values = _list_arg(args[name], name)
            where.append(f"{column} IN ({','.join('?' * len(values))})")
            params.extend(values)
    if args.get("baseModels"):
        bases = _list_arg(args["baseModels"], "baseModels")
        where.append("EXISTS (SELECT 1 FROM model_versions v WHERE v.model_id = models.id "
                     f"AND v.base_model IN ({','.join('?' * len(bases))}))")
        params.extend(bases)
    if _bool_arg(args, "nsfw") is False:
        where.append("COALESCE(nsfw, 0) = 0")
    sql = "SELECT id FROM models"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY {MODEL_SORTS.get(sort or 'Newest')} LIMIT ? OFFSET ?"
    ids = [r[0] for r in conn.execute(sql, [*params, limit + 1, offset])]
    items = [m for m in (model_response(conn, i, base_url) for i in ids[:limit]) if m is not None]
    return {"items": items, "metadata": page_metadata(
        "/api/v1/models", args, base_url, limit, offset, page, len(ids) > limit)}


def _named_list(conn: sqlite3.Connection, args: dict[str, str], base_url: str, path: str,
                sql: str, make) -> dict:
    """``/creators`` and ``/tags``: ``limit`` (default 20, ≤200), ``page``, ``query`` (a prefix)."""
    limit, offset, page = paging(args, 20, 200)
    query = (args.get("query") or "").strip()
    escaped = query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    rows = conn.execute(sql, (escaped + "%", limit + 1, offset)).fetchall()
    return {"items": [make(row) for row in rows[:limit]], "metadata": page_metadata(
        path, args, base_url, limit, offset, page, len(rows) > limit)}


def creators_list(conn: sqlite3.Connection, args: dict[str, str], base_url: str = "") -> dict:
    """``GET /api/v1/creators``: ``{username, modelCount, link, image}`` per creator."""
    return _named_list(
        conn, args, base_url, "/api/v1/creators",
        "SELECT username, model_count, image FROM creators WHERE username LIKE ? ESCAPE '\\' "
        "ORDER BY COALESCE(model_count, 0) DESC, username LIMIT ? OFFSET ?",
        lambda r: {"username": r[0], "modelCount": r[1] or 0,
                   "link": f"{base_url}/api/v1/models?{urlencode({'username': r[0]})}",
                   "image": r[2]})


def tags_list(conn: sqlite3.Connection, args: dict[str, str], base_url: str = "") -> dict:
    """``GET /api/v1/tags``: ``{name, modelCount, link}`` per tag, the most used first."""
    return _named_list(
        conn, args, base_url, "/api/v1/tags",
        "SELECT t.name, (SELECT count(*) FROM models_tags mt WHERE mt.tags_id = t.id) AS n "
        "FROM tags t WHERE t.name LIKE ? ESCAPE '\\' ORDER BY n DESC, t.name LIMIT ? OFFSET ?",
        lambda r: {"name": r[0], "modelCount": r[1],
                   "link": f"{base_url}/api/v1/models?{urlencode({'tag': r[0]})}"})


def images_list(conn: sqlite3.Connection, args: dict[str, str], base_url: str = "") -> dict:
    """``GET /api/v1/images``: the mirror does not crawl Civitai's image feed yet, so every page
    is empty, in the real shape (bad ``limit``/``page``/``cursor`` still answer 400)."""
    paging(args, 50, 200)
    return {"items": [], "metadata": {}}


_ENUMS_CACHE: dict[tuple, dict] = {}


def enums(conn: sqlite3.Connection) -> dict[str, list[str]]:
    """``GET /api/v1/enums`` from what the mirror holds (Civitai's keys; values seen in the rows)."""
    path = conn.execute("PRAGMA database_list").fetchone()[2]
    try:
        key = (path, os.stat(path).st_mtime_ns) if path else None
    except OSError:
        key = None
    if key in _ENUMS_CACHE:
        return _ENUMS_CACHE[key]

    def distinct(sql: str) -> list[str]:
        return [r[0] for r in conn.execute(sql) if r[0]]
    bases = distinct("SELECT DISTINCT base_model FROM model_versions ORDER BY base_model")
    answer = {
        "ModelType": distinct("SELECT DISTINCT type FROM models ORDER BY type"),
        "ModelFileType": distinct("SELECT DISTINCT type FROM model_files ORDER BY type"),
        "ActiveBaseModel": bases,
        "BaseModel": bases,
        "BaseModelType": distinct(
            "SELECT DISTINCT baseModelType FROM model_versions ORDER BY baseModelType"),
    }
    if key is not None:
        _ENUMS_CACHE.clear()
        _ENUMS_CACHE[key] = answer
    return answer
