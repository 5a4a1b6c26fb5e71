"""Deriving a model's rows from every snapshot the dump holds of it (pure: no I/O).

The newest full answer gives the model row; every version, file, hash and image seen in any
snapshot stays (``_archived`` = 1 when the newest answer no longer lists it), so a file stays
findable by hash after its model is Archived. A ``version`` snapshot fills that version's rows (with
image ``meta``) but never replaces what a full model answer says; a model known only from version
answers gets a row with ``_partial`` = 1. A ``notfound`` snapshot that is the newest marks the
model as gone upstream (``_gone`` = 1).
"""
from __future__ import annotations

import functools
import html
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable

import orjson

from mirror.answers import files_as_rows, stored_version, with_files
from mirror.dump_reader import Snapshot
from mirror.hashes import canonical_type

_TAG_RE = re.compile(r"<[^>]+>")
_IMAGE_ID_IN_URL = re.compile(r"/(\d+)\.[A-Za-z0-9]+(?:\?.*)?$")

# The order derive_model builds each row tuple in (named here, not taken from the schema's order,
# so reordering the schema cannot shift values into the wrong columns). Tables not listed take
# the schema's order. images.local_path is filled by the build's link_local_images.
ROW_COLUMNS = {name: cols.split() for name, cols in {
    "models": """id name type username created_at updated_at nsfw nsfwLevel poi
        minor mode availability userId allowNoCredit allowCommercialUse allowDerivatives
        allowDifferentLicense downloadCount thumbsUpCount thumbsDownCount commentCount
        favoriteCount ratingCount rating tippedAmountCount tags baseModels version_count
        _first_seen _last_seen _gone _partial _snapshots _source_path data""",
    "model_versions": """id model_id position name base_model published_at created_at updated_at
        baseModelType status publishedAt createdAt nsfwLevel availability trainedWords
        downloadCount thumbsUpCount thumbsDownCount downloadUrl _archived _first_seen _last_seen
        data""",
    "model_files": """id model_id version_id type sha256 created_at updated_at name sizeKB primary
        format size fp pickleScanResult virusScanResult downloadUrl position _archived data""",
    "images": """id version_id model_id position url width height nsfwLevel nsfw hash type hasMeta
        meta""",
}.items()}


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


def search_row(model_id: int, name: str, model_data: dict, tags: str) -> tuple:
    """A model's ``models_fts`` row (rowid, name, description_text, tags) from its ``models`` row:
    the description's text is derived here, never stored (deleting the entry needs it again)."""
    description = model_data.get("description") if type(model_data) is dict else None
    return (model_id, name, html_to_text(description), tags)


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

def json_text(obj: Any) -> str:
    return orjson.dumps(obj).decode()


# The big JSON columns (data, meta) take orjson's bytes as they are: the writer's INSERT casts them
# to TEXT in SQLite (same stored value as a str, without decoding to str and encoding back to
# UTF-8 per row).
_json = orjson.dumps


@dataclass
class ModelRows:
    """A model's rows as tuples in ``ROW_COLUMNS`` order, ready for ``executemany`` (cheap to pickle)."""
    model_id: int
    model: tuple
    versions: list[tuple]
    files: list[tuple]
    hashes: list[tuple]  # file_hashes (hash, type, file_id, version_id, model_id)
    images: list[tuple]
    archived: list[tuple]  # archived_model_files (file_id, model_id, version_id)
    tags: list[str]
    creator: tuple | None  # (username, image)
    search: tuple  # models_fts (rowid, name, description_text, tags): see search_row
    answer_sha: str | None = None  # the snapshot these rows give back exactly (stored as a marker)


