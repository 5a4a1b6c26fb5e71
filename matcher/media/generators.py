"""Parsers for every generator that is not plain A1111 text or a bare ComfyUI graph.

Each ``parse_*`` is pure: decoded text/JSON in, a normalised record (or None) out.
"""
from __future__ import annotations

import html
import json
import re
import shlex
from typing import Any

from .a1111 import add_civitai_resources, parse_air, parse_infotext
from .comfyui import load_graph, parse_comfy_prompt
from .normalise import (
    add_lora_usage, add_resource, extract_loras, new_record, set_size, to_float, to_int,
)


def _json(text: Any) -> Any:
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


# ---------------------------------------------------------------- NovelAI
def parse_novelai(comment: Any, description: str | None = None, source: str | None = None,
                  software: str | None = None) -> dict[str, Any] | None:
    data = _json(comment)
    if not isinstance(data, dict):
        return None
    if isinstance(data.get("Comment"), str):  # WebP: {"Comment": "<json>"}
        source = source or data.get("Source")
        description = description or data.get("Description")
        software = software or data.get("Software")
        data = _json(data["Comment"])
        if not isinstance(data, dict):
            return None
    rec = new_record("NovelAI")
    prompt = data.get("prompt") or description
    v4 = data.get("v4_prompt")
    if isinstance(v4, dict):
        cap = (v4.get("caption") or {})
        if isinstance(cap, dict) and cap.get("base_caption"):
            prompt = data.get("prompt") or cap["base_caption"]
    rec["positive_raw"] = prompt
    neg = data.get("uc")
    v4n = data.get("v4_negative_prompt")
    if neg is None and isinstance(v4n, dict):
        neg = (v4n.get("caption") or {}).get("base_caption")
    rec["negative_raw"] = neg
    rec["steps"] = to_int(data.get("steps"))
    rec["sampler"] = data.get("sampler") if isinstance(data.get("sampler"), str) else None
    rec["scheduler"] = data.get("noise_schedule") if isinstance(data.get("noise_schedule"), str) else None
    rec["cfg_scale"] = to_float(data.get("scale"))
    rec["seed"] = to_int(data.get("seed"))
    rec["width"], rec["height"] = to_int(data.get("width")), to_int(data.get("height"))
    rec["denoising_strength"] = to_float(data.get("strength")) if data.get("strength") is not None else None
    src = source or software
    if isinstance(src, str):
        m = re.match(r"^(.*?)\s+([0-9A-Fa-f]{8})$", src.strip())
        if m:
            rec["model_name"], rec["model_hash_short"] = m.group(1), m.group(2)
            add_resource(rec, "checkpoint", m.group(1), m.group(2), hash_kind="NovelAI")
        else:
            rec["model_name"] = src
    chars = []
    if isinstance(v4, dict):
        for c in (v4.get("caption") or {}).get("char_captions") or []:
            if isinstance(c, dict) and c.get("char_caption"):
                chars.append(c["char_caption"])
    if chars:
        rec["params"] = {"character_prompts": json.dumps(chars, ensure_ascii=False)}
    return rec


# ---------------------------------------------------------------- InvokeAI
def parse_invoke_metadata(text: Any) -> dict[str, Any] | None:
    data = _json(text)
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
    data = _json(text)
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


def _split_invoke_prompt(prompt: str) -> tuple[str, str | None]:
    """InvokeAI puts the negative prompt in [brackets]."""
    negs = re.findall(r"\[([^\[\]]*)\]", prompt)
    pos = re.sub(r"\s*\[[^\[\]]*\]", "", prompt).strip()
    return pos, (", ".join(n.strip() for n in negs) if negs else None)


def parse_invoke_dream(text: str) -> dict[str, Any] | None:
    if not isinstance(text, str) or not text.strip():
        return None
    m = re.match(r'^\s*"(.*)"\s*(.*)$', text, re.DOTALL)
    if not m:
        return None
    prompt, rest = m.group(1), m.group(2)
    try:
        args = shlex.split(rest)
    except ValueError:
        args = rest.split()
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


