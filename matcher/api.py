"""The Python API: documented functions for scripting a collection, over the code the CLI runs.

Import them from ``matcher`` (loaded on first use, so ``import matcher`` stays cheap)::

    from matcher import (extract_comprehensive_metadata, find_metadata_text_file,
                         cross_reference_with_civitai, process_orphaned_media)

Each is a thin wrapper: ``extract_comprehensive_metadata`` and ``find_metadata_text_file`` are
``matcher.media``'s (what ``civitai-mirror inspect`` and ``extract`` use),
``cross_reference_with_civitai`` is the orphan-image lookup of ``civitai-mirror match``
(``matcher.orphans``), and ``process_orphaned_media`` runs that lookup for a list of files, records
hits the way ``match`` does and, given a destination, asks the sorter where they would go.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

from crawler.clock import utc_now
from matcher import media, orphans
from matcher.fsnames import shown
from matcher.hashing import sha256_file
from matcher.plan import plan_moves, usable_match
from matcher.results import match_row
from matcher.schema import open_library
from mirror.reader import Mirror

__all__ = ["extract_comprehensive_metadata", "find_metadata_text_file", "cross_reference_with_civitai",
           "process_orphaned_media"]


def extract_comprehensive_metadata(path: str | os.PathLike, *, keep_gps: bool = False) -> dict[str, Any]:
    """Read everything an image or video says about how it was made; never raises on bad input.

    Returns the parsed record that ``civitai-mirror inspect --json`` prints: ``path``, ``format``,
    ``image_width``/``image_height``, ``no_metadata``, ``generation_tool``, the normalised fields
    (``model_name``, ``model_hash_short``, ``steps``, ``sampler``, ``cfg_scale``, ``seed``, ``width``,
    ``height``, ``positive_raw``/``negative_raw``, ``positive_clean``/``negative_clean``, ...),
    ``loras`` (``name``, ``weight``, ``context``), ``resources`` (``kind``, ``name``, ``hash``,
    ``hash_kind``, ``weight``, ``version_id``), ``params`` (every raw parameter), ``metadata_hash``,
    ``blurhash``, ``exif`` (camera facts; GPS coordinates only with ``keep_gps=True``) and ``error``
    (why something could not be read, else None). A ``.txt``/``.json`` sidecar beside the file is
    read when the file itself holds nothing.

    Example::

        >>> from matcher import extract_comprehensive_metadata
        >>> rec = extract_comprehensive_metadata("outputs/00001.png")
        >>> rec["generation_tool"], rec["seed"], [l["name"] for l in rec["loras"]]
        ('AUTOMATIC1111', 1234, ['add_detail'])
    """
    return media.extract_comprehensive_metadata(path, keep_gps=keep_gps)


def find_metadata_text_file(image_path: str | os.PathLike) -> Path | None:
    """The metadata sidecar beside an image, or None.

    Looks for ``name.txt``, ``name.json``, then ``name.png.txt``, ``name.png.json`` (the names
    A1111's "save text", Civitai downloaders and batch tools write) in the image's folder.

    Example::

        >>> from matcher import find_metadata_text_file
        >>> find_metadata_text_file("outputs/00001.png")
        PosixPath('outputs/00001.txt')
    """
    return media.find_metadata_text_file(image_path)


def cross_reference_with_civitai(sha256_hash: str | None, blur_hash: str | None,
                                 civitai_db_path: str | os.PathLike, *, width: int | None = None,
                                 height: int | None = None, size: int | None = None) -> dict | None:
    """Find an image among the Civitai preview images of the offline mirror (``civitai.sqlite``).

    The same bytes (``sha256_hash``, compared with the previews ``crawl --images`` downloaded, of
    the same ``width``/``height``/byte ``size`` when given) is a near-certain hit (confidence
    0.9); otherwise the nearest BlurHash of a preview with the same width and height, within a
    small distance, is a low-confidence hit (0.4). Either hash may be None.

    Returns ``{image_id, version_id, model_id, url, method ("sha256" or "blurhash"), distance,
    confidence, reason}``, or None when nothing looks like it. Raises ``FileNotFoundError`` when
    ``civitai_db_path`` does not exist (build it with ``civitai-mirror build``).

    Example::

        >>> from matcher import cross_reference_with_civitai, extract_comprehensive_metadata
        >>> rec = extract_comprehensive_metadata("downloads/preview.jpeg")
        >>> hit = cross_reference_with_civitai(None, rec["blurhash"], "civitai.sqlite",
        ...                                    width=rec["image_width"], height=rec["image_height"])
        >>> hit["version_id"], hit["method"], hit["confidence"]
        (128713, 'blurhash', 0.4)
    """
    return orphans.cross_reference_with_civitai(sha256_hash, blur_hash, Mirror(_existing_db(civitai_db_path)),
                                                width=width, height=height, size=size)


def process_orphaned_media(media_files: Iterable[str | os.PathLike], dry_run: bool = False, *,
                           civitai_db_path: str | os.PathLike = "civitai.sqlite",
                           library_db_path: str | os.PathLike | None = "library.sqlite",
                           dest: str | os.PathLike | None = None, config: Any = None) -> list[dict]:
    """Look up media files that have no confident match against the mirror's preview images.

    An *orphan* is a media file without a confident match (what ``civitai-mirror sort`` leaves in
    place): no match row, no version, or confidence below 0.9 and not pinned. For each file:

    1. Files in ``library_db_path`` (scanned with ``civitai-mirror scan``) use their stored SHA256,
       size and BlurHash; a file that already has a confident match is reported as ``matched``
       and left alone. Other files (all of them when ``library_db_path`` is None or does not
       exist) are read here: SHA256 and ``extract_comprehensive_metadata``'s BlurHash and size.
    2. The lookup is ``match``'s own orphan rule (``cross_reference_with_civitai``).
    3. Unless ``dry_run``, a hit for a library file is recorded in its ``matches`` row exactly as
       ``civitai-mirror match`` records an orphan (method, confidence, reason, Civitai image id).
       A miss, a file outside the library or ``dry_run=True`` writes nothing.
    4. With ``dest``, the sorter's plan (``matcher.plan.plan_moves``, with ``config``) says where
       each library file would go (``destination``) or why it stays (``ignored_reason``); a
       BlurHash hit (confidence 0.4) is too weak to move a file, and in a dry run the new hits
       are not recorded, so the plan is the library's as it stands. Nothing is ever moved: run
       ``civitai-mirror sort --dest DEST`` for that (journaled, undoable).

    Returns one dict per input file, in order: ``path``, ``file_id`` (None outside the library),
    ``status`` (``matched`` already confident, ``found``, ``not_found``, ``missing`` no such file),
    ``version_id``, ``model_id``, ``model_name``, ``civitai_image_id``, ``method``, ``confidence``,
    ``reason``, ``recorded`` (True when written to ``matches``) and, with ``dest``,
    ``destination`` / ``ignored_reason``.

    Example::

        >>> from pathlib import Path
        >>> from matcher import process_orphaned_media
        >>> for r in process_orphaned_media(Path("outputs").glob("*.png"), dry_run=True):
        ...     print(r["status"], r["path"], r["model_name"], r["confidence"])
        found /data/outputs/a.png Juggernaut XL 0.4
        not_found /data/outputs/b.png None None
    """
    mirror = Mirror(_existing_db(civitai_db_path))
    db = None
    if library_db_path is not None and Path(library_db_path).exists():
        db = open_library(library_db_path)
    out: list[dict] = []
    writes: list[dict] = []
    now = utc_now()
    for item in media_files:
        path = Path(item).expanduser().resolve()
        entry: dict[str, Any] = {"path": str(path), "file_id": None, "status": None, "version_id": None,
                                 "model_id": None, "model_name": None, "civitai_image_id": None,
                                 "method": None, "confidence": None, "reason": None, "recorded": False}
        out.append(entry)
        row = list(db.query("select * from files where path = ?", [shown(path)])) if db is not None else []
        if row:
            row = row[0]
            entry["file_id"] = row["id"]
            current = list(db.query("select * from matches where file_id = ?", [row["id"]]))
            if current and usable_match(current[0]):
                m = current[0]
                entry.update(status="matched", version_id=m["version_id"], model_id=m["model_id"],
                             model_name=m["model_name"], civitai_image_id=m.get("civitai_image_id"),
                             method=m["hash_type"], confidence=m["confidence"], reason=m["reason"])
                continue
            info = list(db.query("select blurhash from media_info where file_id = ?", [row["id"]]))
            blur = info[0]["blurhash"] if info else None
            if blur is None and path.is_file():
                blur = extract_comprehensive_metadata(path).get("blurhash")
        elif not path.is_file():
            entry.update(status="missing", reason="no such file")
            continue
        else:
            rec = extract_comprehensive_metadata(path)
            row = {"id": None, "path": str(path), "size": path.stat().st_size,
                   "sha256": sha256_file(path),
                   "width": rec.get("image_width"), "height": rec.get("image_height")}
            blur = rec.get("blurhash")
        res = orphans.orphan_result(row, blur, mirror)
        entry.update(version_id=res["version_id"], model_id=res["model_id"], model_name=res["model_name"],
                     civitai_image_id=res.get("civitai_image_id"), method=res["hash_type"],
                     confidence=res["confidence"], reason=res["reason"],
                     status="found" if res["version_id"] is not None else "not_found")
        if res["version_id"] is not None and row["id"] is not None and not dry_run:
            writes.append(match_row(row["id"], res, now))
            entry["recorded"] = True
    if writes:
        with db.conn:
            db["matches"].upsert_all(writes, pk="file_id", alter=True)
    if dest is not None and db is not None:
        plan = plan_moves(db, dest, config)
        moves = {m.file_id: m.destination for m in plan.moves if m.file_id is not None}
        ignored = {i.file_id: i.reason for i in plan.ignored if i.file_id is not None}
        for entry in out:
            if entry["file_id"] is not None:
                entry["destination"] = moves.get(entry["file_id"])
                entry["ignored_reason"] = None if entry["destination"] else ignored.get(
                    entry["file_id"], "stays where it is")
    return out


def _existing_db(path: str | os.PathLike) -> str:
    """A database path that must exist (sqlite would otherwise create an empty file)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} does not exist; build the mirror with `civitai-mirror build DUMP`")
    return str(path)
