"""Container readers: pull every metadata carrier out of an image/video file without decoding pixels.

``read_containers(data)`` is pure (bytes in, :class:`Containers` out). It never raises on bad
input: problems are collected in ``errors`` and the caller decides what to store.
"""
from __future__ import annotations

import gzip
import io
import logging
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

from matcher.sniff import sniff_magic

from .budget import allow_pixels

log = logging.getLogger(__name__)

#: cap on one decompressed text chunk (zTXt/iTXt) and on the stealth payload
MAX_TEXT_BYTES = 16 * 1024 * 1024
#: cap on all the decompressed text chunks of one file together
MAX_TOTAL_TEXT_BYTES = 32 * 1024 * 1024
#: at most this many pixels are decoded to look for alpha-channel stealth metadata
MAX_STEALTH_PIXELS = 40_000_000

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass
class Containers:
    """Everything found in one file, raw but decoded to text."""

    format: str | None = None          # png, jpeg, webp, gif, mp4, webm, ... (sniffed)
    width: int | None = None
    height: int | None = None
    has_alpha: bool = False
    texts: dict[str, str] = field(default_factory=dict)   # PNG text chunks, video tags, GIF/JPEG comment
    exif: dict[str, Any] = field(default_factory=dict)    # decoded EXIF strings (UserComment, Make, ...)
    exif_raw: bytes | None = None                         # raw EXIF block (for EXIF facts)
    xmp: str | None = None
    stealth: str | None = None
    errors: list[str] = field(default_factory=list)
    name: str | None = None  # the file's name: tells apart the save nodes of a ComfyUI graph


def sniff_format(head: bytes) -> str | None:
    """The media readers' view of ``matcher.sniff.sniff_magic``: a QuickTime file is read as mp4."""
    fmt = sniff_magic(head)
    return "mp4" if fmt == "mov" else fmt


def decode_latin1_or_utf8(raw: bytes) -> str:
    """tEXt is Latin-1 by the PNG spec, but many tools store UTF-8 there: try UTF-8 first."""
    raw = raw.rstrip(b"\x00")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def fix_mojibake(text: str) -> str:
    """A str that Pillow decoded as Latin-1 but that holds UTF-8 bytes."""
    try:
        return text.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return text


def _inflate(data: bytes, errors: list[str], what: str, room: list[int] | None = None) -> bytes | None:
    """``data`` decompressed, or None (with the reason in ``errors``) past the per-chunk cap or past
    ``room[0]``, the bytes this file may still decompress (what was decompressed is taken from it,
    kept or not)."""
    limit = MAX_TEXT_BYTES if room is None else min(MAX_TEXT_BYTES, room[0])
    if limit <= 0:
        errors.append(f"{what}: compressed text past {MAX_TOTAL_TEXT_BYTES} bytes in all, ignored")
        return None
    d = zlib.decompressobj()
    try:
        out = d.decompress(data, limit)
    except zlib.error as exc:
        errors.append(f"{what}: bad compressed text ({exc})")
        return None
    if room is not None:
        room[0] -= len(out)
    if d.unconsumed_tail:
        errors.append(f"{what}: decompressed text larger than {limit} bytes, ignored")
        return None
    return out


def decode_user_comment(raw: bytes | str | None, errors: list[str] | None = None) -> str | None:
    """EXIF UserComment: 8-byte charset prefix (UNICODE/ASCII/JIS/undefined) or none at all."""
    if raw is None:
        return None
    errors = errors if errors is not None else []
    if isinstance(raw, str):
        return fix_mojibake(raw).strip("\x00") or None
    if isinstance(raw, (tuple, list)):
        try:
            raw = bytes(raw)
        except (TypeError, ValueError):
            return None
    prefix, body = raw[:8], raw[8:]
    if prefix == b"UNICODE\x00":
        if body[:2] == b"\xfe\xff":
            enc, body = "utf-16-be", body[2:]
        elif body[:2] == b"\xff\xfe":
            enc, body = "utf-16-le", body[2:]
        else:
            # zero bytes sit at even offsets for BE ASCII-range text, at odd offsets for LE
            sample = body[:2000]
            even = sample[0::2].count(0)
            odd = sample[1::2].count(0)
            enc = "utf-16-le" if odd > even else "utf-16-be"
        if len(body) % 2:
            body = body[:-1]
        try:
            text = body.decode(enc)
        except UnicodeDecodeError:
            errors.append("invalid UTF-16 in EXIF UserComment")
            text = body.decode(enc, "replace")
    elif prefix == b"ASCII\x00\x00\x00":
        text = body.decode("utf-8", "replace")
    elif prefix == b"JIS\x00\x00\x00\x00\x00":
        text = body.decode("shift_jis", "replace")
    elif prefix == b"\x00" * 8:
        text = decode_latin1_or_utf8(body)
    else:
        text = decode_latin1_or_utf8(raw)
    text = text.strip("\x00")
    return text or None


