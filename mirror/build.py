"""Build civitai.sqlite from the crawler's dump folder.

Every distinct answer in the dump becomes a row in ``model_snapshots`` (``mirror.dump_reader``
reads and classifies the files); the other tables are derived from a model's snapshots
(``mirror.derive``) and written by ``mirror.writer``.

Incremental by default: ``_sources`` remembers each file's size and mtime, so a second build only
reads new or changed files and re-derives the models they touch; a file gone from the dump takes
its snapshots with it. ``full=True`` rebuilds into a temporary file and swaps it in with
``os.replace``. An incremental build writes in place, a transaction per group of files, so
``serve`` (which reads with ``mode=ro``, never ``immutable``) always sees a whole database; its
connection waits ``BUSY_TIMEOUT_S`` for readers and keeps a large page cache, so a transaction
never spills into the file (which would lock the readers out) before it commits. A fresh build of a big dump uses the idle cores (``mirror.build_parallel``); the
result is the serial build's database.
"""
from __future__ import annotations

import gc
import os
import re
import sqlite3
import time
from pathlib import Path
from typing import Callable

import sqlite_utils

from crawler.clock import utc_iso
from mirror.build_parallel import POOL_MIN_FILES, idle_cores, load_parallel
from mirror.changes import carry_over
from mirror.dump_reader import iter_dump_files
from mirror.facets import has_facet_counts, save_facet_counts
from mirror.load import load_files
from mirror.schema import CIVITAI_SCHEMA, apply_schema, check_database_file, mark_database
from mirror.writer import BuildSummary, index_loaded, open_load_db, upgrade_search

IMAGE_FILE = re.compile(r"^(\d+)\.[A-Za-z0-9]+$")
BUSY_TIMEOUT_S = 60  # longer than serve's 3 s query limit: a reader always finishes first
CACHE_KIB = 262144  # 256 MiB: an incremental transaction stays in memory until its commit


class EmptyDump(FileNotFoundError):
    """The folder holds no dump files (nothing to build from; an existing mirror is left alone)."""


def has_dump_files(dump: Path) -> bool:
    """Whether any ``*.json`` is under the dump (outside ``images/``); stops at the first one."""
    for folder, dirs, files in os.walk(dump):
        if Path(folder) == dump and "images" in dirs:
            dirs.remove("images")
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        if any(f.endswith(".json") and not f.startswith(".") for f in files):
            return True
    return False


def link_local_images(conn: sqlite3.Connection, dump: Path) -> int:
    """Point ``images.local_path`` at files under ``DUMP/images/<block>/<image id>.<ext>``."""
    root = dump / "images"
    if not root.is_dir():
        return 0
    pairs = []
    for block in sorted(os.scandir(root), key=lambda e: e.name):
        if not block.is_dir():
            continue
        for entry in os.scandir(block.path):
            match = IMAGE_FILE.match(entry.name)
            if match and entry.is_file() and not entry.name.endswith(".part"):
                pairs.append((f"images/{block.name}/{entry.name}", int(match.group(1))))
    conn.execute("UPDATE images SET local_path = NULL WHERE local_path IS NOT NULL")
    conn.executemany("UPDATE images SET local_path = ? WHERE id = ?", pairs)
    return conn.execute("SELECT count(*) FROM images WHERE local_path IS NOT NULL").fetchone()[0]


