"""The one hash lookup: any Civitai hash type, any case, answered from civitai.sqlite.

``lookup`` (CLI), the offline Civitai API (mirror.plugin) and the matcher all call
``lookup_hash`` / ``lookup_hashes``. Lookups use the ``file_hashes(hash)`` index.

A hash's length says which types to try, in the order ``mirror.hashes.LENGTH_TYPES`` gives (64 hex =
SHA256 or BLAKE3; 12 = AutoV3, else a ``SHA256[:12]`` prefix; 10 = AutoV2, else a SHA256 prefix; 8 =
AutoV1 or CRC32; ``0x`` + 64 = SwarmUI's tensor hash, whose first 12 are the AutoV3). The hash of
empty input (``e3b0c44298fc…``) is ignored, as Civitai does. Several versions → Civitai's tie rule:
published first, then earliest ``publishedAt``, then lowest version id; the others are listed in
``candidates``.
"""
from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any, Iterable

import sqlite_utils

from crawler.site import download_url
from mirror.hashes import HASH_TYPES, canonical_type, is_empty_hash, normalize_hash, types_for_length
from mirror.schema import check_database_file

RESULT_KEYS = ("hash", "hash_type", "model_id", "version_id", "file_id", "model_name",
               "version_name", "type", "base_model", "file_name", "download_url", "mode",
               "candidates")
_HEX = re.compile(r"^[0-9A-F]+$")

_SELECT = """
SELECT fh.hash, fh.type, fh.file_id, fh.version_id, fh.model_id, m.name, v.name, m.type,
       v.base_model, f.name, f.downloadUrl, v.downloadUrl, m.mode, v.published_at, v.status,
       m._gone, f._archived
FROM file_hashes fh
JOIN model_versions v ON v.id = fh.version_id
JOIN models m ON m.id = fh.model_id
LEFT JOIN model_files f ON f.id = fh.file_id
"""


def empty_result(value: str | None) -> dict[str, Any]:
    result = {key: None for key in RESULT_KEYS}
    result["hash"] = value
    return result


def plan_lookup(value: str, hash_type: str | None = None) -> list[tuple[str, str, bool]]:
    """Which (type, value, is_prefix) to try, best first, for a normalized hash."""
    if hash_type:
        canon = canonical_type(hash_type)
        if canon is None:
            raise ValueError(f"unknown hash type {hash_type!r}; use one of {', '.join(HASH_TYPES)}")
        prefix = canon == "SHA256" and len(value) < 64
        return [(canon, value, prefix)]
    return [(t, value, prefix) for t, prefix in types_for_length(value)]


def _connection(db: Any) -> tuple[sqlite3.Connection, bool]:
    if isinstance(db, sqlite_utils.Database):
        return db.conn, False
    if isinstance(db, sqlite3.Connection):
        return db, False
    path = Path(db)
    if not path.exists():
        raise FileNotFoundError(f"no mirror database at {path}")
    check_database_file(path, "civitai")
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True), True


def _candidates(conn: sqlite3.Connection, value: str, hash_type: str | None) -> tuple[list, str]:
    """Matching rows in tie order (first = the answer)."""
    rows: list[tuple] = []
    for rank, (t, v, prefix) in enumerate(plan_lookup(value, hash_type)):
        if prefix:
            found = conn.execute(_SELECT + "WHERE fh.hash >= ? AND fh.hash < ? AND fh.type = ?",
                                 (v, v + "G", t)).fetchall()
        else:
            found = conn.execute(_SELECT + "WHERE fh.hash = ? AND fh.type = ?", (v, t)).fetchall()
        rows.extend((rank, prefix, row) for row in found)
    if not rows:
        return [], ""
    best_rank = min(r[0] for r in rows)
    rows = [r for r in rows if r[0] == best_rank]  # an exact type match beats a prefix match

    def tie_key(item: tuple) -> tuple:
        row = item[2]
        published_at, status = row[13], row[14]
        published = published_at is not None and status in (None, "Published")
        return (0 if published else 1, published_at if published_at is not None else 2**62,
                row[3], row[2])

    rows.sort(key=tie_key)
    return rows, ("prefix" if rows[0][1] else "exact")


def lookup_with_conn(conn: sqlite3.Connection, value: str,
                     hash_type: str | None = None) -> dict[str, Any]:
    original = value
    if value is None or not str(value).strip():
        return empty_result(original)
    normalized = normalize_hash(value)
    if not _HEX.match(normalized):
        result = empty_result(original)
        result["error"] = "not a hexadecimal hash"
        return result
    if is_empty_hash(normalized):
        result = empty_result(original)
        result["error"] = "hash of empty input, ignored"
        return result
    rows, match = _candidates(conn, normalized, hash_type)
    if not rows:
        return empty_result(original)
    row = rows[0][2]
    version_ids = list(dict.fromkeys(r[2][3] for r in rows))
    return {
        "hash": original,
        "hash_type": row[1],
        "model_id": row[4],
        "version_id": row[3],
        "file_id": row[2],
        "model_name": row[5],
        "version_name": row[6],
        "type": row[7],
        "base_model": row[8],
        "file_name": row[9],
        "download_url": row[10] or row[11] or download_url(row[3]),
        "mode": row[12],
        "candidates": version_ids[1:],
        "match": match,
        "gone": bool(row[15]),
        "file_archived": bool(row[16]),
        "matched_hash": row[0],
        "file_ids": list(dict.fromkeys(r[2][2] for r in rows)),
    }


def lookup_hash(db: Any, value: str, hash_type: str | None = None) -> dict[str, Any]:
    """One hash -> the lookup dict (see module doc); every key null when not found.

    ``db``: a sqlite_utils.Database, a sqlite3.Connection or a path of civitai.sqlite.
    ``hash_type``: restrict to AutoV1, AutoV2, AutoV3, SHA256, CRC32 or BLAKE3 (any case).
    """
    conn, owned = _connection(db)
    try:
        return lookup_with_conn(conn, value, hash_type)
    finally:
        if owned:
            conn.close()


def lookup_hashes(db: Any, values: Iterable[str],
                  hash_type: str | None = None) -> list[dict[str, Any]]:
    """Many hashes on one connection, answers in input order."""
    conn, owned = _connection(db)
    try:
        return [lookup_with_conn(conn, value, hash_type) for value in values]
    finally:
        if owned:
            conn.close()


def files_for_sha256(conn: sqlite3.Connection, value: str) -> list[tuple[int, int, int]]:
    """(file_id, version_id, model_id) of every file whose SHA256 is ``value`` (POST by-hash)."""
    return conn.execute(
        "SELECT file_id, version_id, model_id FROM file_hashes WHERE hash = ? AND type = 'SHA256' "
        "ORDER BY version_id, file_id", (value.strip().upper(),)).fetchall()
