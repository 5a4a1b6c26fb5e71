"""Writing into civitai.sqlite: snapshot rows, a model's derived rows, and the bulk-load database.

A ``Writer`` holds the open connection, the tag ids and the build's counts while a build runs.
``write_models(clean=True)`` first removes what those models had (re-derivation); it keeps
``models_fts`` in step (contentless: the description's text is indexed, never stored; removing an
entry derives it again from ``models.data`` with ``search_row``). The snapshot the rows give back
exactly is stored as ``ANSWER_IN_ROWS`` (mirror.answers): ``mark_in_rows`` on insert (the others
compressed), ``restore_answers`` turns it back into compressed JSON before the rows change,
``write_models(clean=True)`` marks the new one. A fresh build loads into :func:`open_load_db` (no
journal, no secondary indexes) and builds its indexes once at the end (:func:`index_loaded`).
"""
from __future__ import annotations

import logging
import sqlite3
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import sqlite_utils

from mirror.answers import ANSWER_IN_ROWS, pack_snapshot, snapshot_from_rows
from mirror.derive import ROW_COLUMNS, ModelRows, search_row
from mirror.dump_reader import Snapshot
from mirror.schema import CIVITAI_SCHEMA, apply_schema, create_fts

log = logging.getLogger(__name__)

# derive_model hands these JSON columns over as orjson's bytes: stored as TEXT by the INSERT
_CAST_COLUMNS = frozenset({"data", "meta"})


@dataclass
class BuildSummary:
    """What a build read and wrote (``build_mirror`` returns it; the loaders and the writer count)."""
    files_read: int = 0
    files_unchanged: int = 0
    files_removed: int = 0
    snapshots_new: int = 0
    models: int = 0
    versions: int = 0
    files: int = 0
    hashes: int = 0
    images: int = 0
    local_images: int = 0
    models_rebuilt: int = 0
    skipped: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["errors"] = [{"path": p, "error": e} for p, e in self.errors]
        return d


def _insert_sql(table: str, columns: list[str], verb: str = "INSERT OR REPLACE") -> str:
    cols = ", ".join(f'"{c}"' for c in columns)
    marks = ", ".join("CAST(? AS TEXT)" if c in _CAST_COLUMNS else "?" for c in columns)
    return f'{verb} INTO "{table}" ({cols}) VALUES ({marks})'


COLUMNS = {name: list(spec["columns"]) for name, spec in CIVITAI_SCHEMA.items()}
# each table's INSERT, its columns in the order derive_model builds the row tuples
INSERT_SQL = {name: _insert_sql(name, cols) for name, cols in {**COLUMNS, **ROW_COLUMNS}.items()}
# CIVITAI_SCHEMA without secondary indexes: what a fresh build loads into
_LOAD_SCHEMA = {name: {k: v for k, v in spec.items() if k != "indexes"}
                for name, spec in CIVITAI_SCHEMA.items()}
# model_snapshots.data is the marker (text) or compressed JSON (a BLOB): bound as it is, no cast
_SNAPSHOT_INSERT = "INSERT OR IGNORE INTO model_snapshots ({}) VALUES ({})".format(
    ", ".join(f'"{c}"' for c in COLUMNS["model_snapshots"]),
    ", ".join("?" * len(COLUMNS["model_snapshots"])))
# 2-5 KB model and version rows left a quarter of each 4 KiB leaf page empty: 8 KiB pages make a
# 20k-model mirror 4 % smaller (214 -> 206 MB; 16 KiB: 201 MB) for 2-3 us more per hash lookup
# (16 KiB: 5-7 us more; 64 KiB: 30-50 us, pass 5 in bench/RESULTS.md).
PAGE_SIZE = 8192
_CHILD_TABLES = ("model_versions", "model_files", "file_hashes", "images", "archived_model_files")


def mark_in_rows(snap_rows: list[tuple], rows: list[ModelRows]) -> list[tuple]:
    """``snapshot_row`` tuples as stored: the data of each answer ``rows`` give back is the marker,
    every other answer's JSON is compressed (``pack_snapshot``)."""
    marks = {(r.model_id, r.answer_sha) for r in rows if r.answer_sha}
    return [row[:-1] + ((ANSWER_IN_ROWS,) if (row[0], row[1]) in marks else
                        (pack_snapshot(row[-1]),)) for row in snap_rows]


