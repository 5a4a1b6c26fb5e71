"""Database schemas as data, and the one idempotent function that applies them.

A schema is ``{table_name: spec}`` where spec is::

    {
        "columns": {"id": int, "name": str, "data": str, ...},   # python types, as sqlite-utils takes
        "pk": "id",                     # or a tuple for a compound key
        "not_null": {"name"},           # optional
        "defaults": {"n": 0},           # optional
        "foreign_keys": [("model_id", "models", "id")],  # optional
        "indexes": [["sha256"], ["model_id", "position"]],  # optional; {"columns": [...], "unique": True} too
        "fts": ["name", "description"],  # optional: FTS5 over these columns
        "fts_triggers": True,           # optional; False when the caller fills the index itself
        "fts_contentless": True,        # optional: FTS5 keeps only the index (content=''), the caller
                                        # inserts the indexed text, which the table need not hold
        "without_rowid": True,          # optional: a compound-key table stored as one B-tree
    }

``apply_schema(db, SCHEMA)`` creates what is missing and adds missing columns and indexes to
tables that exist: the migration path for ``library.sqlite``, which is never recreated.
The civitai.sqlite tables are declared below in ``CIVITAI_SCHEMA`` (filled by mirror.build).

Each database says what it is: ``PRAGMA application_id`` is ``CIVITAI_APPLICATION_ID`` in a mirror
(set by build) and ``LIBRARY_APPLICATION_ID`` in a library (set by ``matcher.schema.ensure_library``);
files written before that are recognised by their tables. ``check_database`` refuses the wrong
kind with a one-line ``WrongDatabase``, before anything is written.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import quote

import sqlite_utils


def apply_schema(db: sqlite_utils.Database, schema: dict[str, dict[str, Any]]) -> None:
    """Create missing tables, columns and indexes. Safe to call on every open."""
    for name, spec in schema.items():
        table = db.table(name)
        columns = spec["columns"]
        if not table.exists():
            if spec.get("without_rowid"):  # sqlite-utils cannot say WITHOUT ROWID itself
                sql = db.create_table_sql(
                    name, columns, pk=spec.get("pk"), not_null=spec.get("not_null"),
                    defaults=spec.get("defaults"), foreign_keys=spec.get("foreign_keys"))
                db.execute(sql.rstrip().rstrip(";") + " WITHOUT ROWID")
            else:
                table.create(
                    columns,
                    pk=spec.get("pk"),
                    not_null=spec.get("not_null"),
                    defaults=spec.get("defaults"),
                    foreign_keys=spec.get("foreign_keys"),
                )
        else:
            existing = set(table.columns_dict)
            for column, column_type in columns.items():
                if column not in existing:
                    table.add_column(column, column_type)
        existing_indexes = {tuple(index.columns) for index in table.indexes}
        for index in spec.get("indexes", []):
            if isinstance(index, dict):
                cols, unique = list(index["columns"]), bool(index.get("unique"))
            else:
                cols, unique = list(index), False
            if tuple(cols) not in existing_indexes:
                table.create_index(cols, unique=unique, if_not_exists=True)
        if spec.get("fts") and not db.table(f"{name}_fts").exists():
            create_fts(db, name, spec)


def create_fts(db: sqlite_utils.Database, name: str, spec: dict[str, Any]) -> None:
    """The full-text index ``{name}_fts`` a table's spec declares (see the module docstring)."""
    if spec.get("fts_contentless"):
        db.conn.execute(f"CREATE VIRTUAL TABLE [{name}_fts] USING FTS5 ("
                        + ", ".join(f"[{c}]" for c in spec["fts"]) + ", content='')")
    else:
        db.table(name).enable_fts(spec["fts"], create_triggers=spec.get("fts_triggers", True))


# ---- which database a file is ------------------------------------------------
CIVITAI_APPLICATION_ID = 0x4356_4D52  # "CVMR": civitai.sqlite, the mirror
LIBRARY_APPLICATION_ID = 0x4356_4C42  # "CVLB": library.sqlite
_KIND_OF_ID = {CIVITAI_APPLICATION_ID: "civitai", LIBRARY_APPLICATION_ID: "library"}
_ID_OF_KIND = {kind: app_id for app_id, kind in _KIND_OF_ID.items()}
# Tables only `build` writes, and tables only the library has: how a file from before
# application_id is recognised (a mirror that a bad `match` once wrote library tables into is
# still a mirror).
_BUILD_TABLES = frozenset({"_sources", "model_snapshots"})
_LIBRARY_TABLES = frozenset({"files", "journal", "runs", "matches", "generations", "pins"})
DESCRIPTION = {
    "civitai": "a mirror (civitai.sqlite, from `civitai-mirror build`)",
    "library": "a library (library.sqlite, from `civitai-mirror scan`)",
}


class WrongDatabase(sqlite3.DatabaseError):
    """The file is the other kind of database, or another program's: nothing was written."""
    says_which = True  # the message names the file and what it is: the CLI prints it as it is


