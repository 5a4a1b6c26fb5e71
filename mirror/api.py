"""Civitai's JSON shapes rebuilt from civitai.sqlite (pure functions over a sqlite3 connection).

Used by the Datasette plugin (mirror.plugin) for the offline Civitai-compatible routes. The mirror
answers for models that are Archived or gone upstream too: that is what it is for.
"""
from __future__ import annotations

import sqlite3
from typing import Any

import orjson

from mirror.answers import model_answer, version_answer
from mirror.hashes import normalize_hash
from mirror.lookup import files_for_sha256, lookup_with_conn

MAX_ID = 2147483647
MAX_BY_HASH = 100
MAX_BY_HASH_IDS = 10_000  # POST by-hash/ids, as Civitai


class BadRequest(ValueError):
    """Bad input: answered with 400 and ``{"error": message}``."""


def parse_id(text: str, what: str = "id") -> int:
    """Civitai's rule: a positive int4, else 400."""
    try:
        value = int(str(text).strip())
    except ValueError:
        raise BadRequest(f"{what} must be a positive integer, not {text!r}") from None
    if value <= 0 or value > MAX_ID:
        raise BadRequest(f"{what} must be between 1 and {MAX_ID}")
    return value


# The answers themselves are assembled from the rows in mirror.answers; the functions below shape
# them as each endpoint answers (a version list entry inside a model differs from the version endpoint).

#: keys a version has only inside a model's ``modelVersions`` (or only in the list), never on
#: ``/model-versions/{id}`` and by-hash (the real answers in ../shared/civitai-samples; ``availability``
#: and ``nsfwLevel`` stay: the version endpoint answers them now, and typed clients require them)
LIST_ONLY_VERSION_KEYS = ("index", "covered", "supportsGeneration", "flags")
#: AIR's ecosystem by the start of ``baseModel`` (Civitai: ``urn:air:<ecosystem>:<type>:civitai:...``);
#: another base model's ecosystem is its name in lower case without punctuation
_ECOSYSTEMS = (("sd 1", "sd1"), ("sd 2", "sd2"), ("sd 3", "sd3"), ("sdxl", "sdxl"), ("pony", "sdxl"),
               ("illustrious", "sdxl"), ("noobai", "sdxl"), ("flux.1", "flux1"))
_AIR_TYPES = {"Checkpoint": "checkpoint", "TextualInversion": "embedding", "Hypernetwork": "hypernet",
              "LORA": "lora", "LoCon": "lycoris", "DoRA": "dora", "Controlnet": "controlnet",
              "Upscaler": "upscaler", "VAE": "vae", "MotionModule": "motionmodule"}
LOCAL_IMAGES = "/-/civitai-images/"


def air(base_model: Any, model_type: Any, model_id: int, version_id: int) -> str:
    """``urn:air:<ecosystem>:<type>:civitai:<modelId>@<versionId>`` as Civitai writes it."""
    base = str(base_model or "other").lower()
    ecosystem = next((eco for start, eco in _ECOSYSTEMS if base.startswith(start)), None)
    if ecosystem is None:
        ecosystem = "".join(ch for ch in base if ch.isalnum()) or "other"
    kind = _AIR_TYPES.get(str(model_type), "".join(ch for ch in str(model_type).lower() if ch.isalnum()))
    return f"urn:air:{ecosystem}:{kind or 'other'}:civitai:{model_id}@{version_id}"


def _creator(conn: sqlite3.Connection, model_id: int) -> dict[str, Any] | None:
    row = conn.execute("SELECT c.username, c.image FROM models m JOIN creators c "
                       "ON c.username = m.username WHERE m.id = ?", (model_id,)).fetchone()
    return {"username": row[0], "image": row[1]} if row else None


def local_images(conn: sqlite3.Connection, images: Any, base_url: str, **where: int) -> None:
    """Point ``images[].url`` at the copy ``crawl --images`` saved, when it saved one."""
    if not base_url or not isinstance(images, list) or not images:
        return
    column, value = next(iter(where.items()))  # version_id or model_id: both are indexed
    saved = {}
    for image_id, url, path in conn.execute(
            f"SELECT id, url, local_path FROM images WHERE {column} = ? AND local_path IS NOT NULL",
            (value,)):
        saved[url] = saved[image_id] = path
    for image in images:
        if isinstance(image, dict):
            path = saved.get(image.get("id")) or saved.get(image.get("url"))
            if path:
                image["url"] = base_url + LOCAL_IMAGES + path


def model_response(conn: sqlite3.Connection, model_id: int, base_url: str = "") -> dict | None:
    """``GET /api/v1/models/{id}`` (and one ``items[]`` entry of the list)."""
    answer = model_answer(conn, model_id)
    if answer is not None and base_url and conn.execute(
            "SELECT 1 FROM images WHERE model_id = ? AND local_path IS NOT NULL LIMIT 1",
            (model_id,)).fetchone():
        for version in answer.get("modelVersions") or []:
            local_images(conn, version.get("images"), base_url, model_id=model_id)
    return answer


