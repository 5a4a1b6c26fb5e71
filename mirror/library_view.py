"""Browsing library.sqlite in Datasette: SQL views, the per-file summary, and cell rendering.

* ``LIBRARY_VIEWS`` / ``ensure_views(db)``: the ``file_overview`` and ``image_resources`` views,
  created by ``matcher.schema.ensure_library`` (so by scan / match), recreated when their SQL
  changes. ``serve`` opens library.sqlite read-only and never creates anything.
* ``file_details(conn, file_id)``: everything the file page (``/library/files/<id>``) shows
  above the raw row: kind, hashes, the Civitai match with links, generation parameters, LoRAs
  (local file and Civitai), EXIF facts, other copies, and the thumbnail.
* ``render_library_cell``: thumbnails (WebP bytes) as ``<img src="data:...">``, Civitai ids as
  links to the mirror's rows, file ids as links to the file page, LoRA lists as links.
"""
from __future__ import annotations

import base64
import json
import sqlite3
from typing import Any

import markupsafe

from mirror.schema import has_table

LORA_KINDS = ("lora", "lycoris", "locon", "loha", "lokr", "dora")
_LORA_SQL = ", ".join(f"'{k}'" for k in LORA_KINDS)

LIBRARY_VIEWS: dict[str, str] = {
    # One row per file: what it is, its hashes, its Civitai match, and (images) how it was made.
    "file_overview": f"""
SELECT f.id AS file_id,
       mi.thumbnail AS thumbnail,
       CASE WHEN f.root IS NOT NULL AND substr(f.path, 1, length(rtrim(f.root, '/')) + 1)
                 = rtrim(f.root, '/') || '/'
            THEN substr(f.path, length(rtrim(f.root, '/')) + 2) ELSE f.path END AS path,
       f.kind, f.format, f.model_type, f.base_model, f.size,
       m.civitai_model_id, m.civitai_version_id, m.civitai_model, m.civitai_version,
       m.civitai_type, m.civitai_base_model, m.match_hash_type, m.match_confidence, m.match_reason,
       g.generation_tool, g.model_name AS generation_model, g.steps, g.sampler, g.cfg_scale,
       g.seed_text AS seed, g.positive_clean AS prompt, g.negative_clean AS negative_prompt,
       (SELECT NULLIF(json_group_array(json_object(
                   'name', r.name, 'kind', r.kind, 'weight', r.weight,
                   'local_file_id', rm.local_file_id, 'model_id', rm.model_id,
                   'version_id', rm.version_id)), '[]')
          FROM (SELECT * FROM resources WHERE file_id = f.id AND kind IN ({_LORA_SQL})
                ORDER BY position) r
          LEFT JOIN resource_matches rm ON rm.resource_id = r.id) AS loras,
       mi.image_width, mi.image_height,
       mi.exif_make, mi.exif_model, mi.exif_lens, mi.exif_exposure, mi.exif_f_number, mi.exif_iso,
       mi.exif_focal_length, mi.exif_datetime_original, mi.exif_software, mi.exif_gps_present,
       mi.exif_orientation,
       f.sha256, f.autov2, f.autov3, f.autov1, f.crc32, f.blake3,
       f.missing, f.error, f.root AS scan_root
  FROM files f
  LEFT JOIN (SELECT file_id, model_id AS civitai_model_id, version_id AS civitai_version_id,
                    model_name AS civitai_model, version_name AS civitai_version,
                    model_type AS civitai_type, base_model AS civitai_base_model,
                    hash_type AS match_hash_type, confidence AS match_confidence,
                    reason AS match_reason FROM matches) m ON m.file_id = f.id
  LEFT JOIN generations g ON g.file_id = f.id
  LEFT JOIN media_info mi ON mi.file_id = f.id""",
    # One row per resource an image names (checkpoint, LoRA, embedding, VAE, ...), resolved.
    "image_resources": """
SELECT r.file_id, img.path AS image, r.position, r.kind, r.name, r.weight, r.hash, r.hash_kind,
       rm.local_file_id, lf.path AS local_path,
       rm.model_id AS civitai_model_id, rm.version_id AS civitai_version_id,
       rm.model_name AS civitai_model, rm.version_name AS civitai_version,
       rm.model_type AS civitai_type, rm.hash_type AS match_hash_type,
       rm.confidence AS match_confidence, rm.reason AS match_reason
  FROM resources r
  JOIN files img ON img.id = r.file_id
  LEFT JOIN resource_matches rm ON rm.resource_id = r.id
  LEFT JOIN files lf ON lf.id = rm.local_file_id""",
}


def _normalise(sql: str) -> str:
    return " ".join(sql.split())


