"""Loading dump files into civitai.sqlite in this process: read, derive and write, task by task.

A task is a group of about ``TASK_FILES`` files, cut only where the model id (the file's stem)
changes, so a model's main and side files are read together. A model seen in several tasks (list
pages) is derived last, from all its snapshots in the database.
"""
from __future__ import annotations

import logging
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from mirror.derive import ModelRows, derive_model, json_text
from mirror.dump_reader import Snapshot, parse_document
from mirror.writer import INSERT_SQL, BuildSummary, Writer, mark_in_rows, snapshot_row

log = logging.getLogger(__name__)

TASK_FILES = 250
# A fresh build commits every this many files, not every group: each commit flushes models_fts's
# pending terms as a small segment, and merging those cost 0.2-0.35 s per 20k models (4,000 files
# hold a few of FTS5's own 1 MB flushes). Its journal is off: a commit only hands pages to the file.
FRESH_COMMIT_FILES = 4000


@dataclass
class _TaskResult:
    sources: list[tuple]
    snapshots: list[tuple]
    errors: list[tuple[str, str]]
    skips: list[tuple[str, str]]
    files_read: int
    derived: dict[int, ModelRows | None]  # models seen in this task (None: nothing usable)


def _read_task(dump: str, items: list[tuple[str, int, int, float]], skip: Any) -> _TaskResult:
    """Read, parse and derive one group of dump files (a model's files are never split)."""
    out = _TaskResult([], [], [], [], 0, {})
    pending: dict[int, list[Snapshot]] = {}
    for rel, size, mtime_ns, mtime in items:
        try:
            with open(os.path.join(dump, rel), "rb") as fh:
                raw = fh.read()
            snaps, why = parse_document(raw, rel, mtime)
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            out.errors.append((rel, str(exc)))
            out.sources.append((rel, size, mtime_ns, "error", "[]", str(exc)))
            continue
        out.files_read += 1
        if why:
            out.skips.append((rel, why))
        ids = sorted({sn.model_id for sn in snaps})
        kind = "skipped" if why else (snaps[0].kind if len(snaps) == 1 else "list")
        out.sources.append((rel, size, mtime_ns, kind, json_text(ids), why))
        for sn in snaps:
            pending.setdefault(sn.model_id, []).append(sn)
            out.snapshots.append(snapshot_row(sn))
    for model_id, snaps in pending.items():
        if model_id in skip:
            out.derived[model_id] = None
            continue
        # dedupe identical snapshots (main file and an identical side file)
        rows = derive_model(model_id, list({sn.sha: sn for sn in snaps}.values()))
        out.derived[model_id] = rows
    return out


def _tasks(todo: list[tuple[str, os.stat_result]], size: int) -> Iterator[list[tuple]]:
    """Groups of about ``size`` files, cut only where the model id (file stem) changes."""
    task: list[tuple] = []
    previous = None
    for rel, st in todo:
        stem = os.path.basename(rel).split(".", 1)[0]
        if len(task) >= size and stem != previous:
            yield task
            task = []
        task.append((rel, st.st_size, st.st_mtime_ns, st.st_mtime))
        previous = stem
    if task:
        yield task




def load_files(conn: sqlite3.Connection, dump: Path, todo: list, summary: BuildSummary,
               fresh: bool, skip: frozenset, deferred: set[int],
               progress: Callable[[int], None] | None, search_table: str = "models_fts") -> None:
    """Read, derive and write ``todo`` in this process; models seen in several groups (list
    pages) and those in ``deferred`` are derived last, from all their snapshots in the db.
    ``search_table``: where the models' search rows go (``Writer``)."""
    writer = Writer(conn, summary, fresh, search_table)
    seen_this_build: set[int] = set()
    done = committed = 0
    for task in _tasks(todo, TASK_FILES):
        result = _read_task(str(dump), task, skip)
        for rel, error in result.errors:
            summary.errors.append((rel, error))
            log.info("%s: %s (skipped)", dump / rel, error)  # in summary.errors: the caller reports it
        for rel, why in result.skips:
            log.info("%s: %s (skipped)", rel, why)
        summary.files_read += result.files_read
        summary.skipped += len(result.skips)
        now_ids, now_rows = [], []
        for model_id, rows in result.derived.items():
            if model_id in skip or model_id in seen_this_build or model_id in deferred:
                deferred.add(model_id)  # also in another group (list pages): derive from the db
                continue
            now_ids.append(model_id)
            if rows is not None:
                now_rows.append(rows)
        seen_this_build.update(result.derived)
        writer.insert_snapshots(mark_in_rows(result.snapshots, now_rows))
        conn.executemany(INSERT_SQL["_sources"], result.sources)
        writer.write_models(now_ids, now_rows, clean=False)
        done += len(task)
        if not fresh or done - committed >= FRESH_COMMIT_FILES:
            conn.commit()
            committed = done
        if progress:
            progress(done)
    conn.commit()
    rederive(writer, sorted(deferred))


def rederive(writer: Writer, ids: list[int]) -> None:
    for start in range(0, len(ids), 500):
        part = ids[start:start + 500]
        writer.restore_answers(part)  # every snapshot as JSON while the rows still stand for one
        loaded = writer.load_snapshots(part)
        rows = [r for r in (derive_model(mid, loaded.get(mid, [])) for mid in part)
                if r is not None]
        writer.write_models(part, rows, clean=True)
        writer.conn.commit()