# ---------------------------------------------------------------- PNG
_WANTED_CHUNKS = frozenset((b"IHDR", b"tRNS", b"tEXt", b"zTXt", b"iTXt", b"eXIf", b"IEND"))
_CHUNK_HEAD = struct.Struct(">I4s")
_IHDR_SIZE = struct.Struct(">II")


def read_png(data: bytes, c: Containers) -> None:
    pos = 8
    n = len(data)
    exif_block = None
    room = [MAX_TOTAL_TEXT_BYTES]  # decompressed text left for this file
    unpack_from = _CHUNK_HEAD.unpack_from
    wanted = _WANTED_CHUNKS
    while pos + 8 <= n:
        length, ctype = unpack_from(data, pos)
        body_start = pos + 8
        body_end = body_start + length
        if body_end > n:
            c.errors.append(f"truncated PNG chunk {ctype.decode('latin-1', 'replace')}")
            if ctype not in (b"tEXt", b"iTXt", b"zTXt"):
                break
            body_end = n
        pos = body_end + 4
        if ctype == b"IDAT" or ctype not in wanted:
            continue  # image data: never copied
        if ctype == b"tEXt":  # key and value sliced straight from ``data`` (no copy of the whole body)
            k = data.find(b"\x00", body_start, body_end)
            if k < 0:
                c.texts[data[body_start:body_end].decode("latin-1")] = ""
                continue
            c.texts[data[body_start:k].decode("latin-1")] = decode_latin1_or_utf8(data[k + 1:body_end])
            continue
        if ctype == b"IHDR" and length >= 13:
            c.width, c.height = _IHDR_SIZE.unpack_from(data, body_start)
            c.has_alpha = data[body_start + 9] in (4, 6)
            continue
        body = data[body_start:body_end]
        if ctype == b"tRNS":
            c.has_alpha = True
        elif ctype == b"zTXt":
            key, _, rest = body.partition(b"\x00")
            raw = _inflate(rest[1:], c.errors, "zTXt", room)
            if raw is not None:
                c.texts[key.decode("latin-1")] = decode_latin1_or_utf8(raw)
        elif ctype == b"iTXt":
            key, _, rest = body.partition(b"\x00")
            if len(rest) < 2:
                continue
            compressed = rest[0] == 1
            rest = rest[2:]
            _lang, _, rest = rest.partition(b"\x00")
            _tkey, _, value = rest.partition(b"\x00")
            if compressed:
                value = _inflate(value, c.errors, "iTXt", room)
                if value is None:
                    continue
            k = key.decode("latin-1")
            text = value.decode("utf-8", "replace").rstrip("\x00")
            if k == "XML:com.adobe.xmp":
                c.xmp = text
            else:
                c.texts[k] = text
        elif ctype == b"eXIf":
            exif_block = body
        elif ctype == b"IEND":
            break
    if exif_block:
        _read_exif_block(exif_block, c)


# ---------------------------------------------------------------- EXIF
_EXIF_IFD = 0x8769
_TAG_USERCOMMENT = 0x9286
_TAG_IMAGEDESC = 0x010E
_TAG_MAKE = 0x010F
_TAG_MODEL = 0x0110
_TAG_SOFTWARE = 0x0131
_TAG_ARTIST = 0x013B
_TAG_XPCOMMENT = 0x9C9C


def _read_exif_block(block: bytes, c: Containers) -> None:
    from PIL import Image

    if block.startswith(b"Exif\x00\x00"):
        block = block[6:]
    c.exif_raw = block
    exif = Image.Exif()
    try:
        exif.load(block)
    except Exception as exc:  # Pillow raises many types on broken EXIF
        c.errors.append(f"bad EXIF ({type(exc).__name__})")
        return
    _collect_exif(exif, c)


