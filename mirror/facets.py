"""Facet counts computed once by ``build``, so a table page without filters answers without a scan.

Datasette counts every facet configured in datasette_metadata.yml (``facets:``) by scanning the
table on each page view, and an array facet (``tags``, ``baseModels``) also unpacks each row's JSON
and de-duplicates whole rows: at 100,000 models that is most of a second a page.
``save_facet_counts(conn)`` (the end of ``build``) writes those counts into ``_facet_counts`` and
indexes the array columns. ``PrecomputedColumnFacet`` and ``PrecomputedArrayFacet`` (put in place
of Datasette's own classes by the plugin) answer a table page with no filter from that table; on a
filtered page (a facet value chosen, a search, ``_where``, the next page), and for a facet asked
for in the URL, they count the matching rows (an array facet from the key and the array only), the
facets of one page sharing ``FACET_BUDGET_MS``. The counts are Datasette's either way.
"""
from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import yaml
from datasette.database import QueryInterrupted
from datasette.facets import ArrayFacet, ColumnFacet, load_facet_configs
from datasette.utils import escape_sqlite, path_with_added_args, path_with_removed_args

from mirror.schema import has_table

FACET_TABLE = "_facet_counts"
#: what the facets one page counts by a scan may take together (each also within Datasette's
#: facet_time_limit_ms); the ones not done by then are listed as timed out, as Datasette lists a
#: slow facet. Saved counts take no part of it.
FACET_BUDGET_MS = 250
#: a filtered page over more rows than this gets no facet suggestions
SUGGEST_MAX_ROWS = 10_000
_DEADLINE = "civitai_mirror.facet_deadline"
FACET_TYPES = ("column", "array")
METADATA_FILE = Path(__file__).resolve().parent / "datasette_metadata.yml"
_DDL = f"""CREATE TABLE IF NOT EXISTS {FACET_TABLE} (
    table_name TEXT NOT NULL, facet_type TEXT NOT NULL, facet TEXT NOT NULL, value, count INTEGER)"""
_INDEX = (f"CREATE INDEX IF NOT EXISTS {FACET_TABLE}_order "
          f"ON {FACET_TABLE} (table_name, facet_type, facet, count DESC, value)")


def configured_facets(metadata: dict[str, Any], database: str = "civitai") -> list[tuple[str, str, str]]:
    """(table, facet type, column) for every column and array facet the metadata configures."""
    tables = (((metadata.get("databases") or {}).get(database) or {}).get("tables") or {})
    out = []
    for table, table_metadata in tables.items():
        for facet_type, configs in load_facet_configs(_NoRequest, table_metadata or {}).items():
            if facet_type in FACET_TYPES:
                out.extend((table, facet_type, c["config"].get("column") or c["config"]["simple"])
                           for c in configs)
    return out


class _NoRequest:
    query_string = ""


def _count_sql(table: str, facet_type: str, column: str) -> str:
    t, c = escape_sqlite(table), escape_sqlite(column)
    if facet_type == "column":
        return f"SELECT {c}, count(*) FROM {t} WHERE {c} IS NOT NULL GROUP BY {c}"
    # as Datasette's array facet: the rows holding each value (a value twice in a row counts once)
    return (f"SELECT value, count(*) FROM (SELECT DISTINCT t.rowid, j.value FROM {t} t, "
            f"json_each(t.{c}) j WHERE t.{c} IS NOT NULL AND json_valid(t.{c})) GROUP BY value")


def has_facet_counts(conn: sqlite3.Connection) -> bool:
    """Whether this mirror has saved facet counts (a build before mirror.facets did not)."""
    return has_table(conn, FACET_TABLE)


