"""The journal of sort runs: apply a plan move by move, recover a crashed run, undo a run.

``apply_plan(db, plan)`` writes every move to ``journal`` (run id, source, destination, size,
sha256, state ``planned``) *before* moving anything, then moves file by file (``moving`` ->
``done``), updating ``files.path``. Same-device moves are renames; cross-device moves copy to a
hidden ``.part`` file beside the destination, verify its SHA256 against the journal, link it into
place and only then unlink the source.

**Crash recovery** (``recover_runs``): a run left ``running`` by a dead process, or
``interrupted`` by an exception, is *finished* automatically at the start of the next
``apply_plan`` or ``undo_run`` (or by ``civitai-mirror sort --resume``); ``--rollback`` instead
puts every file of the interrupted runs back. Each journal row is resolved by looking at the disk:
moved, not moved, or copied-but-not-unlinked (verified by hash) — nothing is lost either way.

``undo_run(db, run_id=None)`` moves a run's files back (default: the latest run not fully
undone), checking that each file is still the one that was moved (size + SHA256) and that its
old place is free; it refuses per file, not all-or-nothing, and can be re-run.

Tables (``runs``, ``plans``, ``journal``) are declared in ``matcher.schema``; single file moves
are ``matcher.fileops.move_file``.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import uuid
from typing import Any, Callable

import sqlite_utils

from crawler.clock import utc_now, utc_stamp
from matcher.fileops import move_file, part_path, prune_empty_dirs
from matcher.hashing import sha256_file
from matcher.paths import with_counter
from matcher.plan import Plan

log = logging.getLogger(__name__)


# ---- the journal -------------------------------------------------------------------------------

def _new_run_id() -> str:
    return utc_stamp() + "-" + uuid.uuid4().hex[:6]


def _set(db: sqlite_utils.Database, journal_id: int, **values: Any) -> None:
    values["_updated_at"] = utc_now()
    with db.conn:
        db.table("journal").update(journal_id, values)


def _update_library_path(db: sqlite_utils.Database, file_id: int | None, old: str, new: str) -> str | None:
    if file_id is None or not db.table("files").exists():
        return None
    try:
        db.execute("update files set path = ? where id = ? and path = ?", [new, file_id, old])
    except sqlite_utils.db.sqlite3.IntegrityError:
        return f"library row {file_id} not updated: another row already has {new}"
    return None


def _finish_row(db: sqlite_utils.Database, row: dict, state: str, forward: bool, error: str | None = None) -> None:
    old, new = (row["source"], row["destination"]) if forward else (row["destination"], row["source"])
    with db.conn:
        note = _update_library_path(db, row["file_id"], old, new)
        db.table("journal").update(row["id"], {"state": state, "error": error or note,
                                               "_updated_at": utc_now()})


def _process_alive(run: dict) -> bool:
    if run.get("host") and run["host"] != socket.gethostname():
        return True   # cannot tell: leave other machines' runs alone
    pid = run.get("pid")
    if not pid:
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def apply_plan(db: sqlite_utils.Database, plan: Plan,
               progress: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Apply ``plan``: journal every move first, then move file by file. Returns the run summary."""
    recover_runs(db)
    run_id = _new_run_id()
    with db.conn:
        db.table("runs").insert({"id": run_id, "dest": plan.dest, "state": "running",
                                 "moves": len(plan.moves), "ignored": len(plan.ignored),
                                 "_started_at": utc_now(), "pid": os.getpid(),
                                 "host": socket.gethostname()})
        plan_id = db.table("plans").insert({"dest": plan.dest, "plan_json": plan.to_json(),
                                            "summary_json": json.dumps(plan.summary()),
                                            "run_id": run_id, "_created_at": utc_now()}).last_pk
        db.table("runs").update(run_id, {"plan_id": plan_id})
    # Journal everything BEFORE the first move. Sizes and hashes are checked now: a DB hash is
    # trusted only when size and mtime still match the scan.
    rows = []
    chosen: set[str] = set()
    for seq, move in enumerate(plan.moves):
        row = {"run_id": run_id, "seq": seq, "file_id": move.file_id, "source": move.source,
               "role": move.role, "reason": move.reason, "state": "planned", "_updated_at": utc_now()}
        try:
            st = os.stat(move.source)
            sha = move.sha256.upper() if move.sha256 and move.size == st.st_size and (
                move.mtime_ns is None or move.mtime_ns == st.st_mtime_ns) else sha256_file(move.source)
            row.update(size=st.st_size, sha256=sha)
        except OSError as exc:
            row.update(state="failed", error=f"cannot read source: {exc.strerror or exc}")
        destination, counter = move.destination, 0
        while os.path.lexists(destination) or destination in chosen:
            counter += 1
            destination = with_counter(move.destination, counter)
        chosen.add(destination)
        row["destination"] = destination
        rows.append(row)
    with db.conn:
        db.table("journal").insert_all(rows)
        db.table("journal").insert_all(
            {"run_id": run_id, "seq": len(rows) + i, "file_id": ign.file_id, "source": ign.path,
             "destination": None, "state": "ignored", "reason": ign.reason, "role": "ignored",
             "_updated_at": utc_now()} for i, ign in enumerate(plan.ignored))
    try:
        for row in db.query("select * from journal where run_id = ? and state = 'planned' order by seq",
                            [run_id]):
            _do_move(db, row)
            if progress:
                progress(row)
    except BaseException as exc:
        with db.conn:
            db.table("runs").update(run_id, {"state": "interrupted", "error": repr(exc)[:500]})
        raise
    with db.conn:
        db.table("runs").update(run_id, {"state": "done", "_finished_at": utc_now()})
    return run_summary(db, run_id)


