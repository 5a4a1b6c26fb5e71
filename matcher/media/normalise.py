"""The normalised generation record shared by every parser, LoRA usages, canonical JSON.

A record is a plain dict. Parsers fill the scalar fields below, ``loras`` and ``resources`` (merged by
``resource_list.add_resource``, re-exported here); ``finalise`` trims prompts, removes LoRA tags from
the clean prompts and computes ``metadata_hash``.
"""
from __future__ import annotations

import hashlib
import json
import math
import operator
import re
from typing import Any

import orjson

from .resource_list import MAX_RESOURCES, add_resource, drop_index, normalise_name

__all__ = ["FIELDS", "MAX_LORAS", "MAX_PROMPT_BYTES", "MAX_RESOURCES", "add_lora_usage", "add_resource", "as_json",
           "canonical_json", "clean_prompt", "extract_loras", "finalise", "find_lora_tags", "metadata_hash",
           "new_record", "normalise_name", "set_size", "to_float", "to_int", "valid_usage"]

MAX_PROMPT_BYTES = 64 * 1024
#: at most this many LoRA usages per record (real images name a few dozen; a crafted one naming
#: hundreds of thousands would cost seconds per file and rows by the hundred thousand)
MAX_LORAS = 1000

#: normalised scalar fields, in the order they are shown and stored
FIELDS = [
    "generation_tool", "model_name", "model_hash_short", "steps", "sampler", "scheduler", "cfg_scale",
    "seed", "subseed", "subseed_strength", "clip_skip", "denoising_strength", "width", "height", "size_raw",
    "hires_upscaler", "hires_steps", "hires_denoising", "hires_upscale", "vae", "vae_hash", "refiner_model",
    "refiner_switch_at", "tiling", "face_restoration", "version_tag", "generation_timestamp",
    "positive_raw", "negative_raw", "positive_clean", "negative_clean", "prompt_truncated",
]


def new_record(tool: str | None) -> dict[str, Any]:
    return {"generation_tool": tool, "loras": [], "resources": [], "params": {}}


def as_json(text: Any) -> Any:
    """A dict or list as it is; text holding a JSON object or array decoded; anything else None."""
    if isinstance(text, (dict, list)):
        return text
    if not isinstance(text, str):
        return None
    s = text.strip().strip("\x00")
    if not s or s[0] not in "{[":
        return None
    try:
        return json.loads(s)
    except ValueError:
        return None


_INT_RE = re.compile(r"[-+]?\d{1,40}")
_INT_DOT_ZERO_RE = re.compile(r"[-+]?\d+\.0+")
#: possessive: the same numbers as ``[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?`` without backtracking
#: quadratically over a long run of digits followed by something else
_FLOAT_RE = re.compile(r"[-+]?+(?:\d++(?:\.\d*+)?+|\.\d++)(?:[eE][-+]?+\d++)?+")
_SIZE_RE = re.compile(r"\(?\s*(\d{1,6})\s*[x×,]\s*(\d{1,6})\s*\)?")


def to_int(value: Any) -> int | None:
    """Exact integers (seeds may exceed 2**53): never through float unless given as a float."""
    if type(value) is str:  # the common case first; the same steps as below
        s = value.strip().strip('"')
        if s.isdigit() and s.isascii() and len(s) <= 40:  # what _INT_RE takes without a sign
            return int(s)
    else:
        if value is None or isinstance(value, bool):
            return None
        if isinstance(value, int):
            return value
        if isinstance(value, float):
            return int(value) if math.isfinite(value) and value == int(value) else None
        s = str(value).strip().strip('"')
    if _INT_RE.fullmatch(s):
        return int(s)
    if _INT_DOT_ZERO_RE.fullmatch(s):
        return int(s.split(".")[0])
    return None


def to_float(value: Any) -> float | None:
    if type(value) is str:  # the common case first; the same steps as below
        s = value.strip().strip('"')
        if s.isascii() and s.replace(".", "", 1).isdigit():  # digits with at most one dot: _FLOAT_RE takes them
            f = float(s)
        elif not _FLOAT_RE.fullmatch(s):
            return None
        else:
            f = float(s)
    elif value is None or isinstance(value, bool):
        return None
    elif isinstance(value, (int, float)):
        f = float(value)
    else:
        s = str(value).strip().strip('"')
        if not _FLOAT_RE.fullmatch(s):
            return None
        f = float(s)
    return f if math.isfinite(f) else None