def save_facet_counts(conn: sqlite3.Connection, metadata: dict[str, Any] | None = None,
                      tables: set[str] | None = None) -> int:
    """Count every configured facet of the mirror's tables into ``_facet_counts`` (replacing what
    was there), and index each array facet's column (``<table>_<column>_facet``: a filter on one
    of its values, ``tags__arraycontains=anime``, then reads that small index, not every row);
    returns the count rows written. ``tables``: count only those (the others' counts stay).
    Not committed: the caller's commit takes it."""
    if metadata is None:
        with open(METADATA_FILE, encoding="utf-8") as fh:
            metadata = yaml.safe_load(fh) or {}
    existing = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    conn.execute(_DDL)
    conn.execute(_INDEX)
    if tables is None:
        conn.execute(f"DELETE FROM {FACET_TABLE}")
    else:
        conn.executemany(f"DELETE FROM {FACET_TABLE} WHERE table_name = ?", [(t,) for t in tables])
    written = 0
    for table, facet_type, column in configured_facets(metadata):
        if table not in existing or (tables is not None and table not in tables):
            continue
        try:
            rows = conn.execute(_count_sql(table, facet_type, column)).fetchall()
        except sqlite3.OperationalError:  # a column this file does not have: Datasette scans
            continue
        if facet_type == "array":
            conn.execute(f"CREATE INDEX IF NOT EXISTS {escape_sqlite(f'{table}_{column}_facet')} "
                         f"ON {escape_sqlite(table)} ({escape_sqlite(column)})")
        conn.executemany(f"INSERT INTO {FACET_TABLE} VALUES (?, ?, ?, ?, ?)",
                         [(table, facet_type, column, value, n) for value, n in rows])
        written += len(rows)
    return written


def _unfiltered(facet) -> bool:
    """Whether a facet counts a whole table: no filter, search, ``_where`` or ``_next``."""
    return (bool(facet.table) and not facet.params
            and facet.sql.rstrip().endswith(" from " + escape_sqlite(facet.table)))


async def _saved_counts(facet, facet_type: str, column: str, limit: int) -> list[tuple[Any, int]]:
    db = facet.ds.get_database(facet.database)
    if not await db.table_exists(FACET_TABLE):
        return []
    rows = await db.execute(
        f"SELECT value, count FROM {FACET_TABLE} WHERE table_name = ? AND facet_type = ? "
        "AND facet = ? ORDER BY count DESC, value LIMIT ?", [facet.table, facet_type, column, limit])
    return [(row[0], row[1]) for row in rows.rows]


async def _facet_results(facet) -> tuple[list[dict], list[str]]:
    """Each configured facet from ``_facet_counts`` when the page is a whole table and the build
    counted it, else by a scan of the page's rows (``facet.scan``), cut off as Datasette cuts off."""
    size = facet.get_facet_size()
    whole = _unfiltered(facet)
    results, timed_out = [], []
    for source_and_config in facet.get_configs():
        config, source = source_and_config["config"], source_and_config["source"]
        column = config.get("column") or config["simple"]
        rows = (await _saved_counts(facet, facet.type, column, size + 1)
                if whole and source == "metadata" else [])
        if not rows:
            try:
                rows = await facet.scan(column, size + 1)
            except QueryInterrupted:
                timed_out.append(column)
                continue
        results.append(await facet.shape(column, rows[:size], len(rows) > size, source))
    return results, timed_out


async def _run(facet, sql: str) -> list[tuple[Any, int]]:
    """A facet's count over the page's rows, within what is left of the page's facet budget."""
    deadline = facet.request.scope.setdefault(_DEADLINE, time.monotonic() + FACET_BUDGET_MS / 1000)
    left_ms = int((deadline - time.monotonic()) * 1000)
    if left_ms <= 0:
        raise QueryInterrupted(None, sql, facet.params)
    rows = await facet.ds.execute(facet.database, sql, facet.params, truncate=False,
                                  custom_time_limit=min(left_ms, facet.ds.setting("facet_time_limit_ms")))
    return [(row[0], row[1]) for row in rows.rows]


async def _suggest(facet, datasette_class) -> list[dict]:
    """Datasette's facet suggestions (a time-limited query per column), left out for a filtered
    page of many rows, where each would scan them all."""
    if not _unfiltered(facet) and (await facet.get_row_count()) > SUGGEST_MAX_ROWS:
        return []
    return await datasette_class.suggest(facet)