def derive_model(model_id: int, snapshots: Iterable[Snapshot]) -> ModelRows | None:
    """All rows of one model from every snapshot the dump holds of it (None: nothing usable)."""
    # An answer kept beside the good copy (a 404 or a worse answer on refresh) was always received
    # after that copy: within the same second (its name's stamp has no finer part) it is the newer.
    snaps = sorted(snapshots, key=lambda s: (s.fetched_at, s.path.rpartition("/")[2].count(".") > 1, s.sha))
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

    # A version's files are its newest data's list, in that order (model_files.position); a file
    # only older answers listed keeps its row with position NULL.
    file_position: dict[int, int] = {}
    for vid, (version, *_rest) in versions.items():
        if not files_as_rows(version):
            continue
        for index, file in enumerate(version["files"]):
            files[file["id"]] = (file, vid)
            file_position[file["id"]] = index
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
    tags_json = json_text(tags)
    created_at, updated_at = _epoch(first_seen), _epoch(last_seen)
    model = (  # ROW_COLUMNS["models"] order
        model_id, current.get("name") or "", current.get("type") or "", username,
        created_at, updated_at,
        _bool(current.get("nsfw")),
        _int(current.get("nsfwLevel")), _bool(current.get("poi")), _bool(current.get("minor")),
        current.get("mode"), current.get("availability"), _int(current.get("userId")),
        _bool(current.get("allowNoCredit")),
        json_text(normalize_commercial_use(current.get("allowCommercialUse"))),
        _bool(current.get("allowDerivatives")), _bool(current.get("allowDifferentLicense")),
        _int(sget("downloadCount")), _int(sget("thumbsUpCount")), _int(sget("thumbsDownCount")),
        _int(sget("commentCount")), _int(sget("favoriteCount")), _int(sget("ratingCount")),
        _num(sget("rating")), _int(sget("tippedAmountCount")),
        tags_json, json_text(base_models), len(current_versions),
        first_seen, last_seen, gone, 0 if full else 1, len(snaps), current_path,
        _json(model_data),
    )
    version_rows = []
    stored: dict[int, dict] = {}  # model_versions.data of each version (also checked below)
    for vid, (version, position, v_first, v_last) in versions.items():
        stored[vid] = data = stored_version(version)
        vstats = version.get("stats")
        vget = vstats.get if type(vstats) is dict else _no_stat
        vg = version.get
        status = vg("status")
        version_rows.append((  # ROW_COLUMNS["model_versions"] order
            vid, model_id, position, vg("name") or "", vg("baseModel") or "",
            # 2023 answers have no publishedAt (the list held only published versions): createdAt
            iso_to_epoch(vg("publishedAt")) or (
                iso_to_epoch(vg("createdAt")) if status in (None, "Published") else None),
            _epoch(v_first), _epoch(v_last),
            vg("baseModelType"), status, vg("publishedAt"), vg("createdAt"),
            _int(vg("nsfwLevel")), vg("availability"), json_text(vg("trainedWords") or []),
            _int(vget("downloadCount")), _int(vget("thumbsUpCount")),
            _int(vget("thumbsDownCount")), vg("downloadUrl"),
            0 if vid in current_versions else 1, v_first, v_last, _json(data),
        ))
    file_rows, hash_rows, archived_rows = [], [], []
    for fid, (file, vid) in files.items():
        fg = file.get
        hashes = fg("hashes")
        canon = {}
        if type(hashes) is dict:
            for key, value in hashes.items():
                t = canonical_type(key)
                if t and type(value) is str:
                    value = value.strip()
                    if value:
                        canon[t] = value.upper()
        meta = fg("metadata")
        mg = meta.get if type(meta) is dict else _no_stat
        archived = 0 if fid in current_files else 1
        file_rows.append((  # ROW_COLUMNS["model_files"] order
            fid, model_id, vid, fg("type") or "", canon.get("SHA256"), created_at, updated_at,
            fg("name"), _num(fg("sizeKB")), _bool(fg("primary")), mg("format"), mg("size"),
            mg("fp"), fg("pickleScanResult"), fg("virusScanResult"), fg("downloadUrl"),
            file_position.get(fid), archived, _json(file),
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
        image_rows.append((  # ROW_COLUMNS["images"] order
            iid, vid, model_id, position, ig("url"), _int(ig("width")), _int(ig("height")),
            _int(nsfw_level),
            (str(nsfw) if nsfw is not None else nsfw_level if isinstance(nsfw_level, str) else None),
            ig("hash"), ig("type"),
            _bool(ig("hasMeta") if "hasMeta" in image else (bool(meta) if "meta" in image else None)),
            _json(meta) if meta else None,
        ))
    creator_row = (username, creator.get("image")) if username else None
    answer_sha = None
    if full and _rows_give_back(current, model_data, versions, stored, files, current_versions):
        answer_sha = full[-1].sha
    return ModelRows(model_id, model, version_rows, file_rows, hash_rows, image_rows,
                     archived_rows, tags, creator_row, search_row(model_id, model[1], model_data,
                                                                  tags_json), answer_sha)


def _rows_give_back(current: dict, model_data: dict, versions: dict, stored: dict, files: dict,
                     current_ids: set) -> bool:
    """Whether mirror.answers reassembles exactly ``current`` from the rows written for it."""
    order = sorted(current_ids, key=lambda vid: (versions[vid][1], -vid))
    assembled = []
    for vid in order:
        version = versions[vid][0]
        data = stored[vid]
        if "files" in version and "files" not in data and any(  # files as rows
                files.get(f["id"], (None, None))[1] != vid for f in version["files"]):
            return False  # a file listed by two versions: its row names one
        assembled.append(with_files(data, version.get("files") or []))
    return {**model_data, "modelVersions": assembled} == current
