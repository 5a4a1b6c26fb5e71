"""Build civitai.sqlite from the crawler's dump folder.

The dump (see notes in crawler/) holds ``DIR/12340000/12345678.json`` model answers and
never-clobber side files ``DIR/12340000/12345678.<UTC>.json``. Every distinct answer becomes a row in
``model_snapshots``; the other tables are derived from a model's snapshots by ``derive_model``
(a pure function): the newest full answer gives the model row, and every version, file, hash and
image seen in any snapshot stays in the database (``_archived`` = 1 when the newest answer no longer
lists it), so a file stays findable by hash after its model is Archived.

Documents found in a dump are classified by ``parse_document``:

* a model (``GET /models/{id}``, or one list item): a ``model`` snapshot;
* a list page (``{"items": [...]}``) or a JSON array: one snapshot per model inside;
* a model version (``GET /model-versions/{id}`` / by-hash): a ``version`` snapshot of its model. It
  fills that version's rows (with image ``meta``) but never replaces what a full model answer says;
  a model known only from version answers gets a row with ``_partial`` = 1;
* an error answer (``{"error": "No model with id N"}``, any ``{"error": ...}`` or bare string body in a
  side file, including ``<id>.<UTC>-N.json``) saved beside a good copy: a ``notfound`` snapshot,
  which marks the model as gone upstream (``_gone`` = 1) when it is the newest;
* anything else (enums, other sites' shapes) is skipped and counted; broken JSON is reported with
  its path and skipped.

Incremental by default: ``_sources`` remembers each file's size and mtime, so a second build only
reads new or changed files and re-derives the models they touch. ``full=True`` rebuilds into a
temporary file and swaps it in with ``os.replace``. A fresh build of a big dump uses the idle
cores: each extra process loads a slice of the files into its own temporary SQLite file, and the
slices are merged in SQL (``_load_parallel``); the result is the serial build's database.
"""
from __future__ import annotations

import functools
import gc
import hashlib
import html
import logging
import os
import re
import sqlite3
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import orjson
import sqlite_utils

from mirror.schema import CIVITAI_SCHEMA, apply_schema

log = logging.getLogger(__name__)

HASH_TYPES = ("AutoV1", "AutoV2", "AutoV3", "SHA256", "CRC32", "BLAKE3")
_HASH_CANON = {t.lower(): t for t in HASH_TYPES}
# the crawler adds "-N" when two answers are kept beside the good copy in the same second
SIDE_FILE = re.compile(r"^(\d+)\.(\d{8}T\d{6}Z)(?:-(\d+))?\.json$")
MAIN_FILE = re.compile(r"^(\d+)\.json$")
IMAGE_FILE = re.compile(r"^(\d+)\.[A-Za-z0-9]+$")
_TAG_RE = re.compile(r"<[^>]+>")
_IMAGE_ID_IN_URL = re.compile(r"/(\d+)\.[A-Za-z0-9]+(?:\?.*)?$")
CHUNK_FILES = 1000


@dataclass
class Snapshot:
    model_id: int
    kind: str  # model | version | notfound
    fetched_at: str
    path: str
    sha: str
    text: str | bytes  # the answer's JSON (bytes straight from the file or orjson; str from the db)
    data: Any = None  # parsed dict (None for notfound)


@dataclass
class BuildSummary:
    files_read: int = 0
    files_unchanged: int = 0
    files_removed: int = 0
    snapshots_new: int = 0
    models: int = 0
    versions: int = 0
    files: int = 0
    hashes: int = 0
    images: int = 0
    local_images: int = 0
    models_rebuilt: int = 0
    skipped: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["errors"] = [{"path": p, "error": e} for p, e in self.errors]
        return d


# ---- small pure helpers -----------------------------------------------------------------------

def utc_iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def side_stamp_to_iso(stamp: str) -> str:
    """``20261122T010203Z`` -> ``2026-11-22T01:02:03Z``."""
    return f"{stamp[0:4]}-{stamp[4:6]}-{stamp[6:8]}T{stamp[9:11]}:{stamp[11:13]}:{stamp[13:15]}Z"


def iso_to_epoch(value: Any) -> int | None:
    if not value or not isinstance(value, str):
        return None
    return _iso_to_epoch(value)


@functools.lru_cache(maxsize=4096)  # fetch times repeat across a model's versions and files
def _iso_to_epoch(value: str) -> int | None:
    try:
        return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return None


def _epoch(iso: str) -> int:
    return iso_to_epoch(iso) or 0


def normalize_commercial_use(value: Any) -> list[str]:
    """Every generation's ``allowCommercialUse`` as a list: "Sell", "{Image,Rent}", [..], None."""
    if value is None:
        return []
    if isinstance(value, list):
        return [str(v) for v in value]
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{") and text.endswith("}"):
            return [part.strip().strip('"') for part in text[1:-1].split(",") if part.strip()]
        return [text] if text and text != "None" else []
    return [str(value)]


def html_to_text(value: Any) -> str | None:
    if not value or not isinstance(value, str):
        return None
    return html.unescape(_TAG_RE.sub(" ", value)).strip() or None


def image_id_of(image: dict) -> int | None:
    if isinstance(image.get("id"), int):
        return image["id"]
    match = _IMAGE_ID_IN_URL.search(image.get("url") or "")
    return int(match.group(1)) if match else None


def _bool(value: Any) -> int | None:
    if value is None:
        return None
    return 1 if value else 0


