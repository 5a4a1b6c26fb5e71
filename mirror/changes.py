"""What changed upstream between two builds of civitai.sqlite: the ``update_runs`` and ``changes`` tables.

``civitai-mirror update`` builds into a copy of the mirror and, before swapping it in, compares the
copy (``main``) with the mirror still being served (attached as ``old``) for the models whose dump
files the build read: :func:`record_changes`. Both tables travel with the database, so the report
and the new rows appear together, in one ``os.replace``; a ``build --full`` carries them over
(:func:`carry_over`).

Kinds of change, in the order a report lists them (``KINDS``):

- ``model_taken_down`` / ``model_archived``: the model's ``mode`` became TakenDown / Archived;
- ``model_gone``: the model now answers 404 (the crawler kept the last good copy beside it);
- ``model_restored``: back to an ordinary mode after one of those;
- ``version_removed``: a version the newest answer no longer lists;
- ``file_removed``: a file its version no longer lists; ``file_hash_changed``: a file (same id)
  whose SHA256 differs from the one the mirror had;
- ``model_new`` / ``version_new``: new to the mirror (a new model's versions are not listed again).

A change touches the library when a file there is matched to its model (``in_library``); a report
lists those first. Which files those are (``library_paths`` in the command's output) is not stored:
civitai.sqlite is the file a user serves and shares, and the library's paths are served only from
library.sqlite, on loopback (the /-/changes page shows them when ``serve --library`` is given).
"""
from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Iterable, Iterator


from mirror.schema import CIVITAI_SCHEMA, connect_read_only, has_table

KINDS: dict[str, str] = {
    "model_taken_down": "taken down",
    "model_archived": "archived",
    "model_gone": "gone (404 upstream)",
    "model_restored": "restored",
    "version_removed": "version removed",
    "file_removed": "file removed",
    "file_hash_changed": "file hash changed",
    "model_new": "new model",
    "version_new": "new version",
}

#: the two tables an update writes; declared in CIVITAI_SCHEMA, so every build makes them (empty)
UPDATE_TABLES = ("update_runs", "changes")

# One SELECT per kind over the touched models (temp table ``touched``), giving
# (model_id, version_id, file_id, old, new). ``main`` is the new build, ``old`` the served mirror.
# CROSS JOIN keeps ``touched`` the outer loop (SQLite takes it as written): without statistics on
# the temp table the planner would scan a whole table of the mirror instead.
_DIFFS: dict[str, str] = {
    "model_new": """
        SELECT m.id, NULL, NULL, NULL, m.mode FROM touched t CROSS JOIN main.models m ON m.id = t.id
        WHERE NOT EXISTS (SELECT 1 FROM old.models o WHERE o.id = m.id)""",
    "model_taken_down": """
        SELECT m.id, NULL, NULL, o.mode, m.mode FROM touched t CROSS JOIN main.models m ON m.id = t.id
        JOIN old.models o ON o.id = m.id
        WHERE m.mode = 'TakenDown' AND o.mode IS NOT 'TakenDown'""",
    "model_archived": """
        SELECT m.id, NULL, NULL, o.mode, m.mode FROM touched t CROSS JOIN main.models m ON m.id = t.id
        JOIN old.models o ON o.id = m.id
        WHERE m.mode = 'Archived' AND o.mode IS NOT 'Archived'""",
    "model_gone": """
        SELECT m.id, NULL, NULL, NULL, '404' FROM touched t CROSS JOIN main.models m ON m.id = t.id
        JOIN old.models o ON o.id = m.id WHERE m._gone = 1 AND o._gone = 0""",
    "model_restored": """
        SELECT m.id, NULL, NULL, CASE WHEN o._gone = 1 THEN '404' ELSE o.mode END, m.mode
        FROM touched t CROSS JOIN main.models m ON m.id = t.id JOIN old.models o ON o.id = m.id
        WHERE (o._gone = 1 OR o.mode IN ('Archived', 'TakenDown'))
          AND m._gone = 0 AND m.mode IS NOT 'Archived' AND m.mode IS NOT 'TakenDown'""",
    "version_new": """
        SELECT v.model_id, v.id, NULL, NULL, v.name FROM touched t
        CROSS JOIN main.model_versions v ON v.model_id = t.id
        WHERE EXISTS (SELECT 1 FROM old.models o WHERE o.id = t.id)
          AND NOT EXISTS (SELECT 1 FROM old.model_versions ov WHERE ov.id = v.id)""",
    "version_removed": """
        SELECT v.model_id, v.id, NULL, NULL, NULL FROM touched t
        CROSS JOIN main.model_versions v ON v.model_id = t.id
        JOIN old.model_versions ov ON ov.id = v.id
        WHERE v._archived = 1 AND ov._archived = 0""",
    "file_removed": """
        SELECT f.model_id, f.version_id, f.id, f.name, NULL FROM touched t
        CROSS JOIN main.model_files f ON f.model_id = t.id
        JOIN old.model_files ofl ON ofl.id = f.id
        JOIN main.model_versions v ON v.id = f.version_id
        WHERE f._archived = 1 AND ofl._archived = 0 AND v._archived = 0""",
    "file_hash_changed": """
        SELECT f.model_id, f.version_id, f.id, ofl.sha256, f.sha256 FROM touched t
        CROSS JOIN main.model_files f ON f.model_id = t.id
        JOIN old.model_files ofl ON ofl.id = f.id
        WHERE f.sha256 IS NOT NULL AND ofl.sha256 IS NOT NULL AND upper(f.sha256) != upper(ofl.sha256)""",
}