# ---------------------------------------------------------------- Fooocus / RuinedFooocus
def parse_fooocus(text: Any) -> dict[str, Any] | None:
    data = _json(text)
    if not isinstance(data, dict):
        return None
    if data.get("software") == "RuinedFooocus" or "base_model_name" in data and "Prompt" in data:
        rec = new_record("RuinedFooocus")
        rec["positive_raw"] = data.get("Prompt")
        rec["negative_raw"] = data.get("Negative")
        rec["steps"] = to_int(data.get("steps"))
        rec["cfg_scale"] = to_float(data.get("cfg"))
        rec["seed"] = to_int(data.get("seed"))
        rec["sampler"] = data.get("sampler_name")
        rec["scheduler"] = data.get("scheduler")
        rec["width"], rec["height"] = to_int(data.get("width")), to_int(data.get("height"))
        rec["clip_skip"] = to_int(data.get("clip_skip"))
        rec["model_name"] = data.get("base_model_name")
        rec["model_hash_short"] = data.get("base_model_hash")
        add_resource(rec, "checkpoint", data.get("base_model_name"), data.get("base_model_hash"))
        for lo in data.get("loras") or []:
            if isinstance(lo, dict) and lo.get("name"):
                add_lora_usage(rec, lo["name"], to_float(lo.get("weight")))
                add_resource(rec, "lora", lo["name"], lo.get("hash"), weight=to_float(lo.get("weight")))
            elif isinstance(lo, (list, tuple)) and lo:
                add_lora_usage(rec, str(lo[0]), to_float(lo[1]) if len(lo) > 1 else 1.0)
        extract_loras(rec)
        return rec
    if "base_model" not in data and "metadata_scheme" not in data:
        return None
    rec = new_record("Fooocus")
    rec["positive_raw"] = data.get("prompt")
    rec["negative_raw"] = data.get("negative_prompt")
    rec["steps"] = to_int(data.get("steps"))
    rec["cfg_scale"] = to_float(data.get("guidance_scale"))
    rec["seed"] = to_int(data.get("seed"))
    rec["sampler"] = data.get("sampler")
    rec["scheduler"] = data.get("scheduler")
    rec["clip_skip"] = to_int(data.get("clip_skip"))
    rec["version_tag"] = data.get("version")
    set_size(rec, data.get("resolution"))
    rec["model_name"] = data.get("base_model")
    rec["model_hash_short"] = data.get("base_model_hash")
    add_resource(rec, "checkpoint", data.get("base_model"), data.get("base_model_hash"))
    if data.get("refiner_model") and data.get("refiner_model") != "None":
        rec["refiner_model"] = data["refiner_model"]
        add_resource(rec, "checkpoint", data["refiner_model"], data.get("refiner_model_hash"))
    if data.get("vae") and not str(data["vae"]).startswith("Default"):
        rec["vae"] = data["vae"]
    for lo in data.get("loras") or []:
        if isinstance(lo, (list, tuple)) and lo:
            name = str(lo[0])
            w = to_float(lo[1]) if len(lo) > 1 else 1.0
            h = lo[2] if len(lo) > 2 else None
            add_lora_usage(rec, name, w)
            add_resource(rec, "lora", name, h, weight=w)
    extract_loras(rec)
    return rec


