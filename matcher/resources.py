"""Resolve the resources an image names (checkpoint, LoRAs, embeddings, ...) to a Civitai version and
to the local model file that holds it.

A Civitai resources version id is taken directly. A hash is tried by its length
(``mirror.hashes.types_for_length``; a 64-character hash may also be SwarmUI's full tensor hash,
whose first 12 are the AutoV3), the type the image itself names first; the hash of nothing is
ignored, as Civitai does. Local model files are asked first (their match gives the version), then
the mirror. A bare name is looked up among local model file names (whose hashes then give the
version), else among ``model_files.name`` (low confidence: nothing confirms it).
"""
from __future__ import annotations

import os

import sqlite_utils

from matcher.model_match import HASH_ORDER, model_file_names, strip_model_ext
from matcher.results import CONFIDENCE, match_result
from mirror.hashes import (AUTOV3_FULL_LENGTH, AUTOV3_LENGTH, LENGTH_TYPES, canonical_type, clean_hex,
                           is_empty_hash, types_for_length)
from mirror.reader import Mirror

#: lengths a SHA256 prefix can have (A1111's TI hashes and .pt LoRAs write SHA256[:12])
_PREFIX_LENGTHS = sorted({n for n, types in LENGTH_TYPES.items() if any(prefix for _, prefix in types)})


def _candidates(value: str, hash_kind: str | None) -> list[tuple[str, bool]]:
    """(type, is SHA256 prefix) to try for a hash, best first: by its length, the type the image
    names (``hash_kind``) first; nothing for a length no hash type has. A 64-character AutoV3 is
    the full tensor hash (``_mirror_value`` gives the 12 characters Civitai keeps)."""
    if len(value) not in LENGTH_TYPES:
        return []
    order = types_for_length(value)
    if len(value) == AUTOV3_FULL_LENGTH:
        order.append(("AutoV3", False))
    named = canonical_type(hash_kind or "")
    return sorted(order, key=lambda c: c[0] != named)


def _mirror_value(value: str, hash_type: str) -> str:
    return value[:AUTOV3_LENGTH] if hash_type == "AutoV3" and len(value) == AUTOV3_FULL_LENGTH else value


class LocalModels:
    """In-memory index of the library's model files: hashes, names and their matches."""

    def __init__(self, db: sqlite_utils.Database):
        self.by_hash: dict[str, dict[str, int]] = {c: {} for _, c in HASH_ORDER}
        self.by_hash["autov3_full"] = {}
        self.sha256_prefix: dict[int, dict[str, int]] = {n: {} for n in _PREFIX_LENGTHS}
        self.by_name: dict[str, list[int]] = {}
        self.paths: dict[int, str] = {}
        self.version_of: dict[int, dict] = {}
        self.file_of_version: dict[int, int] = {}
        if not db["files"].exists():
            return
        cols = db["files"].columns_dict
        hash_cols = [c for c in list(self.by_hash) if c in cols]
        missing = "coalesce(missing, 0) = 0" if "missing" in cols else "1"
        for row in db.query(f"select id, path, {', '.join(hash_cols) or 'null as x'} from files "
                            f"where kind = 'model' and {missing} order by id"):
            fid = row["id"]
            self.paths[fid] = row["path"]
            for c in hash_cols:
                if row.get(c):
                    self.by_hash[c].setdefault(row[c].upper(), fid)
            if row.get("sha256"):
                for n, index in self.sha256_prefix.items():
                    index.setdefault(row["sha256"][:n].upper(), fid)
            base = os.path.basename(row["path"]).lower()
            self.by_name.setdefault(base, []).append(fid)
            self.by_name.setdefault(strip_model_ext(base), []).append(fid)
        if db["matches"].exists():
            for m in db.query("select * from matches where version_id is not null"):
                if m["file_id"] in self.paths:
                    self.version_of[m["file_id"]] = m
                    self.file_of_version.setdefault(m["version_id"], m["file_id"])

    def find_hash(self, value: str, kind: str | None = None) -> tuple[int, str] | None:
        """A local model file whose hash equals value (by length), with the hash type.
        ``kind`` SHA256 on a short value means a SHA256 prefix (A1111 TI hashes, .pt LoRAs)."""
        v = value.upper()
        for hash_type, prefix in _candidates(v, kind):
            if prefix:
                fid = self.sha256_prefix.get(len(v), {}).get(v)
            else:
                column = "autov3_full" if hash_type == "AutoV3" and len(v) == AUTOV3_FULL_LENGTH else hash_type.lower()
                fid = self.by_hash.get(column, {}).get(v)
            if fid is not None:
                return fid, hash_type
        return None

    def find_name(self, name: str) -> int | None:
        base = os.path.basename(name.replace("\\", "/")).lower()
        ids = self.by_name.get(base) or self.by_name.get(strip_model_ext(base)) or []
        return ids[0] if ids else None


