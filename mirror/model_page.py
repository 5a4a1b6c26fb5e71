"""What the model and version pages of the mirror show: a card like Civitai's own, built from rows.

``model_card`` and ``version_card`` read the answers mirror.answers reassembles and add what a page
needs beside them: the description as sanitized HTML (``nh3``, without images: a page never asks
civitai.com for anything), the preview gallery (the copy ``crawl --images`` saved, else the
BlurHash drawn here as a small PNG), sizes and dates for people. ``library_copies`` names the files
of library.sqlite matched to a model. The templates ``row-civitai-models.html`` and
``row-civitai-model_versions.html`` show them.
"""
from __future__ import annotations

import base64
import functools
import io
import sqlite3
from datetime import datetime
from typing import Any

import blurhash
import markupsafe
import nh3
from PIL import Image

from crawler.site import model_page_url
from mirror import answers, browse

#: the description's HTML keeps Ammonia's safe tags without <img>: an image there would be a request
#: to civitai.com (or anyone) from the visitor's browser
_DESCRIPTION_TAGS = set(nh3.ALLOWED_TAGS) - {"img"}
_MODES = {"Archived": "Archived: the files are no longer offered by Civitai",
          "TakenDown": "Taken down by Civitai"}


def sanitize(html: Any) -> markupsafe.Markup:
    """A stranger's description as HTML safe to show: no script, event handler, ``javascript:``
    URL, style or remote image survives; links open as ``noopener noreferrer``."""
    if not isinstance(html, str) or not html:
        return markupsafe.Markup("")
    return markupsafe.Markup(nh3.clean(html, tags=_DESCRIPTION_TAGS, link_rel="noopener noreferrer nofollow",
                                       url_schemes={"http", "https", "mailto"}))


def human_size(kib: Any) -> str:
    """``sizeKB`` (KiB) as people read it: 1.99 GB, 144.1 MB, 12 KB."""
    if isinstance(kib, bool) or not isinstance(kib, (int, float)) or kib < 0:
        return "?"
    return browse.human_kib(kib)


def day(value: Any) -> str | None:
    """An ISO timestamp from an answer as its date (``2024-03-01``)."""
    if not isinstance(value, str) or len(value) < 10:
        return None
    try:
        return datetime.fromisoformat(value[:10]).date().isoformat()
    except ValueError:
        return None


@functools.lru_cache(maxsize=4096)
def blurhash_png(value: Any, width: int = 32, height: int = 32) -> str | None:
    """A BlurHash drawn as a data: URL (PNG), the placeholder for a preview not saved locally."""
    if not isinstance(value, str) or not 6 <= len(value) <= 200:
        return None
    try:
        pixels = blurhash.decode(value, width, height)
    except (ValueError, IndexError, KeyError, TypeError):
        return None
    image = Image.new("RGB", (width, height))
    image.putdata([tuple(max(0, min(255, int(c))) for c in px[:3]) for row in pixels for px in row])
    out = io.BytesIO()
    image.save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode("ascii")


def _images(conn: sqlite3.Connection, column: str, key: int) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for image_id, version_id, local_path, bhash, width, height, kind in conn.execute(
            f"SELECT id, version_id, local_path, hash, width, height, type FROM images "
            f"WHERE {column} = ? ORDER BY version_id, position, id", (key,)):
        out.setdefault(version_id, []).append({
            "id": image_id, "local_path": local_path, "placeholder": blurhash_png(bhash),
            "width": width, "height": height, "video": kind == "video"})
    return out


def _files(version: dict) -> list[dict]:
    files = []
    for f in version.get("files") or []:
        if not isinstance(f, dict):
            continue
        hashes = f.get("hashes") if isinstance(f.get("hashes"), dict) else {}
        meta = f.get("metadata") if isinstance(f.get("metadata"), dict) else {}
        files.append({"id": f.get("id"), "name": f.get("name"), "type": f.get("type"),
                      "size": human_size(f.get("sizeKB")), "primary": bool(f.get("primary")),
                      "format": meta.get("format"), "fp": meta.get("fp"),
                      "hashes": sorted((str(k), str(v)) for k, v in hashes.items())})
    return files


