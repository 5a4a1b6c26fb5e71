"""AUTOMATIC1111-style infotext (A1111, Forge, reForge, SD.Next, Civitai, comfy-image-saver, ...).

``parse_infotext(text)`` is pure: text in, a normalised record dict out (see ``matcher.media.normalise``).
"""
from __future__ import annotations

import json
import re
from typing import Any

from .normalise import (
    add_resource, extract_loras, new_record, set_size, to_float, to_int,
)

_NEG_RE = re.compile(r"^\s*negative prompt:\s?", re.IGNORECASE)
_PARAM_START = re.compile(r"^\s*(steps|size|seed|sampler|cfg scale|model|model hash)\s*:", re.IGNORECASE)

#: spelling as written (lower case) -> normalised field: every alias a generator writes for a field
FIELD_ALIASES: dict[str, str] = {
    "steps": "steps",
    "sampler": "sampler", "sampler_name": "sampler",
    "schedule type": "scheduler", "scheduler": "scheduler",
    "cfg scale": "cfg_scale", "cfg": "cfg_scale", "cfg_scale": "cfg_scale", "guidance scale": "cfg_scale",
    "seed": "seed",
    "variation seed": "subseed", "subseed": "subseed",
    "variation seed strength": "subseed_strength", "subseed strength": "subseed_strength",
    "clip skip": "clip_skip", "clip_skip": "clip_skip",
    "denoising strength": "denoising_strength", "denoise": "denoising_strength",
    "size": "size_raw",
    "model": "model_name", "model_name": "model_name", "model name": "model_name",
    "model hash": "model_hash_short", "hash": "model_hash_short", "model_hash": "model_hash_short",
    "hires upscaler": "hires_upscaler", "hires steps": "hires_steps",
    "hires denoising": "hires_denoising", "hires denoising strength": "hires_denoising",
    "hires upscale": "hires_upscale",
    "vae": "vae", "vae hash": "vae_hash",
    "refiner": "refiner_model", "refiner switch at": "refiner_switch_at",
    "tiling": "tiling", "face restoration": "face_restoration",
    "version": "version_tag",
    "created date": "generation_timestamp", "date": "generation_timestamp",
    "generation timestamp": "generation_timestamp",
}
_INT_FIELDS = {"steps", "subseed", "clip_skip", "hires_steps", "seed"}
_FLOAT_FIELDS = {"cfg_scale", "subseed_strength", "denoising_strength", "hires_denoising", "refiner_switch_at",
                 "hires_upscale"}


#: the rest of a JSON string after its opening quote: a backslash escapes any one character
_STRING_REST_RE = re.compile(r'(?:[^"\\]++|\\.)*+"', re.S)
_STRUCTURE_RE = re.compile(r'["{}\[\]]')
#: ``Key:`` plus a plain value (one that does not start with a quote or a bracket), up to the next comma
#: (the key is greedy: a lazy key would differ only by trailing blanks, which are stripped)
_TOKEN_RE = re.compile(r"\s*([A-Za-z_][\w \-/.]{0,60})\s*:\s*+([^,\"{\[][^,]*)?")
_CONTROL_RE = re.compile(r"[\x00-\x1f]")
#: ``_TOKEN_RE`` tried only where a comma-separated piece starts (line start or just after a comma)
_PIECE_TOKENS_RE = re.compile(r"(?:^|(?<=,))" + _TOKEN_RE.pattern)


def _scan_string(s: str, i: int) -> int:
    """Index just past the JSON string starting at s[i] == '"' (or len(s) if unterminated)."""
    m = _STRING_REST_RE.match(s, i + 1)
    return m.end() if m else len(s)


def _scan_balanced(s: str, i: int, stop: int | None = None) -> int:
    """Index just past the JSON object/array starting at s[i]; -1 if it never closes (before ``stop``)."""
    depth = 0
    j = i
    search = _STRUCTURE_RE.search
    end = len(s) if stop is None else stop
    while True:
        m = search(s, j, end)
        if m is None:
            return -1
        ch = m.group()
        j = m.end()
        if ch == '"':
            j = _scan_string(s, j - 1)
        elif ch == "{" or ch == "[":
            depth += 1
        else:
            depth -= 1
            if depth == 0:
                return j


