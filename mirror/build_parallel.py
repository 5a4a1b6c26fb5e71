"""A fresh build over several processes, giving the serial build's database.

The sorted file list is cut into contiguous slices at model-id boundaries. Each extra process
loads its slice into its own temporary SQLite file (``<target>.partN``) while this one loads the
first slice into the target; the slices are then attached and merged in SQL, in order (the later
slice wins, as in a serial build), and the models two slices both saw (a list page in one, the
model's own file in another) are re-derived from all their snapshots.
"""
from __future__ import annotations

import multiprocessing
import os
import sqlite3
from pathlib import Path
from typing import Any, Callable

import sqlite_utils

from mirror.load import load_files, rederive
from mirror.writer import COLUMNS, BuildSummary, Writer, index_loaded, open_load_db

POOL_MIN_FILES = 2000  # below this, worker processes cost more than they save
# A slice's search rows (mirror.derive.search_row), merged into the main models_fts: a
# contentless index cannot be copied from one database to another.
SEARCH_ROWS = "_models_search"
MAIN_SHARE = 0.8  # this process's slice of a parallel build, against 1.0 per extra process


def idle_cores() -> int:
    """Cores not busy with other work (like ``make -l``): a slice process on a core that is already
    taken only adds the merge to the build's time."""
    cores = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0]
    except (AttributeError, OSError):  # no load average on this platform
        return cores
    return max(1, min(cores, int(cores - busy + 1.5)))



def _split(todo: list, weights: list[float]) -> list[list]:
    """``todo`` in contiguous slices sized by ``weights``, cut only between model ids."""
    out, start, acc, whole = [], 0, 0.0, sum(weights)
    for weight in weights[:-1]:
        acc += weight
        cut = max(start, int(len(todo) * acc / whole))
        while 0 < cut < len(todo) and (os.path.basename(todo[cut][0]).split(".", 1)[0]
                                       == os.path.basename(todo[cut - 1][0]).split(".", 1)[0]):
            cut += 1
        out.append(todo[start:cut])
        start = cut
    out.append(todo[start:])
    return out


def _load_part(dump: Path, todo: list, path: Path, counter: Any, pipe: Any) -> None:
    """Child process: load one slice of a fresh build into its own database file at ``path``."""
    try:
        summary = BuildSummary()
        db = open_load_db(path)

        def progress(done: int) -> None:
            counter.value = done

        db.conn.execute(f"CREATE TABLE {SEARCH_ROWS} (rowid INTEGER PRIMARY KEY, name TEXT, "
                        "description_text TEXT, tags TEXT)")
        load_files(db.conn, dump, todo, summary, True, frozenset(), set(), progress, SEARCH_ROWS)
        db.close()
        pipe.send(("ok", summary))
    except BaseException as exc:  # noqa: BLE001 - handed to the parent, which raises it
        pipe.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        pipe.close()


# Merging a slice database into the main one: plain SQL, no Python per row. Order and conflict
# rules are the serial build's (slices hold consecutive files, merged in order).
_MERGE_TABLES = ("models", "model_versions", "model_files", "images", "file_hashes",
                 "archived_model_files", "_sources")


