"""The hash objects every reader of a file feeds: sha256, blake3 and Civitai's CRC32.

``new_hasher(kind)`` makes one (kind ``sha256``, ``blake3`` or ``crc32``), ``hex_digest(kind, hasher)``
prints it the way Civitai does (upper-case hex; the CRC's four bytes little-endian).
``FileChangedError`` is what a reader raises when the file changes under it.
"""
from __future__ import annotations

import hashlib
import zlib
from typing import Any

import blake3

try:  # ISA-L's crc32 (carry-less multiply) is ~10x zlib's; same CRC-32, same values
    from isal.isal_zlib import crc32 as _crc32
except ImportError:  # pragma: no cover - optional speed-up
    _crc32 = zlib.crc32


class FileChangedError(OSError):
    """The file's size changed while it was read (it is still being written)."""


class _Crc32:
    def __init__(self) -> None:
        self.value = 0

    def update(self, data: Any) -> None:
        self.value = _crc32(data, self.value)


def new_hasher(kind: str) -> Any:
    return {"sha256": hashlib.sha256, "blake3": blake3.blake3, "crc32": _Crc32}[kind]()


def hex_digest(kind: str, hasher: Any) -> str:
    if kind == "crc32":  # Civitai prints the CRC's bytes little-endian
        return hasher.value.to_bytes(4, "little").hex().upper()
    return hasher.hexdigest().upper()
