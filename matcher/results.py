"""A match result: what every rule returns for a file or a resource, and the ``matches`` row it is stored as.

A result is a dict: ``version_id model_id civitai_file_id hash_type confidence reason model_name
version_name model_type base_model alternates`` (the other versions that share the hash), plus what
a rule adds (``pinned``, ``suggestions``, ``civitai_image_id``, ``local_file_id``).
"""
from __future__ import annotations

import json

# How much a hit of each kind is worth. AutoV1 hashes 64 KiB of the file, so merges of one base
# model can share it; CRC32 is 32 bits and only counts together with the file size.
CONFIDENCE = {
    "SHA256": 1.0, "BLAKE3": 1.0, "AutoV3": 1.0, "AutoV2": 1.0, "CRC32": 0.95, "AutoV1": 0.8,
    "pin": 1.0, "civitai_resources": 1.0, "local_name": 0.9, "name": 0.5,
    "sha256_image": 0.9, "blurhash": 0.4,
}


def match_result(found: dict | None, *, hash_type: str | None, confidence: float | None,
                 reason: str) -> dict:
    """The result for ``found`` (a ``mirror.lookup`` answer or version facts; None: no match)."""
    found = found or {}
    return {
        "version_id": found.get("version_id"), "model_id": found.get("model_id"),
        "civitai_file_id": found.get("file_id"), "hash_type": hash_type,
        "confidence": confidence, "reason": reason,
        "model_name": found.get("model_name"), "version_name": found.get("version_name"),
        "model_type": found.get("type"), "base_model": found.get("base_model"),
        "alternates": alternates(found),
    }


def alternates(found: dict) -> list[dict]:
    """The other versions that share the hash, for the record: the lookup's ``candidates`` (version
    ids), or ``{version_id, file_id}`` dicts for a name that several Civitai files carry."""
    out = []
    for c in found.get("candidates") or []:
        vid = c.get("version_id") if isinstance(c, dict) else c
        if vid is None or vid == found.get("version_id"):
            continue
        out.append({"version_id": vid})
    return out


def match_row(file_id: int, res: dict, now: str) -> dict:
    """A result as its ``matches`` row (``now``: ``_matched_at``)."""
    return {
        "file_id": file_id, "version_id": res.get("version_id"), "model_id": res.get("model_id"),
        "civitai_file_id": res.get("civitai_file_id"), "hash_type": res.get("hash_type"),
        "confidence": res.get("confidence"), "reason": res.get("reason"),
        "model_name": res.get("model_name"), "version_name": res.get("version_name"),
        "model_type": res.get("model_type"), "base_model": res.get("base_model"),
        "pinned": res.get("pinned", 0), "suggestions": json.dumps(res.get("suggestions") or []),
        "alternates": json.dumps(res.get("alternates") or []),
        "civitai_image_id": res.get("civitai_image_id"), "_matched_at": now,
    }
