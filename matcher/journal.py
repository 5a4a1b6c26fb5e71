"""The journal of sort runs: apply a plan move by move, recover a crashed run, undo a run.

``apply_plan(db, plan)`` writes every move to ``journal`` (run id, source, destination, size,
sha256, state ``planned``) *before* moving anything, then moves file by file (``moving`` ->
``done``), updating ``files.path``. Same-device moves are no-replace renames; cross-device moves
copy to a hidden ``.part`` file beside the destination, verify its SHA256 against the journal,
rename it into place (never over an existing name) and only then unlink the source. The run
records the folders it had to create (``runs.created_dirs``).

**Crash recovery** (``recover_runs``): a sort left ``running`` by a dead process, or
``interrupted`` by an exception, is *finished* at the start of the next ``apply_plan`` or
``undo_run`` (or by ``civitai-mirror sort --resume``); ``rollback=True`` instead puts its files
back. An *undo* left ``undoing`` by a dead process is always finished (its files go back: that is
what both finishing it and rolling it back mean). Each journal row in flight is resolved by
looking at the disk: moved, not moved, or copied twice (both copies verified by hash before one
goes) — nothing is lost either way.

``undo_run(db, run_id=None)`` moves a run's files back (default: the latest run with a file left
to put back; a run that moved nothing is never the default). Each file must still be the one that
was moved (size + SHA256) and its old place free; it refuses per file, not all-or-nothing, and can
be re-run. Undoing a sort that was interrupted rolls back what it moved (it does not first finish
it). A run is reported ``undone`` only when no row of it is left at its destination or in flight.
The empty folders the run created are removed; no other folder is.

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
from matcher.fileops import missing_dirs, move_file, part_path, prune_empty_dirs, remove_empty_dirs
from matcher.fsnames import disk_path, shown, stored_path
from matcher.hashing import sha256_file
from matcher.paths import with_counter
from matcher.plan import Plan

log = logging.getLogger(__name__)

#: Journal states of a row whose file may still sit at its destination (or be on its way).
UNFINISHED = ("planned", "moving", "done", "undoing", "undo_refused")
#: Journal states of a row caught mid-way by a crash.
IN_FLIGHT = ("planned", "moving", "undoing")


# ---- the journal -------------------------------------------------------------------------------

def _new_run_id() -> str:
    return utc_stamp() + "-" + uuid.uuid4().hex[:6]


def _set(db: sqlite_utils.Database, journal_id: int, **values: Any) -> None:
    values["_updated_at"] = utc_now()
    with db.conn:
        db.table("journal").update(journal_id, values)


def _set_run(db: sqlite_utils.Database, run_id: str, **values: Any) -> None:
    with db.conn:
        db.table("runs").update(run_id, values)


def _source(row: dict) -> str:
    """A journal row's source on disk: its exact bytes when the name is not UTF-8 (matcher.fsnames)."""
    return disk_path(row["source"], row.get("source_bytes"))


def _update_library_path(db: sqlite_utils.Database, file_id: int | None, old: str, new: str) -> str | None:
    if file_id is None or not db.table("files").exists():
        return None
    new_text, new_bytes = stored_path(new)
    try:
        db.execute("update files set path = ?, path_bytes = ? where id = ? and path = ?",
                   [new_text, new_bytes, file_id, shown(old)])
    except sqlite_utils.db.sqlite3.IntegrityError:
        return f"library row {file_id} not updated: another row already has {new}"
    return None


def _finish_row(db: sqlite_utils.Database, row: dict, state: str, forward: bool, error: str | None = None) -> None:
    old, new = (_source(row), row["destination"]) if forward else (row["destination"], _source(row))
    with db.conn:
        note = _update_library_path(db, row["file_id"], old, new)
        db.table("journal").update(row["id"], {"state": state, "error": error or note,
                                               "_updated_at": utc_now()})


def _process_alive(run: dict) -> bool:
    if run.get("host") and run["host"] != socket.gethostname():
        return True   # cannot tell: leave other machines' runs alone
    pid = run.get("pid")
    if not pid or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _source_error(move: Any, exc: OSError) -> str:
    if os.path.lexists(move.destination) and not os.path.lexists(move.source):
        return "source is gone and its destination exists: was this plan applied already?"
    return f"cannot read source: {exc.strerror or exc}"


