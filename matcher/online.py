"""``match --online``: ask the live Civitai API, through the crawler's client, about the model files
the mirror does not know, and keep what it answers in the dump and the mirror for next time."""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import sqlite_utils

from crawler.api import fetch_model, fetch_versions_by_hash
from crawler.client import DEFAULT_API_BASE, CivitaiClient, host_of
from crawler.clock import utc_now
from crawler.dump import Dump
from matcher.model_match import enrichment
from matcher.results import match_result, match_row
from mirror.build import build_mirror
from mirror.reader import Mirror

log = logging.getLogger(__name__)

BY_HASH_URL = f"{DEFAULT_API_BASE}/model-versions/by-hash"
ONLINE_CLIENT_OPTIONS: dict[str, Any] = {}   # extra CivitaiClient options (tests: fewer retries)


def lookup_online(db: sqlite_utils.Database, rows: list[dict], *, civitai_db: str | Path | None,
                  api_base: list[str] | str | None = None, dump_dir: str | Path | None = None,
                  summary: dict | None = None) -> set[int]:
    """POST the SHA256 of unmatched model files to by-hash (100 per request); match the files the
    API knows from its answer, save their models into the dump and the mirror. Returns the ids of
    the files matched."""
    summary = summary if summary is not None else {}
    by_sha: dict[str, list[dict]] = {}
    for row in rows:
        if row.get("sha256"):
            by_sha.setdefault(row["sha256"].upper(), []).append(row)
    if not by_sha:
        return set()
    bases = [api_base] if isinstance(api_base, str) else api_base
    summary["online_queried"] = summary.get("online_queried", 0) + len(by_sha)
    try:
        versions, models, host = asyncio.run(_fetch_online(list(by_sha), bases))
    except RuntimeError as exc:
        log.warning("online lookup failed: %s", exc)
        summary["online_errors"] = summary.get("online_errors", 0) + len(by_sha)
        status = "error_parse" if "not a list" in str(exc) or "JSON" in str(exc) else "error_network"
        audits = [enrichment(r, "api", "SHA256", status, r["sha256"], {"error": str(exc)}, url=BY_HASH_URL)
                  for rs in by_sha.values() for r in rs]
        with db.conn:
            db["model_enrichment"].upsert_all(audits, pk=("file_id", "source"), alter=True)
        return set()
    now = utc_now()
    matched: set[int] = set()
    hits: dict[str, dict] = {}
    for version in versions:
        for f in version.get("files") or []:
            sha = ((f.get("hashes") or {}).get("SHA256") or "").upper()
            if sha in by_sha and sha not in hits:
                hits[sha] = {"version": version, "file": f}
    audits, match_rows = [], []
    for sha, file_rows in by_sha.items():
        hit = hits.get(sha)
        for row in file_rows:
            if not hit:
                audits.append(enrichment(row, "api", "SHA256", "not_found", sha, None, url=BY_HASH_URL))
                continue
            v, f = hit["version"], hit["file"]
            model = v.get("model") or {}
            found = {"version_id": v["id"], "model_id": v.get("modelId"), "file_id": f.get("id"),
                     "model_name": model.get("name"), "version_name": v.get("name"),
                     "type": model.get("type"), "base_model": v.get("baseModel")}
            res = match_result(found, hash_type="SHA256", confidence=1.0,
                               reason=f"SHA256 {sha} matches Civitai file {f.get('id')} (live API)")
            res["pinned"] = 0
            match_rows.append(match_row(row["id"], res, now))
            audits.append(enrichment(row, "api", "SHA256", "matched", sha, v))
            matched.add(row["id"])
    summary["online_found"] = summary.get("online_found", 0) + len(matched)
    with db.conn:
        if match_rows:
            db["matches"].upsert_all(match_rows, pk="file_id", alter=True)
        if audits:
            db["model_enrichment"].upsert_all(audits, pk=("file_id", "source"), alter=True)
    if models:
        _save_models(models, host, civitai_db, dump_dir)
    return matched


def _save_models(models: list[dict], host: str, civitai_db: str | Path | None,
                 dump_dir: str | Path | None) -> None:
    """Save fetched models into the dump (the crawler's layout and logs), then rebuild the mirror
    incrementally from it, so the next run finds them offline."""
    if isinstance(civitai_db, sqlite_utils.Database):
        civitai_db = None
    if dump_dir is None and civitai_db and Path(civitai_db).exists():
        dump_dir = Mirror(civitai_db).dump_dir()
    if dump_dir is None:
        log.warning("no dump folder known (use --dump): %d fetched models not saved", len(models))
        return
    dump = Dump(dump_dir).load()
    try:
        for model in models:
            dump.save_model(model["id"], model, host)
    finally:
        dump.finish()
    if civitai_db:
        build_mirror(dump_dir, civitai_db)


async def _fetch_online(hashes: list[str], bases: list[str] | None) -> tuple[list[dict], list[dict], str]:
    async with CivitaiClient(bases, **ONLINE_CLIENT_OPTIONS) as client:
        versions = await fetch_versions_by_hash(client, hashes)
        models = []
        for model_id in sorted({v.get("modelId") for v in versions if isinstance(v.get("modelId"), int)}):
            resp = await fetch_model(client, model_id)
            if resp.outcome == "ok":
                models.append(resp.data)
            else:
                log.info("model %s of a by-hash answer not fetched: %s", model_id, resp.reason or resp.outcome)
        host = host_of(client.api_bases[0])
    return versions, models, host
