"""File builders for the demo and the tests: safetensors bytes, pictures, PNG/JPEG bytes, file trees, dumps.

The one home of the code that writes sample files: ``civitai_mirror.samples`` builds the demo's
collection and dump with it, and the tests build their fixtures with it, so the two never drift
apart. Everything is deterministic for the same arguments (except the bytes a caller passes in).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import random
import struct
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, PngImagePlugin

from crawler.layout import model_path, pad

# ---------------------------------------------------------------------------------------------
# safetensors


def seeded_bytes(seed: str, count: int) -> bytes:
    """``count`` bytes that look random and depend only on ``seed``."""
    return hashlib.shake_256(seed.encode()).digest(count)


def safetensors_bytes(tensors: Mapping[str, list[int] | bytes], metadata: Mapping[str, str] | None = None,
                      dtype: str = "F16", seed: str = "", *, header_len: int | None = None) -> bytes:
    """A valid safetensors file: 8-byte LE header length, JSON header, tensor data.

    A tensor given as a shape gets ``seeded_bytes(seed + name, ...)`` of its size; one given as
    bytes is written as they are (shape: as many ``dtype`` values as fit). The header is padded
    with spaces to a multiple of 8 bytes, or to exactly ``header_len`` bytes when given."""
    width = {"F16": 2, "BF16": 2, "F32": 4}[dtype]
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    offset, blobs = 0, []
    for name, spec in tensors.items():
        if isinstance(spec, bytes):
            shape, blob = [len(spec) // width], spec
        else:
            n = width
            for dim in spec:
                n *= dim
            shape, blob = spec, seeded_bytes(seed + name, n)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    raw = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    if header_len is None:
        raw += b" " * (-len(raw) % 8)
    elif header_len < len(raw):
        raise ValueError(f"header_len {header_len} is shorter than the header ({len(raw)} bytes)")
    else:
        raw += b" " * (header_len - len(raw))
    return struct.pack("<Q", len(raw)) + raw + b"".join(blobs)


# ---------------------------------------------------------------------------------------------
# Pictures, and their PNG/JPEG/WebP bytes


def picture(size: tuple[int, int] = (4, 4), color: Any = "white", mode: str = "RGB") -> Image.Image:
    """A picture of one colour."""
    return Image.new(mode, size, color)


def striped(color: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> Image.Image:
    """``color`` with a coloured row every 8 pixels, so its BlurHash is not flat (the demo's pictures)."""
    img = Image.new("RGB", size, color)
    width, height = size
    for x in range(width):
        for y in range(0, height, 8):
            img.putpixel((x, y), (x * 4 % 256, y * 5 % 256, (color[2] + x) % 256))
    return img


def gradient(seed: int, size: tuple[int, int] = (64, 48)) -> Image.Image:
    """A two-colour gradient over a faint checkerboard, the colours drawn from ``seed``."""
    r = random.Random(seed)
    c1 = [r.randrange(256) for _ in range(3)]
    c2 = [r.randrange(256) for _ in range(3)]
    w, h = size
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    for y in range(h):
        for x in range(w):
            t, u = x / (w - 1), y / (h - 1)
            check = 40 if (x // 16 + y // 12) % 2 else 0
            arr[y, x] = [int(a * (1 - t) * (1 - u) + b * t * u + check) % 256 for a, b in zip(c1, c2)]
    return Image.fromarray(arr)


def comment_exif(comment: str | bytes | None = None, *, ifd0: bool = False, camera: bool = False) -> Image.Exif:
    """EXIF holding a UserComment: a str as A1111 writes it (``UNICODE\\0`` + UTF-16-BE), bytes as
    they are; in the Exif IFD, or in IFD0 (``ifd0``) as some tools do. ``camera`` adds a camera's
    Make, Model, Orientation, date and ISO."""
    exif = Image.Exif()
    if camera:
        exif[0x010F] = "DemoCam"          # Make
        exif[0x0110] = "DC-1"             # Model
        exif[0x0112] = 1                  # Orientation
        exif_ifd = exif.get_ifd(0x8769)
        exif_ifd[0x9003] = "2024:05:06 07:08:09"  # DateTimeOriginal
        exif_ifd[0x9011] = "+02:00"               # OffsetTimeOriginal
        exif_ifd[0x8827] = 200                    # ISO
    if comment is not None:
        raw = comment if isinstance(comment, bytes) else b"UNICODE\0" + comment.encode("utf-16-be")
        (exif if ifd0 else exif.get_ifd(0x8769))[0x9286] = raw
    return exif


def image_bytes(image: Image.Image, fmt: str = "PNG", *, text: Mapping[str, str] | None = None,
                exif: Image.Exif | bytes | None = None, quality: int | None = None) -> bytes:
    """``image`` encoded as ``fmt``, with PNG text chunks (``text``), ``exif`` and a JPEG ``quality``."""
    options: dict[str, Any] = {}
    if text is not None:
        info = PngImagePlugin.PngInfo()
        for key, value in text.items():
            info.add_text(key, value)
        options["pnginfo"] = info
    if exif is not None:
        options["exif"] = exif
    if quality is not None:
        options["quality"] = quality
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_bytes(size: tuple[int, int] = (4, 4), color: Any = "white", *, mode: str = "RGB",
              text: Mapping[str, str] | None = None) -> bytes:
    """A PNG of one colour, with text chunks."""
    return image_bytes(picture(size, color, mode), text=text)


def png_chunk(ctype: bytes, body: bytes) -> bytes:
    """One PNG chunk: length, type, body, CRC."""
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body) & 0xFFFFFFFF)


