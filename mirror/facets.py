"""Facet counts computed once by ``build``, so a table page without filters answers without a scan.

Datasette counts every facet configured in datasette_metadata.yml (``facets:``) by scanning the
table on each page view, and an array facet (``tags``, ``baseModels``) also unpacks each row's JSON
and de-duplicates whole rows: at 100,000 models that is most of a second a page.
``save_facet_counts(conn)`` (the end of ``build``) writes those counts into ``_facet_counts``.
``PrecomputedColumnFacet`` and ``PrecomputedArrayFacet`` (put in place of Datasette's own classes
by the plugin) answer a table page with no filter from that table; a filtered page (a facet value
chosen, a search, ``_where``, the next page) and a facet asked for in the URL are counted as
Datasette counts them, over the matching rows. The counts are the same either way.
"""
from __future__ import annotations

import copy
import sqlite3
from pathlib import Path
from typing import Any

import yaml
from datasette.database import QueryInterrupted
from datasette.facets import ArrayFacet, ColumnFacet, load_facet_configs
from datasette.utils import escape_sqlite, path_with_added_args, path_with_removed_args

FACET_TABLE = "_facet_counts"
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


def save_facet_counts(conn: sqlite3.Connection, metadata: dict[str, Any] | None = None) -> int:
    """Count every configured facet of the mirror's tables into ``_facet_counts`` (replacing what
    was there); returns the rows written. Not committed: the caller's commit takes it."""
    if metadata is None:
        with open(METADATA_FILE, encoding="utf-8") as fh:
            metadata = yaml.safe_load(fh) or {}
    existing = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    conn.execute(_DDL)
    conn.execute(_INDEX)
    conn.execute(f"DELETE FROM {FACET_TABLE}")
    written = 0
    for table, facet_type, column in configured_facets(metadata):
        if table not in existing:
            continue
        try:
            rows = conn.execute(_count_sql(table, facet_type, column)).fetchall()
        except sqlite3.OperationalError:  # a column this file does not have: Datasette scans
            continue
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


async def _facet_results(facet, datasette_class) -> tuple[list[dict], list[str]]:
    """Each configured facet from ``_facet_counts`` when the page is a whole table and the build
    counted it; the others (and every facet of a filtered page) by Datasette's own scan."""
    if not _unfiltered(facet):
        return await datasette_class.facet_results(facet)
    size = facet.get_facet_size()
    results, timed_out, to_scan = [], [], []
    for source_and_config in facet.get_configs():
        config = source_and_config["config"]
        column = config.get("column") or config["simple"]
        saved = (await _saved_counts(facet, facet.type, column, size + 1)
                 if source_and_config["source"] == "metadata" else [])
        if not saved:
            to_scan.append(source_and_config)
            continue
        results.append(await facet.shape(column, saved[:size], len(saved) > size))
    if to_scan:  # a copy that scans only what was not counted (suggest() runs alongside)
        rest = copy.copy(facet)
        rest.get_configs = lambda: to_scan
        scanned, timed_out = await datasette_class.facet_results(rest)
        results.extend(scanned)
    return results, timed_out


class PrecomputedColumnFacet(ColumnFacet):
    """Datasette's column facet, answered from ``_facet_counts`` on a whole table."""

    async def facet_results(self):
        return await _facet_results(self, ColumnFacet)

    async def shape(self, column: str, rows: list[tuple[Any, int]], truncated: bool) -> dict:
        """The facet as Datasette's ColumnFacet shapes it (no value is selected on a whole table)."""
        expanded = await self.ds.expand_foreign_keys(self.database, self.table, column,
                                                     [value for value, _ in rows])
        column_qs = f"{column}__exact" if column.startswith("_") else column
        return {
            "name": column, "type": self.type, "hideable": False,
            "toggle_url": self.ds.urls.path(path_with_removed_args(self.request, {"_facet": column})),
            "results": [{
                "value": value, "label": expanded.get((column, value), value), "count": n,
                "toggle_url": self.ds.absolute_url(self.request, self.ds.urls.path(
                    path_with_added_args(self.request, {column_qs: value}))),
                "selected": False,
            } for value, n in rows],
            "truncated": truncated,
        }


class PrecomputedArrayFacet(ArrayFacet):
    """Datasette's array facet, answered from ``_facet_counts`` on a whole table."""

    async def facet_results(self):
        return await _facet_results(self, ArrayFacet)

    async def shape(self, column: str, rows: list[tuple[Any, int]], truncated: bool) -> dict:
        """The facet as Datasette's ArrayFacet shapes it."""
        key = f"{column}__arraycontains"
        return {
            "name": column, "type": self.type, "hideable": False,
            "toggle_url": self.ds.urls.path(
                path_with_removed_args(self.request, {"_facet_array": column})),
            "results": [{
                "value": str(value), "label": str(value), "count": n,
                "toggle_url": self.ds.absolute_url(
                    self.request, path_with_added_args(self.request, {key: str(value)})),
                "selected": False,
            } for value, n in rows],
            "truncated": truncated,
        }


_REPLACEMENTS = {ColumnFacet: PrecomputedColumnFacet, ArrayFacet: PrecomputedArrayFacet}


def precomputed_classes(groups: list[list[type]]) -> list[list[type]]:
    """The facet classes plugins registered, with Datasette's column and array facets replaced."""
    return [[_REPLACEMENTS.get(klass, klass) for klass in group] for group in groups]