def _do_move(db: sqlite_utils.Database, row: dict) -> None:
    _set(db, row["id"], state="moving")
    try:
        move_file(row["source"], row["destination"], row["sha256"], f"j{row['id']}")
    except OSError as exc:
        log.warning("not moved: %s: %s", row["source"], exc)
        _set(db, row["id"], state="failed", error=f"{type(exc).__name__}: {exc.strerror or exc}")
        return
    _finish_row(db, row, "done", forward=True)


# ---- recovery ----------------------------------------------------------------------------------

def _same(path: str, row: dict) -> bool:
    try:
        return os.path.getsize(path) == row["size"] and sha256_file(path) == row["sha256"]
    except OSError:
        return False


def _resolve_row(db: sqlite_utils.Database, row: dict, rollback: bool) -> str:
    """Bring one in-flight journal row to a final state by looking at the disk."""
    src, dst = row["source"], row["destination"]
    undoing = row["state"] == "undoing"
    part = part_path(dst, f"j{row['id']}") if dst else None
    for leftover in (part, part_path(src, f"j{row['id']}")):
        if leftover and os.path.exists(leftover):
            os.unlink(leftover)   # our own half-written copy
    src_here, dst_here = os.path.lexists(src), bool(dst) and os.path.lexists(dst)
    if src_here and dst_here:
        # A cross-device copy finished but its source was not unlinked (or the reverse on undo).
        if _same(src, row) and _same(dst, row):
            keep_src = rollback or undoing
            os.unlink(dst if keep_src else src)
            src_here, dst_here = keep_src, not keep_src
        else:
            _set(db, row["id"], state="failed", error="both source and destination exist and differ; check by hand")
            return "failed"
    if undoing:
        if src_here:
            _finish_row(db, row, "undone", forward=False)
            return "undone"
        _set(db, row["id"], state="done", error="undo interrupted before the move; run undo again")
        return "done"
    if dst_here and not src_here:
        if rollback:
            if not _same(dst, row):
                _set(db, row["id"], state="failed", error="moved file changed; not rolled back")
                return "failed"
            _finish_row(db, row, "done", forward=True)
            move_file(dst, src, row["sha256"], f"j{row['id']}")
            _finish_row(db, row, "rolled_back", forward=False)
            return "rolled_back"
        _finish_row(db, row, "done", forward=True)
        return "done"
    if src_here:
        if rollback:
            _set(db, row["id"], state="rolled_back")
            return "rolled_back"
        _do_move(db, {**row, "state": "planned"})
        return "done"
    _set(db, row["id"], state="failed", error="file found neither at source nor at destination")
    return "failed"


