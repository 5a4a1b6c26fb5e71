"""The page ``/-/changes``: what the latest ``civitai-mirror update`` (or ``?run=N``) found upstream.

It reads the ``update_runs`` and ``changes`` tables (mirror.changes) of the served mirror and shows
the run's counts, then its changes grouped by kind in ``KINDS`` order, those touching your library
first and highlighted, each linked to the model's and version's pages, then the earlier runs. A
mirror no update has run on yet (no tables) gets a plain sentence saying so.

``read_changes(conn, run_id)`` is the whole query, pure; ``changes_view(find_db)`` makes the route
(mirror.plugin passes its lookup of the mirror database). Model names, versions and paths come from
strangers and the dump: the template escapes every value (Datasette's Jinja autoescape).
"""
from __future__ import annotations

import sqlite3
from datetime import datetime
from typing import Any, Awaitable, Callable

from datasette.utils.asgi import Response

from mirror.changes import KINDS, library_model_files
from mirror.model_page import relative
from mirror.schema import has_table

RUNS_LISTED = 50  # earlier runs listed under the report (all are in the update_runs table)
PER_GROUP = 500  # changes shown per kind (a full refresh can find thousands; the rest: the table)

MAX_FILES = 5  # library files listed per change (with serve --library)

#: the counts of a run, as the page labels them: (label, update_runs column)
RUN_COUNTS = [("new ids", "new_ids"), ("refreshed", "refreshed"), ("retried", "retried"),
              ("found", "found"), ("not found", "notfound"),
              ("kept beside (404 or worse on refresh)", "kept"), ("errors", "errors"),
              ("requests", "requests"), ("changes", "changes"), ("library changes", "library_changes")]

_KIND_ORDER = "CASE kind " + " ".join(f"WHEN '{k}' THEN {i}" for i, k in enumerate(KINDS)) + f" ELSE {len(KINDS)} END"

_CHANGES = f"""
SELECT kind, model_id, version_id, file_id, model_name, version_name, type, base_model, old, new,
       in_library, shown, total
FROM (SELECT *, row_number() OVER w AS shown, count(*) OVER (PARTITION BY in_library, kind) AS total
      FROM changes WHERE run_id = ?
      WINDOW w AS (PARTITION BY in_library, kind ORDER BY model_id, version_id, file_id, id))
WHERE shown <= ?
ORDER BY in_library DESC, {_KIND_ORDER}, kind, model_id, version_id, file_id
"""


def parse_run(value: str | None) -> int | None:
    """``?run=N``: None when absent or empty; ValueError unless a positive integer."""
    if value is None or value.strip() == "":
        return None
    run_id = int(value.strip())
    if not 0 < run_id < 2**63:
        raise ValueError(value)
    return run_id


def _has_tables(conn: sqlite3.Connection) -> bool:
    return has_table(conn, "update_runs") and has_table(conn, "changes")


def library_files(conn: sqlite3.Connection, model_ids: list[int]) -> dict[int, list[tuple[int, str]]]:
    """Up to ``MAX_FILES`` model files of library.sqlite matched to each of ``model_ids``: (file id,
    path relative to the folder it was scanned from, as the library overview shows it)."""
    held: dict[int, list[tuple[int, str]]] = {}
    for model_id, _, file_id, path, root in library_model_files(conn, model_ids):
        files = held.setdefault(model_id, [])
        if len(files) < MAX_FILES:
            files.append((file_id, relative(path, root)))
    return held


def _took(started: Any, finished: Any) -> str | None:
    try:
        seconds = int((datetime.fromisoformat(str(finished).replace("Z", "+00:00"))
                       - datetime.fromisoformat(str(started).replace("Z", "+00:00"))).total_seconds())
    except (TypeError, ValueError):
        return None
    if seconds < 0:
        return None
    hours, rest = divmod(seconds, 3600)
    return f"{hours} h {rest // 60} min" if hours else f"{rest // 60} min {rest % 60} s"


