"""Match the whole library against the mirror: every model file by hash, every image by its resources.

Plain functions over two databases: ``library.sqlite`` (files, resources: written by scan and
extract; matches, resource_matches, model_enrichment: written here) and ``civitai.sqlite`` (read
through ``mirror.reader``, whose hash lookup is ``mirror.lookup``'s). Rules, in the order they are
applied:

- A pin (``civitai-mirror pin``, ``matcher.pins``) wins over everything and survives every later run.
- Model files: by hash in Civitai's order, else name and size suggestions (``matcher.model_match``);
  with ``--online``, what the mirror does not know is asked of the live API (``matcher.online``).
- Images: every ``resources`` row is resolved to a version and to the local model file
  (``matcher.resources``). The image's own version is its checkpoint's.
- Orphan images (no resources): the same bytes or a BlurHash near-match among the mirror's preview
  ``images`` (``matcher.orphans``); low confidence, and the reason says so.
- Then the configured derived fields are evaluated and stored (``matcher.derived``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterator

import sqlite_utils

from crawler.clock import utc_now
from matcher.derived import update_derived_fields
from matcher.library import present_files
from matcher.model_match import match_model_file, name_suggestions
from matcher.online import lookup_online
from matcher.orphans import orphan_result
from matcher.pins import load_pins, pin_for, pin_result
from matcher.resources import LocalModels, resolve_resource
from matcher.results import match_result, match_row
from matcher.schema import ensure_library
from mirror.reader import Mirror


def match_library(db: sqlite_utils.Database, civitai_db: sqlite_utils.Database | str | Path | None, *,
                  online: bool = False, api_base: str | None = None, dump_dir: str | Path | None = None,
                  progress: Callable[[int], None] | None = None,
                  derived_fields: list[tuple[str, str]] | None = None, debug: bool = False) -> dict:
    """Match every model file and image in library.sqlite; store matches, resource_matches and
    model_enrichment; return summary counts.

    ``derived_fields`` ([(name, expression)], from ``matcher.derived.load_derived_fields``): after
    matching, evaluate them for every file and store them in ``derived_fields`` (see
    ``update_derived_fields``; ``debug`` stores error markers). None skips that step."""
    ensure_library(db)
    mirror = Mirror(civitai_db)
    summary: dict[str, Any] = {
        "models": 0, "models_matched": 0, "pinned": 0, "suggested": 0, "by_hash_type": {},
        "images": 0, "images_matched": 0, "resources": 0, "resources_resolved": 0,
        "resources_local": 0, "orphans": 0, "orphans_matched": 0,
        "online_queried": 0, "online_found": 0, "online_errors": 0,
    }
    model_rows = present_files(db, "model")
    _match_models(db, model_rows, mirror, summary, progress)
    if online:
        unmatched = [r for r in model_rows if r.get("sha256") and not _matched(db, r["id"])]
        if unmatched:
            lookup_online(db, unmatched, civitai_db=civitai_db, api_base=api_base,
                          dump_dir=dump_dir, summary=summary)
            _recount_models(db, model_rows, summary)
            mirror = Mirror(civitai_db)               # fresh caches: the mirror may have new rows
    _match_images(db, present_files(db, "media"), mirror, summary, progress)
    if derived_fields is not None:
        summary["derived"] = update_derived_fields(db, derived_fields, debug=debug)
    return summary


def _matched(db: sqlite_utils.Database, file_id: int) -> bool:
    return bool(list(db.query("select 1 from matches where file_id = ? and version_id is not null", [file_id])))


def _recount_models(db, model_rows, summary) -> None:
    """Count the model matches again from the table (``--online`` matched more after the first pass)."""
    ids = [r["id"] for r in model_rows]
    summary["models_matched"] = summary["suggested"] = 0
    summary["by_hash_type"] = {}
    for m in db.query(f"select * from matches where file_id in ({','.join('?' * len(ids))})", ids):
        if m["version_id"] is not None:
            summary["models_matched"] += 1
            summary["by_hash_type"][m["hash_type"]] = summary["by_hash_type"].get(m["hash_type"], 0) + 1
        elif m["suggestions"] and json.loads(m["suggestions"]):
            summary["suggested"] += 1


def _match_models(db, rows, mirror: Mirror, summary: dict, progress) -> None:
    """Match every model file (a pin first, else by hash, else suggestions) and audit the lookups."""
    by_id, by_sha = load_pins(db)
    now = utc_now()
    matches, audits = [], []
    for row in rows:
        summary["models"] += 1
        pin = pin_for(row, by_id, by_sha)
        if pin:
            res = pin_result(pin, mirror)
            res["pinned"] = 1
            summary["pinned"] += 1
        else:
            res, audit = match_model_file(row, mirror)
            audits.extend(audit)
            res["pinned"] = 0
            res["suggestions"] = name_suggestions(row, mirror) if res["version_id"] is None else []
        if res["version_id"] is not None:
            summary["models_matched"] += 1
            summary["by_hash_type"][res["hash_type"]] = summary["by_hash_type"].get(res["hash_type"], 0) + 1
        elif res.get("suggestions"):
            summary["suggested"] += 1
        matches.append(match_row(row["id"], res, now))
        if progress:
            progress(1)
    with db.conn:
        if matches:
            db["matches"].upsert_all(matches, pk="file_id", alter=True)
        if audits:
            db["model_enrichment"].upsert_all(audits, pk=("file_id", "source"), alter=True)


def _match_images(db, rows, mirror: Mirror, summary: dict, progress) -> None:
    """Resolve every image's resources; an image's match is its pin, else its checkpoint's, else
    (no resources at all) the orphan lookup."""
    local = LocalModels(db)
    by_id, by_sha = load_pins(db)
    resources: dict[int, list[dict]] = {}
    for r in db.query("select * from resources order by file_id, position, id"):
        resources.setdefault(r["file_id"], []).append(r)
    blurhashes = {r["file_id"]: r["blurhash"] for r in db.query("select file_id, blurhash from media_info")}
    now = utc_now()
    matches, rmatches = [], []
    for row in rows:
        summary["images"] += 1
        pin = pin_for(row, by_id, by_sha)
        res_rows = resources.get(row["id"], [])
        checkpoint = None
        for r in res_rows:
            summary["resources"] += 1
            out = resolve_resource(r, local, mirror)
            if out["version_id"] is not None:
                summary["resources_resolved"] += 1
            if out.get("local_file_id") is not None:
                summary["resources_local"] += 1
            rmatches.append({
                "resource_id": r["id"], "file_id": row["id"], "version_id": out["version_id"],
                "model_id": out["model_id"], "local_file_id": out.get("local_file_id"),
                "hash_type": out["hash_type"], "confidence": out["confidence"], "reason": out["reason"],
                "model_name": out["model_name"], "version_name": out["version_name"],
                "model_type": out["model_type"], "base_model": out["base_model"], "_matched_at": now,
            })
            if checkpoint is None and (r.get("kind") or "").lower() == "checkpoint" and out["version_id"] is not None:
                checkpoint = out
        if pin:
            res = pin_result(pin, mirror)
            res["pinned"] = 1
            summary["pinned"] += 1
        elif checkpoint:
            res = {**checkpoint, "reason": "checkpoint: " + checkpoint["reason"], "pinned": 0}
        elif res_rows:
            resolved = sum(1 for m in rmatches if m["file_id"] == row["id"] and m["version_id"] is not None)
            res = match_result(None, hash_type=None, confidence=None,
                               reason=f"checkpoint not resolved; {resolved} of {len(res_rows)} resources resolved")
            res["pinned"] = 0
        else:
            summary["orphans"] += 1
            res = orphan_result(row, blurhashes.get(row["id"]), mirror)
            if res["version_id"] is not None:
                summary["orphans_matched"] += 1
        if res["version_id"] is not None:
            summary["images_matched"] += 1
        matches.append(match_row(row["id"], res, now))
        if progress:
            progress(1)
    with db.conn:
        if rows:
            ids = [r["id"] for r in rows]
            for chunk in range(0, len(ids), 500):
                part = ids[chunk:chunk + 500]
                db.execute(f"delete from resource_matches where file_id in ({','.join('?' * len(part))})", part)
        if matches:
            db["matches"].upsert_all(matches, pk="file_id", alter=True)
        if rmatches:
            db["resource_matches"].upsert_all(rmatches, pk="resource_id", alter=True)


# ---- reading results back (for --json and other parts) -------------------------------------

def iter_match_records(db: sqlite_utils.Database) -> Iterator[dict]:
    """One dict per model file and per image, as ``match --json`` prints them."""
    if not db["matches"].exists():
        return
    resources: dict[int, list[dict]] = {}
    if db["resources"].exists():
        sql = ("select r.*, rm.version_id as r_version_id, rm.model_id as r_model_id, "
               "rm.hash_type as r_hash_type, rm.confidence as r_confidence, rm.reason as r_reason, "
               "lf.path as local_path from resources r "
               "join resource_matches rm on rm.resource_id = r.id "
               "left join files lf on lf.id = rm.local_file_id order by r.file_id, r.id")
        for r in db.query(sql):
            resources.setdefault(r["file_id"], []).append({
                "kind": r.get("kind"), "name": r.get("name"), "hash": r.get("hash"),
                "weight": r.get("weight"), "version_id": r["r_version_id"], "model_id": r["r_model_id"],
                "hash_type": r["r_hash_type"], "confidence": r["r_confidence"],
                "reason": r["r_reason"], "local_path": r["local_path"],
            })
    for m in db.query("select f.path, f.kind, m.* from matches m join files f on f.id = m.file_id "
                      "order by f.kind desc, f.path"):
        record = {
            "path": m["path"], "kind": m["kind"], "version_id": m["version_id"], "model_id": m["model_id"],
            "hash_type": m["hash_type"], "confidence": m["confidence"], "reason": m["reason"],
            "suggestions": json.loads(m["suggestions"] or "[]"),
            "model_name": m["model_name"], "version_name": m["version_name"],
            "model_type": m["model_type"], "base_model": m["base_model"], "pinned": bool(m["pinned"]),
            "alternates": json.loads(m["alternates"] or "[]"),
        }
        if m["kind"] == "media":
            record["resources"] = resources.get(m["file_id"], [])
            record["civitai_image_id"] = m["civitai_image_id"]
        yield record
