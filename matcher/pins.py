"""Pins: a user's own match for a file (``civitai-mirror pin``), which wins over every rule and
survives every later ``match``. Found by file id, else by SHA256 when the file moved."""
from __future__ import annotations

from pathlib import Path

import sqlite_utils

from crawler.clock import utc_now
from matcher.library import file_by_path
from matcher.results import match_result, match_row
from matcher.schema import ensure_library
from mirror.reader import Mirror


def pin_result(pin: dict, mirror: Mirror) -> dict:
    """The match result a ``pins`` row gives (the version's names when the mirror knows it)."""
    info = mirror.version(pin["version_id"]) or {"version_id": pin["version_id"]}
    res = match_result(info, hash_type="pin", confidence=1.0,
                       reason=f"pinned by user at {pin.get('_pinned_at')}")
    res["civitai_file_id"] = None
    return res


def load_pins(db: sqlite_utils.Database) -> tuple[dict[int, dict], dict[str, dict]]:
    """Every pin, by file id and by upper-case SHA256."""
    pins = list(db.query("select * from pins"))
    return ({p["file_id"]: p for p in pins},
            {p["sha256"].upper(): p for p in pins if p.get("sha256")})


def pin_for(row: dict, by_id: dict, by_sha: dict) -> dict | None:
    """The pin of a ``files`` row (``load_pins``' two maps), or None."""
    pin = by_id.get(row["id"])
    if pin is None and row.get("sha256"):
        pin = by_sha.get(row["sha256"].upper())
    return pin


def pin_file(db: sqlite_utils.Database, path: str | Path, version_id: int,
             civitai_db: sqlite_utils.Database | str | Path | None = None) -> dict:
    """Pin a file to a Civitai version; every later ``match`` keeps it. Returns the match row.

    ``LookupError`` when the file is not in the library, or when a mirror is given and does not
    know the version (a typo would otherwise sort the file under ``other/Unknown/``).
    """
    ensure_library(db)
    row = file_by_path(db, path)
    mirror = Mirror(civitai_db)
    if mirror.has("model_versions") and mirror.version(version_id) is None:
        raise LookupError(f"version {version_id} is not in the mirror; check the id "
                          "(the number after modelVersionId= in a Civitai link), or update the mirror")
    pin = {"file_id": row["id"], "path": row["path"], "sha256": row.get("sha256"),
           "version_id": int(version_id), "_pinned_at": utc_now()}
    res = pin_result(pin, mirror)
    res["pinned"] = 1
    stored = match_row(row["id"], res, pin["_pinned_at"])
    with db.conn:
        db["pins"].upsert(pin, pk="file_id")
        db["matches"].upsert(stored, pk="file_id", alter=True)
    return stored


def unpin_file(db: sqlite_utils.Database, path: str | Path) -> bool:
    """Remove a pin (found by path, else by content); the file is matched again by the next run."""
    ensure_library(db)
    row = file_by_path(db, path)
    pins = list(db.query("select file_id from pins where file_id = ? or (sha256 is not null and sha256 = ?)",
                         [row["id"], row.get("sha256")]))
    with db.conn:
        for p in pins:
            db.execute("delete from pins where file_id = ?", [p["file_id"]])
        db.execute("delete from matches where file_id = ? and pinned = 1", [row["id"]])
    return bool(pins)