def _collect_exif(exif, c: Containers) -> None:
    out: dict[str, Any] = {}
    try:
        ifd0 = dict(exif)
    except Exception:
        ifd0 = {}
    try:
        sub = dict(exif.get_ifd(_EXIF_IFD))
    except Exception as exc:
        c.errors.append(f"bad EXIF sub-IFD ({type(exc).__name__})")
        sub = {}
    uc = sub.get(_TAG_USERCOMMENT)
    if uc is None and _TAG_USERCOMMENT in ifd0:
        uc = ifd0.get(_TAG_USERCOMMENT)
        out["UserCommentLocation"] = "IFD0"
    if uc is not None:
        text = decode_user_comment(uc, c.errors)
        if text:
            out["UserComment"] = text
    for tag, name in ((_TAG_IMAGEDESC, "ImageDescription"), (_TAG_MAKE, "Make"), (_TAG_MODEL, "Model"),
                      (_TAG_SOFTWARE, "Software"), (_TAG_ARTIST, "Artist")):
        v = ifd0.get(tag)
        if isinstance(v, bytes):
            v = decode_latin1_or_utf8(v)
        if isinstance(v, str):
            v = fix_mojibake(v).strip("\x00").strip()
            if v:
                out[name] = v
    xpc = ifd0.get(_TAG_XPCOMMENT)
    if isinstance(xpc, (bytes, tuple)):
        try:
            out["XPComment"] = bytes(xpc).decode("utf-16-le", "replace").strip("\x00")
        except Exception:
            pass
    c.exif.update(out)


def _read_pillow(data: bytes, c: Containers) -> None:
    """JPEG / WebP / GIF / TIFF: Pillow opens lazily (headers only, no pixel decode)."""
    from PIL import Image

    try:
        im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        c.errors.append(f"decompression bomb: {exc}")
        return
    except Exception as exc:
        c.errors.append(f"unreadable image ({type(exc).__name__})")
        return
    with im:
        c.width, c.height = im.size
        c.has_alpha = im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info
        info = im.info
        comment = info.get("comment")
        if isinstance(comment, bytes):
            comment = decode_latin1_or_utf8(comment)
        if comment:
            c.texts["comment"] = comment.strip("\x00")
        xmp = info.get("xmp") or info.get("XML:com.adobe.xmp")
        if isinstance(xmp, bytes):
            xmp = xmp.decode("utf-8", "replace")
        if xmp:
            c.xmp = xmp
        raw = info.get("exif")
        if isinstance(raw, bytes) and raw:
            c.exif_raw = raw[6:] if raw.startswith(b"Exif\x00\x00") else raw
        try:
            exif = im.getexif()
        except Exception as exc:
            c.errors.append(f"bad EXIF ({type(exc).__name__})")
            return
        _collect_exif(exif, c)
    if c.format == "jpeg" and not c.xmp:
        c.xmp = _jpeg_xmp(data)


def _jpeg_xmp(data: bytes) -> str | None:
    i = data.find(b"<x:xmpmeta")
    if i < 0:
        i = data.find(b"<?xpacket begin")
    if i < 0:
        return None
    j = data.find(b"</x:xmpmeta>", i)
    if j < 0:
        return None
    return data[i:j + 12].decode("utf-8", "replace")


# ---------------------------------------------------------------- video
def _read_mp4(path_or_data, c: Containers) -> None:
    try:
        import mutagen.mp4
    except ImportError:  # pragma: no cover
        return
    try:
        f = mutagen.mp4.MP4(io.BytesIO(path_or_data) if isinstance(path_or_data, bytes) else path_or_data)
    except Exception as exc:
        c.errors.append(f"unreadable MP4 ({type(exc).__name__})")
        return
    tags = f.tags or {}
    for key, values in tags.items():
        vals = values if isinstance(values, list) else [values]
        texts = []
        for v in vals:
            if isinstance(v, bytes):
                texts.append(v.decode("utf-8", "replace"))
            elif isinstance(v, str):
                texts.append(v)
        if not texts:
            continue
        name = key.split(":")[-1].lstrip("\xa9")
        name = {"cmt": "comment", "des": "description", "nam": "title", "too": "encoder"}.get(name, name)
        c.texts[name] = "\n".join(texts)


def _ebml_vint(data: bytes, pos: int, keep_marker: bool) -> tuple[int, int]:
    first = data[pos]
    length = 1
    mask = 0x80
    while length <= 8 and not first & mask:
        mask >>= 1
        length += 1
    if length > 8:
        raise ValueError("bad vint")
    value = first if keep_marker else first & (mask - 1)
    for b in data[pos + 1:pos + length]:
        value = (value << 8) | b
    return value, pos + length