def set_size(rec: dict[str, Any], value: Any) -> None:
    if value is None:
        return
    s = str(value).strip()
    rec["size_raw"] = s
    w, _, h = s.partition("x")
    if w.isdigit() and h.isdigit() and s.isascii() and len(w) <= 6 and len(h) <= 6:  # "512x768": what _SIZE_RE takes
        rec["width"], rec["height"] = int(w), int(h)
        return
    m = _SIZE_RE.fullmatch(s)
    if m:
        rec["width"], rec["height"] = int(m.group(1)), int(m.group(2))


# <lora:NAME>, <lora:NAME:W>, <lora:NAME:W1:W2>, <lyco:...>, <hypernet:...>
_TAG_RE = re.compile(r"<(lora|lyco|locon|hypernet):([^<>]*?)>", re.IGNORECASE)
_PLAIN_RE = re.compile(r"(?<![<\w:])lora:([^\s:,<>()\[\]]{2,120}):([-+]?\d*\.?\d+)", re.IGNORECASE)


#: ``\s*[-+]?\d*\.?\d+\s*`` made possessive (same numbers; linear on a long run of digits)
_WEIGHT_RE = re.compile(r"\s*+[-+]?+(?:\d++(?:\.\d++)?+|\.\d++)\s*+")


def _split_tag(body: str) -> tuple[str, list[str]]:
    name, sep, w = body.rpartition(":")
    if sep and ":" not in name and w.isascii() and w[-1:].isdigit() and w.replace(".", "", 1).isdigit():
        return name, [w]  # "NAME:W" with W digits and at most one dot, not ending in it: _WEIGHT_RE takes it
    parts = body.split(":")
    # weights are the trailing numeric parts; everything before them is the name (names may hold ':')
    weights: list[str] = []
    while len(parts) > 1 and _WEIGHT_RE.fullmatch(parts[-1]) and len(weights) < 2:
        weights.insert(0, parts.pop())
    return ":".join(parts), weights


def find_lora_tags(text: str, context: str) -> list[dict[str, Any]]:
    out = []
    if not text:
        return out
    has_tag = "<" in text  # cheap tests: most prompts hold neither kind of tag
    if "a:" in text or "A:" in text:  # no other character lower-cases to "a" (or "l", "o", "r", ":", "<")
        low = text.lower()  # (slow on non-ASCII text: 3 µs on a 350-character CJK prompt)
        # a plain ``lora:NAME:W`` needs a "lora:" that is not the inside of a "<lora:" tag
        has_plain = low.count("lora:") > low.count("<lora:")
    else:
        has_plain = False
    if not has_tag and not has_plain:
        return out
    tagged = []
    for m in (_TAG_RE.finditer(text) if has_tag else ()):
        if len(out) >= MAX_LORAS:
            break
        start = m.start()
        tagged.append((start, m.end()))
        body = m.group(2)
        name, weights = _split_tag(body)
        if ":" in body and not weights and body.rsplit(":", 1)[-1].strip():
            continue  # <lora:name:abc> malformed weight
        kind = m.group(1).lower()
        w1 = to_float(weights[0]) if weights else 1.0
        w2 = to_float(weights[1]) if len(weights) > 1 else None
        out.append({"kind": "hypernetwork" if kind == "hypernet" else ("lycoris" if kind in ("lyco", "locon") else "lora"),
                    "raw_name": name, "weight": w1, "weight2": w2, "context": context, "pos": start})
    t = 0  # tags and plain matches both come in text order: one pointer, not a scan of every tag
    plain = 0
    for m in (_PLAIN_RE.finditer(text) if has_plain else ()):
        if plain >= MAX_LORAS:
            break
        plain += 1
        start = m.start()
        while t < len(tagged) and tagged[t][1] <= start:
            t += 1
        if t < len(tagged) and tagged[t][0] <= start:
            continue
        out.append({"kind": "lora", "raw_name": m.group(1), "weight": to_float(m.group(2)), "weight2": None,
                    "context": context, "pos": m.start()})
    if len(out) > 1:
        out.sort(key=_by_pos)
    return out


def _by_pos(d: dict[str, Any]) -> int:
    return d["pos"]