def apply_plan(db: sqlite_utils.Database, plan: Plan,
               progress: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Apply ``plan``: journal every move first, then move file by file. Returns the run summary,
    with ``failed``: one ``{source, destination, reason}`` per move that did not happen."""
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
    try:
        _journal_moves(db, run_id, plan)
        for row in db.query("select * from journal where run_id = ? and state = 'planned' order by seq",
                            [run_id]):
            _do_move(db, row)
            if progress:
                progress(row)
    except BaseException as exc:
        _set_run(db, run_id, state="interrupted", error=repr(exc)[:500])
        raise
    _set_run(db, run_id, state="done", _finished_at=utc_now())
    return {**run_summary(db, run_id), "failed": _failed(db, run_id)}


def _failed(db: sqlite_utils.Database, run_id: str) -> list[dict[str, Any]]:
    return [{"source": r["source"], "destination": r["destination"], "reason": r["error"]}
            for r in db.query("select * from journal where run_id = ? and state = 'failed' order by seq", [run_id])]


def _journal_moves(db: sqlite_utils.Database, run_id: str, plan: Plan) -> None:
    """Journal everything BEFORE the first move. Sizes and hashes are checked now: a DB hash is
    trusted only when size and mtime still match the scan."""
    rows = []
    chosen: set[str] = set()
    for seq, move in enumerate(plan.moves):
        source, source_bytes = stored_path(move.source)
        row = {"run_id": run_id, "seq": seq, "file_id": move.file_id, "source": source, "source_bytes": source_bytes,
               "role": move.role, "reason": move.reason, "state": "planned", "_updated_at": utc_now()}
        try:
            st = os.stat(move.source)
            sha = move.sha256.upper() if move.sha256 and move.size == st.st_size and (
                move.mtime_ns is None or move.mtime_ns == st.st_mtime_ns) else sha256_file(move.source)
            row.update(size=st.st_size, sha256=sha)
        except OSError as exc:
            row.update(state="failed", error=_source_error(move, exc))
        destination, counter = move.destination, 0
        while row["state"] == "planned" and (os.path.lexists(destination) or destination in chosen):
            counter += 1
            destination = with_counter(move.destination, counter)
        chosen.add(destination)
        row["destination"] = destination
        rows.append(row)
    created = missing_dirs(r["destination"] for r in rows if r["state"] == "planned")
    with db.conn:
        db.table("runs").update(run_id, {"created_dirs": json.dumps(created)})
        db.table("journal").insert_all(rows)
        db.table("journal").insert_all(
            {"run_id": run_id, "seq": len(rows) + i, "file_id": ign.file_id, "source": ign.path,
             "destination": None, "state": "ignored", "reason": ign.reason, "role": "ignored",
             "_updated_at": utc_now()} for i, ign in enumerate(plan.ignored))


def _do_move(db: sqlite_utils.Database, row: dict) -> None:
    _set(db, row["id"], state="moving")
    try:
        move_file(_source(row), row["destination"], row["sha256"], f"j{row['id']}")
    except OSError as exc:
        log.info("not moved: %s: %s", row["source"], exc)
        reason = "destination taken by another file" if isinstance(exc, FileExistsError) else \
            f"{type(exc).__name__}: {exc.strerror or exc}"
        _set(db, row["id"], state="failed", error=reason)
        return
    _finish_row(db, row, "done", forward=True)


# ---- recovery ----------------------------------------------------------------------------------

def _same(path: str, row: dict) -> bool:
    try:
        return os.path.getsize(path) == row["size"] and sha256_file(path) == row["sha256"]
    except OSError:
        return False


def _resolve_row(db: sqlite_utils.Database, row: dict, back: bool) -> None:
    """Bring one in-flight journal row to a settled state by looking at the disk.

    Afterwards the row is ``done`` (its file is at the destination), ``undone`` / ``rolled_back``
    (at the source), or ``failed``. With ``back`` (a rollback, or an undo in flight) a file seen
    twice is kept at its source and a file not yet moved stays; otherwise the move is finished.
    """
    src, dst = _source(row), row["destination"]
    undoing = row["state"] == "undoing"
    back = back or undoing
    for leftover in (part_path(dst, f"j{row['id']}") if dst else None, part_path(src, f"j{row['id']}")):
        if leftover and os.path.exists(leftover):
            os.unlink(leftover)   # our own half-written copy
    src_here, dst_here = os.path.lexists(src), bool(dst) and os.path.lexists(dst)
    if src_here and dst_here:
        src_ours, dst_ours = _same(src, row), _same(dst, row)
        if src_ours and dst_ours:   # a copy finished but the old name was not unlinked yet
            os.unlink(dst if back else src)
            src_here, dst_here = back, not back
        elif dst_ours:
            src_here = False        # the file moved; something new sits at the source
        elif src_ours:
            dst_here = False        # not moved; something else took the destination name
        else:
            _set(db, row["id"], state="failed", error="both source and destination exist and differ "
                                                      "from the journaled file; check by hand")
            return
    elif dst_here and not _same(dst, row):
        dst_here = False            # what sits at the destination is not the journaled file
    if dst_here:
        _finish_row(db, row, "done", forward=True)
    elif src_here:
        if undoing:
            _finish_row(db, row, "undone", forward=False)
        elif back:
            _set(db, row["id"], state="rolled_back")
        else:
            _do_move(db, {**row, "state": "planned"})
    else:
        _set(db, row["id"], state="failed", error="file found neither at source nor at destination")


def _settle(db: sqlite_utils.Database, run_id: str, back: bool) -> None:
    for row in list(db.query(f"select * from journal where run_id = ? and state in "
                             f"({', '.join('?' * len(IN_FLIGHT))}) order by seq", [run_id, *IN_FLIGHT])):
        _resolve_row(db, row, back)


def recover_runs(db: sqlite_utils.Database, rollback: bool = False,
                 exclude: str | None = None) -> list[dict[str, Any]]:
    """Finish (or with ``rollback`` put back) every sort a crash or an error left unfinished, and
    finish every undo a crash left unfinished. ``exclude``: a run id to leave alone."""
    if not db.table("runs").exists():
        return []
    out = []
    runs = list(db.query("select * from runs where state in ('running', 'interrupted', 'undoing') "
                         "order by _started_at, rowid"))
    for run in runs:
        if run["id"] == exclude or (run["state"] in ("running", "undoing") and _process_alive(run)):
            continue
        if run["state"] == "undoing":
            log.warning("finishing the interrupted undo of run %s", run["id"])
            out.append(_put_back(db, run, "undone"))
        elif rollback:
            log.warning("rolling back run %s", run["id"])
            out.append(_put_back(db, run, "rolled_back"))
        else:
            log.warning("finishing run %s", run["id"])
            _settle(db, run["id"], back=False)
            _set_run(db, run["id"], state="done", _finished_at=utc_now())
            out.append({**run_summary(db, run["id"]), "failed": _failed(db, run["id"])})
    return out


# ---- undo --------------------------------------------------------------------------------------

def _undo_row(db: sqlite_utils.Database, row: dict) -> str | None:
    """Move one file back; returns None when done, else the reason it was refused."""
    src, dst = _source(row), row["destination"]
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
        except FileExistsError:
            reason = "its original place is taken by another file"
        except OSError as exc:
            reason = f"move back failed: {exc.strerror or exc}"
        else:
            _finish_row(db, row, "undone", forward=False)
            return None
    log.info("undo refused for %s: %s", dst, reason)
    _set(db, row["id"], state="undo_refused", error=reason)
    return reason


def _put_back(db: sqlite_utils.Database, run: dict, finished: str) -> dict[str, Any]:
    """Put every file of ``run`` back where it was. The run is ``undoing`` (with this process's
    id) until the end, so a crash mid-way is finished by the next undo or ``sort --resume``."""
    run_id = run["id"]
    _set_run(db, run_id, state="undoing", pid=os.getpid(), host=socket.gethostname(), error=None)
    try:
        _settle(db, run_id, back=True)
        refused = []
        for row in list(db.query("select * from journal where run_id = ? and state in ('done', 'undo_refused') "
                                 "order by seq desc", [run_id])):
            reason = _undo_row(db, row)
            if reason:
                refused.append({"source": row["source"], "destination": row["destination"], "reason": reason})
    except BaseException as exc:
        _set_run(db, run_id, error=f"undo interrupted: {exc!r}"[:500])
        raise
    left = db.execute(f"select count(*) from journal where run_id = ? and state in "
                      f"({', '.join('?' * len(UNFINISHED))})", [run_id, *UNFINISHED]).fetchone()[0]
    _remove_created_dirs(db, run)
    _set_run(db, run_id, state="partially_undone" if left else finished, _undone_at=utc_now())
    summary = run_summary(db, run_id)
    summary["refused"] = refused
    return summary


def _remove_created_dirs(db: sqlite_utils.Database, run: dict) -> None:
    created = run.get("created_dirs")
    if created is None:   # a run from before runs.created_dirs: prune below its destination root
        folders = [os.path.dirname(r["destination"]) for r in db.query(
            "select destination from journal where run_id = ? and destination is not null", [run["id"]])]
        prune_empty_dirs(folders, run["dest"])
        return
    try:
        folders = json.loads(created)
    except ValueError:
        return
    remove_empty_dirs(f for f in folders if isinstance(f, str))


def undo_run(db: sqlite_utils.Database, run_id: str | None = None) -> dict[str, Any]:
    """Move a run's files back; refuses file by file. Default: the latest run with a file to put
    back. Other unfinished runs are finished first; an interrupted run itself is rolled back."""
    if not db.table("runs").exists():
        raise LookupError("no sort run recorded in this library")
    if run_id is None:
        found = list(db.query(
            f"select id from runs where state != 'rolled_back' and exists (select 1 from journal j where "
            f"j.run_id = runs.id and j.state in ({', '.join('?' * len(UNFINISHED))})) "
            f"order by _started_at desc, rowid desc limit 1", list(UNFINISHED)))
        if not found:
            raise LookupError("no run left to undo")
        run_id = found[0]["id"]
    run = next(iter(db.query("select * from runs where id = ?", [run_id])), None)
    if run is None:
        raise LookupError(f"no run {run_id}")
    if run["state"] in ("running", "undoing") and _process_alive(run):
        raise LookupError(f"run {run_id} is {run['state']} in process {run['pid']}; wait for it to end")
    if run["state"] in ("undone", "rolled_back"):
        raise LookupError(f"run {run_id} is already {run['state'].replace('_', ' ')}")
    recover_runs(db, exclude=run_id)
    return _put_back(db, run, "undone")


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
