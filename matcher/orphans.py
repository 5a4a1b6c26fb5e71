"""Orphan images (no usable metadata) against the mirror's preview ``images``.

The same bytes as a preview ``crawl --images`` downloaded (SHA256) is a near-certain hit; else the
nearest BlurHash of a preview of the same width and height is a low-confidence near-match. BlurHash
strings are decoded here into their DCT components and compared by RMS distance, so hashes of
different component counts (4x3, 5x4) compare.
"""
from __future__ import annotations

import math
from pathlib import Path

import sqlite_utils

from matcher.hashing import sha256_file
from matcher.results import CONFIDENCE, match_result
from mirror.reader import Mirror

BLURHASH_THRESHOLD = 0.02              # RMS distance of decoded components (linear RGB); the same
                                       # image re-encoded at another size scores < 0.01, others > 0.03

_B83 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz#$%*+,-.:;=?@[]^_{|}~"
_B83_INDEX = {c: i for i, c in enumerate(_B83)}


def _b83(text: str) -> int:
    value = 0
    for c in text:
        value = value * 83 + _B83_INDEX[c]
    return value


def _srgb_to_linear(v: int) -> float:
    x = v / 255
    return x / 12.92 if x <= 0.04045 else ((x + 0.055) / 1.055) ** 2.4


def blurhash_components(text: str) -> dict[tuple[int, int], tuple[float, float, float]]:
    """Decode a BlurHash into its DCT components {(x, y): (r, g, b)} in linear RGB."""
    if not text or len(text) < 6:
        raise ValueError("BlurHash too short")
    flag = _b83(text[0])
    ny, nx = flag // 9 + 1, flag % 9 + 1
    if len(text) != 4 + 2 * nx * ny:
        raise ValueError("BlurHash length does not match its size flag")
    max_ac = (_b83(text[1]) + 1) / 166
    dc = _b83(text[2:6])
    comps = {(0, 0): (_srgb_to_linear(dc >> 16), _srgb_to_linear((dc >> 8) & 255), _srgb_to_linear(dc & 255))}
    for i in range(1, nx * ny):
        v = _b83(text[4 + 2 * i: 6 + 2 * i])
        quant = (v // 361, (v // 19) % 19, v % 19)
        comps[(i % nx, i // nx)] = tuple(math.copysign(((q - 9) / 9) ** 2, q - 9) * max_ac for q in quant)
    return comps


def blurhash_distance(a: str, b: str) -> float:
    """RMS difference of the components both hashes carry (so 4x3 and 5x4 hashes compare)."""
    ca, cb = blurhash_components(a), blurhash_components(b)
    keys = ca.keys() & cb.keys()
    total = sum((x - y) ** 2 for k in keys for x, y in zip(ca[k], cb[k]))
    return math.sqrt(total / (3 * len(keys)))


def _same_preview_bytes(mirror: Mirror, sha256_hash: str, width: int | None, height: int | None,
                        size: int | None) -> dict | None:
    """A downloaded preview (images.local_path, relative to the dump) with these exact bytes."""
    dump = mirror.dump_dir()
    if dump is None:
        return None
    for img in mirror.downloaded_images(width, height):
        path = dump / img["local_path"]
        try:
            if size is not None and path.stat().st_size != size:
                continue
            digest = sha256_file(path)
        except OSError:
            continue
        if digest.upper() == sha256_hash.upper():
            return img
    return None


def cross_reference_with_civitai(sha256_hash: str | None, blur_hash: str | None,
                                 civitai_db_path: str | Path | sqlite_utils.Database | Mirror, *,
                                 width: int | None = None, height: int | None = None,
                                 size: int | None = None,
                                 threshold: float = BLURHASH_THRESHOLD) -> dict | None:
    """Find a local image among the mirror's preview ``images``.

    The same bytes (the previews ``crawl --images`` downloaded, of the same width, height and byte
    ``size`` when given) is a near-certain hit; otherwise the nearest BlurHash of an image with the
    same width and height (when given), within ``threshold``. Returns ``{image_id, version_id,
    model_id, url, method, distance, confidence, reason}`` or None.
    """
    mirror = civitai_db_path if isinstance(civitai_db_path, Mirror) else Mirror(civitai_db_path)
    if not mirror.has("images"):
        return None

    def shape(img: dict, method: str, distance: float | None, confidence: float, reason: str) -> dict:
        vid, mid = img["version_id"], img["model_id"]
        if mid is None and vid is not None:
            mid = (mirror.version(vid) or {}).get("model_id")
        return {"image_id": img["id"], "version_id": vid, "model_id": mid, "url": img["url"],
                "method": method, "distance": distance, "confidence": confidence, "reason": reason}

    if sha256_hash:
        hit = _same_preview_bytes(mirror, sha256_hash, width, height, size)
        if hit:
            return shape(hit, "sha256", 0.0, CONFIDENCE["sha256_image"],
                         f"same bytes as Civitai image {hit['id']} (SHA256 of the downloaded preview); "
                         "no metadata to confirm the model")
    if not blur_hash:
        return None
    try:
        blurhash_components(blur_hash)
    except (ValueError, KeyError):
        return None
    size_note = f"same size {width}x{height}" if width and height else "size unknown"
    best, best_d = None, None
    for img in mirror.blurhash_images(width, height):
        try:
            d = blurhash_distance(blur_hash, img["hash"])
        except (ValueError, KeyError, ZeroDivisionError):
            continue
        if d <= threshold and (best_d is None or d < best_d or (d == best_d and img["id"] < best["id"])):
            best, best_d = img, d
    if best is None:
        return None
    return shape(best, "blurhash", round(best_d, 4), CONFIDENCE["blurhash"],
                 f"looks like Civitai image {best['id']} (BlurHash distance {best_d:.3f}, {size_note}); "
                 "near-match only, low confidence")


def orphan_result(row: dict, blur_hash: str | None, mirror: Mirror) -> dict:
    """The match result of an image without usable metadata (a ``files`` row and its BlurHash):
    ``cross_reference_with_civitai`` against the mirror's preview images."""
    hit = cross_reference_with_civitai(row.get("sha256"), blur_hash, mirror, width=row.get("width"),
                                       height=row.get("height"), size=row.get("size"))
    if hit and hit["version_id"] is not None:
        info = mirror.version(hit["version_id"]) or {"version_id": hit["version_id"]}
        res = match_result({**info, "model_id": hit["model_id"] or info.get("model_id")},
                           hash_type=hit["method"], confidence=hit["confidence"],
                           reason="orphan image: " + hit["reason"])
        res["civitai_image_id"] = hit["image_id"]
    else:
        res = match_result(None, hash_type=None, confidence=None,
                           reason="orphan image (no metadata); no Civitai preview image looks like it")
    res["pinned"] = 0
    return res
