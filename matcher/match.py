"""Resolve local files against the mirror: model files by hash, images by their resources.

Plain functions over two databases: ``library.sqlite`` (files, resources: written by scan and
extract) and ``civitai.sqlite`` (read only through ``mirror.lookup``'s one hash lookup, plus a
few plain reads of versions, file names and preview images for suggestions and orphans).

Rules, in the order they are applied:

- A pin (``civitai-mirror pin``) wins over everything and survives every later run.
- Model files: SHA256 → AutoV3 → AutoV2 → BLAKE3 → CRC32 (only when the size agrees too) →
  AutoV1; the first hit is the match, with Civitai's tie rule (earliest published, then lowest
  version id) applied by the lookup and the other candidates kept as ``alternates``.
  No hit → name and size guesses from ``model_files`` go in ``suggestions``, never in ``version_id``.
- Images: every ``resources`` row is resolved — a Civitai resources version id directly, a hash
  by its length (64 SHA256/BLAKE3/full AutoV3, 12 AutoV3 or SHA256[:12], 10 AutoV2, 8
  AutoV1/CRC32; ``e3b0c44298fc…`` ignored), a bare name first against local model file names
  (whose hashes then give the version) and else against ``model_files.name`` — to a version and
  to the local model file. The image's own version is its checkpoint's.
- Orphan images (no resources): the same bytes (SHA256) or a BlurHash near-match of the same
  size among the mirror's ``images``; low confidence, and the reason says so.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import sqlite_utils

log = logging.getLogger(__name__)

# (Civitai hash type, files column), in the order they are tried for model files.
HASH_ORDER: list[tuple[str, str]] = [
    ("SHA256", "sha256"), ("AutoV3", "autov3"), ("AutoV2", "autov2"),
    ("BLAKE3", "blake3"), ("CRC32", "crc32"), ("AutoV1", "autov1"),
]
# How much a hit of each kind is worth. AutoV1 hashes 64 KiB of the file, so merges of one base
# model can share it; CRC32 is 32 bits and only counts together with the file size.
CONFIDENCE = {
    "SHA256": 1.0, "BLAKE3": 1.0, "AutoV3": 1.0, "AutoV2": 1.0, "CRC32": 0.95, "AutoV1": 0.8,
    "pin": 1.0, "civitai_resources": 1.0, "local_name": 0.9, "name": 0.5,
    "sha256_image": 0.9, "blurhash": 0.4,
}
EMPTY_SHA256 = "E3B0C44298FC"          # sha256(b"") — kohya/A1111 hash of nothing; Civitai ignores it
BLURHASH_THRESHOLD = 0.02              # RMS distance of decoded components (linear RGB); the same
                                       # image re-encoded at another size scores < 0.01, others > 0.03
BY_HASH_URL = "https://civitai.com/api/v1/model-versions/by-hash"
MODEL_PAGE = "https://civitai.com/models/{model_id}?modelVersionId={version_id}"
ONLINE_CLIENT_OPTIONS: dict[str, Any] = {}   # extra CivitaiClient options (tests: fewer retries)
MODEL_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf", ".sft", ".onnx")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _db(db: sqlite_utils.Database | str | Path) -> sqlite_utils.Database:
    return db if isinstance(db, sqlite_utils.Database) else sqlite_utils.Database(str(db))


def _table_columns(db: sqlite_utils.Database, table: str) -> set[str]:
    return set(db.table(table).columns_dict) if db.table(table).exists() else set()


def _rows(db: sqlite_utils.Database, sql: str, params: Iterable[Any] = ()) -> list[dict]:
    cursor = db.execute(sql, list(params))
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


# ---- the mirror, read through mirror.lookup ------------------------------------------------

class Mirror:
    """civitai.sqlite as the matcher needs it: the one hash lookup plus a few plain reads."""

    def __init__(self, db: sqlite_utils.Database | str | Path | None):
        self.db = _db(db) if db is not None else None
        self._version_cache: dict[int, dict | None] = {}
        self._cols: dict[str, set[str]] = {}

    def cols(self, table: str) -> set[str]:
        if table not in self._cols:
            self._cols[table] = _table_columns(self.db, table) if self.db is not None else set()
        return self._cols[table]

    def indexed(self, table: str, column: str) -> bool:
        """Whether an index starts with ``column`` (size-only suggestions need one to stay fast)."""
        key = f"{table}.{column}"
        if key not in self._cols:
            ok = any(ix.columns[:1] == [column] for ix in self.db.table(table).indexes) \
                if self.db is not None and self.db.table(table).exists() else False
            self._cols[key] = {"yes"} if ok else set()
        return bool(self._cols[key])

    def lookup(self, value: str, hash_type: str | None = None) -> dict | None:
        """mirror.lookup.lookup_hash, None when not found."""
        if self.db is None:
            return None
        from mirror.lookup import lookup_hash

        found = lookup_hash(self.db, value, hash_type=hash_type)
        return found if found and found.get("version_id") is not None else None

    def version(self, version_id: int) -> dict | None:
        """Facts about one version (model id, names, type, base model), or None if unknown."""
        if self.db is None or version_id is None:
            return None
        version_id = int(version_id)
        if version_id in self._version_cache:
            return self._version_cache[version_id]
        info = None
        vcols, mcols = self.cols("model_versions"), self.cols("models")
        if vcols:
            model_key = _first(vcols, "modelId", "model_id")
            rows = _rows(self.db, "select * from model_versions where id = ?", [version_id])
            if rows:
                v = rows[0]
                model_id = v.get(model_key) if model_key else None
                info = {
                    "version_id": version_id, "model_id": model_id,
                    "version_name": v.get("name"),
                    "base_model": v.get("baseModel", v.get("base_model")),
                    "model_name": None, "type": None,
                }
                if model_id is not None and mcols:
                    m = _rows(self.db, "select * from models where id = ?", [model_id])
                    if m:
                        info["model_name"] = m[0].get("name")
                        info["type"] = m[0].get("type")
        self._version_cache[version_id] = info
        return info

    def file_size_bytes(self, civitai_file_id: int | None) -> float | None:
        cols = self.cols("model_files")
        if civitai_file_id is None or "sizeKB" not in cols:
            return None
        rows = _rows(self.db, "select sizeKB from model_files where id = ?", [civitai_file_id])
        return rows[0]["sizeKB"] * 1024 if rows and rows[0]["sizeKB"] is not None else None

    def files_by_name(self, name: str, size: int | None = None, limit: int = 5) -> list[dict]:
        """model_files whose name (or name without extension) equals ``name``, and, when a size
        is given, files of that exact size; best first."""
        cols = self.cols("model_files")
        if not cols or "name" not in cols:
            return []
        vkey = _first(cols, "modelVersionId", "version_id", "model_version_id")
        base = os.path.basename(name.replace("\\", "/"))
        stem = _strip_ext(base)
        # exact names only, so the model_files(name) index answers (a mirror has millions of rows)
        names = list(dict.fromkeys([base, stem] + [stem + ext for ext in MODEL_EXTENSIONS]))
        found: dict[int, dict] = {}
        sql = (f"select id, name, sizeKB, {vkey} as version_id from model_files "
               f"where name in ({','.join('?' * len(names))}) order by id limit {limit * 4}")
        for row in _rows(self.db, sql, names):
            row["by"] = "name"
            found[row["id"]] = row
        if size and "sizeKB" in cols:
            kb = size / 1024
            for row in found.values():
                if row["sizeKB"] is not None and abs(row["sizeKB"] - kb) < 0.001:
                    row["by"] = "name+size"
            if self.indexed("model_files", "sizeKB"):
                for row in _rows(self.db, f"select id, name, sizeKB, {vkey} as version_id from model_files "
                                 f"where sizeKB between ? and ? order by id limit {limit * 4}",
                                 [kb - 0.001, kb + 0.001]):
                    if row["id"] not in found:
                        row["by"] = "size"
                        found[row["id"]] = row
        rank = {"name+size": 0, "name": 1, "size": 2}
        return sorted(found.values(), key=lambda r: (rank[r["by"]], r["id"]))[:limit]

    def images(self, where: str, params: list) -> list[dict]:
        if not self.cols("images"):
            return []
        return _rows(self.db, f"select * from images where {where}", params)


def _first(cols: set[str], *names: str) -> str | None:
    return next((n for n in names if n in cols), None)


def _strip_ext(name: str) -> str:
    base = os.path.basename(name.replace("\\", "/"))
    root, ext = os.path.splitext(base)
    return root if ext.lower() in MODEL_EXTENSIONS or ext.lower() in (".vae", ".lora") else base


# ---- model files ---------------------------------------------------------------------------

def _result(found: dict | None, *, hash_type: str | None, confidence: float | None,
            reason: str) -> dict:
    found = found or {}
    return {
        "version_id": found.get("version_id"), "model_id": found.get("model_id"),
        "civitai_file_id": found.get("file_id"), "hash_type": hash_type,
        "confidence": confidence, "reason": reason,
        "model_name": found.get("model_name"), "version_name": found.get("version_name"),
        "model_type": found.get("type"), "base_model": found.get("base_model"),
        "alternates": _alternates(found),
    }


def _alternates(found: dict) -> list[dict]:
    """The other versions that share the hash (the lookup's ``candidates``), for the record."""
    out = []
    for c in found.get("candidates") or []:
        vid = c.get("version_id", c.get("modelVersionId")) if isinstance(c, dict) else c
        if vid is None or vid == found.get("version_id"):
            continue
        out.append({"version_id": vid})
    return out


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
            if size is None or row.get("size") is None or abs(size - row["size"]) > 1024:
                log.debug("CRC32 %s hit for %s but sizes differ", value, row.get("path"))
                continue
        reason = f"{hash_type} {value.upper()} matches Civitai file {found.get('file_id')}"
        if hash_type == "CRC32":
            reason += " of the same size"
        if hash_type == "AutoV1":
            reason += " (AutoV1 hashes 64 KiB only)"
        alts = _alternates(found)
        if alts:
            reason += f"; {len(alts)} other version(s) share it, earliest published chosen"
        return (_result(found, hash_type=hash_type, confidence=CONFIDENCE[hash_type], reason=reason),
                [_enrichment(row, "mirror", hash_type, "matched", value, found)])
    if not tried:
        return (_result(None, hash_type=None, confidence=None, reason="not hashed yet (run scan)"),
                [_enrichment(row, "mirror", None, "skipped", None, None)])
    reason = "no hash found in the mirror (tried " + ", ".join(tried) + ")"
    first = dict(HASH_ORDER)[tried[0]]
    return (_result(None, hash_type=None, confidence=None, reason=reason),
            [_enrichment(row, "mirror", tried[0], "not_found", row.get(first), None)])


def _display_hash(hash_type: str | None, value: str | None) -> str | None:
    if not value:
        return None
    value = value.upper()
    return value[:10] if hash_type == "SHA256" else value  # SHA256 shown as Civitai shows AutoV2


def _enrichment(row: dict, source: str, hash_type: str | None, status: str,
                value: str | None, payload: Any, url: str | None = None) -> dict:
    if url is None and payload and isinstance(payload, dict) and payload.get("version_id"):
        url = MODEL_PAGE.format(model_id=payload.get("model_id"), version_id=payload["version_id"])
    return {
        "file_id": row["id"], "source": source, "hash_type": hash_type, "lookup_status": status,
        "display_hash": _display_hash(hash_type, value), "source_url": url,
        "enriched_at": _now(),
        "payload_json": json.dumps(payload, default=str) if payload is not None else None,
    }


def name_suggestions(row: dict, mirror: Mirror, limit: int = 5) -> list[dict]:
    """Low-confidence guesses for an unmatched model file, by file name and size."""
    out = []
    for f in mirror.files_by_name(os.path.basename(row["path"]), row.get("size"), limit=limit):
        info = mirror.version(f["version_id"]) if f.get("version_id") is not None else None
        confidence = {"name+size": 0.5, "name": 0.3, "size": 0.2}[f["by"]]
        out.append({
            "version_id": f.get("version_id"), "model_id": (info or {}).get("model_id"),
            "civitai_file_id": f["id"], "file_name": f["name"],
            "model_name": (info or {}).get("model_name"),
            "confidence": confidence, "reason": f"same {f['by'].replace('+', ' and ')} as Civitai file {f['id']}",
        })
    return out


def _pin_result(pin: dict, mirror: Mirror) -> dict:
    info = mirror.version(pin["version_id"]) or {"version_id": pin["version_id"]}
    res = _result(info, hash_type="pin", confidence=1.0,
                  reason=f"pinned by user at {pin.get('_pinned_at')}")
    res["civitai_file_id"] = None
    return res


# ---- images -------------------------------------------------------------------------------

class LocalModels:
    """In-memory index of the library's model files: hashes, names and their matches."""

    def __init__(self, db: sqlite_utils.Database):
        self.by_hash: dict[str, dict[str, int]] = {c: {} for _, c in HASH_ORDER}
        self.by_hash["autov3_full"] = {}
        self.sha256_12: dict[str, int] = {}
        self.by_name: dict[str, list[int]] = {}
        self.paths: dict[int, str] = {}
        self.version_of: dict[int, dict] = {}
        self.file_of_version: dict[int, int] = {}
        cols = _table_columns(db, "files")
        if not cols:
            return
        hash_cols = [c for c in list(self.by_hash) if c in cols]
        missing = "coalesce(missing, 0) = 0" if "missing" in cols else "1"
        for row in _rows(db, f"select id, path, {', '.join(hash_cols) or 'null as x'} from files "
                         f"where kind = 'model' and {missing} order by id"):
            fid = row["id"]
            self.paths[fid] = row["path"]
            for c in hash_cols:
                if row.get(c):
                    self.by_hash[c].setdefault(row[c].upper(), fid)
            if row.get("sha256"):
                self.sha256_12.setdefault(row["sha256"][:12].upper(), fid)
            base = os.path.basename(row["path"]).lower()
            self.by_name.setdefault(base, []).append(fid)
            self.by_name.setdefault(_strip_ext(base), []).append(fid)
        if _table_columns(db, "matches"):
            for m in _rows(db, "select * from matches where version_id is not null"):
                if m["file_id"] in self.paths:
                    self.version_of[m["file_id"]] = m
                    self.file_of_version.setdefault(m["version_id"], m["file_id"])

    def find_hash(self, value: str, kind: str | None = None) -> tuple[int, str] | None:
        """A local model file whose hash equals value (by length), with the hash type.
        ``kind`` SHA256 on a short value means a SHA256 prefix (A1111 TI hashes, .pt LoRAs)."""
        v = value.upper()
        candidates = {
            64: [("sha256", "SHA256"), ("blake3", "BLAKE3"), ("autov3_full", "AutoV3")],
            12: [("autov3", "AutoV3")],
            10: [("autov2", "AutoV2")],
            8: [("autov1", "AutoV1"), ("crc32", "CRC32")],
        }.get(len(v), [])
        if len(v) == 12 and (kind or "").upper() == "SHA256" and v in self.sha256_12:
            return self.sha256_12[v], "SHA256"
        for column, hash_type in candidates:
            fid = self.by_hash.get(column, {}).get(v)
            if fid is not None:
                return fid, hash_type
        if len(v) == 12 and v in self.sha256_12:          # .pt LoRAs: SHA256[:12]
            return self.sha256_12[v], "SHA256"
        return None

    def find_name(self, name: str) -> int | None:
        base = os.path.basename(name.replace("\\", "/")).lower()
        ids = self.by_name.get(base) or self.by_name.get(_strip_ext(base)) or []
        return ids[0] if ids else None


def _norm_hash(value: str | None) -> str | None:
    if not value:
        return None
    v = str(value).strip()
    if v.lower().startswith("0x"):
        v = v[2:]
    v = v.upper()
    if not re.fullmatch(r"[0-9A-F]+", v):
        return None
    return v


def resolve_resource(res: dict, local: LocalModels, mirror: Mirror) -> dict:
    """One resources row → {version_id, model_id, local_file_id, hash_type, confidence, reason, ...}."""
    vid = res.get("version_id")
    if vid is not None:
        info = mirror.version(vid) or {"version_id": int(vid)}
        out = _result(info, hash_type="civitai_resources", confidence=1.0,
                      reason=f"Civitai resources names version {vid}")
        out["local_file_id"] = local.file_of_version.get(int(vid))
        return out
    value = _norm_hash(res.get("hash"))
    if value and value.startswith(EMPTY_SHA256):
        value = None                                   # the hash of nothing: ignored like Civitai
    if value:
        hit = local.find_hash(value, res.get("hash_kind"))
        if hit:
            fid, hash_type = hit
            m = local.version_of.get(fid)
            if m:
                out = _result({**m, "type": m.get("model_type"), "file_id": m.get("civitai_file_id")},
                              hash_type=hash_type, confidence=1.0,
                              reason=f"{hash_type} {value} is local file {os.path.basename(local.paths[fid])}, "
                                     f"matched to version {m['version_id']} by {m.get('hash_type')}")
                out["confidence"] = min(1.0, m.get("confidence") or 1.0)
            else:
                out = _result(None, hash_type=hash_type, confidence=None,
                              reason=f"{hash_type} {value} is local file {os.path.basename(local.paths[fid])}, "
                                     "which the mirror does not know")
            out["local_file_id"] = fid
            if out["version_id"] is None:
                found = _lookup_by_length(value, res, mirror)
                if found:
                    found_res = _result(found[0], hash_type=found[1], confidence=1.0,
                                        reason=f"{found[1]} {value} matches Civitai file {found[0].get('file_id')}")
                    found_res["local_file_id"] = fid
                    return found_res
            return out
        found = _lookup_by_length(value, res, mirror)
        if found:
            out = _result(found[0], hash_type=found[1], confidence=CONFIDENCE.get(found[1], 1.0),
                          reason=f"{found[1]} {value} matches Civitai file {found[0].get('file_id')}; not held locally")
            out["local_file_id"] = local.file_of_version.get(found[0]["version_id"])
            return out
    name = (res.get("name") or "").strip()
    if name:
        fid = local.find_name(name)
        if fid is not None:
            m = local.version_of.get(fid)
            base = os.path.basename(local.paths[fid])
            if m:
                out = _result({**m, "type": m.get("model_type"), "file_id": m.get("civitai_file_id")},
                              hash_type="local_name", confidence=CONFIDENCE["local_name"],
                              reason=f"name {name!r} is local file {base}, matched to version {m['version_id']}")
            else:
                out = _result(None, hash_type="local_name", confidence=None,
                              reason=f"name {name!r} is local file {base}, which the mirror does not know")
            out["local_file_id"] = fid
            return out
        files = mirror.files_by_name(os.path.basename(name.replace("\\", "/")))
        named = [f for f in files if f["by"] != "size" and f.get("version_id") is not None]
        if named:
            info = mirror.version(named[0]["version_id"]) or {"version_id": named[0]["version_id"]}
            info = {**info, "file_id": named[0]["id"],
                    "candidates": [{"version_id": f["version_id"], "file_id": f["id"]} for f in named]}
            out = _result(info, hash_type="name", confidence=CONFIDENCE["name"],
                          reason=f"name {name!r} equals Civitai file name {named[0]['name']!r}; no hash to confirm")
            out["local_file_id"] = local.file_of_version.get(named[0]["version_id"])
            return out
    out = _result(None, hash_type=None, confidence=None,
                  reason="nothing to resolve (no hash, id or name)" if not (value or name) and not res.get("hash")
                  else "not found in the library or the mirror")
    out["local_file_id"] = None
    return out


def _lookup_by_length(value: str, res: dict, mirror: Mirror) -> tuple[dict, str] | None:
    """Hash from an infotext → the mirror, by length (civitai-api.md §3.3)."""
    kind = (res.get("hash_kind") or "").lower()
    if len(value) == 64:
        if "autov3" in kind:                       # SwarmUI 0x + full tensor hash
            order = [(value[:12], "AutoV3"), (value, "SHA256"), (value, "BLAKE3")]
        elif kind == "blake3":
            order = [(value, "BLAKE3"), (value, "SHA256")]
        else:
            order = [(value, "SHA256"), (value, "BLAKE3"), (value[:12], "AutoV3")]
    elif len(value) == 12:
        order = [(value, "SHA256-prefix"), (value, "AutoV3")] if kind == "sha256" else \
            [(value, "AutoV3"), (value, "SHA256-prefix")]
    elif len(value) == 10:
        order = [(value, "AutoV2")]
    elif len(value) == 8:
        order = [(value, "AutoV1"), (value, "CRC32")]
    else:
        order = []
    for v, hash_type in order:
        found = mirror.lookup(v, "SHA256" if hash_type == "SHA256-prefix" else hash_type)
        if found:
            return found, hash_type.replace("-prefix", "")
    return None


# ---- orphan images: the mirror's preview images ---------------------------------------------

_B83 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz#$%*+,-.:;=?@[]^_{|}~"
_B83_INDEX = {c: i for i, c in enumerate(_B83)}


def _b83(text: str) -> int:
    value = 0
    for c in text:
        value = value * 83 + _B83_INDEX[c]
    return value


def _srgb_to_linear(v: int) -> float:
    x = v / 255
    return x / 12.92 if x <= 0.04045 else ((x + 0.055) / 1.055) ** 2.4


def blurhash_components(text: str) -> dict[tuple[int, int], tuple[float, float, float]]:
    """Decode a BlurHash into its DCT components {(x, y): (r, g, b)} in linear RGB."""
    if not text or len(text) < 6:
        raise ValueError("BlurHash too short")
    flag = _b83(text[0])
    ny, nx = flag // 9 + 1, flag % 9 + 1
    if len(text) != 4 + 2 * nx * ny:
        raise ValueError("BlurHash length does not match its size flag")
    max_ac = (_b83(text[1]) + 1) / 166
    dc = _b83(text[2:6])
    comps = {(0, 0): (_srgb_to_linear(dc >> 16), _srgb_to_linear((dc >> 8) & 255), _srgb_to_linear(dc & 255))}
    for i in range(1, nx * ny):
        v = _b83(text[4 + 2 * i: 6 + 2 * i])
        quant = (v // 361, (v // 19) % 19, v % 19)
        comps[(i % nx, i // nx)] = tuple(math.copysign(((q - 9) / 9) ** 2, q - 9) * max_ac for q in quant)
    return comps


def blurhash_distance(a: str, b: str) -> float:
    """RMS difference of the components both hashes carry (so 4x3 and 5x4 hashes compare)."""
    ca, cb = blurhash_components(a), blurhash_components(b)
    keys = ca.keys() & cb.keys()
    total = sum((x - y) ** 2 for k in keys for x, y in zip(ca[k], cb[k]))
    return math.sqrt(total / (3 * len(keys)))


def _same_preview_bytes(mirror: Mirror, sha256_hash: str, width: int | None, height: int | None,
                        size: int | None, limit: int = 200) -> dict | None:
    """A downloaded preview (images.local_path, relative to the dump) with these exact bytes."""
    import hashlib

    info = _rows(mirror.db, "select value from _build_info where key = 'dump_dir'") \
        if mirror.cols("_build_info") else []
    if not info:
        return None
    dump = Path(info[0]["value"])
    where, params = "local_path is not null", []
    if width and height:
        where, params = where + " and width = ? and height = ?", [width, height]
    for img in mirror.images(f"{where} order by id limit {limit}", params):
        path = dump / img["local_path"]
        try:
            if size is not None and path.stat().st_size != size:
                continue
            digest = hashlib.sha256()
            with open(path, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
        except OSError:
            continue
        if digest.hexdigest().upper() == sha256_hash.upper():
            return img
    return None


def cross_reference_with_civitai(sha256_hash: str | None, blur_hash: str | None,
                                 civitai_db_path: str | Path | sqlite_utils.Database, *,
                                 width: int | None = None, height: int | None = None,
                                 size: int | None = None,
                                 threshold: float = BLURHASH_THRESHOLD) -> dict | None:
    """Find a local image among the mirror's preview ``images``.

    The same bytes (a ``sha256`` column, else the previews ``crawl --images`` downloaded, of the
    same width, height and byte ``size`` when given) is a near-certain hit; otherwise the
    nearest BlurHash of an image with the same width and height (when given), within
    ``threshold``. Returns ``{image_id, version_id, model_id, url, method, distance, confidence,
    reason}`` or None.
    """
    mirror = civitai_db_path if isinstance(civitai_db_path, Mirror) else Mirror(civitai_db_path)
    cols = mirror.cols("images")
    if not cols:
        return None
    vkey = _first(cols, "modelVersionId", "version_id", "model_version_id")
    mkey = _first(cols, "modelId", "model_id")

    def shape(img: dict, method: str, distance: float | None, confidence: float, reason: str) -> dict:
        vid = img.get(vkey) if vkey else None
        mid = img.get(mkey) if mkey else None
        if mid is None and vid is not None:
            mid = (mirror.version(vid) or {}).get("model_id")
        return {"image_id": img.get("id"), "version_id": vid, "model_id": mid, "url": img.get("url"),
                "method": method, "distance": distance, "confidence": confidence, "reason": reason}

    sha_col = _first(cols, "sha256", "SHA256")
    if sha256_hash and sha_col:
        hits = mirror.images(f"upper({sha_col}) = ? order by id", [sha256_hash.upper()])
        if hits:
            return shape(hits[0], "sha256", 0.0, CONFIDENCE["sha256_image"],
                         f"same bytes as Civitai image {hits[0].get('id')} (SHA256); no metadata to confirm the model")
    if sha256_hash and "local_path" in cols:
        hit = _same_preview_bytes(mirror, sha256_hash, width, height, size)
        if hit:
            return shape(hit, "sha256", 0.0, CONFIDENCE["sha256_image"],
                         f"same bytes as Civitai image {hit.get('id')} (SHA256 of the downloaded preview); "
                         "no metadata to confirm the model")
    hash_col = _first(cols, "hash", "blurhash")
    if not blur_hash or not hash_col:
        return None
    try:
        blurhash_components(blur_hash)
    except (ValueError, KeyError):
        return None
    if width and height and {"width", "height"} <= cols:
        candidates = mirror.images(f"width = ? and height = ? and {hash_col} is not null", [width, height])
        size_note = f"same size {width}x{height}"
    else:
        candidates = mirror.images(f"{hash_col} is not null", [])
        size_note = "size unknown"
    best, best_d = None, None
    for img in candidates:
        try:
            d = blurhash_distance(blur_hash, img[hash_col])
        except (ValueError, KeyError, ZeroDivisionError):
            continue
        if d <= threshold and (best_d is None or d < best_d or (d == best_d and img["id"] < best["id"])):
            best, best_d = img, d
    if best is None:
        return None
    return shape(best, "blurhash", round(best_d, 4), CONFIDENCE["blurhash"],
                 f"looks like Civitai image {best.get('id')} (BlurHash distance {best_d:.3f}, {size_note}); "
                 "near-match only, low confidence")


def orphan_result(row: dict, blur_hash: str | None, mirror: Mirror) -> dict:
    """The match result of an image without usable metadata (a ``files`` row and its BlurHash):
    ``cross_reference_with_civitai`` against the mirror's preview images."""
    hit = cross_reference_with_civitai(row.get("sha256"), blur_hash, mirror, width=row.get("width"),
                                       height=row.get("height"), size=row.get("size"))
    if hit and hit["version_id"] is not None:
        info = mirror.version(hit["version_id"]) or {"version_id": hit["version_id"]}
        res = _result({**info, "model_id": hit["model_id"] or info.get("model_id")},
                      hash_type=hit["method"], confidence=hit["confidence"],
                      reason="orphan image: " + hit["reason"])
        res["civitai_image_id"] = hit["image_id"]
    else:
        res = _result(None, hash_type=None, confidence=None,
                      reason="orphan image (no metadata); no Civitai preview image looks like it")
    res["pinned"] = 0
    return res


# ---- the whole library ----------------------------------------------------------------------

def match_library(db: sqlite_utils.Database, civitai_db: sqlite_utils.Database | str | Path | None, *,
                  online: bool = False, api_base: str | None = None, dump_dir: str | Path | None = None,
                  progress: Callable[[int], None] | None = None,
                  derived_fields: list[tuple[str, str]] | None = None, debug: bool = False) -> dict:
    """Match every model file and image in library.sqlite; store matches, resource_matches and
    model_enrichment; return summary counts.

    ``derived_fields`` ([(name, expression)], from ``matcher.derived.load_derived_fields``): after
    matching, evaluate them for every file and store them in ``derived_fields`` (see
    ``update_derived_fields``; ``debug`` stores error markers). None skips that step."""
    from matcher.schema import ensure_library

    ensure_library(db)
    mirror = Mirror(civitai_db)
    summary: dict[str, Any] = {
        "models": 0, "models_matched": 0, "pinned": 0, "suggested": 0, "by_hash_type": {},
        "images": 0, "images_matched": 0, "resources": 0, "resources_resolved": 0,
        "resources_local": 0, "orphans": 0, "orphans_matched": 0,
        "online_queried": 0, "online_found": 0, "online_errors": 0,
    }
    model_rows = _file_rows(db, "model")
    _match_models(db, model_rows, mirror, summary, progress)
    if online:
        unmatched = [r for r in model_rows if r.get("sha256") and not _matched(db, r["id"])]
        if unmatched:
            lookup_online(db, unmatched, civitai_db=civitai_db, api_base=api_base,
                          dump_dir=dump_dir, summary=summary)
            _recount_models(db, model_rows, summary)
            mirror = Mirror(civitai_db)               # fresh caches: the mirror may have new rows
    _match_images(db, _file_rows(db, "media"), mirror, summary, progress)
    if derived_fields is not None:
        summary["derived"] = update_derived_fields(db, derived_fields, debug=debug)
    return summary


def _matched(db: sqlite_utils.Database, file_id: int) -> bool:
    return bool(_rows(db, "select 1 from matches where file_id = ? and version_id is not null", [file_id]))


def _recount_models(db, model_rows, summary) -> None:
    ids = [r["id"] for r in model_rows]
    summary["models_matched"] = summary["suggested"] = 0
    summary["by_hash_type"] = {}
    for m in _rows(db, f"select * from matches where file_id in ({','.join('?' * len(ids))})", ids):
        if m["version_id"] is not None:
            summary["models_matched"] += 1
            summary["by_hash_type"][m["hash_type"]] = summary["by_hash_type"].get(m["hash_type"], 0) + 1
        elif m["suggestions"] and json.loads(m["suggestions"]):
            summary["suggested"] += 1


def _file_rows(db: sqlite_utils.Database, kind: str) -> list[dict]:
    cols = _table_columns(db, "files")
    if not cols:
        return []
    missing = " and coalesce(missing, 0) = 0" if "missing" in cols else ""
    return _rows(db, f"select * from files where kind = ?{missing} order by id", [kind])


def _pins(db: sqlite_utils.Database) -> tuple[dict[int, dict], dict[str, dict]]:
    pins = _rows(db, "select * from pins")
    return ({p["file_id"]: p for p in pins},
            {p["sha256"].upper(): p for p in pins if p.get("sha256")})


def _pin_for(row: dict, by_id: dict, by_sha: dict) -> dict | None:
    pin = by_id.get(row["id"])
    if pin is None and row.get("sha256"):
        pin = by_sha.get(row["sha256"].upper())
    return pin


def _match_models(db, rows, mirror: Mirror, summary: dict, progress) -> None:
    by_id, by_sha = _pins(db)
    now = _now()
    matches, audits = [], []
    for row in rows:
        summary["models"] += 1
        pin = _pin_for(row, by_id, by_sha)
        if pin:
            res = _pin_result(pin, mirror)
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
        matches.append(_match_row(row["id"], res, now))
        if progress:
            progress(1)
    with db.conn:
        if matches:
            db["matches"].upsert_all(matches, pk="file_id", alter=True)
        if audits:
            db["model_enrichment"].upsert_all(audits, pk=("file_id", "source"), alter=True)


def _match_row(file_id: int, res: dict, now: str) -> dict:
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


def _match_images(db, rows, mirror: Mirror, summary: dict, progress) -> None:
    local = LocalModels(db)
    by_id, by_sha = _pins(db)
    resources: dict[int, list[dict]] = {}
    if _table_columns(db, "resources"):
        order = "file_id, position, id" if "position" in _table_columns(db, "resources") else "file_id, id"
        for r in _rows(db, f"select * from resources order by {order}"):
            resources.setdefault(r["file_id"], []).append(r)
    blurhashes: dict[int, str] = {}
    mcols = _table_columns(db, "media_info")
    if "blurhash" in mcols:
        blurhashes = {r["file_id"]: r["blurhash"] for r in _rows(db, "select file_id, blurhash from media_info")}
    now = _now()
    matches, rmatches = [], []
    for row in rows:
        summary["images"] += 1
        pin = _pin_for(row, by_id, by_sha)
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
            res = _pin_result(pin, mirror)
            res["pinned"] = 1
            summary["pinned"] += 1
        elif checkpoint:
            res = {**checkpoint, "reason": "checkpoint: " + checkpoint["reason"], "pinned": 0}
        elif res_rows:
            resolved = sum(1 for m in rmatches if m["file_id"] == row["id"] and m["version_id"] is not None)
            res = _result(None, hash_type=None, confidence=None,
                          reason=f"checkpoint not resolved; {resolved} of {len(res_rows)} resources resolved")
            res["pinned"] = 0
        else:
            summary["orphans"] += 1
            res = orphan_result(row, blurhashes.get(row["id"]), mirror)
            if res["version_id"] is not None:
                summary["orphans_matched"] += 1
        if res["version_id"] is not None:
            summary["images_matched"] += 1
        matches.append(_match_row(row["id"], res, now))
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


# ---- derived fields (config.ini [derived]), evaluated after enrichment -----------------------

#: generations columns that are not part of the record under their own name
_GEN_SKIP = {"file_id", "params_json", "seed_text", "_extracted_at"}
#: media_info columns that are not part of the record
_MEDIA_SKIP = {"file_id", "thumbnail", "_source_stamp", "_extracted_at", "error", "format"}
_HASH_COLUMNS = ("sha256", "autov1", "autov2", "autov3", "autov3_full", "crc32", "blake3")


def derived_record(file_row: dict, match_row: dict | None = None, generation: dict | None = None,
                   loras: list[dict] | None = None, resources: list[dict] | None = None,
                   media: dict | None = None) -> dict[str, Any]:
    """The names a derived expression sees for one file (see README "Derived fields").

    File: ``path file_name kind format size`` + hashes, ``file_model_type file_base_model`` (the
    scan's detection). Civitai enrichment (the ``matches`` row): ``version_id model_id
    civitai_file_id hash_type confidence match_reason pinned civitai_model_name
    civitai_version_name civitai_type civitai_base_model civitai_image_id``; ``base_model`` and
    ``model_type`` are Civitai's when matched, else the scan's. Images add the parsed generation
    record (the ``generations`` columns: ``model_name steps sampler cfg_scale seed ...``, plus
    ``prompt``/``negative_prompt`` = the raw prompts, ``params``, ``loras``, ``resources``) and the
    ``media_info`` facts (``blurhash``, ``exif_*``, ``image_width``/``image_height``).
    """
    m = match_row or {}
    rec: dict[str, Any] = {
        "path": file_row.get("path"), "file_name": os.path.basename(file_row.get("path") or ""),
        "kind": file_row.get("kind"), "format": file_row.get("format"), "size": file_row.get("size"),
        **{c: file_row.get(c) for c in _HASH_COLUMNS},
        "file_model_type": file_row.get("model_type"), "file_base_model": file_row.get("base_model"),
        "width": file_row.get("width"), "height": file_row.get("height"),
        "image_width": file_row.get("width"), "image_height": file_row.get("height"),
        "version_id": m.get("version_id"), "model_id": m.get("model_id"),
        "civitai_file_id": m.get("civitai_file_id"), "hash_type": m.get("hash_type"),
        "confidence": m.get("confidence"), "match_reason": m.get("reason"),
        "pinned": bool(m.get("pinned")), "civitai_model_name": m.get("model_name"),
        "civitai_version_name": m.get("version_name"), "civitai_type": m.get("model_type"),
        "civitai_base_model": m.get("base_model"), "civitai_image_id": m.get("civitai_image_id"),
        "model_name": None, "prompt": None, "negative_prompt": None, "params": {},
        "loras": list(loras or []), "resources": list(resources or []),
    }
    rec["base_model"] = m.get("base_model") if m.get("version_id") is not None and m.get("base_model") \
        else file_row.get("base_model")
    rec["model_type"] = m.get("model_type") if m.get("version_id") is not None and m.get("model_type") \
        else file_row.get("model_type")
    for key, value in (media or {}).items():
        if key not in _MEDIA_SKIP and (value is not None or key not in rec):
            rec[key] = value
    if generation:
        for key, value in generation.items():
            if key not in _GEN_SKIP and (value is not None or key not in rec):
                rec[key] = value
        if generation.get("seed") is None and generation.get("seed_text"):
            try:
                rec["seed"] = int(generation["seed_text"])
            except ValueError:
                rec["seed"] = generation["seed_text"]
        rec["prompt"] = generation.get("positive_raw")
        rec["negative_prompt"] = generation.get("negative_raw")
        try:
            rec["params"] = json.loads(generation.get("params_json") or "{}")
        except ValueError:
            rec["params"] = {}
    return rec


def iter_derived_records(db: sqlite_utils.Database) -> Iterator[tuple[int, dict[str, Any]]]:
    """(file_id, derived_record) for every present model file and media file of the library."""
    def grouped(sql: str) -> dict[int, list[dict]]:
        out: dict[int, list[dict]] = {}
        for r in _rows(db, sql):
            out.setdefault(r.pop("file_id"), []).append(r)
        return out

    matches = {m["file_id"]: m for m in _rows(db, "select * from matches")} \
        if _table_columns(db, "matches") else {}
    gens = {g["file_id"]: g for g in _rows(db, "select * from generations")} \
        if _table_columns(db, "generations") else {}
    loras = grouped("select file_id, name, weight, weight2, context, kind from lora_usages "
                    "order by file_id, position, id") if _table_columns(db, "lora_usages") else {}
    resources: dict[int, list[dict]] = {}
    if _table_columns(db, "resources"):
        rm = bool(_table_columns(db, "resource_matches"))
        resolved = ("coalesce(rm.version_id, r.version_id) as version_id, rm.model_id, rm.model_name, "
                    "rm.version_name, rm.model_type, rm.base_model, rm.confidence, rm.local_file_id"
                    if rm else "r.version_id")
        join = "left join resource_matches rm on rm.resource_id = r.id" if rm else ""
        resources = grouped(f"select r.file_id, r.kind, r.name, r.hash, r.hash_kind, r.weight, {resolved} "
                            f"from resources r {join} order by r.file_id, r.position, r.id")
    media: dict[int, dict] = {}
    mcols = _table_columns(db, "media_info") - _MEDIA_SKIP
    if mcols:
        cols = ", ".join(sorted(mcols))
        media = {r["file_id"]: r for r in _rows(db, f"select file_id, {cols} from media_info")}
        for r in media.values():
            r.pop("file_id")
    for kind in ("model", "media"):
        for row in _file_rows(db, kind):
            fid = row["id"]
            yield fid, derived_record(row, matches.get(fid), gens.get(fid), loras.get(fid),
                                      resources.get(fid), media.get(fid))


def _stored_value(value: Any) -> Any:
    """A derived value as SQLite keeps it (so a re-run can tell whether it changed)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value if -(2 ** 63) <= value < 2 ** 63 else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


def update_derived_fields(db: sqlite_utils.Database, fields: list[tuple[str, str]], *,
                          debug: bool = False) -> dict[str, Any]:
    """Evaluate ``fields`` in order for every file (``iter_derived_records``) and store them in
    ``derived_fields``. A field that fails or is refused stores nothing for that file (``debug``:
    a row with ``error``); rows of fields no longer configured are removed; unchanged values are
    not written. Returns ``{fields, files, values, written, removed, errors: {name: count},
    first_error: {name: why}}``."""
    from matcher.derived import ERROR_PREFIX, evaluate_derived
    from matcher.schema import ensure_library

    ensure_library(db)
    names = [name for name, _ in fields]
    existing: dict[tuple[int, str], tuple[Any, Any]] = {
        (r[0], r[1]): (r[2], r[3]) for r in db.execute("select file_id, name, value, error from derived_fields")}
    summary: dict[str, Any] = {"fields": len(fields), "files": 0, "values": 0, "written": 0, "removed": 0,
                               "errors": {}, "first_error": {}}
    now = _now()
    upserts: list[dict] = []
    seen: set[int] = set()
    kept: set[tuple[int, str]] = set()
    for fid, record in (iter_derived_records(db) if fields else ()):
        summary["files"] += 1
        seen.add(fid)
        out = evaluate_derived(record, fields, debug=True)
        for name in names:
            if name not in out:
                continue
            value = out[name]
            if isinstance(value, str) and value.startswith(ERROR_PREFIX):
                why = value[len(ERROR_PREFIX):]
                summary["errors"][name] = summary["errors"].get(name, 0) + 1
                summary["first_error"].setdefault(name, why)
                if not debug:
                    continue
                want = (None, why)
            else:
                summary["values"] += 1
                want = (_stored_value(value), None)
            kept.add((fid, name))
            if existing.get((fid, name)) != want:
                upserts.append({"file_id": fid, "name": name, "value": want[0], "error": want[1],
                                "_updated_at": now})
    # a stored row goes when its field is no longer configured, or when its file was evaluated
    # and the field gave nothing this time (it failed, without --debug)
    deletes = sorted(key for key in existing
                     if key[1] not in names or (key[0] in seen and key not in kept))
    with db.conn:
        for fid, name in deletes:
            db.execute("delete from derived_fields where file_id = ? and name = ?", [fid, name])
        gone = db.execute("delete from derived_fields where file_id not in (select id from files)").rowcount
        if upserts:
            db["derived_fields"].upsert_all(upserts, pk=("file_id", "name"))
    summary["written"], summary["removed"] = len(upserts), len(deletes) + max(gone, 0)
    return summary


# ---- reading results back (for --json and other parts) -------------------------------------

def iter_match_records(db: sqlite_utils.Database) -> Iterator[dict]:
    """One dict per model file and per image, as ``match --json`` prints them."""
    if not _table_columns(db, "matches"):
        return
    resources: dict[int, list[dict]] = {}
    if _table_columns(db, "resources"):
        sql = ("select r.*, rm.version_id as r_version_id, rm.model_id as r_model_id, "
               "rm.hash_type as r_hash_type, rm.confidence as r_confidence, rm.reason as r_reason, "
               "lf.path as local_path from resources r "
               "join resource_matches rm on rm.resource_id = r.id "
               "left join files lf on lf.id = rm.local_file_id order by r.file_id, r.id")
        for r in _rows(db, sql):
            resources.setdefault(r["file_id"], []).append({
                "kind": r.get("kind"), "name": r.get("name"), "hash": r.get("hash"),
                "weight": r.get("weight"), "version_id": r["r_version_id"], "model_id": r["r_model_id"],
                "hash_type": r["r_hash_type"], "confidence": r["r_confidence"],
                "reason": r["r_reason"], "local_path": r["local_path"],
            })
    for m in _rows(db, "select f.path, f.kind, m.* from matches m join files f on f.id = m.file_id "
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


# ---- pins ----------------------------------------------------------------------------------

def _file_by_path(db: sqlite_utils.Database, path: str | Path) -> dict:
    p = str(Path(path).expanduser().resolve())
    rows = _rows(db, "select * from files where path = ?", [p]) if _table_columns(db, "files") else []
    if not rows:
        raise LookupError(f"{path} is not in the library; run `civitai-mirror scan` on its folder first")
    return rows[0]


def pin_file(db: sqlite_utils.Database, path: str | Path, version_id: int,
             civitai_db: sqlite_utils.Database | str | Path | None = None) -> dict:
    """Pin a file to a Civitai version; every later ``match`` keeps it. Returns the match row."""
    from matcher.schema import ensure_library

    ensure_library(db)
    row = _file_by_path(db, path)
    pin = {"file_id": row["id"], "path": row["path"], "sha256": row.get("sha256"),
           "version_id": int(version_id), "_pinned_at": _now()}
    res = _pin_result(pin, Mirror(civitai_db))
    res["pinned"] = 1
    match_row = _match_row(row["id"], res, pin["_pinned_at"])
    with db.conn:
        db["pins"].upsert(pin, pk="file_id")
        db["matches"].upsert(match_row, pk="file_id", alter=True)
    return match_row


def unpin_file(db: sqlite_utils.Database, path: str | Path) -> bool:
    """Remove a pin (found by path, else by content); the file is matched again by the next run."""
    from matcher.schema import ensure_library

    ensure_library(db)
    row = _file_by_path(db, path)
    pins = _rows(db, "select file_id from pins where file_id = ? or (sha256 is not null and sha256 = ?)",
                 [row["id"], row.get("sha256")])
    with db.conn:
        for p in pins:
            db.execute("delete from pins where file_id = ?", [p["file_id"]])
        db.execute("delete from matches where file_id = ? and pinned = 1", [row["id"]])
    return bool(pins)


# ---- --online: the live API through the crawler's client -----------------------------------

def lookup_online(db: sqlite_utils.Database, rows: list[dict], *, civitai_db: str | Path | None,
                  api_base: list[str] | str | None = None, dump_dir: str | Path | None = None,
                  summary: dict | None = None) -> set[int]:
    """POST the SHA256 of unmatched model files to by-hash (100 per request); match the files the
    API knows from its answer, save their models into the dump and the mirror. Returns the ids of
    the files matched."""
    import asyncio

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
        audits = [_enrichment(r, "api", "SHA256", status, r["sha256"], {"error": str(exc)}, url=BY_HASH_URL)
                  for rs in by_sha.values() for r in rs]
        with db.conn:
            db["model_enrichment"].upsert_all(audits, pk=("file_id", "source"), alter=True)
        return set()
    now = _now()
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
                audits.append(_enrichment(row, "api", "SHA256", "not_found", sha, None, url=BY_HASH_URL))
                continue
            v, f = hit["version"], hit["file"]
            model = v.get("model") or {}
            found = {"version_id": v["id"], "model_id": v.get("modelId"), "file_id": f.get("id"),
                     "model_name": model.get("name"), "version_name": v.get("name"),
                     "type": model.get("type"), "base_model": v.get("baseModel")}
            res = _result(found, hash_type="SHA256", confidence=1.0,
                          reason=f"SHA256 {sha} matches Civitai file {f.get('id')} (live API)")
            res["pinned"] = 0
            match_rows.append(_match_row(row["id"], res, now))
            audits.append(_enrichment(row, "api", "SHA256", "matched", sha, v))
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
    from crawler.dump import Dump

    if isinstance(civitai_db, sqlite_utils.Database):
        civitai_db = None
    if dump_dir is None and civitai_db and os.path.exists(civitai_db):
        rows = _rows(sqlite_utils.Database(str(civitai_db)),
                     "select value from _build_info where key = 'dump_dir'") \
            if _table_columns(sqlite_utils.Database(str(civitai_db)), "_build_info") else []
        dump_dir = rows[0]["value"] if rows else None
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
        from mirror.build import build_mirror

        build_mirror(dump_dir, civitai_db)


async def _fetch_online(hashes: list[str], bases: list[str] | None) -> tuple[list[dict], list[dict], str]:
    from crawler.api import fetch_model, fetch_versions_by_hash
    from crawler.client import CivitaiClient, host_of

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