def _version(version: dict, images: list[dict]) -> dict:
    words = version.get("trainedWords")
    return {"id": version.get("id"), "name": version.get("name"),
            "base_model": version.get("baseModel"), "published": day(version.get("publishedAt")
                                                                    or version.get("createdAt")),
            "trained_words": [w for w in words if isinstance(w, str)] if isinstance(words, list) else [],
            "description": sanitize(version.get("description")),
            "stats": version.get("stats") if isinstance(version.get("stats"), dict) else {},
            "files": _files(version), "images": images,
            "civitai_url": model_page_url(version.get('modelId') or '', version.get('id'))}


def _stats(stats: Any) -> list[tuple[str, Any]]:
    if not isinstance(stats, dict):
        return []
    labels = [("downloadCount", "Downloads"), ("thumbsUpCount", "Likes"), ("favoriteCount", "Favorites"),
              ("commentCount", "Comments"), ("rating", "Rating")]
    return [(label, stats[key]) for key, label in labels if isinstance(stats.get(key), (int, float))]


def model_card(conn: sqlite3.Connection, model_id: int) -> dict | None:
    """Everything the model page shows, or None when the mirror lacks the model."""
    model = answers.model_answer(conn, model_id)
    if model is None:
        return None
    mode = conn.execute("SELECT mode FROM models WHERE id = ?", (model_id,)).fetchone()[0]
    images = _images(conn, "model_id", model_id)
    creator = model.get("creator") if isinstance(model.get("creator"), dict) else {}
    tags = [t if isinstance(t, str) else (t or {}).get("name") for t in model.get("tags") or []]
    versions = []
    for v in model.get("modelVersions") or []:
        if isinstance(v, dict):
            versions.append(_version({**v, "modelId": model_id}, images.get(v.get("id"), [])))
    return {"id": model_id, "name": model.get("name"), "type": model.get("type"),
            "creator": creator.get("username"), "tags": [t for t in tags if isinstance(t, str)],
            "nsfw": bool(model.get("nsfw")), "mode": mode, "mode_text": _MODES.get(mode or "", mode),
            "stats": _stats(model.get("stats")), "description": sanitize(model.get("description")),
            "base_models": sorted({v["base_model"] for v in versions if v["base_model"]}),
            "versions": versions, "civitai_url": model_page_url(model_id)}


def version_card(conn: sqlite3.Connection, version_id: int) -> dict | None:
    """Everything the version page shows, or None when the mirror lacks the version."""
    answer = answers.version_answer(conn, version_id)
    if answer is None:
        return None
    model = answer.get("model") if isinstance(answer.get("model"), dict) else {}
    card = _version(answer, _images(conn, "version_id", version_id).get(version_id, []))
    card.update({"model_id": answer.get("modelId"), "model_name": model.get("name"),
                 "model_type": model.get("type"), "mode": model.get("mode"),
                 "mode_text": _MODES.get(model.get("mode") or "", model.get("mode")),
                 "stats": _stats(answer.get("stats"))})
    return card


def library_copies(conn: sqlite3.Connection, column: str, key: int) -> list[dict]:
    """Files of library.sqlite matched to a model (``column`` model_id) or version (version_id):
    model files first, then the images made with it; paths relative to their scan root."""
    try:
        rows = conn.execute(
            f"SELECT f.id, f.path, f.root, f.kind, m.version_id FROM matches m "
            f"JOIN files f ON f.id = m.file_id WHERE m.{column} = ? "
            f"ORDER BY f.kind != 'model', f.path LIMIT 200", (key,)).fetchall()
    except sqlite3.OperationalError:  # a library without matches yet
        return []
    return [{"id": i, "path": relative(path, root), "kind": kind, "version_id": v}
            for i, path, root, kind, v in rows]


def relative(path: Any, root: Any) -> Any:
    """A scanned path relative to its scan root (as it is when it lies under it)."""
    if isinstance(path, str) and isinstance(root, str) and root and path.startswith(root.rstrip("/") + "/"):
        return path[len(root.rstrip("/")) + 1:]
    return path