def _merge_part(writer: Writer, path: Path, summary: BuildSummary) -> list[int]:
    """Copy one slice into the main database (indexed, its full-text index filled); returns the
    models both held, which the caller re-derives from all their snapshots."""
    conn = writer.conn
    conn.execute("ATTACH DATABASE ? AS part", (str(path),))
    try:
        # models both sides saw (a list page in one slice, the model's own file in another)
        both = [r[0] for r in conn.execute(
            "SELECT DISTINCT model_id FROM part.model_snapshots "
            "WHERE model_id IN (SELECT model_id FROM main.model_snapshots)")]
        writer.write_models(both, [], clean=True)  # their rows and full-text entries, for now
        before = conn.total_changes
        cols = ", ".join(f'"{c}"' for c in COLUMNS["model_snapshots"])
        conn.execute(f"INSERT OR IGNORE INTO main.model_snapshots ({cols}) "
                     f"SELECT {cols} FROM part.model_snapshots ORDER BY rowid")
        summary.snapshots_new += conn.total_changes - before
        for table in _MERGE_TABLES:  # the later slice wins, as in a serial build
            cols = ", ".join(f'"{c}"' for c in COLUMNS[table])
            conn.execute(f'INSERT OR REPLACE INTO main."{table}" ({cols}) '
                         f'SELECT {cols} FROM part."{table}"')
        conn.execute("INSERT INTO models_fts (rowid, name, description_text, tags) "
                     f"SELECT rowid, name, description_text, tags FROM part.{SEARCH_ROWS}")
        # tags: the slice's ids are its own; new names get the next ids in the slice's order
        for tid, name in conn.execute("SELECT id, name FROM part.tags ORDER BY id").fetchall():
            if name not in writer.tag_ids:
                writer.tag_ids[name] = writer.next_tag
                conn.execute("INSERT INTO main.tags (id, name) VALUES (?, ?)",
                             (writer.next_tag, name))
                writer.next_tag += 1
        conn.execute("INSERT OR IGNORE INTO main.models_tags (models_id, tags_id) "
                     "SELECT pt.models_id, mt.id FROM part.models_tags pt "
                     "JOIN part.tags t ON t.id = pt.tags_id JOIN main.tags mt ON mt.name = t.name")
        conn.execute("INSERT INTO main.creators (username, image) "
                     "SELECT username, image FROM part.creators WHERE true "
                     "ON CONFLICT(username) DO UPDATE SET "
                     "image = coalesce(excluded.image, creators.image)")
        conn.commit()
    finally:
        conn.execute("DETACH DATABASE part")
    return both


def load_parallel(conn: sqlite3.Connection, dump: Path, todo: list, summary: BuildSummary,
                  progress: Callable[[int, int], None] | None, workers: int,
                  target: Path) -> None:
    """A fresh build on several cores: each extra process loads a slice into its own file, this
    one loads the first slice into ``target``; then the slices are merged in SQL, in order."""
    context = multiprocessing.get_context("fork" if hasattr(os, "fork") else "spawn")
    # This process also indexes its own slice while the others still load, and merges at the
    # end: it takes a smaller share.
    slices = _split(todo, [MAIN_SHARE] + [1.0] * workers)
    total = len(todo)
    children = []
    try:
        for k, part in enumerate(slices[1:], 1):
            path = target.with_name(f"{target.name}.part{k}")
            if path.exists():
                path.unlink()  # our own leftover from an interrupted build
            counter = context.Value("q", 0, lock=False)
            receive, send = context.Pipe(duplex=False)
            proc = context.Process(target=_load_part, args=(dump, part, path, counter, send),
                                   daemon=True)
            proc.start()
            send.close()
            children.append((proc, path, counter, receive))

        def report(done: int) -> None:
            if progress:
                progress(done + sum(c[2].value for c in children), total)

        load_files(conn, dump, slices[0], summary, True, frozenset(), set(), report)
        index_loaded(sqlite_utils.Database(conn))  # this slice's, while the others still load
        conn.commit()
        writer = Writer(conn, summary, fresh=False)  # keeps models_fts in step from here on
        both: list[int] = []
        for proc, path, counter, receive in children:
            try:
                status, result = receive.recv()
            except EOFError:
                status, result = "error", f"exit code {proc.exitcode}"
            proc.join()
            if status != "ok":
                raise RuntimeError(f"build worker failed: {result}")
            summary.files_read += result.files_read
            summary.skipped += result.skipped
            summary.errors.extend(result.errors)
            summary.models_rebuilt += result.models_rebuilt
            both.extend(_merge_part(writer, path, summary))
            path.unlink()
            report(len(slices[0]))
        rederive(writer, sorted(set(both)))
    finally:
        for proc, path, _counter, receive in children:
            if proc.is_alive():
                proc.kill()
            proc.join()
            receive.close()
            if path.exists():
                path.unlink()