class PrecomputedColumnFacet(ColumnFacet):
    """Datasette's column facet, answered from ``_facet_counts`` on a whole table."""

    async def facet_results(self):
        return await _facet_results(self)

    async def suggest(self):
        return await _suggest(self, ColumnFacet)

    async def scan(self, column: str, limit: int) -> list[tuple[Any, int]]:
        """Datasette's own count of a column over the page's rows."""
        c = escape_sqlite(column)
        return await _run(self, f"select {c} as value, count(*) as count from ({self.sql}) "
                                f"where {c} is not null group by {c} order by count desc, value "
                                f"limit {limit}")

    async def shape(self, column: str, rows: list[tuple[Any, int]], truncated: bool,
                    source: str) -> dict:
        """The facet as Datasette's ColumnFacet shapes it."""
        expanded = {}
        if self.table:
            expanded = await self.ds.expand_foreign_keys(self.database, self.table, column,
                                                         [value for value, _ in rows])
        column_qs = f"{column}__exact" if column.startswith("_") else column
        pairs = self.get_querystring_pairs()
        values = []
        for value, n in rows:
            selected = (column_qs, str(value)) in pairs
            toggle = (path_with_removed_args(self.request, {column_qs: str(value)}) if selected
                      else path_with_added_args(self.request, {column_qs: value}))
            values.append({"value": value, "label": expanded.get((column, value), value),
                           "count": n, "selected": selected,
                           "toggle_url": self.ds.absolute_url(self.request, self.ds.urls.path(toggle))})
        return {"name": column, "type": self.type, "hideable": source != "metadata",
                "toggle_url": self.ds.urls.path(path_with_removed_args(self.request, {"_facet": column})),
                "results": values, "truncated": truncated}


class PrecomputedArrayFacet(ArrayFacet):
    """Datasette's array facet, answered from ``_facet_counts`` on a whole table, and over a
    filtered page from the key and the array column only (Datasette's own query de-duplicates
    whole rows, JSON and all: seconds at 20,000 models)."""

    async def facet_results(self):
        return await _facet_results(self)

    async def suggest(self):
        return await _suggest(self, ArrayFacet)

    async def scan(self, column: str, limit: int) -> list[tuple[Any, int]]:
        """The rows holding each value (a value twice in one row counts once), over the page's rows."""
        keys = (await self.ds.get_database(self.database).primary_keys(self.table)
                if self.table else []) or ["rowid"]
        c = escape_sqlite(column)
        distinct = ", ".join(f"i.{escape_sqlite(k)}" for k in keys)
        return await _run(self, f"select value, count(*) as count from (select distinct {distinct}, "
                                f"j.value from ({self.sql}) i, json_each(i.{c}) j "
                                f"where i.{c} is not null and json_valid(i.{c})) "
                                f"group by value order by count desc, value limit {limit}")

    async def shape(self, column: str, rows: list[tuple[Any, int]], truncated: bool,
                    source: str) -> dict:
        """The facet as Datasette's ArrayFacet shapes it."""
        key = f"{column}__arraycontains"
        pairs = self.get_querystring_pairs()
        values = []
        for value, n in rows:
            value = str(value)
            selected = (key, value) in pairs
            toggle = (path_with_removed_args(self.request, {key: value}) if selected
                      else path_with_added_args(self.request, {key: value}))
            values.append({"value": value, "label": value, "count": n, "selected": selected,
                           "toggle_url": self.ds.absolute_url(self.request, toggle)})
        return {"name": column, "type": self.type, "hideable": source != "metadata",
                "toggle_url": self.ds.urls.path(
                    path_with_removed_args(self.request, {"_facet_array": column})),
                "results": values, "truncated": truncated}


_REPLACEMENTS = {ColumnFacet: PrecomputedColumnFacet, ArrayFacet: PrecomputedArrayFacet}


def precomputed_classes(groups: list[list[type]]) -> list[list[type]]:
    """The facet classes plugins registered, with Datasette's column and array facets replaced."""
    return [[_REPLACEMENTS.get(klass, klass) for klass in group] for group in groups]
