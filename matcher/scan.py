"""Walk directories into library.sqlite's ``files`` table: kinds, sniffed formats, hashes, model facts.

``scan_library(db, roots, ...)`` is the whole scan; ``describe_file(path)`` is one file's facts (the
``hash`` command uses it too). Hash work goes through ``matcher.hashing.hash_file`` only.

The cache: a file whose (device, inode, size, mtime_ns) is unchanged and already hashed is not read
again. A path the table does not know is first matched against rows whose file has vanished: same
(device, inode, size, mtime_ns) (a rename or a moved folder), else same size and sampled
fingerprint (a copy to another disk, then the original deleted). Such a row is re-attached to the
new path with its hashes, and reported as a move.

Names that are not UTF-8 are stored as readable text plus their exact bytes (``matcher.fsnames``):
the walk keys files by that text and opens them by their real name. One file that cannot be
recorded (a name clash, an unreadable file) is an error for that file; the scan goes on.
"""
from __future__ import annotations

import errno
import json
import logging
import operator
import os
import sqlite3
import stat as statmod
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any, Callable, Iterable

import sqlite_utils

from crawler.clock import utc_now
from matcher import models
from matcher.config import DEFAULT_MAX_FILE_SIZE
from matcher.dfsn import DfsnError, read_header
from matcher.fsnames import disk_path, shown, stored_path
from matcher.hashers import FileChangedError
from matcher.hashing import fingerprint, hash_file

log = logging.getLogger(__name__)

HASH_COLUMNS = {
    "SHA256": "sha256", "AutoV1": "autov1", "AutoV2": "autov2", "AutoV3": "autov3",
    "AutoV3_full": "autov3_full", "CRC32": "crc32", "BLAKE3": "blake3", "AutoV1_A1111": "autov1_a1111",
}
_CLEARED = {column: None for column in HASH_COLUMNS.values()} | {
    "sha256_source": None, "fingerprint": None, "model_type": None, "base_model": None,
    "width": None, "height": None, "error": None, "_hashed_at": None,
}
HASHED_KINDS = ("model", "media")
#: the ``files`` columns the walk compares (read through a cursor whose rows are ``sqlite3.Row``)
_SELECT_FILES = ("SELECT id, path, path_bytes, root, size, mtime_ns, device, inode, kind, format, _hashed_at, fingerprint, error"
                 " FROM files ")
GROWING_ERROR = "changed while it was being hashed (still being written?); will be hashed by the next scan"
NOT_REGULAR_ERROR = "not a regular file (a device, FIFO, socket or folder); not read"
CLASH_ERROR = "its name, shown as text, is the name of another file here; not recorded"

Progress = Callable[..., None]


class StillWritten(Exception):
    """A file changed between the walk and the end of its hashing."""


# ---- one file ------------------------------------------------------------------------------

def describe_file(
    path: str,
    *,
    kind: str | None = None,
    fmt: str | None = None,
    size: int | None = None,
    progress: Callable[[int], None] | None = None,
    all_hashes: bool = False,
) -> dict[str, Any]:
    """Hashes and facts of one file, as ``files`` columns plus ``model_info`` (dict or None).

    Raises ``OSError`` for a path that is not a regular file (read nothing from a device or a FIFO).
    Models get every hash and a classification; media get SHA256 and width/height; ``all_hashes``
    gives every hash whatever the kind (the ``hash`` command). A ``.dfsn`` takes SHA256 from its
    header (``sha256_source`` = ``header``) and hashes the embedded model for the other types.
    """
    if size is None:
        st = os.stat(path)  # follows a symlink: a link to /dev/zero is a device (opening a FIFO would block)
        if not statmod.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, NOT_REGULAR_ERROR, path)
        size = st.st_size
    if kind is None or fmt is None:
        kind, fmt = models.kind_and_format(path)
    out: dict[str, Any] = {"kind": kind, "format": fmt, "model_type": None, "base_model": None,
                           "width": None, "height": None, "sha256_source": None, "model_info": None}
    errors: list[str] = []
    want: set[str] | None = None if (kind == "model" or all_hashes) else {"SHA256"}
    if fmt == "dfsn":
        try:
            header = read_header(path)
        except DfsnError as exc:
            errors.append(str(exc))
            hashes = hash_file(path, want=want, progress=progress)
        else:
            hashes = hash_file(path, offset=header["model_offset"], progress=progress,
                               want={"AutoV1", "AutoV1_A1111", "AutoV3", "CRC32", "BLAKE3"})
            hashes["SHA256"], hashes["AutoV2"] = header["sha256"], header["sha256"][:10]
            out["sha256_source"] = "header"
    else:
        hashes = hash_file(path, want=want, progress=progress)
        out["sha256_source"] = "file"
    for key, column in HASH_COLUMNS.items():
        out[column] = hashes.get(key)
    if hashes.get("error") and (kind == "model" or all_hashes) and fmt in ("safetensors", None, "dfsn"):
        errors.append(hashes["error"])
    if kind == "model":
        facts = models.classify_model(path, fmt, size, hashes.get("AutoV3_full"))
        out["model_type"], out["base_model"] = facts["model_type"], facts["base_model"]
        if facts["error"]:
            errors.append(facts["error"])
        info = facts["info"]
        if info:
            out["model_info"] = info
            if info.get("sshs_status") in ("stale", "bogus"):
                log.warning("%s: embedded sshs_model_hash %s is %s (computed AutoV3 %s)", path,
                            info.get("sshs_model_hash"), info["sshs_status"], hashes.get("AutoV3"))
    elif fmt in models.IMAGE_FORMATS:
        out["width"], out["height"] = models.image_size(path)
    out["error"] = "; ".join(dict.fromkeys(errors)) or None
    return out