def insert_before_iend(png: bytes, extra: bytes) -> bytes:
    """``png`` with the chunks ``extra`` added just before its IEND chunk."""
    i = png.rindex(b"IEND") - 4
    return png[:i] + extra + png[i:]


def comfy_long_chain(outputs: int, chain: int = 2000) -> dict[str, Any]:
    """A ComfyUI prompt graph built to be slow to read: a checkpoint and a sampler, ``chain``
    pass-through nodes after them, and ``outputs`` save nodes on the chain's end (a reader that
    walks the chain once per output is quadratic)."""
    nodes: dict[str, Any] = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "deep.safetensors"}},
        "2": {"class_type": "KSampler", "inputs": {"seed": 3, "steps": 9, "cfg": 7, "model": ["1", 0]}}}
    prev = "2"
    for i in range(chain):
        nodes[f"c{i}"] = {"class_type": "Passthrough", "inputs": {"x": [prev, 0]}}
        prev = f"c{i}"
    for j in range(outputs):
        nodes[f"o{j}"] = {"class_type": "SaveImage", "inputs": {"images": [prev, 0]}}
    return nodes


def write_png(path: str | Path, image: Image.Image, text: Mapping[str, str] | None = None) -> None:
    Path(path).write_bytes(image_bytes(image, text=text))


def write_jpeg(path: str | Path, image: Image.Image, comment: str | None = None, *, camera: bool = False,
               quality: int = 90) -> None:
    Path(path).write_bytes(image_bytes(image, "JPEG", exif=comment_exif(comment, camera=camera), quality=quality))


# ---------------------------------------------------------------------------------------------
# Files on disk: a tree, a dump


def write_tree(root: str | Path, tree: Mapping[str, bytes | str]) -> dict[str, Path]:
    """Write ``{relative path: content}`` under ``root`` (str as UTF-8), making folders as needed.
    Returns ``{relative path: path written}``."""
    root = Path(root)
    written = {}
    for rel, content in tree.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        written[rel] = path
    return written


def write_models(dump: str | Path, models: Iterable[Mapping[str, Any]], *, indent: int | None = None,
                 host: str = "test", at: str = "2026-11-22T00:00:00Z", mtime: float | None = None) -> list[int]:
    """Write model dicts into a dump folder as the crawler saves them (``crawler.layout.model_path``,
    JSON with ``indent``, modification time ``mtime`` when given), and ``downloaded.txt`` listing
    them as fetched from ``host`` at ``at``. Returns the model ids, in order."""
    dump = Path(dump)
    ids = []
    for model in models:
        path = model_path(dump, model["id"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(model, indent=indent))
        if mtime is not None:
            os.utime(path, (mtime, mtime))
        ids.append(model["id"])
    (dump / "downloaded.txt").write_text("".join(f"{pad(i)}\t{host}\t{at}\n" for i in ids))
    return ids