def read_changes(conn: sqlite3.Connection, run_id: int | None = None) -> dict[str, Any]:
    """What the page shows: ``ran`` (False before the first update), ``runs`` (the newest first),
    ``run`` (the latest, or ``run_id``; None when there is no such run) with ``counts`` and
    ``took``, and ``groups``: one per (in library, kind), library ones first, then ``KINDS`` order,
    each with its ``rows`` (at most ``PER_GROUP``) and ``total``."""
    if not _has_tables(conn):
        return {"ran": False, "runs": [], "run": None, "groups": []}
    conn_rows = conn.execute(
        "SELECT id, started_at, finished_at, full_refresh, baseline, changes, library_changes, errors "
        "FROM update_runs ORDER BY id DESC LIMIT ?", (RUNS_LISTED,))
    names = [d[0] for d in conn_rows.description]
    runs = [dict(zip(names, r)) for r in conn_rows]
    if not runs:
        return {"ran": False, "runs": [], "run": None, "groups": []}
    cursor = conn.execute("SELECT * FROM update_runs WHERE id = ?", (run_id if run_id is not None else runs[0]["id"],))
    row = cursor.fetchone()
    if row is None:
        return {"ran": True, "runs": runs, "run": None, "groups": []}
    run = dict(zip([d[0] for d in cursor.description], row))
    run["counts"] = [(label, run.get(column)) for label, column in RUN_COUNTS]
    run["took"] = _took(run.get("started_at"), run.get("finished_at"))
    groups: list[dict[str, Any]] = []
    cursor = conn.execute(_CHANGES, (run["id"], PER_GROUP))
    names = [d[0] for d in cursor.description]
    for values in cursor:
        change = dict(zip(names, values))
        key = (bool(change["in_library"]), change["kind"])
        if not groups or groups[-1]["key"] != key:
            groups.append({"key": key, "in_library": key[0], "kind": key[1],
                           "label": KINDS.get(key[1], key[1]), "total": change["total"], "rows": []})
        groups[-1]["rows"].append(change)
    return {"ran": True, "runs": runs, "run": run, "groups": groups}


async def _page(datasette, request, context: dict[str, Any], status: int = 200) -> Response:
    html = await datasette.render_template("changes.html", context, request=request)
    return Response.html(html, status=status)


def changes_view(find_db: Callable[[Any], Awaitable[Any]]):
    """The view of ``/-/changes`` over the database ``find_db(datasette)`` names (None: none served)."""
    async def view(datasette, request):
        try:
            run_id = parse_run(request.args.get("run"))
        except ValueError:
            return await _page(datasette, request, {"error": "run must be a run number, e.g. ?run=3",
                                                    "ran": True, "runs": [], "groups": []}, 400)
        db = await find_db(datasette)
        if db is None:
            data: dict[str, Any] = {"ran": False, "runs": [], "run": None, "groups": []}
        else:
            data = await db.execute_fn(lambda conn: read_changes(conn, run_id))
        data["db_name"] = db.name if db is not None else None
        # Which of your files a change touches: only from library.sqlite, which serve offers on
        # loopback only (civitai.sqlite, the file users share, stores just in_library).
        library = datasette.databases.get("library")
        data["library_db"] = library.name if library is not None else None
        held = [c["model_id"] for g in data["groups"] if g["in_library"] for c in g["rows"]]
        if library is not None and held:
            try:
                files = await library.execute_fn(lambda conn: library_files(conn, held))
            except sqlite3.Error:  # a library never matched: no matches table yet
                files = {}
            for group in data["groups"]:
                for change in group["rows"]:
                    change["files"] = files.get(change["model_id"], [])
        data["page"] = datasette.urls.path("/-/changes")
        if data["ran"] and data["run"] is None:
            data["error"] = f"No update run {run_id}"
            return await _page(datasette, request, data, 404)
        return await _page(datasette, request, data)
    return view
