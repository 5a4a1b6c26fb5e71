"""One file -> one parsed record (``extract_comprehensive_metadata``); a whole library -> tables.

``extract_library`` and ``extract_within_budget`` read each file in a worker process with a hard
budget (``matcher.media.budget``): a file that takes too long or too much memory is recorded with
an error and the run goes on.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from crawler.clock import utc_now
from matcher.fsnames import row_path, shown
from matcher.models import TEXT_SIDECAR_SUFFIXES
from matcher.schema import ensure_library, open_library

from .budget import Budget, budgeted_call, default_workers, run_budgeted
from .containers import read_containers, sniff_format
from .imaging import exif_facts, thumbnail_and_blurhash
from .normalise import FIELDS, finalise
from .parse import parse_containers, parse_text

log = logging.getLogger(__name__)

#: images and videos larger than this are not read whole (videos: tags only)
MAX_READ_BYTES = 512 * 1024 * 1024
#: at most this much of a text sidecar is read
MAX_SIDECAR_BYTES = 4 * 1024 * 1024
VIDEO_FORMATS = {"mp4", "webm"}


def find_metadata_text_file(image_path: str | os.PathLike) -> Path | None:
    """The sidecar beside an image: ``name.txt``/``name.json``, or ``name.png.txt``/``name.png.json``."""
    p = Path(image_path)
    for cand in ([p.with_suffix(s) for s in TEXT_SIDECAR_SUFFIXES]
                 + [p.with_name(p.name + s) for s in TEXT_SIDECAR_SUFFIXES]):
        if cand != p and cand.is_file():
            return cand
    return None


def _read_sidecar(path: Path) -> str | None:
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_SIDECAR_BYTES)
    except OSError:
        return None
    for enc in ("utf-8-sig", "utf-16", "latin-1"):
        try:
            return raw.decode(enc)
        except UnicodeDecodeError:
            continue
    return None


def _extract(path: Path, *, thumbnail: bool = True, keep_gps: bool = False) -> tuple[dict[str, Any], bytes | None]:
    out: dict[str, Any] = {"path": shown(path)}
    errors: list[str] = []
    thumb = None
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(16)
            fmt = sniff_format(head)
            if fmt in VIDEO_FORMATS:
                data = head + f.read(64 * 1024 * 1024)
            elif size > MAX_READ_BYTES:
                data = head
                errors.append(f"file too large to read ({size} bytes)")
            else:
                data = head + f.read()
    except OSError as exc:
        out.update({"no_metadata": True, "error": f"unreadable: {exc.strerror or exc}"})
        return out, None
    c = read_containers(data)
    errors.extend(c.errors)
    out["format"] = c.format
    out["image_width"], out["image_height"] = c.width, c.height
    try:
        c.name = path.name
        rec = parse_containers(c)
    except MemoryError:
        raise  # over the file's memory budget: the budget records it
    except Exception as exc:  # a parser bug must not stop a run; record it
        log.debug("parser failed on %s", path, exc_info=True)
        errors.append(f"parser error ({type(exc).__name__}: {str(exc)[:120]})")
        rec = None
    sidecar = find_metadata_text_file(path)
    if sidecar:
        out["sidecar_path"] = shown(sidecar)
    if rec is None and sidecar:
        text = _read_sidecar(sidecar)
        try:
            rec = parse_text(text, "sidecar") if text else None
        except Exception as exc:
            errors.append(f"sidecar parser error ({type(exc).__name__})")
            rec = None
        if rec:
            rec["metadata_source"] = f"sidecar:{shown(sidecar.name)}"
            rec = finalise(rec)
    out["no_metadata"] = rec is None
    if rec:
        for k in FIELDS:
            out[k] = rec.get(k)
        out["loras"] = [{"name": l["name"], "weight": l["weight"], "context": l["context"],
                         "weight2": l.get("weight2"), "kind": l.get("kind", "lora")} for l in rec["loras"]]
        out["resources"] = [{k: r.get(k) for k in ("kind", "name", "hash", "hash_kind", "weight", "version_id")}
                            for r in rec["resources"]]
        out["params"] = rec.get("params") or {}
        out["passes"] = rec.get("passes") or []
        out["metadata_source"] = rec.get("metadata_source")
        out["metadata_hash"] = rec["metadata_hash"]
    else:
        out["generation_tool"] = None
        out["loras"], out["resources"] = [], []
    if c.format and c.format not in VIDEO_FORMATS and data and len(data) > 16:
        bh, thumb, err = thumbnail_and_blurhash(data) if thumbnail else (None, None, None)
        out["blurhash"] = bh
        if err:
            errors.append(err)
    else:
        out["blurhash"] = None
    try:
        out["exif"] = exif_facts(c.exif_raw, keep_gps=keep_gps)
    except Exception as exc:
        errors.append(f"bad EXIF ({type(exc).__name__})")
        out["exif"] = {}
    out["error"] = "; ".join(dict.fromkeys(errors)) or None
    return out, thumb


def extract_comprehensive_metadata(path: str | os.PathLike, *, keep_gps: bool = False) -> dict[str, Any]:
    """The parsed record of one image or video (what ``civitai-mirror inspect --json`` prints).

    Keys: ``path``, ``format``, ``image_width``/``image_height`` (pixels), ``no_metadata``, ``generation_tool``,
    the normalised fields (``model_name``, ``seed``, ``steps``, ``sampler``, ``cfg_scale``, ...), ``loras``
    (name, weight, context), ``resources`` (kind, name, hash, hash_kind, weight, version_id), ``params``,
    ``metadata_hash``, ``blurhash``, ``exif`` (camera facts; GPS coordinates only with ``keep_gps``), ``error``.
    Never raises on bad input: the reason is in ``error``.
    """
    rec, _thumb = _extract(Path(path), thumbnail=True, keep_gps=keep_gps)
    return rec


def _extract_job(path: str, keep_gps: bool, pixels: bool = True) -> tuple[dict[str, Any], bytes | None]:
    return _extract(Path(path), thumbnail=pixels, keep_gps=keep_gps)


def _over_budget(path: str, message: str) -> dict[str, Any]:
    return {"path": shown(path), "no_metadata": True, "generation_tool": None, "loras": [], "resources": [],
            "blurhash": None, "exif": {}, "error": message}


def _size(path: str) -> int:
    try:
        return min(os.stat(path).st_size, MAX_READ_BYTES)
    except OSError:
        return 0


def extract_within_budget(path: str | os.PathLike, *, keep_gps: bool = False,
                          budget: Budget = Budget()) -> dict[str, Any]:
    """``extract_comprehensive_metadata`` in a worker process within ``budget``: a file over its time
    or memory budget gives a record with ``no_metadata`` and the reason in ``error``."""
    path = os.fspath(path)
    status, value = budgeted_call(_extract_job, (path, keep_gps), _size(path), budget=budget)
    return value[0] if status == "ok" else _over_budget(path, value)


def extract_files_within_budget(paths: Iterable[str | os.PathLike], *, keep_gps: bool = False, pixels: bool = True,
                                budget: Budget = Budget()) -> Iterator[dict[str, Any]]:
    """``extract_within_budget`` of each path, in order, by one worker process (what ``inspect`` runs).
    Without ``pixels`` only the metadata is read: no decode, no ``blurhash``."""
    paths = [os.fspath(p) for p in paths]
    if not paths:
        return
    jobs = ((i, (path, keep_gps, pixels), _size(path)) for i, path in enumerate(paths))
    for i, status, value in run_budgeted(_extract_job, jobs, budget=budget, workers=1):
        yield value[0] if status == "ok" else _over_budget(paths[i], value)


# ---------------------------------------------------------------- library
def _stamp(row: dict[str, Any], sidecar: Path | None) -> str:
    side = ""
    if sidecar:
        try:
            st = sidecar.stat()
            side = f"{shown(sidecar.name)}:{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            side = ""
    return f"{row.get('size')}:{row.get('mtime_ns')}:{side}"


def _seed_int(seed: Any) -> int | None:
    return seed if isinstance(seed, int) and -(2 ** 63) <= seed < 2 ** 63 else None


def _pixels_job(path: str) -> tuple[str | None, bytes | None, str | None]:
    """(BlurHash, WebP thumbnail, error) of one image file: the pixel pass of ``extract_library``."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_READ_BYTES or size <= 16:
                return None, None, None
            data = f.read()
    except OSError as exc:
        return None, None, f"unreadable: {exc.strerror or exc}"
    return thumbnail_and_blurhash(data)