def _int(value: Any) -> int | None:
    kind = type(value)
    if kind is int:
        return value
    if kind is float or kind is bool or isinstance(value, int):
        return int(value)
    return None


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _no_stat(key: str) -> None:
    return None


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


# The big JSON columns take orjson's bytes as they are: the INSERT casts them to TEXT in SQLite
# (same stored value as a str, without decoding to str and encoding back to UTF-8 per row).
_json = orjson.dumps
_CAST_COLUMNS = frozenset({"data", "meta"})


def _is_model(doc: Any) -> bool:
    return isinstance(doc, dict) and isinstance(doc.get("id"), int) and isinstance(
        doc.get("modelVersions"), list)


def _is_version(doc: Any) -> bool:
    return (isinstance(doc, dict) and isinstance(doc.get("id"), int)
            and isinstance(doc.get("modelId"), int)
            and ("files" in doc or isinstance(doc.get("model"), dict)))


# ---- reading the dump -------------------------------------------------------------------------

def iter_dump_files(dump: Path) -> Iterator[tuple[str, os.stat_result]]:
    """Every ``*.json`` under the dump except the images archive, as (relative path, stat)."""
    stack = [dump]
    found: list[tuple[str, os.stat_result]] = []
    cut = len(os.path.join(str(dump), ""))  # entry.path[cut:] is the relative path (no relpath)
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError as exc:  # unreadable folder: report, go on
            log.warning("cannot read %s: %s", folder, exc)
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=False):
                if folder == dump and entry.name == "images":
                    continue
                stack.append(Path(entry.path))
            elif entry.name.endswith(".json") and entry.is_file():
                found.append((entry.path[cut:], entry.stat()))
    found.sort(key=lambda item: item[0])
    yield from found


def parse_document(raw: bytes, rel_path: str, mtime: float) -> tuple[list[Snapshot], str | None]:
    """Bytes of one dump file -> (snapshots, skip reason). Raises ValueError on broken JSON."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"broken JSON: {exc}") from None
    name = os.path.basename(rel_path)
    side = SIDE_FILE.match(name)
    main = MAIN_FILE.match(name)
    fetched_at = side_stamp_to_iso(side.group(2)) if side else utc_iso(mtime)
    name_id = int((side or main).group(1)) if (side or main) else None
    whole_sha = hashlib.blake2b(raw, digest_size=16).hexdigest()

    if _is_model(doc):
        return [Snapshot(doc["id"], "model", fetched_at, rel_path, whole_sha, raw, doc)], None
    if _is_version(doc):
        return [Snapshot(doc["modelId"], "version", fetched_at, rel_path, whole_sha, raw, doc)], None
    items = doc.get("items") if isinstance(doc, dict) else doc if isinstance(doc, list) else None
    if isinstance(items, list):
        snaps = []
        for item in items:
            if _is_model(item) or _is_version(item):
                text = orjson.dumps(item, option=orjson.OPT_SORT_KEYS)
                sha = hashlib.blake2b(text, digest_size=16).hexdigest()
                kind = "model" if _is_model(item) else "version"
                model_id = item["id"] if kind == "model" else item["modelId"]
                snaps.append(Snapshot(model_id, kind, fetched_at, rel_path, sha, text, item))
        if snaps:
            return snaps, None
        return [], "a list without Civitai models or versions"
    if name_id is not None and (
            (isinstance(doc, dict) and "error" in doc and (side or len(doc) <= 3))
            or (side and (doc is None or isinstance(doc, str)))):
        # a 404 body: the crawler keeps it beside the good copy on a refresh (history.txt)
        return [Snapshot(name_id, "notfound", fetched_at, rel_path, whole_sha, raw)], None
    return [], "not a Civitai model, model version or list page"


# ---- deriving rows from a model's snapshots (pure) --------------------------------------------

@dataclass
class ModelRows:
    """A model's rows as tuples in ``_ROW_COLS`` order, ready for ``executemany`` (cheap to pickle)."""
    model_id: int
    model: tuple
    versions: list[tuple]
    files: list[tuple]
    hashes: list[tuple]  # file_hashes (hash, type, file_id, version_id, model_id)
    images: list[tuple]
    archived: list[tuple]  # archived_model_files (file_id, model_id, version_id)
    tags: list[str]
    creator: tuple | None  # (username, image)


