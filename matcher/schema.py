"""library.sqlite: its tables as data, one section per area, applied by ``ensure_library``.

library.sqlite holds the journal of moves, the one thing that cannot be rebuilt, so it is never
recreated: a new column or table is added here and ``ensure_library`` migrates old files.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlite_utils

from mirror.schema import apply_schema

# ---- scan (files, hashes, model info) ----------------------------------------
SCAN_TABLES: dict[str, dict[str, Any]] = {}

# ---- media metadata (generations, lora_usages, resources, media info) --------
MEDIA_TABLES: dict[str, dict[str, Any]] = {}

# ---- match (matches, pins, model_enrichment) ---------------------------------
MATCH_TABLES: dict[str, dict[str, Any]] = {}

# ---- sort (runs, journal) ----------------------------------------------------
SORT_TABLES: dict[str, dict[str, Any]] = {}

LIBRARY_SCHEMA: dict[str, dict[str, Any]] = {
    **SCAN_TABLES, **MEDIA_TABLES, **MATCH_TABLES, **SORT_TABLES,
}


def open_library(path: str | Path) -> sqlite_utils.Database:
    """Open (creating if needed) library.sqlite with WAL and the current schema."""
    db = sqlite_utils.Database(str(path))
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA busy_timeout=10000")
    ensure_library(db)
    return db


def ensure_library(db: sqlite_utils.Database) -> None:
    apply_schema(db, LIBRARY_SCHEMA)
