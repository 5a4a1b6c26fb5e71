"""The resources a record references: one merged row per resource, found through an index.

``add_resource`` adds or merges one (same kind and normalised name, or same hash, or same version);
``normalise_name`` is the name form they are compared by. Split from ``normalise`` (which re-exports
them) to keep that module small.
"""
from __future__ import annotations

import re
from typing import Any

from matcher.models import MODEL_EXTENSIONS
from mirror.hashes import AUTOV3_FULL_LENGTH, LENGTH_TYPES

#: at most this many resources per record (real images name a few dozen; a crafted one naming
#: hundreds of thousands would cost seconds per file and rows by the hundred thousand)
MAX_RESOURCES = 1000

_HEX = re.compile(r"^[0-9a-fA-F]+$")


#: a hex hash's kind from its length: the most likely type mirror.hashes names for that length
_KIND_BY_LEN = {length: types[0][0] for length, types in LENGTH_TYPES.items()}


def _hash_and_kind(h: str) -> tuple[str | None, str | None]:
    """The hash as upper-case hex without a ``blake3:``/``0x`` prefix (None when it is not hex), and its
    kind from its shape: plain hex by its length (``_KIND_BY_LEN``), blake3: BLAKE3, 0x+64 AutoV3 (SwarmUI)."""
    s = h.strip()
    if not s:
        return None, None
    low = s.lower()
    if low.startswith("blake3:"):
        body, kind = s[7:], "BLAKE3"
    elif low.startswith("0x"):
        body, kind = s[2:], ("AutoV3" if len(s) - 2 == AUTOV3_FULL_LENGTH else None)  # "0x" is not hex: no kind by length
    else:
        if not _HEX.match(s):
            return None, None
        return s.upper(), _KIND_BY_LEN.get(len(s))
    if not _HEX.match(body):
        return None, None
    return body.upper(), kind


_SPACES_RE = re.compile(r"\s+")
_EXT_RE = re.compile("(" + "|".join(re.escape(ext) for ext in MODEL_EXTENSIONS) + ")$", re.IGNORECASE)


def normalise_name(name: str) -> str:
    """LoRA/resource name: no folders, no extension, no trailing punctuation, spaces -> underscore."""
    s = str(name).strip()
    if "\\" in s:
        s = s.replace("\\", "/")
    if "/" in s:
        s = s[s.rfind("/") + 1:]
    if "." in s:  # the extension pattern needs one
        s = _EXT_RE.sub("", s)
    s = s.strip().rstrip(".,;:!?")
    if " " not in s and s.isprintable():  # every other whitespace character is unprintable
        return s
    return _SPACES_RE.sub("_", s)


#: the key a record keeps its resource index under while it is built (``finalise`` drops it)
_INDEX = "_resource_index"
#: lists shorter than this are scanned; longer ones are searched through the index
_SCAN_BELOW = 16
#: at most this many resources are indexed under one name, hash or version (far more than any real
#: image names; past it a crafted record cannot make each addition scan a long list)
_MAX_PER_KEY = 64


def _index_of(rec: dict[str, Any]) -> dict[str, Any]:
    """The record's resource index: (what, kind, value) -> resources, and each resource's position.

    Built again when a parser replaced or shortened ``rec["resources"]``."""
    resources = rec["resources"]
    index = rec.get(_INDEX)
    if index is None or index["list"] is not resources or index["count"] != len(resources):
        index = rec[_INDEX] = {"list": resources, "count": 0, "keys": {}, "pos": {}}
        for r in resources:
            _index_add(index, r)
    return index


def _index_key(index: dict[str, Any], key: tuple, r: dict[str, Any]) -> None:
    found = index["keys"].setdefault(key, [])
    if len(found) < _MAX_PER_KEY:
        found.append(r)


def _index_add(index: dict[str, Any], r: dict[str, Any]) -> None:
    index["pos"][id(r)] = index["count"]
    index["count"] += 1
    kind = r["kind"]
    if r.get("_norm"):
        _index_key(index, ("n", kind, r["_norm"]), r)
    if r.get("hash"):
        _index_key(index, ("h", kind, r["hash"]), r)
    if r.get("version_id"):
        _index_key(index, ("v", kind, r["version_id"]), r)


def add_resource(rec: dict[str, Any], kind: str, name: Any, h: Any, *, weight: float | None = None,
                 version_id: int | None = None, hash_kind: str | None = None, role: str | None = None,
                 source: str | None = None) -> None:
    """Add or merge one referenced resource (same kind and normalised name, or same hash).

    The resources that can merge are found through an index (same kind and name, hash or version),
    in the order they were added: constant work per call, where a scan of the list was quadratic
    over a crafted list of thousands of resources."""
    name = str(name).strip() if name not in (None, "") else None
    if isinstance(h, str):
        h, kind_of = _hash_and_kind(h)
        if hash_kind and h is not None:
            kind_of = hash_kind
    else:
        h = kind_of = None
    if not name and not h and not version_id:
        return
    norm = normalise_name(name).lower() if name else None
    resources = rec["resources"]
    index = None
    if len(resources) < _SCAN_BELOW:  # a short list (nearly every image): a scan is cheaper than an index
        found = [r for r in resources if r["kind"] == kind and (
            norm and r["_norm"] == norm or h and r["hash"] == h or version_id and r["version_id"] == version_id)]
    else:
        index = _index_of(rec)
        keys = index["keys"]
        found = [*keys.get(("n", kind, norm), ()), *keys.get(("h", kind, h), ()), *keys.get(("v", kind, version_id), ())]
        if len(found) > 1:
            pos = index["pos"]
            found = sorted({id(r): r for r in found}.values(), key=lambda r: pos[id(r)])
    for r in found:
        if h and not r["hash"]:
            r["hash"], r["hash_kind"] = h, kind_of
            if index is not None:
                _index_key(index, ("h", kind, h), r)
        elif h and r["hash"] != h and (kind_of != r["hash_kind"]):
            continue  # a second hash of another kind: keep it as its own row
        elif h and r["hash"] != h:
            continue
        if weight is not None and r["weight"] is None:
            r["weight"] = weight
        if version_id and not r["version_id"]:
            r["version_id"] = version_id
            if index is not None:
                _index_key(index, ("v", kind, version_id), r)
        if name and not r["name"]:
            r["name"], r["_norm"] = name, norm
            if index is not None:
                _index_key(index, ("n", kind, norm), r)
        return
    if len(resources) >= MAX_RESOURCES:
        return
    r = {"kind": kind, "name": name, "hash": h, "hash_kind": kind_of, "weight": weight,
         "version_id": version_id, "_norm": norm}
    resources.append(r)
    if index is not None:
        _index_add(index, r)


def drop_index(rec: dict[str, Any]) -> None:
    """Forget the record's resource index (``finalise`` calls it: the record is done)."""
    rec.pop(_INDEX, None)