def build_mirror(dump: str | Path, db_path: str | Path, *, full: bool = False,
                 progress: Callable[[int, int], None] | None = None,
                 workers: int | None = None) -> BuildSummary:
    """Read the dump into civitai.sqlite; returns counts. ``progress(done, total)`` per file.

    ``workers``: for a fresh (or ``full``) build, extra processes that each load a slice of the
    dump into their own temporary database while this one loads the first slice; the slices are
    then merged in SQL (None: one per further idle core when there are at least
    ``POOL_MIN_FILES`` files; 0: everything in this process). Incremental builds always run in
    this process.
    """
    dump = Path(dump)
    db_path = Path(db_path)
    if not dump.is_dir():
        raise FileNotFoundError(f"dump folder not found: {dump}")
    if not has_dump_files(dump):
        raise EmptyDump(f"{dump} holds no dump files (NNNNNNNN/NNNNNNNN.json); crawl into it first")
    check_database_file(db_path, "civitai")  # never build into (or --full over) a library
    summary = BuildSummary()
    fresh = full or not db_path.exists()
    target = db_path.with_name(db_path.name + ".tmp") if fresh else db_path
    if fresh and target.exists():
        target.unlink()  # our own leftover from an interrupted build
    if fresh:  # a temp file swapped in at the end: a crash leaves the old database untouched
        db = open_load_db(target)
    else:
        db = sqlite_utils.Database(sqlite3.connect(str(target), timeout=BUSY_TIMEOUT_S))
        db.conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        upgrade_search(db)  # a mirror from before the description was stored once
        apply_schema(db, CIVITAI_SCHEMA)
    mark_database(db.conn, "civitai")
    conn = db.conn
    gc_was_enabled = gc.isenabled()
    gc.disable()  # many small dicts, no cycles: the collector only burns time here
    try:
        indexed = _run_build(conn, dump, summary, fresh, progress, workers, target)
        if fresh and not indexed:
            index_loaded(db)
        conn.execute("UPDATE creators SET model_count = "
                     "(SELECT count(*) FROM models WHERE models.username = creators.username)")
        summary.local_images = link_local_images(conn, dump)
        if fresh:
            carry_over(conn, db_path)  # what update recorded is not in the dump
        conn.executemany("INSERT OR REPLACE INTO _build_info (key, value) VALUES (?, ?)", [
            ("dump_dir", str(dump.resolve())), ("built_at", utc_iso(time.time())),
        ])
        if fresh or summary.files_read or summary.files_removed or not has_facet_counts(conn):
            save_facet_counts(conn)  # the table pages' facets, counted once here (mirror.facets)
        conn.commit()
        for table, attr in (("models", "models"), ("model_versions", "versions"),
                            ("model_files", "files"), ("file_hashes", "hashes"),
                            ("images", "images")):
            setattr(summary, attr, conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0])
        if fresh:
            conn.execute("PRAGMA analysis_limit=1000")
            conn.execute("ANALYZE")
            conn.commit()
    finally:
        if gc_was_enabled:
            gc.enable()
        db.close()
    if fresh:
        os.replace(target, db_path)
    return summary


def _run_build(conn: sqlite3.Connection, dump: Path, summary: BuildSummary, fresh: bool,
               progress: Callable[[int, int], None] | None, workers: int | None = None,
               target: Path | None = None) -> bool:
    """Load what changed; True when the secondary and full-text indexes are already built."""
    # files that failed last time are read again (the crawler may have finished them since)
    known_sources = {path: (size, mtime_ns) if kind != "error" else None
                     for path, size, mtime_ns, kind in
                     conn.execute("SELECT path, size, mtime_ns, kind FROM _sources")}
    known_models = {row[0] for row in conn.execute("SELECT DISTINCT model_id FROM model_snapshots")}
    on_disk = list(iter_dump_files(dump))
    disk_paths = {rel for rel, _ in on_disk}
    deferred: set[int] = set()

    # Files gone from the dump: drop their snapshots, re-read files that share their models.
    removed = [p for p in known_sources if p not in disk_paths]
    reread: set[str] = set()
    if removed:
        summary.files_removed = len(removed)
        for path in removed:
            ids = [r[0] for r in conn.execute(
                "SELECT j.value FROM _sources s, json_each(s.model_ids) j WHERE s.path = ?", (path,))]
            conn.execute("DELETE FROM model_snapshots WHERE path = ?", (path,))
            conn.execute("DELETE FROM _sources WHERE path = ?", (path,))
            deferred.update(ids)
            if ids:
                marks = ",".join("?" * len(ids))
                reread.update(r[0] for r in conn.execute(
                    "SELECT DISTINCT s.path FROM _sources s, json_each(s.model_ids) j "
                    f"WHERE j.value IN ({marks})", ids))

    todo = [(rel, st) for rel, st in on_disk
            if rel in reread or known_sources.get(rel) != (st.st_size, st.st_mtime_ns)]
    summary.files_unchanged = len(on_disk) - len(todo)
    total = len(todo)
    if workers is None:
        workers = idle_cores() - 1 if len(todo) >= POOL_MIN_FILES else 0
    workers = min(workers, max(0, len(todo) - 1))
    if fresh and workers > 0 and target is not None:
        load_parallel(conn, dump, todo, summary, progress, workers, target)
        return True
    skip = frozenset(known_models | deferred)
    load_files(conn, dump, todo, summary, fresh, skip, deferred,
               (lambda done: progress(done, total)) if progress else None)
    return False