def _valid_name(u: dict[str, Any]) -> str | None:
    """The normalised name when the usage is valid (name 2-120 chars, weight 0-4), else None."""
    name = normalise_name(u["raw_name"])
    w = u["weight"]
    return name if 2 <= len(name) <= 120 and w is not None and 0.0 <= w <= 4.0 else None


def valid_usage(u: dict[str, Any]) -> bool:
    return _valid_name(u) is not None


def extract_loras(rec: dict[str, Any]) -> None:
    """LoRA usages from the prompts: a name of 2-120 characters and a weight within 0-4, others dropped."""
    usages = find_lora_tags(rec.get("positive_raw") or "", "positive") + \
        find_lora_tags(rec.get("negative_raw") or "", "negative")
    for u in usages:
        if len(rec["loras"]) >= MAX_LORAS:
            break
        name = _valid_name(u)
        if name is None:
            continue
        if u["kind"] == "hypernetwork":
            add_resource(rec, "hypernetwork", name, None, weight=u["weight"])
            continue
        rec["loras"].append({"name": name, "weight": u["weight"], "weight2": u["weight2"],
                             "context": u["context"], "kind": u["kind"], "position": len(rec["loras"])})
        add_resource(rec, u["kind"], name, None, weight=u["weight"])


def add_lora_usage(rec: dict[str, Any], name: str, weight: float | None, context: str = "positive",
                   kind: str = "lora", weight2: float | None = None) -> None:
    """LoRAs named by a node graph or JSON (not prompt tags), same validity rules."""
    if weight is None:
        weight = 1.0
    u = {"raw_name": name, "weight": weight}
    if len(rec["loras"]) >= MAX_LORAS or not valid_usage(u):
        return
    n = normalise_name(name)
    rec["loras"].append({"name": n, "weight": weight, "weight2": weight2, "context": context, "kind": kind,
                         "position": len(rec["loras"])})


def clean_prompt(text: str | None) -> str | None:
    if text is None:
        return None
    # each substitution only where it can change something (the tests are much cheaper than the regexes)
    s = _TAG_RE.sub("", text) if "<" in text else text
    if ("a:" in s or "A:" in s) and "lora:" in s.lower():
        s = _PLAIN_RE.sub("", s)
    if "\t" in s:
        s = s.replace("\t", " ")
    # every run of blanks becomes one space (what re.sub(r"[ \t]{2,}|\t", " ", s) did; that regex has no literal
    # prefix and tries every position: 15 µs on a 400-character prompt, the loop about 0.5 µs)
    while "  " in s:
        s = s.replace("  ", " ")
    if "," in s and _COMMAS_TEST_RE.search(s):  # a run of 2+ commas needs ",<blanks>," somewhere
        s = _COMMAS_RE.sub(", ", s)
    if " \n" in s or "\n " in s:
        # spaces around each newline go (what re.sub(r" +\n *|\n +", "\n", s) did, without a regex tried at every position)
        lines = s.split("\n")
        last = len(lines) - 1
        s = "\n".join(line.rstrip(" ") if i == 0 else (line.lstrip(" ") if i == last else line.strip(" "))
                      for i, line in enumerate(lines))
    return s.strip().strip(",").strip()


#: a run of 2+ commas (blanks around them included); no repeated group: the same matches, 3x faster
#: (it starts where a run of blanks starts, the look-behind: a long run is scanned once, not once per position)
_COMMAS_RE = re.compile(r"(?<!\s)\s*,(?:\s*,)+\s*")
_COMMAS_TEST_RE = re.compile(r",\s*,")


def _truncate(text: str) -> tuple[str, bool]:
    if text.isascii() and len(text) <= MAX_PROMPT_BYTES:  # O(1) test; ASCII text is its own UTF-8
        return text, False
    b = text.encode("utf-8")
    if len(b) <= MAX_PROMPT_BYTES:
        return text, False
    return b[:MAX_PROMPT_BYTES].decode("utf-8", "ignore"), True


def finalise(rec: dict[str, Any]) -> dict[str, Any]:
    rec.update({k: None for k in FIELDS if k not in rec})  # in FIELDS order, like setdefault
    truncated = False
    for key in ("positive_raw", "negative_raw"):
        v = rec.get(key)
        if isinstance(v, str):
            v = v.replace("\r\n", "\n")
            v, t = _truncate(v)
            rec[key] = v
            truncated |= t
    if truncated:
        rec["prompt_truncated"] = True
    rec["positive_clean"] = clean_prompt(rec.get("positive_raw"))
    rec["negative_clean"] = clean_prompt(rec.get("negative_raw"))
    drop_index(rec)
    for r in rec["resources"]:
        r.pop("_norm", None)
    # attach hashes known only from resources to the LoRA usages, and weights the other way
    rec["metadata_hash"] = metadata_hash(rec)
    return rec