def ensure_views(db) -> None:
    """Create or refresh ``LIBRARY_VIEWS`` in a writable library.sqlite (sqlite_utils.Database)."""
    current = {row[0]: row[1] for row in db.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'view'").fetchall()}
    for name, body in LIBRARY_VIEWS.items():
        wanted = f"CREATE VIEW {name} AS {body.strip()}"
        if name in current and _normalise(current[name]) == _normalise(wanted):
            continue
        with db.conn:
            db.execute(f"DROP VIEW IF EXISTS {name}")
            db.execute(wanted)


# ---------------------------------------------------------------------------------------------
# Rendering helpers


def image_mime(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    return None


def thumbnail_html(data: Any, alt: str = "thumbnail") -> markupsafe.Markup | None:
    if not isinstance(data, (bytes, bytearray)) or not data:
        return None
    mime = image_mime(bytes(data))
    if mime is None:
        return None
    url = f"data:{mime};base64,{base64.b64encode(bytes(data)).decode('ascii')}"
    return markupsafe.Markup('<img class="library-thumb" src="{}" alt="{}" '
                             'style="max-width:128px;max-height:128px">').format(url, alt)


def _link(href: str, text: Any) -> markupsafe.Markup:
    return markupsafe.Markup('<a href="{}">{}</a>').format(href, text)


def civitai_model_url(datasette, model_id: int) -> str:
    return datasette.urls.row("civitai", "models", str(model_id))


def civitai_version_url(datasette, version_id: int) -> str:
    return datasette.urls.row("civitai", "model_versions", str(version_id))


def file_url(datasette, file_id: int) -> str:
    return datasette.urls.row("library", "files", str(file_id))


def loras_html(datasette, value: str) -> markupsafe.Markup | None:
    try:
        items = json.loads(value)
    except (TypeError, ValueError):
        return None
    if not isinstance(items, list):
        return None
    parts = []
    for item in items:
        if not isinstance(item, dict):
            return None
        text = markupsafe.escape(item.get("name") or "?")
        if item.get("weight") is not None:
            text += markupsafe.Markup(" ({})").format(item["weight"])
        links = []
        if item.get("local_file_id"):
            links.append(_link(file_url(datasette, item["local_file_id"]), "local file"))
        if item.get("version_id"):
            links.append(_link(civitai_version_url(datasette, item["version_id"]), "Civitai"))
        else:
            links.append(markupsafe.Markup("<em>not on Civitai</em>"))
        parts.append(text + markupsafe.Markup(": ") + markupsafe.Markup(", ").join(links))
    return markupsafe.Markup("<br>").join(parts)


_MODEL_ID_COLUMNS = {"model_id", "civitai_model_id"}
_VERSION_ID_COLUMNS = {"version_id", "civitai_version_id"}
_FILE_ID_COLUMNS = {"file_id", "local_file_id"}
# Tables where Datasette already links file_id through a declared foreign key (keep its label).
_FK_FILE_TABLES = {"generations", "lora_usages", "resources", "media_info", "model_info"}


def render_library_cell(value, column: str, table: str | None, datasette):
    """Rendering for cells of the library database (None: Datasette's default)."""
    if column == "thumbnail":
        return thumbnail_html(value)
    if isinstance(value, int) and not isinstance(value, bool):
        if column in _MODEL_ID_COLUMNS:
            return _link(civitai_model_url(datasette, value), value)
        if column in _VERSION_ID_COLUMNS:
            return _link(civitai_version_url(datasette, value), value)
        if column == "civitai_file_id":
            return _link(datasette.urls.row("civitai", "model_files", str(value)), value)
        if column in _FILE_ID_COLUMNS and table not in _FK_FILE_TABLES and table != "files":
            return _link(file_url(datasette, value), value)
    if column == "loras" and isinstance(value, str) and value.startswith("["):
        return loras_html(datasette, value)
    return None


# ---------------------------------------------------------------------------------------------
# The file page

_HASHES = [("SHA256", "sha256"), ("AutoV2", "autov2"), ("AutoV3", "autov3"), ("AutoV1", "autov1"),
           ("CRC32", "crc32"), ("BLAKE3", "blake3")]
_GENERATION_FIELDS = [
    ("Tool", "generation_tool"), ("Model", "model_name"), ("Model hash", "model_hash_short"),
    ("Steps", "steps"), ("Sampler", "sampler"), ("Scheduler", "scheduler"), ("CFG scale", "cfg_scale"),
    ("Seed", "seed_text"), ("Size", "size_raw"), ("Clip skip", "clip_skip"),
    ("Denoising strength", "denoising_strength"), ("Hires upscaler", "hires_upscaler"),
    ("VAE", "vae"), ("Prompt", "positive_clean"), ("Negative prompt", "negative_clean"),
]
_EXIF_FIELDS = [
    ("Camera make", "exif_make"), ("Camera model", "exif_model"), ("Lens", "exif_lens"),
    ("Exposure", "exif_exposure"), ("F-number", "exif_f_number"), ("ISO", "exif_iso"),
    ("Focal length", "exif_focal_length"), ("Taken (DateTimeOriginal)", "exif_datetime_original"),
    ("Software", "exif_software"), ("GPS present", "exif_gps_present"),
    ("Orientation", "exif_orientation"),
]


def _one(conn: sqlite3.Connection, sql: str, params) -> dict | None:
    cur = conn.execute(sql, params)
    row = cur.fetchone()
    if row is None:
        return None
    return dict(zip([d[0] for d in cur.description], row))


def _all(conn: sqlite3.Connection, sql: str, params) -> list[dict]:
    cur = conn.execute(sql, params)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


def _civitai_state(conn, model_id, version_id) -> str | None:
    """'gone', 'Archived', 'TakenDown' or 'version archived' when the attached mirror says so."""
    schemas = {row[1] for row in conn.execute("PRAGMA database_list")}
    if "civitai" not in schemas or not model_id or not has_table(conn, "models", "civitai"):
        return None
    model = _one(conn, "SELECT _gone, mode FROM civitai.models WHERE id = ?", [model_id])
    if model is None:
        return "not in the mirror"
    if model.get("_gone"):
        return "gone from Civitai (404)"
    if model.get("mode"):
        return f"{model['mode']} on Civitai"
    if version_id:
        version = _one(conn, "SELECT _archived FROM civitai.model_versions WHERE id = ?", [version_id])
        if version and version.get("_archived"):
            return "version no longer listed on Civitai"
    return None


def file_details(conn: sqlite3.Connection, file_id: int) -> dict | None:
    """The summary the file page shows, as plain data (see the module docstring)."""
    file = _one(conn, "SELECT * FROM files WHERE id = ?", [file_id])
    if file is None:
        return None
    out: dict[str, Any] = {
        "id": file["id"], "path": file["path"], "kind": file.get("kind"),
        "format": file.get("format"), "model_type": file.get("model_type"),
        "base_model": file.get("base_model"), "size": file.get("size"),
        "missing": bool(file.get("missing")), "error": file.get("error"),
        "hashes": [(label, file.get(col)) for label, col in _HASHES if file.get(col)],
        "match": None, "generation": [], "loras": [], "resources": [], "exif": [],
        "thumbnail": None, "copies": [],
    }
    if has_table(conn, "matches"):
        match = _one(conn, "SELECT * FROM matches WHERE file_id = ?", [file_id])
        if match:
            match["civitai_state"] = _civitai_state(conn, match.get("model_id"), match.get("version_id"))
            out["match"] = match
    if has_table(conn, "generations"):
        gen = _one(conn, "SELECT * FROM generations WHERE file_id = ?", [file_id])
        if gen:
            out["generation"] = [(label, gen[col]) for label, col in _GENERATION_FIELDS
                                 if gen.get(col) not in (None, "")]
    if has_table(conn, "resources"):
        has_rm = has_table(conn, "resource_matches")
        rm_cols = ("rm.local_file_id, lf.path AS local_path, rm.model_id, rm.version_id, "
                   "rm.model_name, rm.version_name, rm.reason, rm.confidence"
                   if has_rm else "NULL AS local_file_id, NULL AS local_path, NULL AS model_id, "
                   "r.version_id, NULL AS model_name, NULL AS version_name, NULL AS reason, "
                   "NULL AS confidence")
        joins = ("LEFT JOIN resource_matches rm ON rm.resource_id = r.id "
                 "LEFT JOIN files lf ON lf.id = rm.local_file_id" if has_rm else "")
        rows = _all(conn, f"SELECT r.kind, r.name, r.weight, r.hash, r.hash_kind, {rm_cols} "
                          f"FROM resources r {joins} WHERE r.file_id = ? ORDER BY r.position",
                    [file_id])
        out["resources"] = rows
        out["loras"] = [r for r in rows if (r["kind"] or "").lower() in LORA_KINDS]
    if has_table(conn, "media_info"):
        info = _one(conn, "SELECT * FROM media_info WHERE file_id = ?", [file_id])
        if info:
            out["thumbnail"] = thumbnail_html(info.get("thumbnail"), alt=file["path"])
            out["exif"] = [(label, info[col]) for label, col in _EXIF_FIELDS
                           if info.get(col) not in (None, "")]
            out["blurhash"] = info.get("blurhash")
    if file.get("sha256"):
        out["copies"] = _all(conn, "SELECT id, path, missing FROM files WHERE sha256 = ? AND id != ? "
                                   "ORDER BY path", [file["sha256"], file_id])
    return out