def _wants_pixels(rec: dict[str, Any]) -> bool:
    return bool(rec.get("format")) and rec["format"] not in VIDEO_FORMATS and "file too large" not in (rec.get("error") or "")


def extract_library(db, force: bool = False, progress: Callable[[int, int, str], None] | None = None,
                    *, keep_gps: bool = False, budget: Budget = Budget(), workers: int | None = None) -> dict[str, Any]:
    """Extract every ``files`` row with kind='media' into generations/lora_usages/resources/media_info.

    ``db`` is a sqlite_utils.Database or a path to library.sqlite. Files whose size, mtime and sidecar are
    unchanged since the last run are skipped without any write; ``force`` re-reads them all but still writes
    only rows whose content changed. ``progress(done, total, path)`` is called after each file.
    Two passes, each by ``workers`` processes (default: CPU cores, at most 8) holding every file to
    ``budget``: the metadata of every file first (no pixel decode), then the BlurHash and thumbnail of
    the images that need one (also those a stopped run left without one). Returns summary counts.
    """
    if not hasattr(db, "execute"):
        db = open_library(db)
    else:
        ensure_library(db)
    where = "kind = 'media'"
    if "missing" in db.table("files").columns_dict:
        where += " and coalesce(missing, 0) = 0"
    rows = list(db.query(f"select id, path, path_bytes, size, mtime_ns from files where {where} order by id"))
    known = {r[0]: r[1:] for r in db.execute(
        "select m.file_id, m._source_stamp, g.metadata_hash, m.blurhash, m.format, m.error from media_info m "
        "left join generations g on g.file_id = m.file_id").fetchall()}
    summary: dict[str, Any] = {"total": len(rows), "extracted": 0, "unchanged": 0, "written": 0,
                               "with_metadata": 0, "no_metadata": 0, "errors": 0, "by_tool": {}, "thumbnails": 0}
    done = 0
    todo: list[tuple[dict[str, Any], str, tuple | None]] = []
    pixels: list[tuple[dict[str, Any], str | None]] = []  # (row, the error its metadata pass recorded)
    for row in rows:
        sidecar = find_metadata_text_file(row_path(row))
        stamp = _stamp(row, sidecar)
        prev = known.get(row["id"])
        if prev and prev[0] == stamp and not force:
            summary["unchanged"] += 1
            done += 1
            if prev[2] is None and prev[4] is None and _wants_pixels({"format": prev[3]}):
                pixels.append((row, None))  # a run stopped before its pixel pass
            if progress:
                progress(done, len(rows), row["path"])
            continue
        todo.append((row, stamp, prev))
    jobs = ((i, (row_path(row), keep_gps, False), min(row["size"] or 0, MAX_READ_BYTES))
            for i, (row, _stamp_, _prev) in enumerate(todo))
    results = run_budgeted(_extract_job, jobs, budget=budget,
                           workers=min(workers or default_workers(), len(todo))) if todo else ()
    for i, status, value in results:
        row, stamp, prev = todo[i]
        done += 1
        rec = value[0] if status == "ok" else _over_budget(row_path(row), value)
        if status != "ok":
            log.warning("%s: %s", row["path"], value)
        summary["extracted"] += 1
        if rec["no_metadata"]:
            summary["no_metadata"] += 1
        else:
            summary["with_metadata"] += 1
            tool = rec.get("generation_tool") or "unknown"
            summary["by_tool"][tool] = summary["by_tool"].get(tool, 0) + 1
        if rec.get("error"):
            summary["errors"] += 1
        same = prev and prev[0] == stamp and prev[1] == rec.get("metadata_hash") and status == "ok"
        if not same:
            _write(db, row["id"], rec, None, stamp)
            summary["written"] += 1
        if status == "ok" and _wants_pixels(rec) and not (same and (prev[2] is not None or prev[4] is not None)):
            pixels.append((row, rec.get("error")))
        if progress:
            progress(done, len(rows), row["path"])
    _pixel_pass(db, pixels, budget, workers, summary)
    return summary