# ---------------------------------------------------------------- SwarmUI
def parse_swarmui(text: Any) -> dict[str, Any] | None:
    data = _json(text)
    if not isinstance(data, dict) or not isinstance(data.get("sui_image_params"), dict):
        return None
    p = data["sui_image_params"]
    rec = new_record("SwarmUI")
    rec["positive_raw"] = p.get("prompt")
    rec["negative_raw"] = p.get("negativeprompt")
    rec["model_name"] = p.get("model")
    rec["seed"] = to_int(p.get("seed"))
    rec["steps"] = to_int(p.get("steps"))
    rec["cfg_scale"] = to_float(p.get("cfgscale"))
    rec["sampler"] = p.get("sampler")
    rec["scheduler"] = p.get("scheduler")
    rec["width"], rec["height"] = to_int(p.get("width")), to_int(p.get("height"))
    rec["clip_skip"] = to_int(p.get("clipstopatlayer")) and abs(to_int(p.get("clipstopatlayer")))
    rec["version_tag"] = p.get("swarm_version")
    if p.get("vae") and p.get("vae") not in ("None", "Automatic"):
        rec["vae"] = p["vae"]
    if p.get("refinermodel"):
        rec["refiner_model"] = p["refinermodel"]
    extra = data.get("sui_extra_data") or {}
    if isinstance(extra, dict) and extra.get("date"):
        rec["generation_timestamp"] = str(extra["date"])
    models = data.get("sui_models") or []
    names_seen = False
    for m in models if isinstance(models, list) else []:
        if not isinstance(m, dict):
            continue
        param = str(m.get("param", "")).lower()
        kind = {"model": "checkpoint", "loras": "lora", "vae": "vae", "refinermodel": "checkpoint",
                "controlnetmodel": "controlnet"}.get(param, param or "other")
        add_resource(rec, kind, m.get("name"), m.get("hash"))
        names_seen |= kind == "checkpoint"
    if not names_seen and rec.get("model_name"):
        add_resource(rec, "checkpoint", rec["model_name"], None)
    loras = p.get("loras") or []
    weights = p.get("loraweights") or []
    for i, name in enumerate(loras if isinstance(loras, list) else []):
        w = to_float(weights[i]) if i < len(weights) else 1.0
        add_lora_usage(rec, str(name), w)
        add_resource(rec, "lora", str(name), None, weight=w)
    extract_loras(rec)
    return rec


# ---------------------------------------------------------------- Civitai ComfyUI-JSON
def parse_civitai_comfy(text: Any) -> dict[str, Any] | None:
    """Civitai on-site generator writes a ComfyUI graph plus ``extra``/``extraMetadata``."""
    data = _json(text)
    if not isinstance(data, dict) or not ("extraMetadata" in data or "extra" in data):
        return None
    nodes = load_graph(data)
    extra_meta = _json(data.get("extraMetadata")) if isinstance(data.get("extraMetadata"), str) else data.get("extraMetadata")
    rec = parse_comfy_prompt(nodes, tool="Civitai") if nodes else new_record("Civitai")
    rec["generation_tool"] = "Civitai"
    if isinstance(extra_meta, dict):
        def fill(field: str, value: Any) -> None:
            if rec.get(field) is None and value is not None:
                rec[field] = value
        fill("positive_raw", extra_meta.get("prompt"))
        fill("negative_raw", extra_meta.get("negativePrompt"))
        fill("steps", to_int(extra_meta.get("steps")))
        fill("cfg_scale", to_float(extra_meta.get("cfgScale")))
        fill("seed", to_int(extra_meta.get("seed")))
        fill("sampler", extra_meta.get("sampler"))
        fill("clip_skip", to_int(extra_meta.get("clipSkip")))
        if not rec.get("model_name") and extra_meta.get("baseModel"):
            rec["model_name"] = extra_meta.get("baseModel")
        w, h = to_int(extra_meta.get("width")), to_int(extra_meta.get("height"))
        if w and h and not rec.get("width"):
            rec["width"], rec["height"] = w, h
        res = extra_meta.get("resources")
        if isinstance(res, list):
            add_civitai_resources(rec, [dict(r, type=r.get("type") or "other") if isinstance(r, dict) else r
                                        for r in res])
    extra = data.get("extra")
    if isinstance(extra, dict):
        for air in extra.get("airs") or []:
            a = parse_air(str(air))
            if a:
                add_resource(rec, a["kind"], str(air), None, version_id=a["version_id"], source="civitai")
    if not rec.get("loras"):
        extract_loras(rec)
    return rec


