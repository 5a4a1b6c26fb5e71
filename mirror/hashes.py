"""Civitai's hash vocabulary, defined once: the six types, what a length says, the hash of nothing.

Lengths in hex characters: 64 = SHA256 or BLAKE3; 12 = AutoV3, else a ``SHA256[:12]`` prefix (A1111's
TI hashes, ``.pt`` LoRAs); 10 = AutoV2 (which is ``SHA256[:10]``); 8 = AutoV1 or CRC32. ``0x`` + 64
is SwarmUI's tensor hash, whose first 12 characters are the AutoV3. The SHA256 of empty input
(``E3B0C442…``) is what A1111 and kohya write for a file they could not read: Civitai ignores it.
"""
from __future__ import annotations

import re

HASH_TYPES = ("AutoV1", "AutoV2", "AutoV3", "SHA256", "CRC32", "BLAKE3")
_CANON = {t.lower(): t for t in HASH_TYPES}
_EXACT = frozenset(HASH_TYPES)

EMPTY_SHA256 = "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855"

#: Length -> the (type, is_prefix) a hash of that length can be, most likely first.
LENGTH_TYPES: dict[int, tuple[tuple[str, bool], ...]] = {
    64: (("SHA256", False), ("BLAKE3", False)),
    12: (("AutoV3", False), ("SHA256", True)),
    10: (("AutoV2", False), ("SHA256", True)),
    8: (("AutoV1", False), ("CRC32", False)),
}
#: SwarmUI writes ``0x`` + the full 64-character tensor hash; Civitai's AutoV3 is its first 12.
AUTOV3_LENGTH = 12
AUTOV3_FULL_LENGTH = 64
_HEX = re.compile(r"[0-9A-F]+")


def canonical_type(name: str) -> str | None:
    """``autov2`` -> ``AutoV2``; ``None`` for a name that is not a Civitai hash type."""
    if type(name) is str and name in _EXACT:  # Civitai's own spelling: most calls (build)
        return name
    return _CANON.get(str(name).strip().lower())


def normalize_hash(value: str) -> str:
    """Strip, drop a ``0x`` prefix (SwarmUI, keeping the AutoV3 part) and upper-case."""
    text = str(value).strip()
    if text[:2].lower() == "0x":
        text = text[2:][:AUTOV3_LENGTH]
    return text.upper()


def clean_hex(value: str | None) -> str | None:
    """Upper-case hex with any ``0x`` dropped (the whole value kept); ``None`` if it is not hex."""
    if not value:
        return None
    text = str(value).strip()
    if text[:2].lower() == "0x":
        text = text[2:]
    text = text.upper()
    return text if _HEX.fullmatch(text) else None


def types_for_length(value: str) -> list[tuple[str, bool]]:
    """The (type, is_prefix) to try for a hash, by its length; every type for an unusual length."""
    return list(LENGTH_TYPES.get(len(value), ((t, False) for t in HASH_TYPES)))


def is_empty_hash(value: str) -> bool:
    """True for the SHA256 of empty input or any prefix of it of 8 or more characters."""
    return len(value) >= 8 and EMPTY_SHA256.startswith(value.upper())