def derive_model(model_id: int, snapshots: Iterable[Snapshot]) -> ModelRows | None:
    """All rows of one model from every snapshot the dump holds of it (None: nothing usable)."""
    snaps = sorted(snapshots, key=lambda s: (s.fetched_at, s.sha))
    if not snaps:
        return None
    full = [s for s in snaps if s.kind == "model"]
    partial = [s for s in snaps if s.kind == "version"]
    if not full and not partial:
        return None
    first_seen, last_seen = snaps[0].fetched_at, snaps[-1].fetched_at
    gone = 1 if snaps[-1].kind == "notfound" else 0

    if full:
        current = full[-1].data
        current_path = full[-1].path
    else:  # a model known only from version answers
        newest = partial[-1].data
        model_part = newest.get("model") or {}
        current = {"id": model_id, **{k: v for k, v in model_part.items()},
                   "modelVersions": []}
        seen: dict[int, dict] = {}
        for snap in partial:
            seen[snap.data["id"]] = {k: v for k, v in snap.data.items() if k != "model"}
        current["modelVersions"] = sorted(seen.values(), key=lambda v: v["id"], reverse=True)
        if newest.get("creator") and not current.get("creator"):
            current["creator"] = newest["creator"]
        current_path = partial[-1].path

    # Merge order: version answers first, then full answers, each oldest first; later wins.
    versions: dict[int, tuple[dict, int, str, str]] = {}  # id -> (data, position, first, last)
    files: dict[int, tuple[dict, int]] = {}
    images: dict[int, tuple[dict, int, int]] = {}
    for snap in partial + full:
        version_list = [snap.data] if snap.kind == "version" else snap.data.get("modelVersions") or []
        for position, version in enumerate(version_list):
            if not isinstance(version, dict) or not isinstance(version.get("id"), int):
                continue
            vid = version["id"]
            previous = versions.get(vid)
            if snap.kind == "version":
                if previous is not None:
                    position = previous[1]
                else:
                    position = version.get("index") if isinstance(version.get("index"), int) else 0
            else:
                position = version.get("index") if isinstance(version.get("index"), int) else position
            first = previous[2] if previous else snap.fetched_at
            if snap.kind == "version" or previous is None or not (
                    previous[0].get("images") and not version.get("images")):
                merged = version
            else:  # keep the images an earlier answer had (TakenDown answers drop them)
                merged = {**version, "images": previous[0]["images"]}
            if snap.kind == "model" and previous is not None and "model" in previous[0]:
                # a full answer's version lacks meta on images; keep the richer version answer
                merged = {**previous[0], **{k: v for k, v in version.items() if k != "images"}}
            versions[vid] = (merged, position, first, snap.fetched_at)
            for file in version.get("files") or []:
                if isinstance(file, dict) and isinstance(file.get("id"), int):
                    files[file["id"]] = (file, vid)
            for image_position, image in enumerate(version.get("images") or []):
                if isinstance(image, dict):
                    iid = image_id_of(image)
                    if iid is not None:
                        old = images.get(iid)
                        if old is not None and old[0].get("meta") and not image.get("meta"):
                            image = {**image, "meta": old[0]["meta"]}
                        images[iid] = (image, vid, image_position)

    current_versions = {v["id"] for v in current.get("modelVersions") or []
                        if isinstance(v, dict) and isinstance(v.get("id"), int)}
    current_files = {f["id"] for v in current.get("modelVersions") or [] if isinstance(v, dict)
                     for f in v.get("files") or [] if isinstance(f, dict) and "id" in f}
    if not full:  # partial: every seen version counts as current
        current_versions = set(versions)
        current_files = set(files)

    stats = current.get("stats")
    sget = stats.get if type(stats) is dict else _no_stat
    creator = current.get("creator") if isinstance(current.get("creator"), dict) else None
    username = creator.get("username") if creator else None
    tags = [t if isinstance(t, str) else t.get("name") for t in current.get("tags") or []
            if isinstance(t, (str, dict))]
    tags = [t for t in dict.fromkeys(tags) if t]
    base_models = current.get("baseModels")
    if not isinstance(base_models, list):
        base_models = list(dict.fromkeys(
            v[0].get("baseModel") for v in sorted(versions.values(), key=lambda x: x[1])
            if v[0].get("baseModel")))
    model_data = {k: v for k, v in current.items() if k != "modelVersions"}
    created_at, updated_at = _epoch(first_seen), _epoch(last_seen)
    model = (  # _ROW_COLS["models"] order
        model_id, current.get("name") or "", current.get("type") or "", username,
        created_at, updated_at,
        html_to_text(current.get("description")), _bool(current.get("nsfw")),
        _int(current.get("nsfwLevel")), _bool(current.get("poi")), _bool(current.get("minor")),
        current.get("mode"), current.get("availability"), _int(current.get("userId")),
        _bool(current.get("allowNoCredit")),
        _dumps(normalize_commercial_use(current.get("allowCommercialUse"))),
        _bool(current.get("allowDerivatives")), _bool(current.get("allowDifferentLicense")),
        _int(sget("downloadCount")), _int(sget("thumbsUpCount")), _int(sget("thumbsDownCount")),
        _int(sget("commentCount")), _int(sget("favoriteCount")), _int(sget("ratingCount")),
        _num(sget("rating")), _int(sget("tippedAmountCount")),
        _dumps(tags), _dumps(base_models), len(current_versions),
        first_seen, last_seen, gone, 0 if full else 1, len(snaps), current_path,
        _json(model_data),
    )
    version_rows = []
    for vid, (version, position, v_first, v_last) in versions.items():
        vstats = version.get("stats")
        vget = vstats.get if type(vstats) is dict else _no_stat
        vg = version.get
        status = vg("status")
        version_rows.append((  # _ROW_COLS["model_versions"] order
            vid, model_id, position, vg("name") or "", vg("baseModel") or "",
            # 2023 answers have no publishedAt (the list held only published versions): createdAt
            iso_to_epoch(vg("publishedAt")) or (
                iso_to_epoch(vg("createdAt")) if status in (None, "Published") else None),
            _epoch(v_first), _epoch(v_last),
            vg("baseModelType"), status, vg("publishedAt"), vg("createdAt"),
            _int(vg("nsfwLevel")), vg("availability"), _dumps(vg("trainedWords") or []),
            _int(vget("downloadCount")), _int(vget("thumbsUpCount")),
            _int(vget("thumbsDownCount")), vg("downloadUrl"),
            0 if vid in current_versions else 1, v_first, v_last,
            _json(version),
        ))
    file_rows, hash_rows, archived_rows = [], [], []
    for fid, (file, vid) in files.items():
        fg = file.get
        hashes = fg("hashes")
        canon = {}
        if type(hashes) is dict:
            for key, value in hashes.items():
                t = _HASH_CANON.get(str(key).lower())
                if t and isinstance(value, str) and value.strip():
                    canon[t] = value.strip().upper()
        meta = fg("metadata")
        mg = meta.get if type(meta) is dict else _no_stat
        archived = 0 if fid in current_files else 1
        file_rows.append((  # _ROW_COLS["model_files"] order
            fid, model_id, vid, fg("type") or "", canon.get("SHA256"), created_at, updated_at,
            fg("name"), _num(fg("sizeKB")), _bool(fg("primary")), mg("format"), mg("size"),
            mg("fp"), fg("pickleScanResult"), fg("virusScanResult"), fg("downloadUrl"),
            archived, _json(file),
        ))
        if archived:
            archived_rows.append((fid, model_id, vid))
        for t, value in canon.items():
            hash_rows.append((value, t, fid, vid, model_id))
    image_rows = []
    for iid, (image, vid, position) in images.items():
        ig = image.get
        nsfw = ig("nsfw")
        nsfw_level = ig("nsfwLevel")
        meta = ig("meta")
        image_rows.append((  # _ROW_COLS["images"] order
            iid, vid, model_id, position, ig("url"), _int(ig("width")), _int(ig("height")),
            _int(nsfw_level),
            (str(nsfw) if nsfw is not None else nsfw_level if isinstance(nsfw_level, str) else None),
            ig("hash"), ig("type"),
            _bool(ig("hasMeta") if "hasMeta" in image else (bool(meta) if "meta" in image else None)),
            _json(meta) if meta else None,
        ))
    creator_row = (username, creator.get("image")) if username else None
    return ModelRows(model_id, model, version_rows, file_rows, hash_rows, image_rows,
                     archived_rows, tags, creator_row)


