"""The library's ``files`` rows as the matcher reads them: the files present, one file by its path."""
from __future__ import annotations

from pathlib import Path

import sqlite_utils

from matcher.fsnames import shown


def present_files(db: sqlite_utils.Database, kind: str) -> list[dict]:
    """``files`` rows of ``kind`` (model, media, ...) not marked missing by the last scan, by id."""
    if not db["files"].exists():
        return []
    missing = " and coalesce(missing, 0) = 0" if "missing" in db["files"].columns_dict else ""
    return list(db.query(f"select * from files where kind = ?{missing} order by id", [kind]))


def file_by_path(db: sqlite_utils.Database, path: str | Path) -> dict:
    """The ``files`` row of ``path`` (resolved); LookupError when the library does not have it."""
    p = str(Path(path).expanduser().resolve())
    rows = list(db.query("select * from files where path = ?", [shown(p)])) if db["files"].exists() else []
    if not rows:
        raise LookupError(f"{path} is not in the library; run `civitai-mirror scan` on its folder first")
    return rows[0]
