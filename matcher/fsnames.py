"""File names as the disk has them, and as library.sqlite stores and shows them.

A POSIX file name is bytes; Python gives it as ``str`` with each byte that is not UTF-8 decoded
to a lone surrogate (``os.fsdecode``, "surrogateescape"). SQLite text must be UTF-8, so such a
``str`` cannot be stored as it is. The library keeps two columns:

- ``files.path``: readable text for every file. A name that is valid UTF-8 is stored as it is
  (nearly every file, unchanged from before); in any other, each undecodable byte is written as
  ``\\xNN`` (``caf\\xe9.png``). Range queries by root still work: the escape is per byte, so the
  text of a folder is a prefix of the text of every file in it.
- ``files.path_bytes``: the name's exact bytes (``os.fsencode``), only where the text is not the
  name itself; NULL otherwise. Whatever reads a row to open, move or compare the file on disk
  goes through ``disk_path`` and gets the exact name back.

So nothing is lost, Datasette and every printed line show readable text, and the common case
costs nothing. (The text of an odd name could equal a real name spelled with a literal
backslash; the scan records the second of two such files as an error instead of mixing them.)
"""
from __future__ import annotations

import os
from typing import Any


def stored_path(path: str) -> tuple[str, bytes | None]:
    """(text for ``files.path``, bytes for ``files.path_bytes`` or None when the text is the name)."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raw = os.fsencode(path)
        return raw.decode("utf-8", "backslashreplace"), raw
    return path, None


def shown(path: str | os.PathLike) -> str:
    """A path as readable, storable text (``\\xNN`` for each byte that is not UTF-8)."""
    return stored_path(os.fspath(path))[0]


def disk_path(text: str, raw: bytes | None = None) -> str:
    """The path on disk from the two columns: the exact bytes when there are any, else the text."""
    return os.fsdecode(raw) if raw else text


def row_path(row: Any) -> str:
    """``disk_path`` of a ``files`` row (a dict or an ``sqlite3.Row``; ``path_bytes`` may be absent)."""
    try:
        raw = row["path_bytes"]
    except (KeyError, IndexError):
        raw = None
    return disk_path(row["path"], raw)
