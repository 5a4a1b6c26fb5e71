"""DFSN: a model container with editable JSON metadata that does not change the model's hash.

Layout (github.com/RupertAvery/DiffusionFormat; every integer little-endian)::

    0x000  4 B   magic "DFSN"
    0x004  2 B   u16 type: 1 = ckpt (pickle/zip), 2 = safetensors
    0x006 32 B   SHA256 of the model bytes (raw digest)
    0x026  4 B   u32 offset of the metadata area (0x100)
    0x02A  4 B   u32 offset of the model (0x200100)
    0x02E ...    zero padding up to 0x100
    0x100  2 MiB UTF-8 JSON metadata, NUL-padded
    0x200100     the model bytes, unchanged

Hashes of the model come from ``matcher.hashing.hash_file`` with ``offset`` = the model offset.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

from matcher.hashing import hash_file
from matcher.sniff import SNIFF_BYTES, sniff_format

MAGIC = b"DFSN"
TYPE_CKPT, TYPE_SAFETENSORS = 1, 2
TYPE_NAMES = {TYPE_CKPT: "ckpt", TYPE_SAFETENSORS: "safetensors"}
METADATA_OFFSET = 0x100
MODEL_OFFSET = 0x200100
METADATA_SIZE = MODEL_OFFSET - METADATA_OFFSET  # 2 MiB
_HEADER = struct.Struct("<4sH32sII")


class DfsnError(ValueError):
    """Not a DFSN file, a broken one, or metadata that does not fit."""


def _encode_metadata(metadata: dict[str, Any]) -> bytes:
    data = json.dumps(metadata, ensure_ascii=False, sort_keys=True).encode("utf-8")
    if len(data) > METADATA_SIZE:
        raise DfsnError(f"metadata is {len(data)} bytes; the DFSN metadata area holds {METADATA_SIZE}")
    return data + b"\0" * (METADATA_SIZE - len(data))


def model_type_of(path: str | Path) -> int:
    """DFSN type code of a model file from its first bytes (safetensors, or a pickle/zip ckpt)."""
    with open(path, "rb") as handle:
        head = handle.read(SNIFF_BYTES)
    fmt = sniff_format(head, str(path))
    if fmt == "safetensors":
        return TYPE_SAFETENSORS
    if fmt in {"ckpt", "pt", "pth", "bin", "pickle", "zip"}:
        return TYPE_CKPT
    raise DfsnError(f"{path} is neither a safetensors nor a ckpt/pickle file")


def pack(model: str | Path, out: str | Path, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``out`` (a new file; never overwrites) holding ``model`` and ``metadata``."""
    model, out = Path(model), Path(out)
    if out.exists():
        raise DfsnError(f"{out} exists; refusing to overwrite it")
    type_code = model_type_of(model)
    sha256 = hash_file(model, want={"SHA256"})["SHA256"]
    block = _encode_metadata(metadata or {})
    header = _HEADER.pack(MAGIC, type_code, bytes.fromhex(sha256), METADATA_OFFSET, MODEL_OFFSET)
    part = out.with_name(out.name + ".part")
    with open(part, "wb") as dst, open(model, "rb") as src:
        dst.write(header + b"\0" * (METADATA_OFFSET - len(header)))
        dst.write(block)
        while chunk := src.read(1 << 20):
            dst.write(chunk)
        dst.flush()
        os.fsync(dst.fileno())
    os.replace(part, out)
    return read_header(out)


def read_header(path: str | Path) -> dict[str, Any]:
    """Header facts and parsed metadata of a DFSN file: cheap, reads 2 MiB at most."""
    with open(path, "rb") as handle:
        raw = handle.read(_HEADER.size)
        if len(raw) < _HEADER.size or raw[:4] != MAGIC:
            raise DfsnError(f"{path} is not a DFSN file (no DFSN magic)")
        magic, type_code, digest, meta_offset, model_offset = _HEADER.unpack(raw)
        size = os.fstat(handle.fileno()).st_size
        if not (_HEADER.size <= meta_offset < model_offset <= size):
            raise DfsnError(f"{path}: bad DFSN offsets (metadata {meta_offset:#x}, model {model_offset:#x})")
        handle.seek(meta_offset)
        block = handle.read(min(model_offset - meta_offset, METADATA_SIZE))
    text = block.split(b"\0", 1)[0].decode("utf-8", errors="replace").strip()
    try:
        metadata = json.loads(text) if text else {}
    except ValueError:
        metadata = {"_unparsed": text}
    return {
        "type": TYPE_NAMES.get(type_code, f"unknown ({type_code})"),
        "type_code": type_code,
        "sha256": digest.hex().upper(),
        "metadata_offset": meta_offset,
        "model_offset": model_offset,
        "model_size": size - model_offset,
        "metadata": metadata,
    }


def unpack(path: str | Path, out: str | Path, *, verify: bool = True) -> dict[str, Any]:
    """Write the embedded model to ``out`` (a new file), checking it against the header's SHA256."""
    out = Path(out)
    if out.exists():
        raise DfsnError(f"{out} exists; refusing to overwrite it")
    header = read_header(path)
    part = out.with_name(out.name + ".part")
    with open(path, "rb") as src, open(part, "wb") as dst:
        src.seek(header["model_offset"])
        while chunk := src.read(1 << 20):
            dst.write(chunk)
        dst.flush()
        os.fsync(dst.fileno())
    if verify:
        actual = hash_file(part, want={"SHA256"})["SHA256"]
        if actual != header["sha256"]:
            os.unlink(part)  # our own temp file
            raise DfsnError(f"{path}: embedded model SHA256 {actual} does not match the header {header['sha256']}")
    os.replace(part, out)
    return header


def set_meta(path: str | Path, metadata: dict[str, Any]) -> dict[str, Any]:
    """Replace the JSON metadata in place; the model bytes do not move. Refuses more than 2 MiB."""
    header = read_header(path)
    room = header["model_offset"] - header["metadata_offset"]
    block = _encode_metadata(metadata)[:room]
    if block.rstrip(b"\0") != _encode_metadata(metadata).rstrip(b"\0"):
        raise DfsnError(f"metadata does not fit in this file's {room}-byte metadata area")
    with open(path, "r+b") as handle:
        handle.seek(header["metadata_offset"])
        handle.write(block)
        handle.flush()
        os.fsync(handle.fileno())
    return read_header(path)


def verify(path: str | Path) -> dict[str, Any]:
    """Re-hash the embedded model; ``ok`` says whether it matches the header's SHA256."""
    header = read_header(path)
    hashes = hash_file(path, offset=header["model_offset"])
    return {**{k: v for k, v in header.items() if k != "metadata"}, "computed_sha256": hashes["SHA256"],
            "ok": hashes["SHA256"] == header["sha256"], "hashes": hashes}