def _read_webm(data: bytes, c: Containers) -> None:
    """Matroska/WebM SimpleTag (TagName 0x45A3 / TagString 0x4487) by a bounded element walk."""
    containers = {0x18538067, 0x1254C367, 0x7373, 0x67C8}  # Segment, Tags, Tag, SimpleTag
    pos, n = 0, len(data)
    name = None
    steps = 0
    try:
        while pos < n and steps < 200_000:
            steps += 1
            eid, p = _ebml_vint(data, pos, True)
            size, p = _ebml_vint(data, p, False)
            if eid in containers:
                pos = p
                continue
            if eid == 0x45A3:
                name = data[p:p + size].decode("utf-8", "replace")
            elif eid == 0x4487 and name:
                c.texts[name.lower()] = data[p:p + size].decode("utf-8", "replace")
                name = None
            if size > n:  # unknown-size cluster etc.
                break
            pos = p + size
    except (ValueError, IndexError):
        pass


# ---------------------------------------------------------------- stealth
def read_stealth(image) -> str | None:
    """A1111/Forge/NovelAI "stealth pnginfo": bits in the alpha (or RGB) LSBs, column-major."""
    import numpy as np

    if image.mode != "RGBA":
        return None
    w, h = image.size
    if w * h > MAX_STEALTH_PIXELS:
        return None
    arr = np.asarray(image)
    alpha = (arr[:, :, 3] & 1).T.reshape(-1)   # column-major order
    sig_alpha = "stealth_pnginfo", "stealth_pngcomp"
    def take(bits: np.ndarray, nbits: int, start: int) -> bytes:
        seg = bits[start:start + nbits]
        return np.packbits(seg).tobytes()
    mode = None
    if len(alpha) >= 15 * 8:
        sig = take(alpha, 15 * 8, 0).decode("latin-1")
        if sig in sig_alpha:
            mode = sig
    if not mode:
        return None
    pos = 15 * 8
    if len(alpha) < pos + 32:
        return None
    length = int.from_bytes(take(alpha, 32, pos), "big")
    pos += 32
    if length <= 0 or length > len(alpha) - pos or length > MAX_TEXT_BYTES * 8:
        return None
    payload = take(alpha, length, pos)
    if mode == "stealth_pngcomp":
        try:
            d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            payload = d.decompress(payload, MAX_TEXT_BYTES)
        except zlib.error:
            return None
    return payload.decode("utf-8", "replace")


def _stealth_from_data(data: bytes, c: Containers) -> None:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.mode not in ("RGBA", "LA", "PA", "P"):
                return
            if im.width * im.height > MAX_STEALTH_PIXELS:
                return
            allow_pixels(im.width * im.height * 8)  # the decode and its RGBA copy, within the file's budget
            im.load()
            rgba = im if im.mode == "RGBA" else im.convert("RGBA")
            text = read_stealth(rgba)
    except Image.DecompressionBombError as exc:
        c.errors.append(f"decompression bomb: {exc}")
        return
    except Exception as exc:
        c.errors.append(f"pixel data unreadable ({type(exc).__name__})")
        return
    if text:
        c.stealth = text


# ---------------------------------------------------------------- entry
def read_containers(data: bytes, *, stealth: str = "auto") -> Containers:
    """Read every metadata carrier from ``data``.

    ``stealth``: "auto" decodes alpha pixels only when the file has an alpha channel and no
    generation text was found; "always"/"never" force it.
    """
    c = Containers()
    if not data:
        c.errors.append("empty file")
        return c
    c.format = sniff_format(data[:16])
    try:
        if c.format == "png":
            read_png(data, c)
        elif c.format in ("jpeg", "webp", "gif", "tiff"):
            _read_pillow(data, c)
        elif c.format == "mp4":
            _read_mp4(data, c)
        elif c.format == "webm":
            _read_webm(data, c)
        elif c.format is None:
            c.errors.append("not a recognised image or video format")
            return c
    except Exception as exc:  # a reader bug must never stop a run
        log.debug("container read failed", exc_info=True)
        c.errors.append(f"container read failed ({type(exc).__name__}: {exc})"[:300])
    if c.format in ("png", "webp") and stealth != "never":
        want = stealth == "always" or (c.has_alpha and not _has_generation_text(c))
        if want:
            _stealth_from_data(data, c)
    return c


_GEN_KEYS = {"parameters", "prompt", "workflow", "invokeai_metadata", "sd-metadata", "Dream", "sui_image_params",
             "generation_data", "Comment", "Description"}


def _has_generation_text(c: Containers) -> bool:
    return bool(_GEN_KEYS & set(c.texts)) or "UserComment" in c.exif


__all__ = ["Containers", "read_containers", "sniff_format", "decode_user_comment", "read_stealth",
           "decode_latin1_or_utf8", "fix_mojibake", "MAX_TEXT_BYTES", "gzip"]