# ---- writing ----------------------------------------------------------------------------------

def _insert_sql(table: str, columns: list[str], verb: str = "INSERT OR REPLACE") -> str:
    cols = ", ".join(f'"{c}"' for c in columns)
    marks = ", ".join("CAST(? AS TEXT)" if c in _CAST_COLUMNS else "?" for c in columns)
    return f'{verb} INTO "{table}" ({cols}) VALUES ({marks})'


_COLS = {name: list(spec["columns"]) for name, spec in CIVITAI_SCHEMA.items()}
# The order derive_model builds each row tuple in (named here, not taken from the schema's order,
# so reordering the schema cannot shift values into the wrong columns). images.local_path is
# filled by link_local_images.
_ROW_COLS = {**_COLS, **{name: cols.split() for name, cols in {
    "models": """id name type username created_at updated_at description_text nsfw nsfwLevel poi
        minor mode availability userId allowNoCredit allowCommercialUse allowDerivatives
        allowDifferentLicense downloadCount thumbsUpCount thumbsDownCount commentCount
        favoriteCount ratingCount rating tippedAmountCount tags baseModels version_count
        _first_seen _last_seen _gone _partial _snapshots _source_path data""",
    "model_versions": """id model_id position name base_model published_at created_at updated_at
        baseModelType status publishedAt createdAt nsfwLevel availability trainedWords
        downloadCount thumbsUpCount thumbsDownCount downloadUrl _archived _first_seen _last_seen
        data""",
    "model_files": """id model_id version_id type sha256 created_at updated_at name sizeKB primary
        format size fp pickleScanResult virusScanResult downloadUrl _archived data""",
    "images": """id version_id model_id position url width height nsfwLevel nsfw hash type hasMeta
        meta""",
}.items()}}
_SQL = {name: _insert_sql(name, cols) for name, cols in _ROW_COLS.items()}
# CIVITAI_SCHEMA without secondary indexes: what a fresh build loads into
_LOAD_SCHEMA = {name: {k: v for k, v in spec.items() if k != "indexes"}
                for name, spec in CIVITAI_SCHEMA.items()}
_CHILD_TABLES = ("model_versions", "model_files", "file_hashes", "images", "archived_model_files")


def snapshot_row(s: Snapshot) -> tuple:
    return (s.model_id, s.sha, s.fetched_at, s.kind,
            (s.data or {}).get("mode") if s.kind == "model" else None,
            len(s.data.get("modelVersions") or []) if s.kind == "model" else
            (1 if s.kind == "version" else 0),
            _file_count(s), s.path, s.text)