_TOUCHED = """
    INSERT OR IGNORE INTO temp.touched (id)
    SELECT j.value FROM main._sources s, json_each(s.model_ids) j
    WHERE json_valid(s.model_ids) AND NOT EXISTS (
        SELECT 1 FROM old._sources o WHERE o.path = s.path AND o.size IS s.size AND o.mtime_ns IS s.mtime_ns)
    UNION
    SELECT j.value FROM old._sources o, json_each(o.model_ids) j
    WHERE json_valid(o.model_ids) AND NOT EXISTS (SELECT 1 FROM main._sources s WHERE s.path = o.path)
"""

MAX_LIBRARY_PATHS = 5  # paths listed per change (a model held in many copies is still one change)


def last_refresh_cursor(conn: sqlite3.Connection) -> int:
    """Where the nightly rotation stopped last time (0 before the first update)."""
    if not has_table(conn, "update_runs"):
        return 0
    row = conn.execute("SELECT refresh_cursor FROM update_runs ORDER BY id DESC LIMIT 1").fetchone()
    return (row[0] or 0) if row else 0


def record_changes(conn: sqlite3.Connection, old_db: Path | None, library_db: Path | None,
                   run: dict[str, Any]) -> list[dict[str, Any]]:
    """Insert the ``update_runs`` row ``run`` and the changes of the models this build touched,
    compared with ``old_db`` (None: the first build, a baseline with no changes). Does not commit.
    Returns the changes, library ones first, in the order of ``KINDS``."""
    cur = conn.execute(
        f"INSERT INTO update_runs ({', '.join(run)}) VALUES ({', '.join('?' * len(run))})", list(run.values()))
    run_id = cur.lastrowid
    changes: list[dict[str, Any]] = []
    if old_db is not None:
        conn.execute("ATTACH DATABASE ? AS old", (str(Path(old_db).resolve()),))  # only read
        try:
            changes = _diff(conn, run_id, library_db)
        finally:
            conn.commit()  # DETACH is refused inside a transaction; the caller's rows go with it
            conn.execute("DETACH DATABASE old")
    run.update(id=run_id, baseline=0 if old_db is not None else 1, changes=len(changes),
               library_changes=sum(1 for c in changes if c["in_library"]))
    conn.execute("UPDATE update_runs SET baseline = ?, changes = ?, library_changes = ? WHERE id = ?",
                 (run["baseline"], run["changes"], run["library_changes"], run_id))
    return changes