def recover_runs(db: sqlite_utils.Database, rollback: bool = False) -> list[dict[str, Any]]:
    """Finish (or with ``rollback`` undo) every run a crash or an error left unfinished."""
    if not db.table("runs").exists():
        return []
    out = []
    runs = list(db.query("select * from runs where state in ('running', 'interrupted') order by _started_at"))
    for run in runs:
        if run["state"] == "running" and _process_alive(run):
            continue
        log.warning("recovering run %s (%s)", run["id"], "rollback" if rollback else "finish")
        rows = list(db.query(
            "select * from journal where run_id = ? and state in ('planned', 'moving', 'undoing') order by seq",
            [run["id"]]))
        for row in rows:
            _resolve_row(db, row, rollback)
        if rollback:
            for row in db.query("select * from journal where run_id = ? and state = 'done' order by seq desc",
                                [run["id"]]):
                _undo_row(db, row)
        state = "rolled_back" if rollback else "done"
        with db.conn:
            db.table("runs").update(run["id"], {"state": state, "_finished_at": utc_now()})
        out.append(run_summary(db, run["id"]))
    return out


# ---- undo --------------------------------------------------------------------------------------

def _undo_row(db: sqlite_utils.Database, row: dict) -> str | None:
    """Move one file back; returns None when done, else the reason it was refused."""
    src, dst = row["source"], row["destination"]
    if not os.path.lexists(dst):
        reason = "file is no longer at its destination"
    elif os.path.getsize(dst) != row["size"] or sha256_file(dst) != row["sha256"]:
        reason = "file changed since it was moved (size or SHA256 differ)"
    elif os.path.lexists(src):
        reason = "its original place is taken by another file"
    else:
        _set(db, row["id"], state="undoing", error=None)
        try:
            move_file(dst, src, row["sha256"], f"j{row['id']}")
        except OSError as exc:
            reason = f"move back failed: {exc.strerror or exc}"
        else:
            _finish_row(db, row, "undone", forward=False)
            return None
    log.warning("undo refused for %s: %s", dst, reason)
    _set(db, row["id"], state="undo_refused", error=reason)
    return reason


def undo_run(db: sqlite_utils.Database, run_id: str | None = None) -> dict[str, Any]:
    """Move a run's files back; refuses file by file. Default: the latest run not fully undone."""
    if not db.table("runs").exists():
        raise LookupError("no sort run recorded in this library")
    recover_runs(db)
    if run_id is None:
        found = list(db.query("select id from runs where state in ('done', 'partially_undone') "
                              "order by _started_at desc, rowid desc limit 1"))
        if not found:
            raise LookupError("no run left to undo")
        run_id = found[0]["id"]
    run = next(iter(db.query("select * from runs where id = ?", [run_id])), None)
    if run is None:
        raise LookupError(f"no run {run_id}")
    rows = list(db.query("select * from journal where run_id = ? and state in ('done', 'undo_refused') "
                         "order by seq desc", [run_id]))
    refused = []
    for row in rows:
        reason = _undo_row(db, row)
        if reason:
            refused.append({"source": row["source"], "destination": row["destination"], "reason": reason})
    prune_empty_dirs((os.path.dirname(r["destination"]) for r in rows), run["dest"])
    with db.conn:
        db.table("runs").update(run_id, {"state": "partially_undone" if refused else "undone",
                                         "_undone_at": utc_now()})
    summary = run_summary(db, run_id)
    summary["refused"] = refused
    return summary


# ---- listing -----------------------------------------------------------------------------------

def run_summary(db: sqlite_utils.Database, run_id: str) -> dict[str, Any]:
    run = next(iter(db.query("select * from runs where id = ?", [run_id])))
    counts = {r["state"]: r["n"] for r in db.query(
        "select state, count(*) as n from journal where run_id = ? group by state", [run_id])}
    return {"run_id": run["id"], "state": run["state"], "dest": run["dest"],
            "started_at": run["_started_at"], "finished_at": run["_finished_at"],
            "undone_at": run["_undone_at"], "moves": run["moves"], "ignored": run["ignored"],
            "journal": counts}


def list_runs(db: sqlite_utils.Database) -> list[dict[str, Any]]:
    if not db.table("runs").exists():
        return []
    return [run_summary(db, r["id"]) for r in
            db.query("select id from runs order by _started_at desc, rowid desc")]