class _Writer:
    """Holds the open connection, the tag ids and the summary while a build runs."""

    def __init__(self, conn: sqlite3.Connection, summary: BuildSummary, fresh: bool):
        self.conn = conn
        self.summary = summary
        self.fresh = fresh
        self.tag_ids = {name: tid for tid, name in conn.execute("SELECT id, name FROM tags")}
        self.next_tag = max(self.tag_ids.values(), default=0) + 1

    def insert_snapshots(self, snap_rows: list[tuple]) -> None:
        before = self.conn.total_changes
        self.conn.executemany(
            _insert_sql("model_snapshots", _COLS["model_snapshots"], "INSERT OR IGNORE"), snap_rows)
        self.summary.snapshots_new += self.conn.total_changes - before

    def write_models(self, model_ids: list[int], rows: list[ModelRows], clean: bool) -> None:
        """Write derived rows; ``clean`` first removes what these models had (re-derivation)."""
        conn = self.conn
        if clean and model_ids:
            for start in range(0, len(model_ids), 500):
                ids = model_ids[start:start + 500]
                marks = ",".join("?" * len(ids))
                if not self.fresh:  # a fresh build fills models_fts once at the end
                    conn.execute(
                        "INSERT INTO models_fts(models_fts, rowid, name, description_text, tags) "
                        "SELECT 'delete', rowid, name, description_text, tags FROM models "
                        f"WHERE id IN ({marks})", ids)
                for table in _CHILD_TABLES:
                    conn.execute(f'DELETE FROM "{table}" WHERE model_id IN ({marks})', ids)
                conn.execute(f"DELETE FROM models_tags WHERE models_id IN ({marks})", ids)
                conn.execute(f"DELETE FROM models WHERE id IN ({marks})", ids)
        creators = {}
        model_tags = []
        for r in rows:
            if r.creator:
                creators[r.creator[0]] = r.creator
            for tag in r.tags:
                tid = self.tag_ids.get(tag)
                if tid is None:
                    tid = self.tag_ids[tag] = self.next_tag
                    self.next_tag += 1
                    conn.execute("INSERT INTO tags (id, name) VALUES (?, ?)", (tid, tag))
                model_tags.append((r.model_id, tid))
        if creators:
            conn.executemany(
                "INSERT INTO creators (username, image) VALUES (?, ?) ON CONFLICT(username) "
                "DO UPDATE SET image = coalesce(excluded.image, creators.image)",
                list(creators.values()))
        conn.executemany(_SQL["models"], [r.model for r in rows])
        conn.executemany(_SQL["model_versions"], [v for r in rows for v in r.versions])
        conn.executemany(_SQL["model_files"], [f for r in rows for f in r.files])
        conn.executemany(_SQL["images"], [i for r in rows for i in r.images])
        conn.executemany(_SQL["file_hashes"], [h for r in rows for h in r.hashes])
        conn.executemany(_SQL["archived_model_files"], [a for r in rows for a in r.archived])
        conn.executemany("INSERT OR IGNORE INTO models_tags (models_id, tags_id) VALUES (?, ?)",
                         model_tags)
        if not self.fresh and rows:
            ids = [r.model_id for r in rows]
            for start in range(0, len(ids), 500):
                part = ids[start:start + 500]
                conn.execute(
                    "INSERT INTO models_fts(rowid, name, description_text, tags) SELECT rowid, "
                    f"name, description_text, tags FROM models WHERE id IN ({','.join('?' * len(part))})",
                    part)
        self.summary.models_rebuilt += len(rows)

    def load_snapshots(self, model_ids: list[int]) -> dict[int, list[Snapshot]]:
        out: dict[int, list[Snapshot]] = {}
        for start in range(0, len(model_ids), 500):
            ids = model_ids[start:start + 500]
            for model_id, sha, fetched_at, kind, path, text in self.conn.execute(
                    "SELECT model_id, sha, fetched_at, kind, path, data FROM model_snapshots "
                    f"WHERE model_id IN ({','.join('?' * len(ids))})", ids):
                data = orjson.loads(text) if kind != "notfound" else None
                out.setdefault(model_id, []).append(
                    Snapshot(model_id, kind, fetched_at, path, sha, text, data))
        return out


def _file_count(s: Snapshot) -> int:
    if s.kind == "model":
        return sum(len(v.get("files") or []) for v in s.data.get("modelVersions") or []
                   if isinstance(v, dict))
    if s.kind == "version":
        return len(s.data.get("files") or [])
    return 0


def link_local_images(conn: sqlite3.Connection, dump: Path) -> int:
    """Point ``images.local_path`` at files under ``DUMP/images/<block>/<image id>.<ext>``."""
    root = dump / "images"
    if not root.is_dir():
        return 0
    pairs = []
    for block in sorted(os.scandir(root), key=lambda e: e.name):
        if not block.is_dir():
            continue
        for entry in os.scandir(block.path):
            match = IMAGE_FILE.match(entry.name)
            if match and entry.is_file() and not entry.name.endswith(".part"):
                pairs.append((f"images/{block.name}/{entry.name}", int(match.group(1))))
    conn.execute("UPDATE images SET local_path = NULL WHERE local_path IS NOT NULL")
    conn.executemany("UPDATE images SET local_path = ? WHERE id = ?", pairs)
    return conn.execute("SELECT count(*) FROM images WHERE local_path IS NOT NULL").fetchone()[0]


POOL_MIN_FILES = 2000  # below this, worker processes cost more than they save
TASK_FILES = 250
MAIN_SHARE = 0.8  # this process's slice of a parallel build, against 1.0 per extra process


def _idle_cores() -> int:
    """Cores not busy with other work (like ``make -l``): a slice process on a core that is already
    taken only adds the merge to the build's time."""
    cores = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0]
    except (AttributeError, OSError):  # no load average on this platform
        return cores
    return max(1, min(cores, int(cores - busy + 1.5)))


def _index_loaded(db: sqlite_utils.Database) -> None:
    """After a bulk load into :func:`_open_load_db`: the secondary indexes, then the full-text index."""
    apply_schema(db, CIVITAI_SCHEMA)
    db.conn.execute("INSERT INTO models_fts(models_fts) VALUES('rebuild')")