# ---------------------------------------------------------------- TensorArt
def parse_tensorart(text: Any, comfy_prompt: Any = None) -> dict[str, Any] | None:
    data = _json(text)
    if not isinstance(data, dict):
        return None
    nodes = load_graph(comfy_prompt) if comfy_prompt else None
    graph_rec = parse_comfy_prompt(nodes) if nodes else None
    rec = new_record("TensorArt")
    rec["positive_raw"] = data.get("prompt")
    rec["negative_raw"] = data.get("negativePrompt")
    rec["steps"] = to_int(data.get("steps"))
    rec["cfg_scale"] = to_float(data.get("cfgScale"))
    seed = to_int(data.get("seed"))
    if (seed is None or seed < 0) and graph_rec is not None:
        seed = graph_rec.get("seed")  # -1 means "random": the real seed is in the graph
    rec["seed"] = seed if seed is None or seed >= 0 else None
    rec["clip_skip"] = to_int(data.get("clipSkip"))
    rec["width"], rec["height"] = to_int(data.get("width")), to_int(data.get("height"))
    if graph_rec:
        rec["sampler"] = graph_rec.get("sampler")
        rec["scheduler"] = graph_rec.get("scheduler")
    bm = data.get("baseModel")
    if isinstance(bm, dict):
        rec["model_name"] = bm.get("modelFileName") or bm.get("label")
        rec["model_hash_short"] = bm.get("hash")
        add_resource(rec, "checkpoint", rec["model_name"], bm.get("hash"))
    for m in data.get("models") or []:
        if isinstance(m, dict):
            name = m.get("modelFileName") or m.get("label")
            w = to_float(m.get("weight"))
            kind = "lora" if str(m.get("type", "")).upper() == "LORA" else str(m.get("type") or "other").lower()
            if kind == "lora" and name:
                add_lora_usage(rec, name, w)
            add_resource(rec, kind, name, m.get("hash"), weight=w)
    if data.get("sdVae") and data["sdVae"] != "Automatic":
        rec["vae"] = data["sdVae"]
    extract_loras(rec)
    return rec


# ---------------------------------------------------------------- Stability Matrix
def parse_stability_matrix(parameters: str | None, parameters_json: Any, comfy_prompt: Any) -> dict[str, Any] | None:
    data = _json(parameters_json)
    rec = parse_infotext(parameters) if parameters else new_record(None)
    rec["generation_tool"] = "Stability Matrix"
    if isinstance(data, dict):
        rec["positive_raw"] = data.get("PositivePrompt", rec.get("positive_raw"))
        rec["negative_raw"] = data.get("NegativePrompt", rec.get("negative_raw"))
        for f, k, conv in (("steps", "Steps", to_int), ("cfg_scale", "CfgScale", to_float), ("seed", "Seed", to_int),
                           ("width", "Width", to_int), ("height", "Height", to_int)):
            if data.get(k) is not None:
                rec[f] = conv(data[k])
        if data.get("ModelName"):
            rec["model_name"] = data["ModelName"]
        if data.get("ModelHash"):
            rec["model_hash_short"] = data["ModelHash"]
    nodes = load_graph(comfy_prompt) if comfy_prompt else None
    if nodes:
        g = parse_comfy_prompt(nodes)
        # the graph says what actually ran: sampler and scheduler separately
        for f in ("sampler", "scheduler", "clip_skip"):
            if g.get(f) is not None:
                rec[f] = g[f]
        if rec.get("seed") is None:
            rec["seed"] = g.get("seed")
        for r in g["resources"]:
            if r["kind"] != "checkpoint":
                add_resource(rec, r["kind"], r["name"], r["hash"], weight=r["weight"])
        for lo in g["loras"]:
            if not any(x["name"] == lo["name"] for x in rec["loras"]):
                rec["loras"].append(dict(lo, position=len(rec["loras"])))
    rec["resources"] = [r for r in rec["resources"] if r["kind"] != "checkpoint"]
    add_resource(rec, "checkpoint", rec.get("model_name"), rec.get("model_hash_short"))
    return rec