def _pixel_pass(db, pixels: list[tuple[dict[str, Any], str | None]], budget: Budget, workers: int | None,
                summary: dict[str, Any]) -> None:
    """BlurHash and thumbnail of each image, in the pool, after every file's metadata is in the database."""
    jobs = ((i, (row_path(row),), min(row["size"] or 0, MAX_READ_BYTES)) for i, (row, _e) in enumerate(pixels))
    results = run_budgeted(_pixels_job, jobs, budget=budget,
                           workers=min(workers or default_workers(), len(pixels))) if pixels else ()
    for i, status, value in results:
        row, error = pixels[i]
        bh, thumb, err = value if status == "ok" else (None, None, f"no thumbnail: {value}")
        errors = "; ".join(dict.fromkeys(e for e in (error, err) if e)) or None
        if err and not error:
            summary["errors"] += 1
        with db.conn:
            db.execute("update media_info set blurhash = ?, thumbnail = ?, error = ? where file_id = ?",
                       [bh, thumb, errors, row["id"]])
        summary["thumbnails"] += thumb is not None


def _params(rec: dict[str, Any]) -> dict[str, Any]:
    """What ``params_json`` holds: the record's params, and its later sampler passes under ``passes``."""
    params = rec.get("params") or {}
    return {**params, "passes": rec["passes"]} if rec.get("passes") else params