def database_kind(conn: sqlite3.Connection) -> str | None:
    """``"civitai"``, ``"library"``, ``"empty"`` (no tables yet) or None (another program's file).

    Raises ``sqlite3.DatabaseError`` for a file that is not SQLite.
    """
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    if app_id:
        return _KIND_OF_ID.get(app_id)
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not tables:
        return "empty"
    if tables & _BUILD_TABLES:
        return "civitai"
    if tables & _LIBRARY_TABLES:
        return "library"
    if tables & set(CIVITAI_SCHEMA):
        return "civitai"
    return None


def connect_read_only(path: str | Path) -> sqlite3.Connection:
    """A connection that cannot write to the file at ``path`` (``mode=ro``, never ``immutable``)."""
    return sqlite3.connect(f"file:{quote(str(Path(path).resolve()), safe='/')}?mode=ro", uri=True)


def has_table(conn: sqlite3.Connection, name: str, schema: str = "main") -> bool:
    """Whether the database ``schema`` of ``conn`` has a table or view ``name``."""
    return conn.execute(f"SELECT 1 FROM {schema}.sqlite_master WHERE type IN ('table', 'view') AND name = ?",
                        (name,)).fetchone() is not None


def database_file_kind(path: str | Path) -> str | None:
    """``database_kind`` of a file, read without writing anything (``"empty"`` for an empty file)."""
    conn = connect_read_only(path)
    try:
        return database_kind(conn)
    finally:
        conn.close()


def wrong_database_message(path: str | Path, kind: str | None, wanted: str) -> str:
    what = DESCRIPTION[kind].split(" (")[0] if kind in DESCRIPTION else "another program's database"
    return f"{path} is {what}, not {DESCRIPTION[wanted]}"


def check_database(conn: sqlite3.Connection, wanted: str, path: str | Path = "the database") -> None:
    """Raise ``WrongDatabase`` unless the database is of kind ``wanted`` (or still empty)."""
    kind = database_kind(conn)
    if kind not in (wanted, "empty"):
        raise WrongDatabase(wrong_database_message(path, kind, wanted))


def check_database_file(path: str | Path, wanted: str) -> None:
    """``check_database`` for a file that may not exist yet (a missing file passes)."""
    if not Path(path).exists():
        return
    kind = database_file_kind(path)
    if kind not in (wanted, "empty"):
        raise WrongDatabase(wrong_database_message(path, kind, wanted))


def mark_database(conn: sqlite3.Connection, kind: str) -> None:
    """Set ``PRAGMA application_id`` for ``kind`` (after ``check_database``); a no-op when set."""
    app_id = _ID_OF_KIND[kind]
    if conn.execute("PRAGMA application_id").fetchone()[0] != app_id:
        conn.execute(f"PRAGMA application_id = {app_id}")


