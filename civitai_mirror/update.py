"""One unattended run that keeps the mirror current: ``civitai-mirror update``.

The steps, each safe to kill at any point (the next run continues; nothing is lost):

1. take the lock (``<db>.lock``, an OS lock the kernel drops when the process dies);
2. crawl: ``--retry`` of errors.txt and ``--crawl`` of new ids (crawler.jobs, batch mode);
3. refresh the models that may have changed, 100 ids per request with every absent id confirmed
   one by one (a 404 keeps the good copy and marks the model gone): the newest, those the library
   holds, then the next slice of a rotation through the rest, so the whole catalogue is refreshed
   within ``refresh_nights`` runs (``full_refresh``: all of them);
4. build: copy the mirror to ``<db>.update``, build incrementally into the copy (only the dump
   files that changed), record the run and what changed upstream (mirror.changes) in the copy,
   re-match the library against it, then ``os.replace`` it over the mirror. ``serve`` follows the
   swap (it reopens a file whose inode changed) and, until then, answers from the previous
   database, which nothing writes to.

The dump is the archive and the logs in it are the state: a killed crawl resumes from them, a
killed build leaves a ``.update`` copy that the next run deletes and makes again, and the rotation
cursor is only advanced by a finished run.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from crawler.client import CivitaiClient
from crawler.clock import utc_iso
from crawler.jobs import CrawlOptions, CrawlStats, run_crawl
from matcher.match import match_library
from matcher.schema import open_library
from mirror.build import build_mirror
from mirror.changes import UPDATE_TABLES, last_refresh_cursor, record_changes
from mirror.facets import save_facet_counts
from mirror.schema import connect_read_only
from mirror.writer import BuildSummary

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None
    import msvcrt

DEFAULT_NEWEST = 2000
DEFAULT_NIGHTS = 30
EXIT_LOCKED = 75  # EX_TEMPFAIL: cron and systemd read it as "try again later"


class UpdateLocked(RuntimeError):
    """Another update holds the lock of this mirror."""


@dataclass
class UpdateOptions:
    dump: Path
    db: Path
    library: Path | None = None
    full_refresh: bool = False
    crawl_new: bool = True
    retry: bool = True
    refresh: bool = True
    newest: int = DEFAULT_NEWEST
    refresh_nights: int = DEFAULT_NIGHTS
    threads: int = 5
    images: bool = False


@dataclass
class UpdateResult:
    run: dict[str, Any] = field(default_factory=dict)
    changes: list[dict[str, Any]] = field(default_factory=list)
    crawl: CrawlStats | None = None
    refresh: CrawlStats | None = None
    build: BuildSummary | None = None
    library: dict[str, Any] | None = None
    interrupted: bool = False


# -- the lock ---------------------------------------------------------------------------------------

def lock_path(db: Path) -> Path:
    return db.with_name(db.name + ".lock")


@contextmanager
def update_lock(db: Path) -> Iterator[None]:
    """Hold ``<db>.lock`` for the run; raise :class:`UpdateLocked` naming the holder when taken.

    The lock is the kernel's (``flock``), not the file's existence: a killed run never leaves a
    stale lock. The file stays (deleting it would let two runs lock two different files)."""
    path = lock_path(db)
    fh = open(path, "a+", encoding="utf-8")
    try:
        try:
            if fcntl is not None:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            else:  # pragma: no cover - Windows
                msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            fh.seek(0)
            holder = fh.read(200).strip() or "another process"
            raise UpdateLocked(f"another update of {db} is running ({holder}); this one did nothing") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} since {utc_iso(time.time())}\n")
        fh.flush()
        yield
    finally:
        fh.close()


# -- which models to refresh ------------------------------------------------------------------------

def library_model_ids(library: Path | None) -> set[int]:
    """Civitai models the library's model files are matched to (none without a library or a match yet)."""
    if library is None or not library.exists():
        return set()
    conn = connect_read_only(library)
    try:
        return {row[0] for row in conn.execute(
            "SELECT DISTINCT m.model_id FROM matches m JOIN files f ON f.id = m.file_id "
            "WHERE m.model_id IS NOT NULL AND f.kind = 'model'")}
    except sqlite3.OperationalError:  # a library never matched: no matches table yet
        return set()
    finally:
        conn.close()


