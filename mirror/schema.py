"""Database schemas as data, and the one idempotent function that applies them.

A schema is ``{table_name: spec}`` where spec is::

    {
        "columns": {"id": int, "name": str, "data": str, ...},   # python types, as sqlite-utils takes
        "pk": "id",                     # or a tuple for a compound key
        "not_null": {"name"},           # optional
        "defaults": {"n": 0},           # optional
        "foreign_keys": [("model_id", "models", "id")],  # optional
        "indexes": [["sha256"], ["model_id", "position"]],  # optional; {"columns": [...], "unique": True} too
        "fts": ["name", "description"],  # optional: FTS5 over these columns
    }

``apply_schema(db, SCHEMA)`` creates what is missing and adds missing columns and indexes to
tables that exist: the migration path for ``library.sqlite``, which is never recreated.
The civitai.sqlite tables are declared below in ``CIVITAI_SCHEMA`` (filled in by mirror.build).
"""
from __future__ import annotations

from typing import Any

import sqlite_utils


def apply_schema(db: sqlite_utils.Database, schema: dict[str, dict[str, Any]]) -> None:
    """Create missing tables, columns and indexes. Safe to call on every open."""
    for name, spec in schema.items():
        table = db.table(name)
        columns = spec["columns"]
        if not table.exists():
            table.create(
                columns,
                pk=spec.get("pk"),
                not_null=spec.get("not_null"),
                defaults=spec.get("defaults"),
                foreign_keys=spec.get("foreign_keys"),
            )
        else:
            existing = set(table.columns_dict)
            for column, column_type in columns.items():
                if column not in existing:
                    table.add_column(column, column_type)
        existing_indexes = {tuple(index.columns) for index in table.indexes}
        for index in spec.get("indexes", []):
            if isinstance(index, dict):
                cols, unique = list(index["columns"]), bool(index.get("unique"))
            else:
                cols, unique = list(index), False
            if tuple(cols) not in existing_indexes:
                table.create_index(cols, unique=unique, if_not_exists=True)
        fts = spec.get("fts")
        if fts and not db.table(f"{name}_fts").exists():
            table.enable_fts(fts, create_triggers=True)
