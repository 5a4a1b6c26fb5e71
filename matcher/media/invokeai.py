"""InvokeAI's three formats, newest first: ``invokeai_metadata`` JSON, ``sd-metadata`` JSON, and the
older ``Dream`` command line. Each ``parse_*`` is pure: text in, a normalised record (or None) out.
"""
from __future__ import annotations

import re
from typing import Any

from .normalise import add_lora_usage, add_resource, as_json, extract_loras, new_record, to_float, to_int


# ---------------------------------------------------------------- InvokeAI
def parse_invoke_metadata(text: Any) -> dict[str, Any] | None:
    data = as_json(text)
    if not isinstance(data, dict):
        return None
    rec = new_record("InvokeAI")
    rec["positive_raw"] = data.get("positive_prompt")
    rec["negative_raw"] = data.get("negative_prompt")
    rec["seed"] = to_int(data.get("seed"))
    rec["steps"] = to_int(data.get("steps"))
    rec["cfg_scale"] = to_float(data.get("cfg_scale"))
    rec["sampler"] = data.get("scheduler")
    rec["width"], rec["height"] = to_int(data.get("width")), to_int(data.get("height"))
    rec["clip_skip"] = to_int(data.get("clip_skip"))
    if data.get("strength") is not None:
        rec["denoising_strength"] = to_float(data.get("strength"))
    if data.get("app_version"):
        rec["version_tag"] = str(data["app_version"])
    model = data.get("model")
    if isinstance(model, dict):
        name = model.get("name") or model.get("model_name")
        h = model.get("hash")
        rec["model_name"] = name
        if isinstance(h, str):
            rec["model_hash_short"] = h
        add_resource(rec, "checkpoint", name, h)
    vae = data.get("vae")
    if isinstance(vae, dict):
        rec["vae"] = vae.get("name") or vae.get("model_name")
        add_resource(rec, "vae", rec["vae"], vae.get("hash"))
    for lo in data.get("loras") or []:
        if not isinstance(lo, dict):
            continue
        m = lo.get("model") or lo.get("lora") or {}
        name = m.get("name") or m.get("model_name") if isinstance(m, dict) else None
        w = to_float(lo.get("weight"))
        if name:
            add_lora_usage(rec, name, w)
            add_resource(rec, "lora", name, m.get("hash") if isinstance(m, dict) else None, weight=w)
    extract_loras(rec)
    return rec


def parse_invoke_sdmeta(text: Any) -> dict[str, Any] | None:
    data = as_json(text)
    if not isinstance(data, dict) or not isinstance(data.get("image"), dict):
        return None
    img = data["image"]
    rec = new_record("InvokeAI")
    prompt = img.get("prompt")
    if isinstance(prompt, list):
        prompt = " ".join(p.get("prompt", "") for p in prompt if isinstance(p, dict))
    pos, neg = _split_invoke_prompt(prompt or "")
    rec["positive_raw"], rec["negative_raw"] = pos, neg
    rec["steps"] = to_int(img.get("steps"))
    rec["cfg_scale"] = to_float(img.get("cfg_scale"))
    rec["seed"] = to_int(img.get("seed"))
    rec["sampler"] = img.get("sampler")
    rec["width"], rec["height"] = to_int(img.get("width")), to_int(img.get("height"))
    rec["version_tag"] = data.get("app_version")
    rec["model_name"] = data.get("model_weights")
    rec["model_hash_short"] = data.get("model_hash")
    add_resource(rec, "checkpoint", data.get("model_weights"), data.get("model_hash"))
    extract_loras(rec)
    return rec


#: a [negative] with the blanks before it; it starts where a run of blanks starts (the look-behind),
#: so a long run with no bracket after it is scanned once, not once per position
_NEGATIVE_RE = re.compile(r"(?<!\s)\s*\[[^\[\]]*\]")


#: one command-line argument: "quoted", 'quoted' or a plain word (what shlex.split gave for these
#: strings, in linear time: shlex builds each word a character at a time, quadratic on a long one)
_ARG_RE = re.compile(r'"([^"]*+)"|\'([^\']*+)\'|(\S++)')


def _split_invoke_prompt(prompt: str) -> tuple[str, str | None]:
    """InvokeAI puts the negative prompt in [brackets]."""
    negs = re.findall(r"\[([^\[\]]*)\]", prompt)
    pos = _NEGATIVE_RE.sub("", prompt).strip()
    return pos, (", ".join(n.strip() for n in negs) if negs else None)


def parse_invoke_dream(text: str) -> dict[str, Any] | None:
    if not isinstance(text, str) or not text.strip():
        return None
    m = re.match(r'^\s*"(.*)"\s*(.*)$', text, re.DOTALL)
    if not m:
        return None
    prompt, rest = m.group(1), m.group(2)
    args = [m.group(m.lastindex) for m in _ARG_RE.finditer(rest)]
    opts: dict[str, str] = {}
    i = 0
    while i < len(args):
        a = args[i]
        if a.startswith("-") and i + 1 < len(args) and not re.match(r"^-[A-Za-z]", args[i + 1]):
            opts[a] = args[i + 1]
            i += 2
        else:
            i += 1
    rec = new_record("InvokeAI")
    pos, neg = _split_invoke_prompt(prompt)
    rec["positive_raw"], rec["negative_raw"] = pos, neg
    rec["steps"] = to_int(opts.get("-s"))
    rec["seed"] = to_int(opts.get("-S"))
    rec["width"], rec["height"] = to_int(opts.get("-W")), to_int(opts.get("-H"))
    rec["cfg_scale"] = to_float(opts.get("-C"))
    rec["sampler"] = opts.get("-A")
    extract_loras(rec)
    return rec