def snapshot_row(s: Snapshot) -> tuple:
    return (s.model_id, s.sha, s.fetched_at, s.kind,
            (s.data or {}).get("mode") if s.kind == "model" else None,
            len(s.data.get("modelVersions") or []) if s.kind == "model" else
            (1 if s.kind == "version" else 0),
            _file_count(s), s.path, s.text)


class Writer:
    """Holds the open connection, the tag ids and the summary while a build runs."""

    def __init__(self, conn: sqlite3.Connection, summary: BuildSummary, fresh: bool,
                 search_table: str = "models_fts"):
        self.conn = conn
        self.summary = summary
        self.fresh = fresh
        # where search_row tuples go: models_fts, or a plain table a slice database hands over
        # (mirror.build_parallel: a contentless index cannot be copied)
        self.search_table = search_table
        self.tag_ids = {name: tid for tid, name in conn.execute("SELECT id, name FROM tags")}
        self.next_tag = max(self.tag_ids.values(), default=0) + 1

    def insert_snapshots(self, snap_rows: list[tuple]) -> None:
        before = self.conn.total_changes
        self.conn.executemany(_SNAPSHOT_INSERT, snap_rows)
        self.summary.snapshots_new += self.conn.total_changes - before

    def write_models(self, model_ids: list[int], rows: list[ModelRows], clean: bool) -> None:
        """Write derived rows; ``clean`` first removes what these models had (re-derivation)."""
        conn = self.conn
        if clean and model_ids:
            self.restore_answers(model_ids)
            for start in range(0, len(model_ids), 500):
                ids = model_ids[start:start + 500]
                marks = ",".join("?" * len(ids))
                self._remove_search(ids)
                for table in _CHILD_TABLES:
                    conn.execute(f'DELETE FROM "{table}" WHERE model_id IN ({marks})', ids)
                conn.execute(f"DELETE FROM models_tags WHERE models_id IN ({marks})", ids)
                conn.execute(f"DELETE FROM models WHERE id IN ({marks})", ids)
        creators = {}
        model_tags = []
        for r in rows:
            if r.creator:
                creators[r.creator[0]] = r.creator
            for tag in r.tags:
                tid = self.tag_ids.get(tag)
                if tid is None:
                    tid = self.tag_ids[tag] = self.next_tag
                    self.next_tag += 1
                    conn.execute("INSERT INTO tags (id, name) VALUES (?, ?)", (tid, tag))
                model_tags.append((r.model_id, tid))
        if creators:
            conn.executemany(
                "INSERT INTO creators (username, image) VALUES (?, ?) ON CONFLICT(username) "
                "DO UPDATE SET image = coalesce(excluded.image, creators.image)",
                list(creators.values()))
        conn.executemany(INSERT_SQL["models"], [r.model for r in rows])
        conn.executemany(INSERT_SQL["model_versions"], [v for r in rows for v in r.versions])
        conn.executemany(INSERT_SQL["model_files"], [f for r in rows for f in r.files])
        conn.executemany(INSERT_SQL["images"], [i for r in rows for i in r.images])
        conn.executemany(INSERT_SQL["file_hashes"], [h for r in rows for h in r.hashes])
        conn.executemany(INSERT_SQL["archived_model_files"], [a for r in rows for a in r.archived])
        conn.executemany("INSERT OR IGNORE INTO models_tags (models_id, tags_id) VALUES (?, ?)",
                         model_tags)
        conn.executemany(f'INSERT INTO "{self.search_table}" (rowid, name, description_text, tags) '
                         "VALUES (?, ?, ?, ?)", [r.search for r in rows])
        if clean:
            conn.executemany(f"UPDATE model_snapshots SET data = '{ANSWER_IN_ROWS}' "
                             "WHERE model_id = ? AND sha = ?",
                             [(r.model_id, r.answer_sha) for r in rows if r.answer_sha])
        self.summary.models_rebuilt += len(rows)

    def _remove_search(self, ids: list[int]) -> None:
        """Take these models out of the search index (contentless: 'delete' with the indexed text)."""
        marks = ",".join("?" * len(ids))
        if self.search_table != "models_fts":
            self.conn.execute(f'DELETE FROM "{self.search_table}" WHERE rowid IN ({marks})', ids)
            return
        old = [search_row(model_id, name, orjson.loads(data), tags) for model_id, name, data, tags
               in self.conn.execute(f"SELECT id, name, data, tags FROM models WHERE id IN ({marks})",
                                    ids)]
        self.conn.executemany("INSERT INTO models_fts (models_fts, rowid, name, description_text, "
                              "tags) VALUES ('delete', ?, ?, ?, ?)", old)

    def restore_answers(self, model_ids: list[int]) -> None:
        """Store (compressed) the answers these models' rows stand for, before the rows change."""
        for start in range(0, len(model_ids), 500):
            ids = model_ids[start:start + 500]
            marked = self.conn.execute(
                "SELECT model_id, sha FROM model_snapshots WHERE model_id IN "
                f"({','.join('?' * len(ids))}) AND data = ?", [*ids, ANSWER_IN_ROWS]).fetchall()
            for model_id, sha in marked:
                text = snapshot_from_rows(self.conn, model_id)
                if text is not None:
                    self.conn.execute("UPDATE model_snapshots SET data = ? WHERE model_id = ? "
                                      "AND sha = ?", (pack_snapshot(text), model_id, sha))

    def load_snapshots(self, model_ids: list[int]) -> dict[int, list[Snapshot]]:
        out: dict[int, list[Snapshot]] = {}
        for start in range(0, len(model_ids), 500):
            ids = model_ids[start:start + 500]
            for model_id, sha, fetched_at, kind, path, stored in self.conn.execute(
                    "SELECT model_id, sha, fetched_at, kind, path, data FROM model_snapshots "
                    f"WHERE model_id IN ({','.join('?' * len(ids))})", ids):
                if stored == ANSWER_IN_ROWS:  # restore_answers found no rows for it: nothing to read
                    log.warning("model %s: snapshot %s stands for rows that are gone", model_id, sha)
                    continue
                text = zlib.decompress(stored) if isinstance(stored, bytes) else stored
                data = orjson.loads(text) if kind != "notfound" else None
                out.setdefault(model_id, []).append(
                    Snapshot(model_id, kind, fetched_at, path, sha, text, data))
        return out