def _open_load_db(path: Path) -> sqlite_utils.Database:
    """A new database file to bulk-load into: no journal, no fsync, no secondary indexes yet."""
    db = sqlite_utils.Database(str(path))
    conn = db.conn
    conn.execute("PRAGMA journal_mode=OFF")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA locking_mode=EXCLUSIVE")
    conn.execute("PRAGMA cache_size=-262144")  # 256 MiB
    conn.execute("PRAGMA temp_store=MEMORY")
    # Secondary indexes are built once after the load (one sort each instead of a random
    # B-tree insert per row). Cheap because the JSON columns come last in every table: the
    # index build reads each row's leading columns, never the JSON's overflow pages.
    apply_schema(db, _LOAD_SCHEMA)
    return db


def build_mirror(dump: str | Path, db_path: str | Path, *, full: bool = False,
                 progress: Callable[[int, int], None] | None = None,
                 workers: int | None = None) -> BuildSummary:
    """Read the dump into civitai.sqlite; returns counts. ``progress(done, total)`` per file.

    ``workers``: for a fresh (or ``full``) build, extra processes that each load a slice of the
    dump into their own temporary database while this one loads the first slice; the slices are
    then merged in SQL (None: one per further idle core when there are at least
    ``POOL_MIN_FILES`` files; 0: everything in this process). Incremental builds always run in
    this process.
    """
    dump = Path(dump)
    db_path = Path(db_path)
    if not dump.is_dir():
        raise FileNotFoundError(f"dump folder not found: {dump}")
    summary = BuildSummary()
    fresh = full or not db_path.exists()
    target = db_path.with_name(db_path.name + ".tmp") if fresh else db_path
    if fresh and target.exists():
        target.unlink()  # our own leftover from an interrupted build
    if fresh:  # a temp file swapped in at the end: a crash leaves the old database untouched
        db = _open_load_db(target)
    else:
        db = sqlite_utils.Database(str(target))
        apply_schema(db, CIVITAI_SCHEMA)
    conn = db.conn
    gc_was_enabled = gc.isenabled()
    gc.disable()  # many small dicts, no cycles: the collector only burns time here
    try:
        indexed = _run_build(conn, dump, summary, fresh, progress, workers, target)
        if fresh and not indexed:
            _index_loaded(db)
        conn.execute("UPDATE creators SET model_count = "
                     "(SELECT count(*) FROM models WHERE models.username = creators.username)")
        summary.local_images = link_local_images(conn, dump)
        conn.executemany("INSERT OR REPLACE INTO _build_info (key, value) VALUES (?, ?)", [
            ("dump_dir", str(dump.resolve())), ("built_at", utc_iso(datetime.now().timestamp())),
        ])
        conn.commit()
        for table, attr in (("models", "models"), ("model_versions", "versions"),
                            ("model_files", "files"), ("file_hashes", "hashes"),
                            ("images", "images")):
            setattr(summary, attr, conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0])
        if fresh:
            conn.execute("PRAGMA analysis_limit=1000")
            conn.execute("ANALYZE")
            conn.commit()
    finally:
        if gc_was_enabled:
            gc.enable()
        db.close()
    if fresh:
        os.replace(target, db_path)
    return summary


@dataclass
class _TaskResult:
    sources: list[tuple]
    snapshots: list[tuple]
    errors: list[tuple[str, str]]
    skips: list[tuple[str, str]]
    files_read: int
    derived: dict[int, ModelRows | None]  # models seen in this task (None: nothing usable)


def _read_task(dump: str, items: list[tuple[str, int, int, float]], skip: Any) -> _TaskResult:
    """Read, parse and derive one group of dump files (a model's files are never split)."""
    out = _TaskResult([], [], [], [], 0, {})
    pending: dict[int, list[Snapshot]] = {}
    for rel, size, mtime_ns, mtime in items:
        try:
            with open(os.path.join(dump, rel), "rb") as fh:
                raw = fh.read()
            snaps, why = parse_document(raw, rel, mtime)
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            out.errors.append((rel, str(exc)))
            out.sources.append((rel, size, mtime_ns, "error", "[]", str(exc)))
            continue
        out.files_read += 1
        if why:
            out.skips.append((rel, why))
        ids = sorted({sn.model_id for sn in snaps})
        kind = "skipped" if why else (snaps[0].kind if len(snaps) == 1 else "list")
        out.sources.append((rel, size, mtime_ns, kind, _dumps(ids), why))
        for sn in snaps:
            pending.setdefault(sn.model_id, []).append(sn)
            out.snapshots.append(snapshot_row(sn))
    for model_id, snaps in pending.items():
        if model_id in skip:
            out.derived[model_id] = None
            continue
        # dedupe identical snapshots (main file and an identical side file)
        rows = derive_model(model_id, list({sn.sha: sn for sn in snaps}.values()))
        out.derived[model_id] = rows
    return out


def _tasks(todo: list[tuple[str, os.stat_result]], size: int) -> Iterator[list[tuple]]:
    """Groups of about ``size`` files, cut only where the model id (file stem) changes."""
    task: list[tuple] = []
    previous = None
    for rel, st in todo:
        stem = os.path.basename(rel).split(".", 1)[0]
        if len(task) >= size and stem != previous:
            yield task
            task = []
        task.append((rel, st.st_size, st.st_mtime_ns, st.st_mtime))
        previous = stem
    if task:
        yield task