def _upsert(db, table: str, row: dict[str, Any]) -> None:
    """``db[table].upsert(row, pk="file_id")`` in one statement (sqlite_utils asks the schema every call:
    most of the metadata pass's time was the parent's SQL)."""
    cols = ", ".join(f"[{c}]" for c in row)
    sets = ", ".join(f"[{c}] = excluded.[{c}]" for c in row if c != "file_id")
    db.execute(f"insert into [{table}] ({cols}) values ({', '.join('?' * len(row))}) "
               f"on conflict(file_id) do update set {sets}", list(row.values()))


def _insert(db, table: str, rows: list[dict[str, Any]]) -> None:
    cols = list(rows[0])
    db.conn.executemany(f"insert into [{table}] ({', '.join(f'[{c}]' for c in cols)}) values "
                        f"({', '.join('?' * len(cols))})", [[r[c] for c in cols] for r in rows])


def _write(db, file_id: int, rec: dict[str, Any], thumb: bytes | None, stamp: str) -> None:
    now = utc_now()
    ex = rec.get("exif") or {}
    info = {
        "file_id": file_id, "format": rec.get("format"), "image_width": rec.get("image_width"),
        "image_height": rec.get("image_height"), "has_metadata": 0 if rec["no_metadata"] else 1,
        "blurhash": rec.get("blurhash"), "thumbnail": thumb,
        "exif_make": ex.get("make"), "exif_model": ex.get("model"), "exif_lens": ex.get("lens"),
        "exif_exposure": ex.get("exposure"), "exif_f_number": ex.get("f_number"), "exif_iso": ex.get("iso"),
        "exif_focal_length": ex.get("focal_length"), "exif_datetime_original": ex.get("datetime_original"),
        "exif_software": ex.get("software"), "exif_gps_present": None if not ex else int(bool(ex.get("gps_present"))),
        "exif_gps_latitude": ex.get("gps_latitude"), "exif_gps_longitude": ex.get("gps_longitude"),
        "exif_orientation": ex.get("orientation"), "sidecar_path": rec.get("sidecar_path"),
        "error": rec.get("error"), "_source_stamp": stamp, "_extracted_at": now,
    }
    with db.conn:
        _upsert(db, "media_info", info)
        db.execute("delete from lora_usages where file_id = ?", [file_id])
        db.execute("delete from resources where file_id = ?", [file_id])
        if rec["no_metadata"]:
            db.execute("delete from generations where file_id = ?", [file_id])
            return
        gen = {k: rec.get(k) for k in FIELDS}
        gen["prompt_truncated"] = 1 if gen.get("prompt_truncated") else 0
        seed = rec.get("seed")
        gen["seed"] = _seed_int(seed)
        gen["seed_text"] = str(seed) if seed is not None else None
        gen["subseed"] = _seed_int(rec.get("subseed"))
        for k in ("steps", "clip_skip", "hires_steps", "width", "height"):
            gen[k] = _seed_int(gen.get(k))
        for k, v in list(gen.items()):
            if isinstance(v, (dict, list)):
                gen[k] = json.dumps(v, ensure_ascii=False)
            elif isinstance(v, bool):
                gen[k] = int(v)
        gen.update({"file_id": file_id, "metadata_source": rec.get("metadata_source"),
                    "params_json": json.dumps(_params(rec), ensure_ascii=False, sort_keys=True),
                    "lora_count": len(rec["loras"]), "metadata_hash": rec.get("metadata_hash"), "_extracted_at": now})
        _upsert(db, "generations", gen)
        if rec["loras"]:
            _insert(db, "lora_usages",
                [{"file_id": file_id, "position": i, "name": l["name"], "weight": l["weight"],
                  "weight2": l.get("weight2"), "context": l["context"], "kind": l.get("kind")}
                 for i, l in enumerate(rec["loras"])])
        if rec["resources"]:
            _insert(db, "resources",
                [{"file_id": file_id, "position": i, "kind": r["kind"], "name": r["name"], "hash": r["hash"],
                  "hash_kind": r["hash_kind"], "weight": r["weight"], "version_id": _seed_int(r["version_id"])}
                 for i, r in enumerate(rec["resources"])])
