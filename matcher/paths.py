"""File names that are safe on every filesystem, and the sorter's folder-name rules.

``safe_name`` turns any text (a Civitai model name, a file name found on a disk) into one path
component that Windows, macOS and Linux all accept: no separators, no ``..``, no control
characters, no reserved Windows device names (CON, NUL, COM1, ...), no trailing dots or spaces,
and at most ``max_bytes`` bytes of UTF-8. It never returns an empty string.

``base_model_folder`` is the base-model rule: Civitai's ``baseModel`` made safe with the spaces
removed (``SD 1.5`` -> ``SD1.5``, ``SDXL 1.0`` -> ``SDXL1.0``).
"""
from __future__ import annotations

import re
import unicodedata

#: Longest path component, in bytes of UTF-8 (ext4/btrfs/APFS allow 255; leave room for ``.part``
#: temp names and `` (12)`` counters).
MAX_NAME_BYTES = 200

# Characters Windows refuses in names, both slashes, and every control character (C0, DEL, C1).
_UNSAFE = re.compile(r'[<>:"/\\|?*\x00-\x1f\x7f-\x9f]')
_WINDOWS_RESERVED = {
    "CON", "PRN", "AUX", "NUL",
    *(f"COM{i}" for i in range(10)), *(f"LPT{i}" for i in range(10)),
    "COM¹", "COM²", "COM³", "LPT¹", "LPT²", "LPT³", "CONIN$", "CONOUT$",
}
_SPACES = re.compile(r"\s+")


def _truncate_utf8(text: str, max_bytes: int) -> str:
    encoded = text.encode("utf-8")
    if len(encoded) <= max_bytes:
        return text
    return encoded[:max_bytes].decode("utf-8", errors="ignore")


def is_reserved(name: str) -> bool:
    """True for Windows device names, with or without an extension (``nul.txt`` is reserved too)."""
    head = name.split(".", 1)[0].rstrip(" ").upper()
    return head in _WINDOWS_RESERVED


def safe_name(name: str | None, *, max_bytes: int = MAX_NAME_BYTES, keep_suffix: bool = False,
              replacement: str = "_") -> str:
    """One safe path component made from ``name``.

    With ``keep_suffix`` (for file names) a name that is too long is cut before its extension,
    so ``very long….safetensors`` stays a ``.safetensors`` file.
    """
    text = unicodedata.normalize("NFC", str(name or ""))
    text = _UNSAFE.sub(replacement, text)
    text = text.strip(" ")
    text = text.rstrip(". ")
    if not text:
        return replacement
    if is_reserved(text):
        text = replacement + text
    if len(text.encode("utf-8")) > max_bytes:
        suffix = ""
        if keep_suffix and "." in text[1:]:
            stem, dot, ext = text.rpartition(".")
            if stem and len(ext.encode("utf-8")) <= 16:
                suffix = dot + ext
        text = _truncate_utf8(text[: len(text) - len(suffix)], max_bytes - len(suffix.encode("utf-8")))
        text = text.rstrip(". ") or replacement
        text += suffix
    return text


def base_model_folder(base_model: str | None, default: str = "Unknown") -> str:
    """Civitai's baseModel (or the scan's detected family) as a folder name, spaces removed."""
    text = _SPACES.sub("", str(base_model or ""))
    return safe_name(text) if text else default


def split_suffix(name: str) -> tuple[str, str]:
    """``name`` as (stem, last ``.ext``): ``a.b.png`` -> ``("a.b", ".png")``; ``.env`` -> ``(".env", "")``."""
    stem, dot, ext = name.rpartition(".")
    if not stem:
        return name, ""
    return stem, dot + ext


def with_counter(name: str, counter: int, suffix_len: int | None = None) -> str:
    """``name`` with `` (counter)`` before its extension: ``a.png`` -> ``a (1).png``.

    ``suffix_len`` says how many characters at the end are the extension (for compound ones like
    ``.civitai.info``); by default the last ``.ext``.
    """
    if counter <= 0:
        return name
    if suffix_len is None:
        stem, suffix = split_suffix(name)
    else:
        stem, suffix = name[: len(name) - suffix_len], name[len(name) - suffix_len:]
    return f"{stem} ({counter}){suffix}"


# What file managers, browsers and people add to the name of a copy (checked on the stem):
# "x (copy)", "x (Copy 2)", "x - Copy", "x - Copy (3)", "x copy", "x copy 2", "x_copy", "x (1)",
# "Copy of x", "copy (2) of x". Bounded, anchored patterns: linear on any name.
_COPY_MARKER = re.compile(
    r"(?i)(?:\s*\(\s*copy(?:\s*\d{1,6})?\s*\)|\s+-\s+copy(?:\s*\(\d{1,6}\))?|\s+copy(?:\s+\d{1,6})?"
    r"|[_-]copy\d{0,6}|\s*\(\d{1,6}\))$"
    r"|^copy(?:\s*\(\d{1,6}\))?\s+of\s")


def has_copy_marker(name: str) -> bool:
    """True when a file name looks like a copy of another (``a (copy).png``, ``Copy of a.png``, ``a (1).png``)."""
    stem = split_suffix(name)[0]
    return bool(_COPY_MARKER.search(stem[:MAX_NAME_BYTES * 2]))