# ---------------------------------------------------------------- Draw Things (XMP)
_XMP_LI = r"<{tag}>\s*<rdf:Alt>\s*<rdf:li[^>]*>(.*?)</rdf:li>"


def xmp_field(xmp: str, tag: str) -> str | None:
    m = re.search(_XMP_LI.format(tag=re.escape(tag)), xmp, re.DOTALL)
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
    data = _json(comment)
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


# ---------------------------------------------------------------- EasyDiffusion
def parse_easydiffusion(data: Any) -> dict[str, Any] | None:
    d = _json(data)
    if not isinstance(d, dict):
        return None
    keys = {k.lower().replace(" ", "_"): v for k, v in d.items()}
    if not ("num_inference_steps" in keys and ("use_stable_diffusion_model" in keys or "guidance_scale" in keys)):
        return None
    rec = new_record("EasyDiffusion")
    rec["positive_raw"] = keys.get("prompt")
    rec["negative_raw"] = keys.get("negative_prompt")
    rec["steps"] = to_int(keys.get("num_inference_steps"))
    rec["cfg_scale"] = to_float(keys.get("guidance_scale"))
    rec["seed"] = to_int(keys.get("seed"))
    rec["sampler"] = keys.get("sampler_name") or keys.get("sampler")
    rec["width"], rec["height"] = to_int(keys.get("width")), to_int(keys.get("height"))
    rec["clip_skip"] = 2 if keys.get("clip_skip") is True else to_int(keys.get("clip_skip"))
    model = keys.get("use_stable_diffusion_model")
    if model:
        rec["model_name"] = model
        add_resource(rec, "checkpoint", model, None)
    vae = keys.get("use_vae_model")
    if vae:
        rec["vae"] = vae
        add_resource(rec, "vae", vae, None)
    lora = keys.get("use_lora_model")
    if lora:
        names = lora if isinstance(lora, list) else [lora]
        alphas = keys.get("lora_alpha")
        alphas = alphas if isinstance(alphas, list) else [alphas] * len(names)
        for i, name in enumerate(names):
            w = to_float(alphas[i]) if i < len(alphas) and alphas[i] is not None else 1.0
            add_lora_usage(rec, str(name), w)
            add_resource(rec, "lora", str(name), None, weight=w)
    extract_loras(rec)
    return rec


# ---------------------------------------------------------------- sidecar "Used model:" style
def parse_sidecar_text(text: str) -> dict[str, Any] | None:
    """``Used model: x.safetensors`` / ``LoRA: add_detail:0.5, more_art:0.8`` lines (seed 000)."""
    if not isinstance(text, str):
        return None
    m = re.search(r"^\s*(?:Used model|Model)\s*:\s*(.+?)\s*$", text, re.IGNORECASE | re.MULTILINE)
    l = re.search(r"^\s*LoRAs?\s*:\s*(.+?)\s*$", text, re.IGNORECASE | re.MULTILINE)
    if not m and not l:
        return None
    rec = new_record("sidecar")
    if m:
        rec["model_name"] = m.group(1)
        add_resource(rec, "checkpoint", m.group(1), None)
    if l:
        for part in l.group(1).split(","):
            name, _, w = part.strip().rpartition(":")
            if not name:
                name, w = w, "1"
            wf = to_float(w)
            add_lora_usage(rec, name.strip(), wf)
            add_resource(rec, "lora", name.strip(), None, weight=wf)
    p = re.search(r"^\s*Prompt\s*:\s*(.+?)\s*$", text, re.IGNORECASE | re.MULTILINE)
    if p:
        rec["positive_raw"] = p.group(1)
    for field, key, conv in (("seed", "seed", to_int), ("steps", "steps", to_int), ("cfg_scale", "cfg scale", to_float),
                             ("sampler", "sampler", str)):
        mm = re.search(rf"^\s*{key}\s*:\s*(.+?)\s*$", text, re.IGNORECASE | re.MULTILINE)
        if mm:
            rec[field] = conv(mm.group(1)) if conv is not str else mm.group(1)
    return rec