def model_info_row(file_id: int, info: dict[str, Any]) -> dict[str, Any]:
    """A ``model_info`` row from ``describe_file``'s ``model_info`` dict (JSON-encodes nested values)."""
    row: dict[str, Any] = {"file_id": file_id}
    known = {"tensor_count", "metadata_json", "network_module", "network_dim", "network_alpha",
             "network_args", "conv_dim", "conv_alpha", "algo", "dora_wd", "output_name",
             "base_model_version", "sd_model_name", "training_comment", "modelspec",
             "modelspec_architecture", "modelspec_title", "tag_count", "top_tags",
             "sshs_model_hash", "sshs_status"}
    facts = {}
    for key, value in info.items():
        if key in known:
            row[key] = json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else (
                None if value is None else (value if isinstance(value, (int, float)) and not isinstance(value, bool)
                                            else str(value)))
        else:
            facts[key] = value
    row["facts"] = json.dumps(facts, ensure_ascii=False, default=str) if facts else None
    return row


# ---- the walk ------------------------------------------------------------------------------

def _database_files(db: sqlite_utils.Database) -> set[str]:
    files = set()
    for row in db.execute("PRAGMA database_list").fetchall():
        if row[2]:
            real = os.path.realpath(row[2])
            files.update({real, real + "-wal", real + "-shm", real + "-journal"})
    return files


_entry_name = operator.attrgetter("name")


def walk(root: str, skip: set[str] = frozenset()) -> Iterable[tuple[str, os.stat_result]]:
    """(path, stat) of every regular file under ``root``; symlinks are not followed.

    One ``scandir`` per folder and one ``lstat`` per regular file (the entry type comes from the
    directory listing); folders and files in name order.
    """
    skip_names = {os.path.basename(p) for p in skip}
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=_entry_name)
        except OSError as exc:
            log.warning("cannot read %s: %s", exc.filename or folder, exc.strerror)
            continue
        folders = []
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    folders.append(entry.path)
                    continue
                if not entry.is_file(follow_symlinks=False):
                    continue
                st = entry.stat(follow_symlinks=False)
            except OSError as exc:
                log.warning("cannot stat %s: %s", entry.path, exc.strerror)
                continue
            if not statmod.S_ISREG(st.st_mode):
                continue
            if entry.name in skip_names and os.path.realpath(entry.path) in skip:
                continue
            yield entry.path, st
        stack.extend(reversed(folders))


def _under(root: str) -> tuple[str, str]:
    prefix = root.rstrip(os.sep) + os.sep
    return prefix, prefix[:-1] + chr(ord(os.sep) + 1)