def _split(todo: list, weights: list[float]) -> list[list]:
    """``todo`` in contiguous slices sized by ``weights``, cut only between model ids."""
    out, start, acc, whole = [], 0, 0.0, sum(weights)
    for weight in weights[:-1]:
        acc += weight
        cut = max(start, int(len(todo) * acc / whole))
        while 0 < cut < len(todo) and (os.path.basename(todo[cut][0]).split(".", 1)[0]
                                       == os.path.basename(todo[cut - 1][0]).split(".", 1)[0]):
            cut += 1
        out.append(todo[start:cut])
        start = cut
    out.append(todo[start:])
    return out


def _load_files(conn: sqlite3.Connection, dump: Path, todo: list, summary: BuildSummary,
                fresh: bool, skip: frozenset, deferred: set[int],
                progress: Callable[[int], None] | None) -> None:
    """Read, derive and write ``todo`` in this process; models seen in several groups (list
    pages) and those in ``deferred`` are derived last, from all their snapshots in the db."""
    writer = _Writer(conn, summary, fresh)
    seen_this_build: set[int] = set()
    done = 0
    for task in _tasks(todo, TASK_FILES):
        result = _read_task(str(dump), task, skip)
        for rel, error in result.errors:
            summary.errors.append((rel, error))
            log.warning("%s: %s (skipped)", dump / rel, error)
        for rel, why in result.skips:
            log.info("%s: %s (skipped)", rel, why)
        summary.files_read += result.files_read
        summary.skipped += len(result.skips)
        writer.insert_snapshots(result.snapshots)
        conn.executemany(_SQL["_sources"], result.sources)
        now_ids, now_rows = [], []
        for model_id, rows in result.derived.items():
            if model_id in skip or model_id in seen_this_build or model_id in deferred:
                deferred.add(model_id)  # also in another group (list pages): derive from the db
                continue
            now_ids.append(model_id)
            if rows is not None:
                now_rows.append(rows)
        seen_this_build.update(result.derived)
        writer.write_models(now_ids, now_rows, clean=False)
        conn.commit()
        done += len(task)
        if progress:
            progress(done)
    _rederive(writer, sorted(deferred))


def _rederive(writer: _Writer, ids: list[int]) -> None:
    for start in range(0, len(ids), 500):
        part = ids[start:start + 500]
        loaded = writer.load_snapshots(part)
        rows = [r for r in (derive_model(mid, loaded.get(mid, [])) for mid in part)
                if r is not None]
        writer.write_models(part, rows, clean=True)
        writer.conn.commit()


def _load_part(dump: Path, todo: list, path: Path, counter: Any, pipe: Any) -> None:
    """Child process: load one slice of a fresh build into its own database file at ``path``."""
    try:
        summary = BuildSummary()
        db = _open_load_db(path)

        def progress(done: int) -> None:
            counter.value = done

        _load_files(db.conn, dump, todo, summary, True, frozenset(), set(), progress)
        db.close()
        pipe.send(("ok", summary))
    except BaseException as exc:  # noqa: BLE001 - handed to the parent, which raises it
        pipe.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        pipe.close()


# Merging a slice database into the main one: plain SQL, no Python per row. Order and conflict
# rules are the serial build's (slices hold consecutive files, merged in order).
_MERGE_TABLES = ("models", "model_versions", "model_files", "images", "file_hashes",
                 "archived_model_files", "_sources")


def _merge_part(writer: _Writer, path: Path, summary: BuildSummary) -> list[int]:
    """Copy one slice into the main database (indexed, its full-text index filled); returns the
    models both held, which the caller re-derives from all their snapshots."""
    conn = writer.conn
    conn.execute("ATTACH DATABASE ? AS part", (str(path),))
    try:
        # models both sides saw (a list page in one slice, the model's own file in another)
        both = [r[0] for r in conn.execute(
            "SELECT DISTINCT model_id FROM part.model_snapshots "
            "WHERE model_id IN (SELECT model_id FROM main.model_snapshots)")]
        writer.write_models(both, [], clean=True)  # their rows and full-text entries, for now
        before = conn.total_changes
        cols = ", ".join(f'"{c}"' for c in _COLS["model_snapshots"])
        conn.execute(f"INSERT OR IGNORE INTO main.model_snapshots ({cols}) "
                     f"SELECT {cols} FROM part.model_snapshots ORDER BY rowid")
        summary.snapshots_new += conn.total_changes - before
        for table in _MERGE_TABLES:  # the later slice wins, as in a serial build
            cols = ", ".join(f'"{c}"' for c in _COLS[table])
            conn.execute(f'INSERT OR REPLACE INTO main."{table}" ({cols}) '
                         f'SELECT {cols} FROM part."{table}"')
        conn.execute("INSERT INTO models_fts (rowid, name, description_text, tags) "
                     "SELECT rowid, name, description_text, tags FROM part.models")
        # tags: the slice's ids are its own; new names get the next ids in the slice's order
        for tid, name in conn.execute("SELECT id, name FROM part.tags ORDER BY id").fetchall():
            if name not in writer.tag_ids:
                writer.tag_ids[name] = writer.next_tag
                conn.execute("INSERT INTO main.tags (id, name) VALUES (?, ?)",
                             (writer.next_tag, name))
                writer.next_tag += 1
        conn.execute("INSERT OR IGNORE INTO main.models_tags (models_id, tags_id) "
                     "SELECT pt.models_id, mt.id FROM part.models_tags pt "
                     "JOIN part.tags t ON t.id = pt.tags_id JOIN main.tags mt ON mt.name = t.name")
        conn.execute("INSERT INTO main.creators (username, image) "
                     "SELECT username, image FROM part.creators WHERE true "
                     "ON CONFLICT(username) DO UPDATE SET "
                     "image = coalesce(excluded.image, creators.image)")
        conn.commit()
    finally:
        conn.execute("DETACH DATABASE part")
    return both