# ---- civitai.sqlite ----------------------------------------------------------
# Core tables keep the community archive's column names and types (ComfyUI-Lora-Manager reads
# models / model_versions / model_files / archived_model_files), then add Civitai's own field
# names as extra columns for facets. Bookkeeping columns start with "_". The JSON columns (``data``,
# ``meta``) come last in each table: SQLite reads a row's columns in order, so a facet, a count or an
# index build over a column declared after a 5 KB JSON value would walk that value's overflow pages.
CIVITAI_SCHEMA: dict[str, dict[str, Any]] = {
    "creators": {
        "columns": {"username": str, "image": str, "model_count": int},
        "pk": "username",
        "fts": ["username"],
    },
    "models": {
        "columns": {
            # community archive columns (created_at/updated_at: epoch seconds, first/last seen)
            "id": int, "name": str, "type": str, "username": str,
            "created_at": int, "updated_at": int,
            # Civitai's own fields
            "nsfw": int, "nsfwLevel": int, "poi": int, "minor": int,
            "mode": str, "availability": str, "userId": int, "allowNoCredit": int,
            "allowCommercialUse": str, "allowDerivatives": int, "allowDifferentLicense": int,
            "downloadCount": int, "thumbsUpCount": int, "thumbsDownCount": int,
            "commentCount": int, "favoriteCount": int, "ratingCount": int, "rating": float,
            "tippedAmountCount": int, "tags": str, "baseModels": str, "version_count": int,
            # bookkeeping
            "_first_seen": str, "_last_seen": str, "_gone": int, "_partial": int,
            "_snapshots": int, "_source_path": str,
            "data": str,  # last: the big JSON, so other columns never sit behind its overflow pages
        },
        "pk": "id",
        "not_null": {"name", "type", "data", "created_at", "updated_at"},
        "defaults": {"_gone": 0, "_partial": 0},
        "foreign_keys": [("username", "creators", "username")],
        "indexes": [["type"], ["username"], ["mode"], ["_gone"], ["_last_seen"]],
        # the description is stored once, as HTML in data: the index holds its words (text from
        # mirror.derive.search_row), filled by mirror.writer, never a stored copy of the text
        "fts": ["name", "description_text", "tags"],
        "fts_contentless": True,
    },
    "model_versions": {
        "columns": {
            "id": int, "model_id": int, "position": int, "name": str, "base_model": str,
            "published_at": int, "created_at": int, "updated_at": int,
            "baseModelType": str, "status": str, "publishedAt": str, "createdAt": str,
            "nsfwLevel": int, "availability": str, "trainedWords": str, "downloadCount": int,
            "thumbsUpCount": int, "thumbsDownCount": int, "downloadUrl": str,
            "_archived": int, "_first_seen": str, "_last_seen": str,
            "data": str,
        },
        "pk": "id",
        "not_null": {"model_id", "position", "name", "base_model", "data", "created_at", "updated_at"},
        "defaults": {"_archived": 0},
        "foreign_keys": [("model_id", "models", "id")],
        "indexes": [["model_id"], ["base_model"], ["published_at"]],
    },
    "model_files": {
        "columns": {
            "id": int, "model_id": int, "version_id": int, "type": str, "sha256": str,
            "created_at": int, "updated_at": int,
            "name": str, "sizeKB": float, "primary": int, "format": str, "size": str, "fp": str,
            "pickleScanResult": str, "virusScanResult": str, "downloadUrl": str,
            "position": int,  # order in its version's files; NULL: only older answers listed it
            "_archived": int,
            "data": str,
        },
        "pk": "id",
        "not_null": {"model_id", "version_id", "type", "data", "created_at", "updated_at"},
        "defaults": {"_archived": 0},
        "foreign_keys": [("model_id", "models", "id"), ("version_id", "model_versions", "id")],
        # sizeKB: the matcher's size-only suggestions switch on when an index starts with it
        "indexes": [["model_id"], ["version_id"], ["sha256"], ["name"], ["sizeKB"]],
    },
    "archived_model_files": {
        "columns": {"file_id": int, "model_id": int, "version_id": int},
        "pk": "file_id",
    },
    "file_hashes": {
        "columns": {"hash": str, "type": str, "file_id": int, "version_id": int, "model_id": int},
        "pk": ("file_id", "type"),
        # no rowid: the key is the row (one B-tree less to write per hash)
        "without_rowid": True,
        "foreign_keys": [("file_id", "model_files", "id"), ("version_id", "model_versions", "id"),
                         ("model_id", "models", "id")],
        "indexes": [["hash"]],
    },
    "images": {
        "columns": {
            "id": int, "version_id": int, "model_id": int, "position": int, "url": str,
            "width": int, "height": int, "nsfwLevel": int, "nsfw": str, "hash": str, "type": str,
            "hasMeta": int, "local_path": str, "meta": str,
        },
        "pk": "id",
        "foreign_keys": [("version_id", "model_versions", "id"), ("model_id", "models", "id")],
        "indexes": [["version_id"], ["model_id"], ["width", "height"]],
    },
    "tags": {
        "columns": {"id": int, "name": str},
        "pk": "id",
        "indexes": [{"columns": ["name"], "unique": True}],
        "fts": ["name"],
    },
    "models_tags": {
        "columns": {"models_id": int, "tags_id": int},
        "pk": ("models_id", "tags_id"),
        "without_rowid": True,
        "foreign_keys": [("models_id", "models", "id"), ("tags_id", "tags", "id")],
        "indexes": [["tags_id"]],
    },
    "model_snapshots": {
        "columns": {
            "model_id": int, "sha": str, "fetched_at": str, "kind": str, "mode": str,
            "version_count": int, "file_count": int, "path": str,
            # last: ANSWER_IN_ROWS (the current rows), else the JSON zlib-compressed (mirror.answers)
            "data": bytes,
        },
        "pk": ("model_id", "sha"),
        "indexes": [["fetched_at"]],
    },
    # what each `civitai-mirror update` found upstream (mirror.changes writes them; a build makes
    # them empty, and `build --full` carries them over)
    "update_runs": {
        "columns": {
            "id": int, "started_at": str, "finished_at": str, "dump": str, "library": str,
            "full_refresh": int, "new_ids": int, "refreshed": int, "retried": int, "found": int,
            "notfound": int, "kept": int, "errors": int, "requests": int, "refresh_cursor": int,
            "files_read": int, "models": int, "changes": int, "library_changes": int,
            "library_matched": int, "baseline": int,
        },
        "pk": "id",
    },
    "changes": {
        "columns": {
            "id": int, "run_id": int, "kind": str, "model_id": int, "version_id": int, "file_id": int,
            "model_name": str, "version_name": str, "type": str, "base_model": str,
            "old": str, "new": str, "in_library": int,
        },
        "pk": "id",
        "not_null": {"run_id", "kind", "model_id"},
        "defaults": {"in_library": 0},
        "foreign_keys": [("run_id", "update_runs", "id")],
        "indexes": [["run_id", "in_library"], ["model_id"], ["kind"]],
    },
    # bookkeeping: one row per dump file read (incremental builds compare size and mtime)
    "_sources": {
        "columns": {"path": str, "size": int, "mtime_ns": int, "kind": str, "model_ids": str,
                    "error": str},
        "pk": "path",
    },
    "_build_info": {
        "columns": {"key": str, "value": str},
        "pk": "key",
    },
}