def choose_refresh(db: Path, options: UpdateOptions) -> tuple[list[int], int]:
    """The model ids to fetch again this run, and the rotation cursor to store when it finishes."""
    if not db.exists():
        return [], 0
    conn = connect_read_only(db)
    try:
        known = [row[0] for row in conn.execute("SELECT id FROM models ORDER BY id")]
        cursor = last_refresh_cursor(conn)
    finally:
        conn.close()
    if options.full_refresh:
        return known, 0
    chosen = set(known[-options.newest:]) if options.newest else set()
    chosen |= library_model_ids(options.library) & set(known)
    rest = [i for i in known if i not in chosen]
    if rest:
        size = -(-len(rest) // max(1, options.refresh_nights))  # ceil: every id within the nights
        after = [i for i in rest if i > cursor]
        window = (after + [i for i in rest if i <= cursor])[:size]
        chosen.update(window)
        cursor = window[-1] if window else cursor
    return sorted(chosen), cursor


# -- the run ----------------------------------------------------------------------------------------

async def crawl_phase(options: UpdateOptions, client: CivitaiClient, refresh_ids: list[int],
                      on_progress: Callable[[str, CrawlStats], None] | None,
                      stop: asyncio.Event) -> tuple[CrawlStats | None, CrawlStats | None]:
    """New ids and retries, then the refresh (absent ids confirmed one by one: a takedown is a 404)."""
    def progress(stage):
        return (lambda stats: on_progress(stage, stats)) if on_progress else None

    crawl = refresh = None
    async with client:
        if options.crawl_new or options.retry:
            crawl = await run_crawl(CrawlOptions(out=options.dump, retry=options.retry, crawl=options.crawl_new,
                                                 threads=options.threads, images=options.images),
                                    client, progress("crawl"), stop)
        if refresh_ids and not stop.is_set():
            refresh = await run_crawl(CrawlOptions(out=options.dump, ids=tuple(refresh_ids), confirm_missing=True,
                                                   threads=options.threads, images=options.images),
                                      client, progress("refresh"), stop)
    return crawl, refresh


def work_path(db: Path) -> Path:
    return db.with_name(db.name + ".update")


def build_phase(options: UpdateOptions, result: UpdateResult, started: float,
                progress: Callable[[int, int], None] | None = None,
                on_stage: Callable[[str], None] | None = None) -> None:
    """Build into a copy, record the run and its changes, re-match the library, swap the copy in."""
    db, work = options.db, work_path(options.db)
    for leftover in (work, work.with_name(work.name + "-journal")):
        if leftover.exists():
            leftover.unlink()  # our own copy from a run that was killed: made again below
    had_mirror = db.exists()
    try:
        run = _build_and_record(options, result, started, had_mirror, progress, on_stage)
    except BaseException:
        work.unlink(missing_ok=True)  # a failed run leaves nothing behind (a killed one: the next deletes it)
        raise
    _fsync(work)
    os.replace(work, db)
    _fsync(db.parent, directory=True)
    result.run = run


def _build_and_record(options: UpdateOptions, result: UpdateResult, started: float, had_mirror: bool,
                      progress: Callable[[int, int], None] | None,
                      on_stage: Callable[[str], None] | None) -> dict[str, Any]:
    """Copy, build, record the run and its changes, re-match: everything before the swap."""
    db, work = options.db, work_path(options.db)
    if had_mirror:
        if on_stage:
            on_stage("copy")
        copy_file(db, work)
    if on_stage:
        on_stage("build")
    result.build = build_mirror(options.dump, work, progress=progress)
    crawl, refresh = result.crawl, result.refresh
    retried = min(result.run.get("retried", 0), crawl.done) if crawl else 0
    run = {
        "started_at": utc_iso(started), "dump": str(options.dump.resolve()),
        "library": str(options.library.resolve()) if options.library else None,
        "full_refresh": int(options.full_refresh),
        "new_ids": max(0, crawl.done - retried) if crawl else 0, "refreshed": refresh.done if refresh else 0,
        "retried": retried, "found": sum(s.found for s in (crawl, refresh) if s),
        "notfound": sum(s.notfound for s in (crawl, refresh) if s),
        "kept": sum(s.kept for s in (crawl, refresh) if s),
        "errors": sum(s.errors for s in (crawl, refresh) if s),
        "requests": sum(s.requests for s in (crawl, refresh) if s),
        "refresh_cursor": result.run.get("refresh_cursor", 0),
        "files_read": result.build.files_read, "models": result.build.models,
    }
    conn = sqlite3.connect(str(work))
    try:
        result.changes = record_changes(conn, db if had_mirror else None, options.library, run)
        save_facet_counts(conn, tables=set(UPDATE_TABLES))  # the build counted them before this run's rows
        if options.library is not None and options.library.exists():
            if on_stage:
                on_stage("match")
            library = open_library(str(options.library))
            try:
                result.library = match_library(library, str(work))
            finally:
                library.close()
            run["library_matched"] = result.library.get("models_matched")
        run["finished_at"] = utc_iso(time.time())
        conn.execute("UPDATE update_runs SET library_matched = ?, finished_at = ? WHERE id = ?",
                     (run.get("library_matched"), run["finished_at"], run["id"]))
        conn.commit()
    finally:
        conn.close()
    return run


def copy_file(src: Path, dst: Path) -> None:
    """Copy ``src`` to a new ``dst``: ``copy_file_range`` where the OS has it (on XFS and btrfs the
    copy shares the blocks until they are written: a 20 GB mirror copies in a moment), else an
    ordinary copy."""
    if hasattr(os, "copy_file_range"):
        try:
            with open(src, "rb") as fin, open(dst, "xb") as fout:
                left = os.fstat(fin.fileno()).st_size
                while left > 0:
                    n = os.copy_file_range(fin.fileno(), fout.fileno(), min(left, 1 << 30))
                    if n == 0:
                        break
                    left -= n
                if left == 0:
                    return
        except OSError:
            pass
        dst.unlink(missing_ok=True)
    shutil.copyfile(src, dst)


def _fsync(path: Path, directory: bool = False) -> None:
    """Flush ``path`` to disk (a swap must not land before its bytes after a power cut)."""
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    except OSError:  # pragma: no cover - a folder cannot be opened on Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)