def _stat_key(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def scan_library(
    db: sqlite_utils.Database,
    roots: Iterable[str | os.PathLike],
    *,
    force_rescan: bool = False,
    max_file_size: int | None = DEFAULT_MAX_FILE_SIZE,
    one_reader: bool = False,
    workers: int | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Scan ``roots`` into ``files``/``model_info``; return the summary.

    Summary keys: ``files new changed moved hashed_bytes skipped errors`` (the ``--json`` contract),
    plus ``unchanged``, ``missing``, ``moves`` ([{"from", "to"}]), ``growing``, ``error_files``
    (paths, as ``files.path`` shows them) and ``file_errors`` ({path: error} for files that got no
    row to hold their error). ``progress(advance=n)`` / ``progress(total=n)`` reports hashed bytes.
    """
    disk_roots = [os.path.abspath(os.fspath(r)) for r in roots]
    for root in disk_roots:
        if not os.path.isdir(root):
            raise NotADirectoryError(root)
    roots = [shown(root) for root in disk_roots]  # as the ``root`` column holds them
    limit = max_file_size if max_file_size is not None else DEFAULT_MAX_FILE_SIZE
    now = utc_now()
    skip = _database_files(db)
    conn = db.conn
    conn.execute("PRAGMA synchronous=NORMAL")  # WAL: durable at checkpoints, no fsync per file
    files = conn.cursor()  # rows by column name: row["path"]
    files.row_factory = sqlite3.Row
    summary: dict[str, Any] = {"files": 0, "new": 0, "changed": 0, "moved": 0, "hashed_bytes": 0,
                               "skipped": 0, "errors": 0, "unchanged": 0, "missing": 0,
                               "moves": [], "growing": [], "error_files": [], "file_errors": {}}
    # 1. Walk every root; remember what the table knew under them. The unchanged files (same
    #    path, device, inode, size and mtime, already hashed or not to be hashed) are found by
    #    one set intersection against one query per root; only the rest are looked at one by one.
    #    Files are keyed by their stored text (``real`` maps it back where the name is not UTF-8).
    seen: dict[str, tuple[str, os.stat_result]] = {}
    seen_keys: set[tuple[str, int, int, int, int]] = set()
    real: dict[str, bytes] = {}
    for root, disk_root in zip(roots, disk_roots):
        for found_path, st in walk(disk_root, skip):
            path, raw = stored_path(found_path)
            if path in seen:
                if real.get(path) != raw:  # two names, one text: keep the first, say so for the other
                    _refuse(summary, path, CLASH_ERROR)
                continue
            if raw is not None:
                real[path] = raw
            seen[path] = (root, st)
            seen_keys.add((path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
    summary["files"] = len(seen)
    cached: dict[tuple[str, int, int, int, int], tuple] = {}
    all_known: dict[str, int] = {}
    for root in roots:
        found = conn.execute(
            "SELECT path, device, inode, size, mtime_ns, id, kind, _hashed_at IS NOT NULL FROM files"
            " WHERE path >= ? AND path < ?", _under(root)).fetchall()
        all_known.update((row[0], row[5]) for row in found)
        if not force_rescan:
            cached.update((row[:5], row) for row in found
                          if row[7] or row[6] not in HASHED_KINDS or row[3] > limit)
        del found
    unchanged_keys = seen_keys & cached.keys() if cached else set()
    summary["unchanged"] = len(unchanged_keys)
    touched: list[tuple[str, str, int]] = []
    summary["skipped"] += sum(1 for key in unchanged_keys if key[3] > limit and cached[key][6] in HASHED_KINDS)
    if len(unchanged_keys) <= 1000:
        touched.extend((now, seen[key[0]][0], cached[key][5]) for key in unchanged_keys)
    del cached
    if unchanged_keys:
        unchanged_paths = {key[0] for key in unchanged_keys}
        rest = [path for path in seen if path not in unchanged_paths]  # in the walk's order
        del unchanged_paths
    else:
        rest = list(seen)
    known: dict[str, sqlite3.Row] = {}
    if rest:
        rest_set = set(rest)
        for root in roots if len(rest) > 200 else ():
            for row in files.execute(_SELECT_FILES + "WHERE path >= ? AND path < ?", _under(root)).fetchall():
                if row["path"] in rest_set:
                    known[row["path"]] = row
        if len(rest) <= 200:
            for path in rest:
                if path in all_known:
                    for row in files.execute(_SELECT_FILES + "WHERE id = ?", (all_known[path],)).fetchall():
                        known[path] = row

    def needs_hash(kind: str, size: int) -> bool:
        return kind in HASHED_KINDS and size <= limit

    def vanished(row: sqlite3.Row) -> bool:
        return row["path"] not in seen and not os.path.lexists(disk_path(row["path"], row["path_bytes"]))

    def on_disk(path: str) -> str:
        return disk_path(path, real.get(path))

    jobs: list[dict[str, Any]] = []

    def place(path: str) -> None:
        """Compare one walked file with its row: unchanged, changed, moved or new; queue its hashing."""
        root, st = seen[path]
        row = known.get(path)
        dev, ino, size, mtime = _stat_key(st)
        if row is not None and (row["device"], row["inode"], row["size"], row["mtime_ns"]) == (dev, ino, size, mtime):
            hashed = row["_hashed_at"] is not None or not needs_hash(row["kind"], size)
            if hashed and not force_rescan:  # pragma: no cover - found by the bulk comparison
                summary["unchanged"] += 1
                if row["kind"] in HASHED_KINDS and size > limit:
                    summary["skipped"] += 1
                touched.append((now, root, row["id"]))
                return
            touched.append((now, root, row["id"]))
            if needs_hash(row["kind"], size):
                jobs.append({"id": row["id"], "path": on_disk(path), "shown": path, "kind": row["kind"],
                             "format": row["format"], "stat": (dev, ino, size, mtime),
                             "fingerprint": row["fingerprint"]})
            return
        kind, fmt = models.kind_and_format(on_disk(path))
        if row is not None:  # same path, different content
            summary["changed"] += 1
            update = dict(_CLEARED, size=size, mtime_ns=mtime, device=dev, inode=ino, kind=kind,
                          format=fmt, root=root, missing=0, _last_seen=now)
            _update(conn, row["id"], update)
            file_id, fp = row["id"], None
            conn.execute("DELETE FROM model_info WHERE file_id = ?", (file_id,))
        else:
            moved = None
            for cand in files.execute(
                    _SELECT_FILES + "WHERE device = ? AND inode = ? AND size = ? AND mtime_ns = ?",
                    (dev, ino, size, mtime)).fetchall():
                if vanished(cand):
                    moved = cand
                    break
            fp = None
            if moved is None and kind in HASHED_KINDS:
                try:
                    fp = fingerprint(on_disk(path), size)
                except OSError as exc:
                    log.warning("cannot read %s: %s", path, exc.strerror)
                for cand in files.execute(_SELECT_FILES + "WHERE size = ? AND fingerprint = ?",
                                          (size, fp)).fetchall() if fp else []:
                    if vanished(cand):
                        moved = cand
                        break
            if moved is not None:
                summary["moved"] += 1
                summary["moves"].append({"from": moved["path"], "to": path})
                log.info("moved: %s -> %s", moved["path"], path)
                known.pop(moved["path"], None)
                all_known.pop(moved["path"], None)
                _update(conn, moved["id"], {"path": path, "path_bytes": real.get(path), "root": root,
                                            "device": dev, "inode": ino, "mtime_ns": mtime, "missing": 0,
                                            "_last_seen": now})
                if moved["_hashed_at"] is None and needs_hash(moved["kind"], size):
                    jobs.append({"id": moved["id"], "path": on_disk(path), "shown": path, "kind": moved["kind"],
                                 "format": moved["format"], "stat": (dev, ino, size, mtime),
                                 "fingerprint": moved["fingerprint"]})
                elif moved["kind"] in HASHED_KINDS and size > limit:
                    summary["skipped"] += 1
                return
            summary["new"] += 1
            file_id = _insert(conn, "files", {
                "path": path, "path_bytes": real.get(path), "root": root, "size": size, "mtime_ns": mtime, "device": dev, "inode": ino,
                "kind": kind, "format": fmt, "fingerprint": fp, "missing": 0,
                "_first_seen": now, "_last_seen": now,
            })
        if needs_hash(kind, size):
            jobs.append({"id": file_id, "path": on_disk(path), "shown": path, "kind": kind, "format": fmt,
                         "stat": (dev, ino, size, mtime), "fingerprint": fp})
        elif kind in HASHED_KINDS:
            summary["skipped"] += 1
            log.info("not hashed (larger than max_file_size %d): %s", limit, path)

    with conn:
        for path in rest:
            try:
                place(path)
            except Exception as exc:  # one file that cannot be recorded must not stop the scan
                _refuse(summary, path, f"cannot record: {exc}")
        gone = [file_id for path, file_id in all_known.items() if path not in seen]
        if len(touched) > 1000 or len(unchanged_keys) > 1000:  # one statement per root beats one per file
            gone_json = json.dumps(gone)
            for root in roots:
                # root and missing are set only where they differ: setting an indexed column to the
                # value it has still rewrites its index entry
                where = " WHERE path >= ? AND path < ? AND id NOT IN (SELECT value FROM json_each(?))"
                conn.execute("UPDATE files SET _last_seen = ?" + where, (now, *_under(root), gone_json))
                conn.execute("UPDATE files SET root = ?" + where + " AND root IS NOT ?",
                             (root, *_under(root), gone_json, root))
                conn.execute("UPDATE files SET missing = 0" + where + " AND missing IS NOT 0",
                             (*_under(root), gone_json))
        else:
            conn.executemany("UPDATE files SET _last_seen = ?, root = ?, missing = 0 WHERE id = ?", touched)
        conn.executemany("UPDATE files SET missing = 1 WHERE id = ?", [(i,) for i in gone])
        summary["missing"] = len(gone)

    # 2. Hash, several files at once (one with one_reader); only this thread writes the database.
    if progress is not None:
        progress(total=sum(job["stat"][2] for job in jobs))
    lock = threading.Lock()

    def advance(n: int) -> None:
        if progress is not None:
            with lock:
                progress(advance=n)

    def run(job: dict[str, Any]) -> dict[str, Any]:
        path, (dev, ino, size, mtime) = job["path"], job["stat"]
        before = os.stat(path)
        if _stat_key(before) != (dev, ino, size, mtime):
            raise StillWritten(path)
        try:
            facts = describe_file(path, kind=job["kind"], fmt=job["format"], size=size, progress=advance)
        except FileChangedError:
            raise StillWritten(path) from None
        after = os.stat(path)
        if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
            raise StillWritten(path)
        if job["fingerprint"] is None:
            facts["fingerprint"] = fingerprint(path, size)
        return facts

    max_workers = 1 if one_reader else max(1, workers or os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="hash") as pool:
        futures = {pool.submit(run, job): job for job in jobs}
        try:
            pending = 0
            for future in as_completed(futures):
                _record(conn, futures[future], future, summary)
                pending += futures[future]["stat"][2] + 4096
                if pending > 256 << 20:  # commit every ~256 MiB of hashing or so
                    conn.commit()
                    pending = 0
        except BaseException:
            for future in futures:
                future.cancel()
            raise
        finally:
            conn.commit()
    summary["errors"] = len(summary["error_files"])
    return summary


def _update(conn: Any, file_id: int, values: dict[str, Any]) -> None:
    assignments = ", ".join(f"[{column}] = ?" for column in values)
    conn.execute(f"UPDATE files SET {assignments} WHERE id = ?", (*values.values(), file_id))


def _insert(conn: Any, table: str, values: dict[str, Any], replace: bool = False) -> int:
    verb = "INSERT OR REPLACE" if replace else "INSERT"
    names = ", ".join(f"[{column}]" for column in values)
    marks = ", ".join("?" for _ in values)
    return conn.execute(f"{verb} INTO [{table}] ({names}) VALUES ({marks})", tuple(values.values())).lastrowid


def _refuse(summary: dict[str, Any], path: str, error: str) -> None:
    """A walked file that has no row to hold its error: the summary says it."""
    log.warning("%s: %s", path, error)
    summary["error_files"].append(path)
    summary["file_errors"][path] = error


def _record(conn: Any, job: dict[str, Any], future: Any, summary: dict[str, Any]) -> None:
    path, file_id = job["shown"], job["id"]
    try:
        facts = future.result()
    except StillWritten:
        summary["skipped"] += 1
        summary["growing"].append(path)
        log.warning("skipped, %s: %s", GROWING_ERROR, path)
        _update(conn, file_id, {"error": GROWING_ERROR, "_hashed_at": None})
        return
    except Exception as exc:  # one unreadable file must not stop the scan
        summary["error_files"].append(path)
        log.info("cannot hash %s: %s", path, exc)
        message = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        _update(conn, file_id, {"error": f"cannot hash: {message}", "_hashed_at": None})
        return
    info = facts.pop("model_info")
    facts["_hashed_at"] = utc_now()
    _update(conn, file_id, facts)
    summary["hashed_bytes"] += job["stat"][2]
    conn.execute("DELETE FROM model_info WHERE file_id = ?", (file_id,))
    if info:
        _insert(conn, "model_info", model_info_row(file_id, info), replace=True)
    if facts["error"]:
        summary["error_files"].append(path)
        log.info("%s: %s", path, facts["error"])
