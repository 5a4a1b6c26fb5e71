"""civitai.sqlite as the matcher reads it: the one hash lookup plus a few plain reads.

Versions, file names and sizes (for suggestions and resources named without a hash), the preview
``images`` (for orphan images) and where the dump is. Every read uses the column names
``mirror.schema.CIVITAI_SCHEMA`` declares; a table the file does not have yet (no mirror given,
or an empty file) reads as empty.
"""
from __future__ import annotations

from pathlib import Path

import sqlite_utils

from mirror.lookup import lookup_hash
from mirror.schema import check_database_file

#: two ``model_files.sizeKB`` values closer than this are the same size (about one byte)
_SIZE_TOLERANCE_KB = 0.001


class Mirror:
    """civitai.sqlite (a path, an open ``sqlite_utils.Database`` or None for no mirror)."""

    def __init__(self, db: sqlite_utils.Database | str | Path | None):
        if db is not None and not isinstance(db, sqlite_utils.Database):
            check_database_file(db, "civitai")  # a library given as the mirror: WrongDatabase
            db = sqlite_utils.Database(str(db))
        self.db = db
        self._tables: set[str] | None = None
        self._indexed: dict[tuple[str, str], bool] = {}
        self._versions: dict[int, dict | None] = {}

    def has(self, table: str) -> bool:
        """Whether the mirror has ``table`` (a built mirror has every table of the schema)."""
        if self.db is None:
            return False
        if self._tables is None:
            self._tables = set(self.db.table_names())
        return table in self._tables

    def indexed(self, table: str, column: str) -> bool:
        """Whether an index starts with ``column`` (size-only suggestions need one to stay fast)."""
        key = (table, column)
        if key not in self._indexed:
            self._indexed[key] = self.has(table) and any(
                ix.columns[:1] == [column] for ix in self.db.table(table).indexes)
        return self._indexed[key]

    def lookup(self, value: str, hash_type: str | None = None) -> dict | None:
        """``mirror.lookup.lookup_hash``, None when not found."""
        if self.db is None:
            return None
        found = lookup_hash(self.db, value, hash_type=hash_type)
        return found if found and found.get("version_id") is not None else None

    def version(self, version_id: int | None) -> dict | None:
        """Facts about one version (model id, names, type, base model), or None if unknown."""
        if version_id is None or not self.has("model_versions"):
            return None
        version_id = int(version_id)
        if version_id not in self._versions:
            info = None
            for v in self.db.query("select model_id, name, base_model from model_versions where id = ?",
                                   [version_id]):
                info = {"version_id": version_id, "model_id": v["model_id"], "version_name": v["name"],
                        "base_model": v["base_model"], "model_name": None, "type": None}
                if v["model_id"] is not None and self.has("models"):
                    for m in self.db.query("select name, type from models where id = ?", [v["model_id"]]):
                        info["model_name"], info["type"] = m["name"], m["type"]
            self._versions[version_id] = info
        return self._versions[version_id]

    def file_size_bytes(self, civitai_file_id: int | None) -> float | None:
        """The size of a Civitai file in bytes (from ``sizeKB``), None when unknown."""
        if civitai_file_id is None or not self.has("model_files"):
            return None
        for row in self.db.query("select sizeKB from model_files where id = ?", [civitai_file_id]):
            return row["sizeKB"] * 1024 if row["sizeKB"] is not None else None
        return None

    def files_by_name(self, names: list[str], size: int | None = None, limit: int = 5) -> list[dict]:
        """``model_files`` whose name is one of ``names`` and, when a size (bytes) is given, files of
        that exact size; best first (name and size, name, size). Each row: ``id name sizeKB
        version_id by`` (``by``: ``name+size``, ``name`` or ``size``)."""
        if not self.has("model_files"):
            return []
        select = "select id, name, sizeKB, version_id from model_files"
        found: dict[int, dict] = {}
        # exact names only, so the model_files(name) index answers (a mirror has millions of rows)
        for row in self.db.query(f"{select} where name in ({','.join('?' * len(names))}) "
                                 f"order by id limit {limit * 4}", names):
            row["by"] = "name"
            found[row["id"]] = row
        if size:
            kb = size / 1024
            for row in found.values():
                if row["sizeKB"] is not None and abs(row["sizeKB"] - kb) < _SIZE_TOLERANCE_KB:
                    row["by"] = "name+size"
            if self.indexed("model_files", "sizeKB"):
                for row in self.db.query(f"{select} where sizeKB between ? and ? order by id limit {limit * 4}",
                                         [kb - _SIZE_TOLERANCE_KB, kb + _SIZE_TOLERANCE_KB]):
                    if row["id"] not in found:
                        row["by"] = "size"
                        found[row["id"]] = row
        rank = {"name+size": 0, "name": 1, "size": 2}
        return sorted(found.values(), key=lambda r: (rank[r["by"]], r["id"]))[:limit]

    def dump_dir(self) -> Path | None:
        """The dump folder the mirror was built from, as the build recorded it."""
        if not self.has("_build_info"):
            return None
        for row in self.db.query("select value from _build_info where key = 'dump_dir'"):
            return Path(row["value"])
        return None

    def downloaded_images(self, width: int | None = None, height: int | None = None,
                          limit: int = 200) -> list[dict]:
        """Preview images ``crawl --images`` saved (``local_path``, relative to the dump), of this
        width and height when both are given; lowest id first."""
        if not self.has("images"):
            return []
        where, params = "local_path is not null", []
        if width and height:
            where, params = where + " and width = ? and height = ?", [width, height]
        return list(self.db.query(f"select * from images where {where} order by id limit {limit}", params))

    def blurhash_images(self, width: int | None = None, height: int | None = None) -> list[dict]:
        """Preview images that have a BlurHash (``hash``), of this width and height when both are given."""
        if not self.has("images"):
            return []
        if width and height:
            return list(self.db.query("select * from images where width = ? and height = ? and hash is not null",
                                      [width, height]))
        return list(self.db.query("select * from images where hash is not null"))