def resolve_resource(res: dict, local: LocalModels, mirror: Mirror) -> dict:
    """One resources row → {version_id, model_id, local_file_id, hash_type, confidence, reason, ...}."""
    vid = res.get("version_id")
    if vid is not None:
        info = mirror.version(vid) or {"version_id": int(vid)}
        out = match_result(info, hash_type="civitai_resources", confidence=1.0,
                           reason=f"Civitai resources names version {vid}")
        out["local_file_id"] = local.file_of_version.get(int(vid))
        return out
    value = clean_hex(res.get("hash"))
    if value and is_empty_hash(value):
        value = None                                   # the hash of nothing: ignored like Civitai
    if value:
        hit = local.find_hash(value, res.get("hash_kind"))
        if hit:
            return _local_hash_result(value, res, hit, local, mirror)
        found = lookup_by_length(value, res, mirror)
        if found:
            out = match_result(found[0], hash_type=found[1], confidence=CONFIDENCE.get(found[1], 1.0),
                               reason=f"{found[1]} {value} matches Civitai file {found[0].get('file_id')}; "
                                      "not held locally")
            out["local_file_id"] = local.file_of_version.get(found[0]["version_id"])
            return out
    name = (res.get("name") or "").strip()
    if name:
        out = _name_result(name, local, mirror)
        if out is not None:
            return out
    out = match_result(None, hash_type=None, confidence=None,
                       reason="nothing to resolve (no hash, id or name)" if not (value or name) and not res.get("hash")
                       else "not found in the library or the mirror")
    out["local_file_id"] = None
    return out


def _local_hash_result(value: str, res: dict, hit: tuple[int, str], local: LocalModels, mirror: Mirror) -> dict:
    """A hash a local model file has: its match's version, else the mirror's answer for the hash."""
    fid, hash_type = hit
    base = os.path.basename(local.paths[fid])
    m = local.version_of.get(fid)
    if m:
        out = match_result({**m, "type": m.get("model_type"), "file_id": m.get("civitai_file_id")},
                           hash_type=hash_type, confidence=1.0,
                           reason=f"{hash_type} {value} is local file {base}, "
                                  f"matched to version {m['version_id']} by {m.get('hash_type')}")
        out["confidence"] = min(1.0, m.get("confidence") or 1.0)
    else:
        out = match_result(None, hash_type=hash_type, confidence=None,
                           reason=f"{hash_type} {value} is local file {base}, which the mirror does not know")
    out["local_file_id"] = fid
    if out["version_id"] is None:
        found = lookup_by_length(value, res, mirror)
        if found:
            out = match_result(found[0], hash_type=found[1], confidence=1.0,
                               reason=f"{found[1]} {value} matches Civitai file {found[0].get('file_id')}")
            out["local_file_id"] = fid
    return out


def _name_result(name: str, local: LocalModels, mirror: Mirror) -> dict | None:
    """A resource named without a hash: a local model file of that name, else Civitai files of that name."""
    fid = local.find_name(name)
    if fid is not None:
        m = local.version_of.get(fid)
        base = os.path.basename(local.paths[fid])
        if m:
            out = match_result({**m, "type": m.get("model_type"), "file_id": m.get("civitai_file_id")},
                               hash_type="local_name", confidence=CONFIDENCE["local_name"],
                               reason=f"name {name!r} is local file {base}, matched to version {m['version_id']}")
        else:
            out = match_result(None, hash_type="local_name", confidence=None,
                               reason=f"name {name!r} is local file {base}, which the mirror does not know")
        out["local_file_id"] = fid
        return out
    files = mirror.files_by_name(model_file_names(name))
    named = [f for f in files if f["by"] != "size" and f.get("version_id") is not None]
    if not named:
        return None
    info = mirror.version(named[0]["version_id"]) or {"version_id": named[0]["version_id"]}
    info = {**info, "file_id": named[0]["id"],
            "candidates": [{"version_id": f["version_id"], "file_id": f["id"]} for f in named]}
    out = match_result(info, hash_type="name", confidence=CONFIDENCE["name"],
                       reason=f"name {name!r} equals Civitai file name {named[0]['name']!r}; no hash to confirm")
    out["local_file_id"] = local.file_of_version.get(named[0]["version_id"])
    return out


def lookup_by_length(value: str, res: dict, mirror: Mirror) -> tuple[dict, str] | None:
    """A hash from an image → the mirror's answer and the hash type that found it, or None."""
    for hash_type, _prefix in _candidates(value, res.get("hash_kind")):
        found = mirror.lookup(_mirror_value(value, hash_type), hash_type)
        if found:
            return found, hash_type
    return None