def _file_count(s: Snapshot) -> int:
    if s.kind == "model":
        return sum(len(v.get("files") or []) for v in s.data.get("modelVersions") or []
                   if isinstance(v, dict))
    if s.kind == "version":
        return len(s.data.get("files") or [])
    return 0


def upgrade_search(db: sqlite_utils.Database) -> bool:
    """A mirror built before the description was stored once (``models.description_text`` and an
    external-content ``models_fts`` over it): drop both and fill a contentless index from the rows.
    Idempotent; True when something changed. Call before ``apply_schema``."""
    conn = db.conn
    found = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'models_fts'").fetchone()
    has_text = "description_text" in db.table("models").columns_dict if found else False
    if found is None or (not has_text and "content=''" in found[0]):
        return False
    log.info("%s: indexing every model's description once more (a mirror from before the "
             "description was stored once; this happens one time)",
             conn.execute("PRAGMA database_list").fetchone()[2] or "the mirror")
    if conn.in_transaction:
        conn.commit()
    conn.execute("BEGIN")  # DDL included: an interrupted upgrade leaves the old layout whole
    conn.execute("DROP TABLE models_fts")
    if has_text:
        conn.execute("ALTER TABLE models DROP COLUMN description_text")
    create_fts(db, "models", CIVITAI_SCHEMA["models"])
    rows = conn.execute("SELECT id, name, data, tags FROM models")
    while batch := rows.fetchmany(1000):
        conn.executemany(
            "INSERT INTO models_fts (rowid, name, description_text, tags) VALUES (?, ?, ?, ?)",
            [search_row(i, name, orjson.loads(data), tags) for i, name, data, tags in batch])
    conn.commit()
    return True


def index_loaded(db: sqlite_utils.Database) -> None:
    """After a bulk load into :func:`open_load_db`: the secondary indexes (``models_fts`` is filled
    as the models are written)."""
    apply_schema(db, CIVITAI_SCHEMA)


def open_load_db(path: Path) -> sqlite_utils.Database:
    """A new database file to bulk-load into: no journal, no fsync, no secondary indexes yet."""
    db = sqlite_utils.Database(str(path))
    conn = db.conn
    conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")  # before the first table: the file's for good
    conn.execute("PRAGMA journal_mode=OFF")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA locking_mode=EXCLUSIVE")
    conn.execute("PRAGMA cache_size=-262144")  # 256 MiB
    conn.execute("PRAGMA temp_store=MEMORY")
    # Secondary indexes are built once after the load (one sort each instead of a random
    # B-tree insert per row). Cheap because the JSON columns come last in every table: the
    # index build reads each row's leading columns, never the JSON's overflow pages.
    apply_schema(db, _LOAD_SCHEMA)
    return db
