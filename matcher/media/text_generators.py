"""Parameters written as text fields rather than one JSON object: Draw Things' XMP (``dc:description``,
``exif:UserComment``) and ``Used model:`` / ``LoRA:`` sidecar lines.

Each ``parse_*`` is pure: text in, a normalised record (or None) out.
"""
from __future__ import annotations

import html
import re
from typing import Any

from .a1111 import parse_infotext
from .normalise import add_lora_usage, add_resource, as_json, new_record, set_size, to_float, to_int


# ---------------------------------------------------------------- Draw Things (XMP)
_XMP_LI = r"<{tag}>\s*<rdf:Alt>\s*<rdf:li[^>]*>(.*?)</rdf:li>"


def xmp_field(xmp: str, tag: str) -> str | None:
    # the lazy value runs to the first </rdf:li>: without one, each opening tag would scan to the end
    m = re.search(_XMP_LI.format(tag=re.escape(tag)), xmp, re.DOTALL) if "</rdf:li>" in xmp else None
    if not m:
        m = re.search(rf"<{re.escape(tag)}>([^<]*)</{re.escape(tag)}>", xmp)
    if not m:
        m = re.search(rf'{re.escape(tag)}="([^"]*)"', xmp)
    return html.unescape(m.group(1)) if m else None


def parse_xmp(xmp: str) -> dict[str, Any] | None:
    if not xmp:
        return None
    desc = xmp_field(xmp, "dc:description")
    comment = xmp_field(xmp, "exif:UserComment")
    tool = xmp_field(xmp, "xmp:CreatorTool")
    data = as_json(comment)
    if desc and re.search(r"\bSteps:\s*\d", desc):
        rec = parse_infotext(desc)
    elif isinstance(data, dict) and ("c" in data or "prompt" in data):
        rec = new_record(None)
    else:
        return None
    rec["generation_tool"] = tool or rec.get("generation_tool")
    if isinstance(data, dict):
        rec["positive_raw"] = data.get("c", rec.get("positive_raw"))
        if data.get("uc") is not None:
            rec["negative_raw"] = data.get("uc")
        for f, k, conv in (("steps", "steps", to_int), ("cfg_scale", "scale", to_float), ("seed", "seed", to_int)):
            if data.get(k) is not None and rec.get(f) is None:
                rec[f] = conv(data[k])
        if isinstance(data.get("sampler"), str) and not rec.get("sampler"):
            rec["sampler"] = data["sampler"]
        if data.get("model") and not rec.get("model_name"):
            rec["model_name"] = data["model"]
            add_resource(rec, "checkpoint", data["model"], None)
        if data.get("size") and not rec.get("width"):
            set_size(rec, data["size"])
        for lo in data.get("lora") or []:
            if isinstance(lo, dict) and lo.get("model"):
                w = to_float(lo.get("weight"))
                w = round(w, 4) if w is not None else None
                add_lora_usage(rec, lo["model"], w)
                add_resource(rec, "lora", lo["model"], None, weight=w)
    lower = {k.lower(): v for k, v in (rec.get("params") or {}).items()}
    if lower.get("lora model"):
        w = to_float(lower.get("lora weight"))
        if not rec["loras"]:
            add_lora_usage(rec, lower["lora model"], w)
        add_resource(rec, "lora", lower["lora model"], None, weight=w)
    return rec



# ---------------------------------------------------------------- sidecar "Used model:" style
_LINE_KEY = r"^[^\S\n]*(?:{keys})[^\S\n]*:"
_SIDECAR_KEYS = {name: re.compile(_LINE_KEY.format(keys=keys), re.IGNORECASE | re.MULTILINE) for name, keys in (
    ("model", "Used model|Model"), ("lora", "LoRAs?"), ("prompt", "Prompt"), ("seed", "seed"), ("steps", "steps"),
    ("cfg scale", "cfg scale"), ("sampler", "sampler"))}


def _line_value(text: str, name: str) -> str | None:
    """The rest of the first line that starts with ``Key:`` (blanks before the key allowed), stripped.

    What ``^\\s*Key\\s*:\\s*(.+?)\\s*$`` (re.M) found, in linear time: that pattern's ``\\s*`` ran across
    blank lines and its lazy value backtracked over blanks, both quadratic on a file of newlines."""
    for m in _SIDECAR_KEYS[name].finditer(text):
        end = text.find("\n", m.end())
        value = text[m.end(): len(text) if end < 0 else end].strip()
        if value:
            return value
    return None


def parse_sidecar_text(text: str) -> dict[str, Any] | None:
    """``Used model: x.safetensors`` / ``LoRA: add_detail:0.5, more_art:0.8`` lines (seed 000)."""
    if not isinstance(text, str):
        return None
    m = _line_value(text, "model")
    l = _line_value(text, "lora")
    if not m and not l:
        return None
    rec = new_record("sidecar")
    if m:
        rec["model_name"] = m
        add_resource(rec, "checkpoint", m, None)
    if l:
        for part in l.split(","):
            name, _, w = part.strip().rpartition(":")
            if not name:
                name, w = w, "1"
            wf = to_float(w)
            add_lora_usage(rec, name.strip(), wf)
            add_resource(rec, "lora", name.strip(), None, weight=wf)
    p = _line_value(text, "prompt")
    if p:
        rec["positive_raw"] = p
    for field, key, conv in (("seed", "seed", to_int), ("steps", "steps", to_int), ("cfg_scale", "cfg scale", to_float),
                             ("sampler", "sampler", str)):
        value = _line_value(text, key)
        if value:
            rec[field] = conv(value) if conv is not str else value
    return rec
