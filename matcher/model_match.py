"""Match one local model file to a Civitai version by its hashes; guess by name and size when none hits.

Hashes are tried SHA256 → AutoV3 → AutoV2 → BLAKE3 → CRC32 (only when the size agrees too) →
AutoV1; the first hit is the match, with Civitai's tie rule (earliest published, then lowest
version id) applied by the lookup and the other candidates kept as ``alternates``. No hit → name
and size guesses from ``model_files`` go in ``suggestions``, never in ``version_id``. Every attempt
leaves a ``model_enrichment`` row (source ``mirror``, or ``api`` for ``--online``).
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any

from crawler.site import model_page_url
from crawler.clock import utc_now
from matcher.models import MODEL_EXTENSIONS
from matcher.results import CONFIDENCE, alternates, match_result
from mirror.reader import Mirror

log = logging.getLogger(__name__)

# (Civitai hash type, files column), in the order they are tried for model files.
HASH_ORDER: list[tuple[str, str]] = [
    ("SHA256", "sha256"), ("AutoV3", "autov3"), ("AutoV2", "autov2"),
    ("BLAKE3", "blake3"), ("CRC32", "crc32"), ("AutoV1", "autov1"),
]
#: a CRC32 hit counts when the Civitai file's size is within this many bytes of the local file's
_CRC32_SIZE_SLACK = 1024


def strip_model_ext(name: str) -> str:
    """A model file's name without its folders and its model extension (``.vae``/``.lora`` too)."""
    base = os.path.basename(name.replace("\\", "/"))
    root, ext = os.path.splitext(base)
    return root if ext.lower() in MODEL_EXTENSIONS or ext.lower() in (".vae", ".lora") else base


def model_file_names(name: str) -> list[str]:
    """The Civitai file names ``name`` may stand for: itself, without extension, with each model
    extension (exact names, so the ``model_files(name)`` index answers)."""
    base = os.path.basename(name.replace("\\", "/"))
    stem = strip_model_ext(base)
    return list(dict.fromkeys([base, stem] + [stem + ext for ext in MODEL_EXTENSIONS]))


def match_model_file(row: dict, mirror: Mirror) -> tuple[dict, list[dict]]:
    """One files row (kind=model) → (match result, enrichment attempts). Pure over the mirror."""
    tried = []
    for hash_type, column in HASH_ORDER:
        value = row.get(column)
        if not value:
            continue
        tried.append(hash_type)
        found = mirror.lookup(value, hash_type)
        if not found:
            continue
        if hash_type == "CRC32":
            size = mirror.file_size_bytes(found.get("file_id"))
            if size is None or row.get("size") is None or abs(size - row["size"]) > _CRC32_SIZE_SLACK:
                log.debug("CRC32 %s hit for %s but sizes differ", value, row.get("path"))
                continue
        reason = f"{hash_type} {value.upper()} matches Civitai file {found.get('file_id')}"
        if hash_type == "CRC32":
            reason += " of the same size"
        if hash_type == "AutoV1":
            reason += " (AutoV1 hashes 64 KiB only)"
        alts = alternates(found)
        if alts:
            reason += f"; {len(alts)} other version(s) share it, earliest published chosen"
        return (match_result(found, hash_type=hash_type, confidence=CONFIDENCE[hash_type], reason=reason),
                [enrichment(row, "mirror", hash_type, "matched", value, found)])
    if not tried:
        return (match_result(None, hash_type=None, confidence=None, reason="not hashed yet (run scan)"),
                [enrichment(row, "mirror", None, "skipped", None, None)])
    reason = "no hash found in the mirror (tried " + ", ".join(tried) + ")"
    first = dict(HASH_ORDER)[tried[0]]
    return (match_result(None, hash_type=None, confidence=None, reason=reason),
            [enrichment(row, "mirror", tried[0], "not_found", row.get(first), None)])


def _display_hash(hash_type: str | None, value: str | None) -> str | None:
    if not value:
        return None
    value = value.upper()
    return value[:10] if hash_type == "SHA256" else value  # SHA256 shown as Civitai shows AutoV2


def enrichment(row: dict, source: str, hash_type: str | None, status: str,
               value: str | None, payload: Any, url: str | None = None) -> dict:
    """A ``model_enrichment`` row: one lookup of a model file (``source`` mirror or api) and its answer."""
    if url is None and payload and isinstance(payload, dict) and payload.get("version_id"):
        url = model_page_url(payload.get("model_id"), payload["version_id"])
    return {
        "file_id": row["id"], "source": source, "hash_type": hash_type, "lookup_status": status,
        "display_hash": _display_hash(hash_type, value), "source_url": url,
        "enriched_at": utc_now(),
        "payload_json": json.dumps(payload, default=str) if payload is not None else None,
    }


def name_suggestions(row: dict, mirror: Mirror, limit: int = 5) -> list[dict]:
    """Low-confidence guesses for an unmatched model file, by file name and size."""
    out = []
    for f in mirror.files_by_name(model_file_names(row["path"]), row.get("size"), limit=limit):
        info = mirror.version(f["version_id"]) if f.get("version_id") is not None else None
        confidence = {"name+size": 0.5, "name": 0.3, "size": 0.2}[f["by"]]
        out.append({
            "version_id": f.get("version_id"), "model_id": (info or {}).get("model_id"),
            "civitai_file_id": f["id"], "file_name": f["name"],
            "model_name": (info or {}).get("model_name"),
            "confidence": confidence, "reason": f"same {f['by'].replace('+', ' and ')} as Civitai file {f['id']}",
        })
    return out