def _load_parallel(conn: sqlite3.Connection, dump: Path, todo: list, summary: BuildSummary,
                   progress: Callable[[int, int], None] | None, workers: int,
                   target: Path) -> None:
    """A fresh build on several cores: each extra process loads a slice into its own file, this
    one loads the first slice into ``target``; then the slices are merged in SQL, in order."""
    import multiprocessing

    context = multiprocessing.get_context("fork" if hasattr(os, "fork") else "spawn")
    # This process also indexes its own slice while the others still load, and merges at the
    # end: it takes a smaller share.
    slices = _split(todo, [MAIN_SHARE] + [1.0] * workers)
    total = len(todo)
    children = []
    try:
        for k, part in enumerate(slices[1:], 1):
            path = target.with_name(f"{target.name}.part{k}")
            if path.exists():
                path.unlink()  # our own leftover from an interrupted build
            counter = context.Value("q", 0, lock=False)
            receive, send = context.Pipe(duplex=False)
            proc = context.Process(target=_load_part, args=(dump, part, path, counter, send),
                                   daemon=True)
            proc.start()
            send.close()
            children.append((proc, path, counter, receive))

        def report(done: int) -> None:
            if progress:
                progress(done + sum(c[2].value for c in children), total)

        _load_files(conn, dump, slices[0], summary, True, frozenset(), set(), report)
        _index_loaded(sqlite_utils.Database(conn))  # this slice's, while the others still load
        conn.commit()
        writer = _Writer(conn, summary, fresh=False)  # keeps models_fts in step from here on
        both: list[int] = []
        for proc, path, counter, receive in children:
            try:
                status, result = receive.recv()
            except EOFError:
                status, result = "error", f"exit code {proc.exitcode}"
            proc.join()
            if status != "ok":
                raise RuntimeError(f"build worker failed: {result}")
            summary.files_read += result.files_read
            summary.skipped += result.skipped
            summary.errors.extend(result.errors)
            summary.models_rebuilt += result.models_rebuilt
            both.extend(_merge_part(writer, path, summary))
            path.unlink()
            report(len(slices[0]))
        _rederive(writer, sorted(set(both)))
    finally:
        for proc, path, _counter, receive in children:
            if proc.is_alive():
                proc.kill()
            proc.join()
            receive.close()
            if path.exists():
                path.unlink()


def _run_build(conn: sqlite3.Connection, dump: Path, summary: BuildSummary, fresh: bool,
               progress: Callable[[int, int], None] | None, workers: int | None = None,
               target: Path | None = None) -> bool:
    """Load what changed; True when the secondary and full-text indexes are already built."""
    # files that failed last time are read again (the crawler may have finished them since)
    known_sources = {path: (size, mtime_ns) if kind != "error" else None
                     for path, size, mtime_ns, kind in
                     conn.execute("SELECT path, size, mtime_ns, kind FROM _sources")}
    known_models = {row[0] for row in conn.execute("SELECT DISTINCT model_id FROM model_snapshots")}
    on_disk = list(iter_dump_files(dump))
    disk_paths = {rel for rel, _ in on_disk}
    deferred: set[int] = set()

    # Files gone from the dump: drop their snapshots, re-read files that share their models.
    removed = [p for p in known_sources if p not in disk_paths]
    reread: set[str] = set()
    if removed:
        summary.files_removed = len(removed)
        for path in removed:
            ids = [r[0] for r in conn.execute(
                "SELECT j.value FROM _sources s, json_each(s.model_ids) j WHERE s.path = ?", (path,))]
            conn.execute("DELETE FROM model_snapshots WHERE path = ?", (path,))
            conn.execute("DELETE FROM _sources WHERE path = ?", (path,))
            deferred.update(ids)
            if ids:
                marks = ",".join("?" * len(ids))
                reread.update(r[0] for r in conn.execute(
                    "SELECT DISTINCT s.path FROM _sources s, json_each(s.model_ids) j "
                    f"WHERE j.value IN ({marks})", ids))

    todo = [(rel, st) for rel, st in on_disk
            if rel in reread or known_sources.get(rel) != (st.st_size, st.st_mtime_ns)]
    summary.files_unchanged = len(on_disk) - len(todo)
    total = len(todo)
    if workers is None:
        workers = _idle_cores() - 1 if len(todo) >= POOL_MIN_FILES else 0
    workers = min(workers, max(0, len(todo) - 1))
    if fresh and workers > 0 and target is not None:
        _load_parallel(conn, dump, todo, summary, progress, workers, target)
        return True
    skip = frozenset(known_models | deferred)
    _load_files(conn, dump, todo, summary, fresh, skip, deferred,
                (lambda done: progress(done, total)) if progress else None)
    return False
