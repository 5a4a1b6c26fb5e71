"""What a file's first bytes say it is: image and video signatures, DFSN, GGUF, torch zip/pickle, safetensors.

Pure functions of the first ``SNIFF_BYTES`` of a file (and its name, to tell torch's ``.ckpt``/``.pt``
zip and pickle files from any other).
"""
from __future__ import annotations

import os

SNIFF_BYTES = 64


def sniff_magic(head: bytes) -> str | None:
    """Image/video format from magic bytes, finely: png, jpeg, webp, gif, avif, heic, mov, mp4, webm, tiff, jxl.

    The one place that knows these signatures: ``sniff_format`` below and the media readers'
    ``matcher.media.containers.sniff_format`` are views of it. Needs the first 16 bytes.
    """
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"avif", b"avis"):
            return "avif"
        if brand in (b"heic", b"heix", b"mif1", b"msf1"):
            return "heic"
        return "mov" if head[8:10] == b"qt" else "mp4"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "webm"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if head[:4] == b"\x00\x00\x00\x0cJXL " or head[:2] == b"\xff\x0a":
        return "jxl"
    return None


#: how the scan names what ``sniff_magic`` tells apart: ISO-BMFF images count as mp4 there, and
#: TIFF/JPEG XL signatures go on to the model checks (the scan has no reader for them)
_SCAN_MEDIA = {"avif": "mp4", "heic": "mp4", "tiff": None, "jxl": None}


def sniff_format(head: bytes, name: str = "") -> str | None:
    """The format from a file's first bytes (``None`` when the bytes say nothing)."""
    fmt = sniff_magic(head)
    if fmt is not None:
        fmt = _SCAN_MEDIA.get(fmt, fmt)
        if fmt is not None:
            return fmt
    if head.startswith(b"DFSN"):
        return "dfsn"
    if head.startswith(b"GGUF"):
        return "gguf"
    ext = os.path.splitext(name)[1].lower()
    if head.startswith(b"PK\x03\x04"):
        # Torch's zip format (.ckpt/.pt/.pth/.bin); anything else zipped is just a zip.
        return ext[1:] if ext in {".ckpt", ".pt", ".pth", ".bin"} else "zip"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return ext[1:] if ext in {".ckpt", ".pt", ".pth", ".bin"} else "pickle"
    if len(head) >= 10:
        n = int.from_bytes(head[:8], "little")
        if 2 <= n < 100 * 2**20 and head[8:9] == b"{" and head[9:10] in (b'"', b"}", b" ", b"\n"):
            return "safetensors"
    return None