def carry_over(conn: sqlite3.Connection, old_db: Path) -> int:
    """Copy ``update_runs`` and ``changes`` from the mirror a ``build --full`` replaces (the
    history of what changed upstream is not in the dump). Returns the runs copied; no commit."""
    if not Path(old_db).exists():
        return 0
    conn.execute("ATTACH DATABASE ? AS prev", (str(Path(old_db).resolve()),))  # only read
    try:
        if not (has_table(conn, "update_runs", "prev") and has_table(conn, "changes", "prev")):
            return 0
        for table in UPDATE_TABLES:
            cols = [row[1] for row in conn.execute(f'PRAGMA prev.table_info("{table}")')
                    if row[1] in CIVITAI_SCHEMA[table]["columns"]]
            names = ", ".join(f'"{c}"' for c in cols)
            conn.execute(f'INSERT OR IGNORE INTO main."{table}" ({names}) SELECT {names} FROM prev."{table}"')
        return conn.execute("SELECT count(*) FROM prev.update_runs").fetchone()[0]
    finally:
        conn.commit()
        conn.execute("DETACH DATABASE prev")


def _diff(conn: sqlite3.Connection, run_id: int, library_db: Path | None) -> list[dict[str, Any]]:
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS touched (id INTEGER PRIMARY KEY)")
    conn.execute("DELETE FROM temp.touched")
    if has_table(conn, "_sources", "old"):
        conn.execute(_TOUCHED)
    found: list[tuple] = []
    for kind, sql in _DIFFS.items():
        found.extend((kind, *row) for row in conn.execute(sql))
    held = _library_holdings(library_db, {row[1] for row in found})
    order = {kind: i for i, kind in enumerate(KINDS)}
    changes = []
    for kind, model_id, version_id, file_id, old, new in found:
        model = conn.execute("SELECT name, type FROM models WHERE id = ?", (model_id,)).fetchone() or (None, None)
        version = conn.execute("SELECT name, base_model FROM model_versions WHERE id = ?",
                               (version_id,)).fetchone() if version_id else None
        paths = held.get((model_id, version_id)) or held.get((model_id, None)) or []
        changes.append({
            "run_id": run_id, "kind": kind, "model_id": model_id, "version_id": version_id, "file_id": file_id,
            "model_name": model[0], "version_name": version[0] if version else None, "type": model[1],
            "base_model": version[1] if version else None,
            "old": None if old is None else str(old), "new": None if new is None else str(new),
            "in_library": 1 if paths else 0, "library_paths": paths[:MAX_LIBRARY_PATHS] or None,
        })
    changes.sort(key=lambda c: (-c["in_library"], order[c["kind"]], c["model_id"], c["version_id"] or 0,
                                c["file_id"] or 0))
    conn.executemany(
        "INSERT INTO changes (run_id, kind, model_id, version_id, file_id, model_name, version_name, type, "
        "base_model, old, new, in_library) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
        [(c["run_id"], c["kind"], c["model_id"], c["version_id"], c["file_id"], c["model_name"],
          c["version_name"], c["type"], c["base_model"], c["old"], c["new"], c["in_library"])
         for c in changes])
    return changes


def library_model_files(conn: sqlite3.Connection, model_ids: Iterable[int]) -> Iterator[tuple]:
    """(model id, version id, file id, path, scan root) of the library's model files (not the images
    that used one) matched to ``model_ids``, present on disk, by model then path. ``conn``: library.sqlite."""
    ids = sorted(set(model_ids))
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        yield from conn.execute(
            "SELECT m.model_id, m.version_id, f.id, f.path, f.root FROM matches m JOIN files f ON f.id = m.file_id "
            f"WHERE m.model_id IN ({','.join('?' * len(chunk))}) AND f.kind = 'model' "
            "AND NOT coalesce(f.missing, 0) ORDER BY m.model_id, f.path", chunk)


def _library_holdings(library_db: Path | None, model_ids: set[int]) -> dict[tuple[int, int | None], list[str]]:
    """Paths of the library's model files matched to each of ``model_ids`` (``library_model_files``),
    keyed (model, version) and (model, None)."""
    held: dict[tuple[int, int | None], list[str]] = {}
    if library_db is None or not model_ids or not Path(library_db).exists():
        return held
    lib = connect_read_only(library_db)
    try:
        if not (has_table(lib, "matches") and has_table(lib, "files")):
            return held
        for model_id, version_id, _, path, _ in library_model_files(lib, model_ids):
            held.setdefault((model_id, version_id), []).append(path)
            held.setdefault((model_id, None), []).append(path)
    finally:
        lib.close()
    return held
