"""Readable tables by default: bookkeeping and JSON columns hidden unless asked, dates and sizes for people.

``hidden_columns`` in the plugin's configuration (datasette_metadata.yml, ``plugins: civitai-mirror:``)
names, per table, the columns an HTML table page leaves out when the request names no columns of
its own: ``default_columns`` adds them as ``_nocol`` to the request before Datasette reads it (a
request with ``_col``, ``_nocol`` or ``_allcols=1`` is left as it is; JSON and CSV always have
every column). ``display_cell`` shows epoch-second dates as dates and ``sizeKB`` as 2.0 GB.
"""
from __future__ import annotations

from datetime import datetime, timezone
from urllib.parse import parse_qsl, unquote, urlencode

import markupsafe

#: integer columns of the mirror that hold epoch seconds
DATE_COLUMNS = {"created_at", "updated_at", "published_at"}
_OWN_CHOICE = {"_col", "_nocol", "_allcols"}


def _hidden_for(config: dict, path: str) -> list[str] | None:
    parts = [unquote(p) for p in path.strip("/").split("/")]
    if len(parts) != 2 or "." in parts[1]:  # /db/table only: not a row, not .json/.csv
        return None
    return ((config.get("hidden_columns") or {}).get(parts[0]) or {}).get(parts[1])


def prune_hidden(config: dict, database: str, columns: dict[str, set[str]]) -> None:
    """Keep in ``hidden_columns`` of ``database`` only the columns its file has (Datasette
    answers 400 for a ``_nocol`` naming a column that does not exist)."""
    tables = (config.get("hidden_columns") or {}).get(database) or {}
    for table, hidden in list(tables.items()):
        tables[table] = [c for c in hidden or [] if c in columns.get(table, set())]


#: EXIF columns of library.file_overview, hidden when no file of the library has them
EXIF_COLUMNS = ("exif_make", "exif_model", "exif_lens", "exif_exposure", "exif_f_number", "exif_iso",
                "exif_focal_length", "exif_datetime_original", "exif_software", "exif_gps_present",
                "exif_orientation")


def hide_empty_exif(config: dict, conn) -> None:
    """Add to the hidden columns of library.file_overview the EXIF columns no file has (read once,
    when serving starts)."""
    try:
        counts = conn.execute("SELECT " + ", ".join(f"count({c})" for c in EXIF_COLUMNS)
                              + " FROM media_info").fetchone()
    except Exception:  # noqa: BLE001 - a library without media_info: its view has no EXIF either
        return
    library = config.setdefault("hidden_columns", {}).setdefault("library", {})
    hidden = list(library.get("file_overview") or [])
    library["file_overview"] = hidden + [c for c, n in zip(EXIF_COLUMNS, counts) if not n and c not in hidden]


def with_default_columns(config: dict, path: str, query_string: bytes) -> bytes:
    """The query string of a table page with the table's hidden columns as ``_nocol``."""
    hidden = _hidden_for(config, path)
    if not hidden:
        return query_string
    args = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
    if any(k in _OWN_CHOICE or k == "_format" for k, _ in args):
        return query_string
    return urlencode(args + [("_nocol", c) for c in hidden]).encode("latin-1")


def default_columns(app, datasette, plugin_name: str):
    """An ASGI wrapper that gives table pages their default columns (see the module docstring)."""
    async def wrapped(scope, receive, send):
        if scope.get("type") == "http" and scope.get("method") in ("GET", "HEAD"):
            config = datasette.plugin_config(plugin_name) or {}
            query = with_default_columns(config, scope.get("path", ""), scope.get("query_string", b""))
            if query != scope.get("query_string", b""):
                scope = {**scope, "query_string": query}
        await app(scope, receive, send)
    return wrapped


def human_kib(kib: float) -> str:
    size = float(kib) * 1024
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit in ("B", "KB") else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.2f} TB"


def display_cell(value, column: str, table: str | None):
    """A date or size of the mirror as people read it (the raw value in a tooltip); None otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if column in DATE_COLUMNS and 0 < value < 32503680000:
        when = datetime.fromtimestamp(value, timezone.utc).strftime("%Y-%m-%d %H:%M")
        return markupsafe.Markup('<span title="{}">{}</span>').format(value, when)
    if column == "sizeKB" and value >= 0:
        return markupsafe.Markup('<span title="{} KiB">{}</span>').format(value, human_kib(value))
    return None


_MIRROR_COUNTS = [("models", "models"), ("versions", "model_versions"), ("files", "model_files"),
                  ("preview images", "images")]
_LIBRARY_COUNTS = [("files", "SELECT count(*) FROM files"),
                   ("matched to Civitai", "SELECT count(*) FROM matches WHERE version_id IS NOT NULL")]


def _counts(conn, queries: list[tuple[str, str]]) -> list[tuple[str, int]]:
    out = []
    for label, sql in queries:
        try:
            out.append((label, conn.execute(sql).fetchone()[0]))
        except Exception:  # noqa: BLE001 - a table an older file lacks: leave it out
            continue
    return out


async def home(datasette, request) -> dict:
    """What the home page shows above the databases: counts and the canned queries of each."""
    sections = {}
    for name, queries in (("civitai", [(label, f"SELECT count(*) FROM {table}")
                                       for label, table in _MIRROR_COUNTS]),
                          ("library", _LIBRARY_COUNTS)):
        db = datasette.databases.get(name)
        if db is None:
            continue
        counts = await db.execute_fn(lambda conn, q=queries: _counts(conn, q))
        canned = await datasette.get_canned_queries(name, request.actor if request else None)
        sections[name] = {"counts": counts,
                          "queries": [(key, q.get("title") or key) for key, q in canned.items()]}
    return {"home": sections}