def version_response(conn: sqlite3.Connection, version_id: int, file_id: int | None = None,
                     base_url: str = "") -> dict[str, Any] | None:
    """``GET /api/v1/model-versions/{id}`` and by-hash: the version endpoint's keys, with ``air``
    and the model's ``creator``, whatever list the mirror first saw the version in."""
    answer = version_answer(conn, version_id, file_id)
    if answer is None:
        return None
    for key in LIST_ONLY_VERSION_KEYS:
        answer.pop(key, None)
    model = answer.get("model") or {}
    answer.setdefault("air", air(answer.get("baseModel"), model.get("type"), answer["modelId"],
                                 version_id))
    if not answer.get("creator"):
        creator = _creator(conn, answer["modelId"])
        if creator:
            answer["creator"] = creator
    local_images(conn, answer.get("images"), base_url, version_id=version_id)
    return answer


def version_by_hash(conn: sqlite3.Connection, value: str, base_url: str = "") -> dict[str, Any] | None:
    """``GET /api/v1/model-versions/by-hash/{hash}`` through the one lookup function."""
    if not value or not value.strip():
        raise BadRequest("hash is required")
    result = lookup_with_conn(conn, value)
    if result.get("error") == "not a hexadecimal hash":
        raise BadRequest(f"not a hash: {value!r}")
    if result["version_id"] is None:
        return None
    return version_response(conn, result["version_id"], result["file_id"], base_url)


def _sha256_list(body: Any, most: int) -> list[str]:
    if not isinstance(body, list):
        raise BadRequest("body must be a JSON array of SHA256 hashes")
    if len(body) > most:
        raise BadRequest(f"at most {most} hashes per request")
    for value in body:
        if not isinstance(value, str) or len(normalize_hash(value)) != 64:
            raise BadRequest(f"every hash must be a 64-character SHA256, not {value!r}")
    return body


def versions_by_hashes(conn: sqlite3.Connection, body: Any,
                       base_url: str = "") -> list[dict[str, Any]]:
    """``POST /api/v1/model-versions/by-hash``: ≤100 SHA256 strings; one answer per matched file."""
    out = []
    seen: set[int] = set()
    for value in _sha256_list(body, MAX_BY_HASH):
        for file_id, version_id, _model_id in files_for_sha256(conn, value):
            if file_id in seen:
                continue
            seen.add(file_id)
            answer = version_response(conn, version_id, file_id, base_url)
            if answer is not None:
                out.append(answer)
    return out


def version_ids_by_hashes(conn: sqlite3.Connection, body: Any) -> list[dict[str, Any]]:
    """``POST /api/v1/model-versions/by-hash/ids``: ≤10 000 SHA256 strings →
    ``[{"modelVersionId": id, "hash": SHA256}]``, one per matched file (upper-case, as Civitai)."""
    out = []
    seen: set[tuple[int, str]] = set()
    for value in _sha256_list(body, MAX_BY_HASH_IDS):
        sha = normalize_hash(value).upper()
        for _file_id, version_id, _model_id in files_for_sha256(conn, value):
            if (version_id, sha) not in seen:
                seen.add((version_id, sha))
                out.append({"modelVersionId": version_id, "hash": sha})
    return out


def version_mini(conn: sqlite3.Connection, version_id: int) -> dict[str, Any] | None:
    """``GET /api/v1/model-versions/mini/{id}``: the version's primary file in a few keys."""
    version = version_response(conn, version_id)
    if version is None:
        return None
    files = [f for f in version.get("files") or [] if isinstance(f, dict)]
    primary = next((f for f in files if f.get("primary")), files[0] if files else {})
    metadata = primary.get("metadata") if isinstance(primary.get("metadata"), dict) else {}
    url = primary.get("downloadUrl") or version.get("downloadUrl")
    model = conn.execute("SELECT data FROM models WHERE id = ?", (version["modelId"],)).fetchone()
    model = orjson.loads(model[0]) if model else {}
    return {"air": version["air"], "versionName": version.get("name"),
            "modelName": (version.get("model") or {}).get("name"),
            "baseModel": version.get("baseModel"), "availability": version.get("availability"),
            "publishedAt": version.get("publishedAt"),
            "size": primary.get("sizeKB"), "fileType": primary.get("type"),
            "fileName": primary.get("name"), "hashes": primary.get("hashes") or {},
            "downloadUrls": [url] if url else [], "format": metadata.get("format") or "Other",
            "canGenerate": False, "isFeatured": False, "requireAuth": False,
            "checkPermission": False, "earlyAccessEndsAt": version.get("earlyAccessEndsAt"),
            "freeTrialLimit": None, "additionalResourceCharge": False,
            "minor": bool(model.get("minor")), "sfwOnly": bool(model.get("sfwOnly"))}