def parse_params(line: str) -> dict[str, str]:
    """``Key: value, Key: "quoted, value", Hashes: {...}`` -> ordered dict (duplicates: last wins)."""
    out: dict[str, str] = {}
    match = _TOKEN_RE.match
    if '"' not in line and "{" not in line and "[" not in line:
        # only plain values: no part of the token pattern crosses a comma, so the tokens are the
        # comma-separated pieces (a piece that does not match is a malformed token, skipped); one
        # findall anchored at the piece starts finds them all (an absent value is "", as None was)
        pairs = _PIECE_TOKENS_RE.findall(line)
        out = {key.strip(): value.strip() for key, value in pairs}
        if len(out) == len(pairs):
            return out
        out = {}  # a key given twice: the last one wins and takes its place
        for key, value in pairs:
            key = key.strip()
            if key in out:
                del out[key]
            out[key] = value.strip()
        return out
    i, n = 0, len(line)
    # Scans for a closing bracket share one budget: each may look ahead at most ``budget`` more
    # characters, so values that never close (``a:{,a:{,...``) cost linear time, not quadratic.
    budget = n + 4096  # the values of a real line are disjoint: their scans add up to less than n
    while i < n:
        m = match(line, i)
        if not m:
            # malformed token: skip to the next comma
            j = line.find(",", i)
            if j < 0:
                break
            i = j + 1
            continue
        key, value = m.groups()
        key = key.strip()
        if value is not None:  # the common case: a plain value up to the next comma
            value = value.strip()
            i = m.end() + 1
        else:
            j = m.end()
            ch = line[j] if j < n else ""
            if ch == '"':
                end = _scan_string(line, j)
                raw = line[j:end]
                if len(raw) >= 2 and raw[-1] == '"' and "\\" not in raw:
                    # what json.loads gives for a closed string without escapes (it refuses control characters)
                    value = raw[1:-1] if not _CONTROL_RE.search(raw) else raw.strip('"')
                else:
                    try:
                        value = json.loads(raw)
                        if not isinstance(value, str):
                            value = raw
                    except ValueError:
                        value = raw.strip('"')
                k = line.find(",", end)
                i = n if k < 0 else k + 1
            elif ch == "{" or ch == "[":
                end = _scan_balanced(line, j, min(n, j + budget)) if budget > 0 else -1
                budget -= (end if end >= 0 else min(n, j + budget)) - j
                if end < 0:
                    k = line.find(",", j)
                    end = n if k < 0 else k
                value = line[j:end]
                k = line.find(",", end)
                i = n if k < 0 else k + 1
            else:  # empty value: at a comma or at the end
                value = ""
                i = j + 1
        if key:
            if key in out:
                del out[key]  # last wins, and keeps the position of the last one
            out[key] = value
    return out


_STEPS_RE = re.compile(r"(^|[\n,])\s*Steps:\s*\d")
_NEG_LINE_RE = re.compile(r"(^|\n)\s*Negative prompt:", re.IGNORECASE)  # what _has_negative_line does
_NEG_WORDS_RE = re.compile(r"negative prompt:", re.IGNORECASE)
_CORE_KEY_RE = re.compile(r"\b(Seed|Sampler|CFG scale):")


_DIGIT_AFTER_RE = re.compile(r"\s*\d")


def _blank_run_start(text: str, p: int) -> int:
    """Where the run of whitespace that ends at ``p`` starts (str.isspace and the regex ``\\s`` agree)."""
    j = p
    while j > 0 and text[j - 1].isspace():
        j -= 1
    return j


def _has_steps(text: str) -> bool:
    """``_STEPS_RE.search(text)`` by finding the literal "Steps:" (the regex, with ``\\s*`` crossing
    lines, is quadratic on blank text). The blank runs before two finds never overlap: linear."""
    p = text.find("Steps:")
    while p >= 0:
        if _DIGIT_AFTER_RE.match(text, p + 6):
            j = _blank_run_start(text, p)
            if j == 0 or text[j - 1] == "," or "\n" in text[j:p]:
                return True
        p = text.find("Steps:", p + 1)
    return False


def _has_negative_line(text: str) -> bool:
    """``_NEG_LINE_RE.search(text)`` in linear time: "Negative prompt:" with only blanks since a line start."""
    for m in _NEG_WORDS_RE.finditer(text):
        p = m.start()
        j = _blank_run_start(text, p)
        if j == 0 or "\n" in text[j:p]:
            return True
    return False


def looks_like_infotext(text: str) -> bool:
    return _has_steps(text) or bool(_has_negative_line(text) and _CORE_KEY_RE.search(text))


def split_infotext(text: str) -> tuple[str, str | None, str]:
    """-> (positive, negative or None, parameter text)."""
    return _split_infotext(text)[:3]