_PLAIN_TYPES = frozenset((str, int, bool))


def _canon(value: Any) -> Any:
    if type(value) in _PLAIN_TYPES:
        return value
    if isinstance(value, float):
        return format(value, ".6g")
    if isinstance(value, dict):  # str/int/bool values (most of them) need no call
        return {k: v if type(v) in _PLAIN_TYPES else _canon(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_canon(v) for v in value]
    return value


_SCALARS = (str, int, float, bool)
_ONLY_STR = {str}
_FIELD_VALUES = operator.itemgetter(*FIELDS)


def _canonical_body(rec: dict[str, Any]) -> dict[str, Any]:
    """What the canonical JSON holds, built in one pass (same result as ``_canon`` over the whole body)."""
    plain = _PLAIN_TYPES
    try:
        values = _FIELD_VALUES(rec)  # a finalised record holds every field
    except KeyError:
        values = [rec.get(k) for k in FIELDS]
    body: dict[str, Any] = {k: v if type(v) in plain else format(v, ".6g") if type(v) is float else _canon(v)
                            for k, v in zip(FIELDS, values) if v is not None}
    get = rec.get
    loras = get("loras")
    if type(loras) is list:  # each usage dict inline (what _canon does, without a call per dict)
        body["loras"] = [{k: v if type(v) in plain else _canon(v) for k, v in d.items() if v is not None}
                         if type(d) is dict else _canon(d) for d in loras]
    else:
        body["loras"] = _canon(loras) if loras else []
    params = get("params")
    if params and type(params) is dict and _ONLY_STR == set(map(type, params.values())):
        body["params"] = params  # all str (nearly always): the copy below would equal it, order included
    elif params:
        out = {k: v for k, v in params.items() if type(v) is str}  # almost always all of them
        for k, v in (params.items() if len(out) != len(params) else ()):
            t = type(v)
            if t in plain:
                out[k] = v
            elif t is float:
                out[k] = format(v, ".6g")
            elif isinstance(v, _SCALARS):
                out[k] = _canon(v)
        body["params"] = out
    else:
        body["params"] = {}
    res = get("resources")
    if type(res) is list:
        res = [{k: v if type(v) in plain else _canon(v) for k, v in d.items() if v is not None}
               if type(d) is dict else _canon(d) for d in res]
    else:
        res = [_canon(r) for r in res or []]
    if len(res) > 1 or res and type(res[0]) is not dict:  # one dict needs no key (a non-dict raises, as before)
        res.sort(key=_resource_key)
    body["resources"] = res
    return body


def _resource_key(r: dict[str, Any]) -> tuple:
    return (r.get("kind") or "", r.get("name") or "", r.get("hash") or "", str(r.get("version_id")))


def _json_text(body: dict[str, Any]) -> str:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def _not_plain(value: Any) -> Any:
    raise TypeError(type(value).__name__)


#: orjson writes exactly what the json call above writes for plain str/int/bool/None/list/dict
#: (same escapes, same key order, compact); anything else (int subclasses, huge ints, lone
#: surrogates, non-str keys, dates) raises here and goes through json as before.
_ORJSON_OPTIONS = (orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_SUBCLASS | orjson.OPT_PASSTHROUGH_DATETIME
                   | orjson.OPT_PASSTHROUGH_DATACLASS)


def _canonical_bytes(body: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(body, default=_not_plain, option=_ORJSON_OPTIONS)
    except TypeError:  # orjson.JSONEncodeError included
        return _json_text(body).encode("utf-8")


def canonical_json(rec: dict[str, Any]) -> str:
    """Non-null scalars, floats as {:.6g}, sorted keys, compact separators, UTF-8."""
    return _canonical_bytes(_canonical_body(rec)).decode("utf-8")


def metadata_hash(rec: dict[str, Any]) -> str:
    return hashlib.sha256(_canonical_bytes(_canonical_body(rec))).hexdigest()