def _split_infotext(text: str) -> tuple[str, str | None, str, dict[str, str] | None]:
    """``split_infotext`` plus the parsed parameter text when it was already parsed (one line)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").strip("\x00")
    lines = text.split("\n")
    # the parameter block starts at the last line that begins like a parameter line
    p_start = None
    parsed = None
    for idx in range(len(lines) - 1, -1, -1):
        line = lines[idx]
        if _PARAM_START.match(line):
            parsed = parse_params(line)
            if len(parsed) >= 2:
                p_start = idx
                break
    if p_start is None:
        params = ""
        body = lines
        parsed = None
    else:
        if p_start == len(lines) - 1:  # one line, and not blank (it starts like a parameter line)
            params = lines[p_start].strip().rstrip(",")
        else:
            params = ", ".join(l.strip().rstrip(",") for l in lines[p_start:] if l.strip())
        if params != lines[p_start]:
            parsed = None  # several lines, or trimmed: parse the joined text again
        body = lines[:p_start]
    neg_idx = None
    for idx, line in enumerate(body):
        if ":" in line and _NEG_RE.match(line):  # the regex needs the colon of "prompt:"
            neg_idx = idx
            break
    if neg_idx is None:
        return "\n".join(body).strip(), None, params, parsed
    positive = "\n".join(body[:neg_idx]).strip()
    neg_lines = [_NEG_RE.sub("", body[neg_idx], count=1)] + body[neg_idx + 1:]
    return positive, "\n".join(neg_lines).strip(), params, parsed


def _json_or_none(value: str) -> Any:
    try:
        return json.loads(value)
    except (ValueError, TypeError):
        return None


def _pairs(value: str) -> list[tuple[str, str]]:
    """``"a: h1, b: h2"`` -> [(a, h1), (b, h2)]."""
    out = []
    for part in value.split(","):
        name, sep, h = part.rpartition(":")
        if sep and name.strip() and h.strip():
            out.append((name.strip(), h.strip()))
    return out


def parse_infotext(text: str) -> dict[str, Any]:
    positive, negative, param_text, parsed = _split_infotext(text)
    params = (parsed if parsed is not None else parse_params(param_text)) if param_text else {}
    rec = new_record("AUTOMATIC1111")
    rec["positive_raw"] = positive
    rec["negative_raw"] = negative or ""
    rec["params"] = params
    lower = apply_params(rec, params)  # the lower-case keys, built once for the two calls below
    rec["generation_tool"] = detect_a1111_fork(params, text, lower)
    add_param_resources(rec, params, lower)
    extract_loras(rec)
    return rec


#: spelling (lower case) -> (field, how its value is read): one lookup per parameter
_SIZE = "size"
_APPLY: dict[str, tuple[str, Any]] = {
    alias: (field, to_int if field in _INT_FIELDS else to_float if field in _FLOAT_FIELDS
            else _SIZE if field == "size_raw" else None)
    for alias, field in FIELD_ALIASES.items()
}


def apply_params(rec: dict[str, Any], params: dict[str, str]) -> dict[str, str]:
    """Set the normalised fields from ``params``; returns the parameters by lower-case key."""
    get = _APPLY.get
    # the keys lower-cased in one pass; when no two differ only by case, ``lower`` holds every
    # parameter in the same order and is walked instead of lower-casing each key again
    lower: dict[str, str] = dict(zip(map(str.lower, params), params.values()))
    pairs = lower.items() if len(lower) == len(params) else ((k.lower(), v) for k, v in params.items())
    for kl, value in pairs:
        how = get(kl)
        if how is None:
            continue
        field, conv = how
        if conv is None:
            v = value.strip() if isinstance(value, str) else value
            if v == "":
                v = None
        elif conv is _SIZE:
            set_size(rec, value)
            continue
        else:
            v = conv(value)
        if v is not None:
            rec[field] = v
    if rec.get("hires_upscaler") and rec.get("hires_denoising") is None and rec.get("denoising_strength") is not None:
        rec["hires_denoising"] = rec["denoising_strength"]
    ref = rec.get("refiner_model")
    if isinstance(ref, str):
        named = _name_and_bracket_hash(ref)
        if named:
            rec["refiner_model"], rec["refiner_hash"] = named
    return lower


_HEX_RE = re.compile(r"[0-9a-fA-F]{8,64}")


def _name_and_bracket_hash(value: str) -> tuple[str, str] | None:
    """``"name [abcd1234]"`` -> ("name", "abcd1234"), what ``^(.*?)\\s*\\[(hex{8,64})\\]$`` took, without
    its quadratic backtracking over blanks."""
    body = value[:-1] if value.endswith("\n") else value
    if not body.endswith("]"):
        return None
    k = body.rfind("[")
    if k < 0 or not _HEX_RE.fullmatch(body, k + 1, len(body) - 1):
        return None
    name = body[:k].rstrip()
    return None if "\n" in name else (name, body[k + 1:-1])


_FORGE_RE = re.compile(r"^f\d+\.\d+\.\d+v\d")
_REFORGE_RE = re.compile(r"^f1\.\d+\.\d+v2")
_ADDNET_RE = re.compile(r"addnet model (\d+)$")
_ADDNET_VALUE_RE = re.compile(r"^(.*?)\(([0-9a-fA-F]{8,64})\)$")
_LORA_N_RE = re.compile(r"lora_(\d+) model name$")
_CONTROLNET_RE = re.compile(r"controlnet(?: (\d+))?$")
#: ``Model: name [hash]`` in a ControlNet value, up to its comma (then read by _controlnet_model)
_CN_MODEL_RE = re.compile(r"Model:\s*+([^,\[]*)(?:\[([0-9a-fA-F]{8,64})\])?([^,]*)")
_CN_WEIGHT_RE = re.compile(r"Weight:\s*([-\d.]+)")
_RESOURCE_KEY_RE = re.compile(r"^(?:addnet model |lora_|controlnet)", re.M)
_RESOURCE_KEY_PREFIXES = ("addnet model ", "lora_", "controlnet")


def _has_resource_key(keys: str) -> bool:
    """``_RESOURCE_KEY_RE.search(keys)`` (a line of ``keys`` starts with a prefix) by plain substring finds."""
    return keys.startswith(_RESOURCE_KEY_PREFIXES) or "\naddnet model " in keys or "\nlora_" in keys \
        or "\ncontrolnet" in keys


def detect_a1111_fork(params: dict[str, str], text: str, lower: dict[str, str] | None = None) -> str:
    if lower is None:
        lower = {k.lower(): v for k, v in params.items()}
    app = str(lower.get("app", ""))
    version = str(lower.get("version", ""))
    if app == "SD.Next" or "sampler sigma" in lower and "pipeline" in lower:
        return "SD.Next"
    if app:
        return app
    if "civitai resources" in lower or "civitai metadata" in lower or "created date" in lower:
        return "Civitai"
    if version == "ComfyUI":
        return "ComfyUI"
    if version == "neo":
        return "Forge Neo"
    if version == "classic":
        return "Forge Classic"
    if _FORGE_RE.match(version):
        if _REFORGE_RE.match(version):
            return "reForge"
        return "Forge"
    if "pipeline" in lower and "operations" in lower:
        return "SD.Next"
    return "AUTOMATIC1111"


def add_param_resources(rec: dict[str, Any], params: dict[str, str], lower: dict[str, str] | None = None) -> None:
    if lower is None:
        lower = {k.lower(): v for k, v in params.items()}
    # checkpoint
    if rec.get("model_name") or rec.get("model_hash_short"):
        add_resource(rec, "checkpoint", rec.get("model_name"), rec.get("model_hash_short"))
    if rec.get("vae") or rec.get("vae_hash"):
        add_resource(rec, "vae", rec.get("vae"), rec.get("vae_hash"))
    if rec.get("refiner_model"):
        add_resource(rec, "checkpoint", rec.get("refiner_model"), rec.get("refiner_hash"), role="refiner")
    if lower.get("hypernet"):
        add_resource(rec, "hypernetwork", lower["hypernet"], lower.get("hypernet hash"),
                     weight=to_float(lower.get("hypernet strength")))
    # one search over the (lower-case) key names instead of a test per key: most lines have none of these
    for key, value in (params.items() if _has_resource_key("\n".join(lower)) else ()):
        kl = key.lower()
        if not kl.startswith(("addnet model ", "lora_", "controlnet")):
            continue  # none of the patterns below can match
        m = _ADDNET_RE.match(kl)
        if m:
            mm = _ADDNET_VALUE_RE.match(value.strip())
            name, h = (mm.group(1), mm.group(2)) if mm else (value, None)
            add_resource(rec, "lora", name, h, weight=to_float(lower.get(f"addnet weight a {m.group(1)}")))
        m = _LORA_N_RE.match(kl)
        if m:
            n = m.group(1)
            add_resource(rec, "lora", value, lower.get(f"lora_{n} model hash"),
                         weight=to_float(lower.get(f"lora_{n} strength model")))
        m = _CONTROLNET_RE.match(kl)
        if m:
            named = _controlnet_model(value)
            if named and named[0].lower() != "none":
                wm = _CN_WEIGHT_RE.search(value)
                add_resource(rec, "controlnet", named[0], named[1],
                             weight=to_float(wm.group(1)) if wm else None)
    if lower.get("lora hashes"):
        for name, h in _pairs(lower["lora hashes"]):
            add_resource(rec, "lora", name, h)
    if lower.get("ti hashes"):
        for name, h in _pairs(lower["ti hashes"]):
            add_resource(rec, "embedding", name, h, hash_kind="SHA256" if len(h) >= 12 else None)
    hashes = _json_or_none(lower.get("hashes", "")) if lower.get("hashes") else None
    if isinstance(hashes, dict):
        for k, h in hashes.items():
            if not isinstance(h, str):
                continue
            kind, _, name = k.partition(":")
            kind_l = kind.lower()
            if not name:
                if kind_l == "model":
                    add_resource(rec, "checkpoint", rec.get("model_name"), h)
                elif kind_l == "vae":
                    add_resource(rec, "vae", rec.get("vae"), h)
                continue
            kmap = {"lora": "lora", "lyco": "lycoris", "embed": "embedding", "hypernet": "hypernetwork",
                    "model": "checkpoint", "vae": "vae", "refiner": "checkpoint"}
            add_resource(rec, kmap.get(kind_l, kind_l), name, h)
    res = _json_or_none(lower.get("civitai resources", "")) if lower.get("civitai resources") else None
    if isinstance(res, list):
        add_civitai_resources(rec, res)
    if rec.get("hires_upscaler") and str(rec["hires_upscaler"]).lower() not in ("none", "latent"):
        add_resource(rec, "upscaler", rec["hires_upscaler"], None)


def _controlnet_model(value: str) -> tuple[str, str | None] | None:
    """The first ``Model: name [hash]`` of a ControlNet value whose text runs to a comma or the end.

    One pass per comma-separated stretch (the old lazy pattern backtracked quadratically over
    blanks); a second "Model:" inside a malformed stretch is not looked at."""
    for m in _CN_MODEL_RE.finditer(value):
        name, h, rest = m.group(1), m.group(2), m.group(3)
        if rest.strip():
            if h is not None or "[" in rest:
                continue
        if h is None and m.end(1) < len(value) and value[m.end(1)] == "[":
            continue  # a bracket that is not a hash: no match at this "Model:"
        if m.end(1) == m.start() + 6:
            continue  # "Model:" straight before a bracket or a comma names nothing
        return name.strip(), h
    return None


_AIR_RE = re.compile(r"urn:air:(?P<eco>[\w.\-]+):(?P<type>[\w\-]+):(?P<src>\w+):(?P<mid>\d+)(?:@(?P<vid>\d+))?")
_CIVITAI_KIND = {"checkpoint": "checkpoint", "lora": "lora", "locon": "lycoris", "lycoris": "lycoris",
                 "dora": "lora", "embed": "embedding", "embedding": "embedding", "textualinversion": "embedding",
                 "vae": "vae", "controlnet": "controlnet", "upscaler": "upscaler", "hypernet": "hypernetwork",
                 "hypernetwork": "hypernetwork", "other": "other"}


def parse_air(value: str) -> dict[str, Any] | None:
    m = _AIR_RE.search(value or "")
    if not m:
        return None
    return {"kind": _CIVITAI_KIND.get(m.group("type").lower(), m.group("type").lower()),
            "model_id": int(m.group("mid")), "version_id": int(m["vid"]) if m.group("vid") else None,
            "ecosystem": m.group("eco")}


def add_civitai_resources(rec: dict[str, Any], items: list) -> None:
    for item in items:
        if not isinstance(item, dict):
            continue
        kind = _CIVITAI_KIND.get(str(item.get("type", "")).lower(), str(item.get("type") or "other").lower())
        vid = to_int(item.get("modelVersionId"))
        air = parse_air(str(item.get("air", ""))) if item.get("air") else None
        if air:
            vid = vid or air["version_id"]
            kind = air["kind"] if not item.get("type") else kind
        name = item.get("modelName") or item.get("name")
        add_resource(rec, kind, name, item.get("hash"), weight=to_float(item.get("weight", item.get("strength"))),
                     version_id=vid, source="civitai")
