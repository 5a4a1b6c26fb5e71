"""Apps that write their parameters as one JSON object of their own keys: NovelAI, Fooocus and
RuinedFooocus, SwarmUI, EasyDiffusion.

Each ``parse_*`` is pure: decoded text/JSON in, a normalised record (or None) out.
"""
from __future__ import annotations

import json
import re
from typing import Any

from .normalise import add_lora_usage, add_resource, as_json, extract_loras, new_record, set_size, to_float, to_int


# ---------------------------------------------------------------- NovelAI
def parse_novelai(comment: Any, description: str | None = None, source: str | None = None,
                  software: str | None = None) -> dict[str, Any] | None:
    data = as_json(comment)
    if not isinstance(data, dict):
        return None
    if isinstance(data.get("Comment"), str):  # WebP: {"Comment": "<json>"}
        source = source or data.get("Source")
        description = description or data.get("Description")
        software = software or data.get("Software")
        data = as_json(data["Comment"])
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
        named = _name_and_short_hash(src.strip())
        if named:
            rec["model_name"], rec["model_hash_short"] = named
            add_resource(rec, "checkpoint", named[0], named[1], hash_kind="NovelAI")
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


# ---------------------------------------------------------------- Fooocus / RuinedFooocus

_HEX8_RE = re.compile(r"[0-9A-Fa-f]{8}")


def _name_and_short_hash(src: str) -> tuple[str, str] | None:
    """``"Stable Diffusion XL C1E1DE52"`` -> (name, hash): what ``^(.*?)\\s+(hex{8})$`` took, without its
    quadratic backtracking over a long run of blanks."""
    if len(src) < 10 or not src[-9].isspace() or not _HEX8_RE.fullmatch(src, len(src) - 8):
        return None
    name = src[:-8].rstrip()
    return None if not name or "\n" in name else (name, src[-8:])


def parse_fooocus(text: Any) -> dict[str, Any] | None:
    data = as_json(text)
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
    data = as_json(text)
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


# ---------------------------------------------------------------- EasyDiffusion
def parse_easydiffusion(data: Any) -> dict[str, Any] | None:
    d = as_json(data)
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


# ---------------------------------------------------------------- web front-ends over diffusers
#: what a web front-end over diffusers (a Hugging Face Space and the like) is recorded as
WEB_DIFFUSERS = "Diffusers web UI"


def parse_web_diffusers(data: Any) -> dict[str, Any] | None:
    """JSON with ``Model`` and ``Model hash`` (often a full SHA256), as Hugging Face Spaces write it:
    top-level keys, or Animagine's ``{"Model": {"Model": name, "Model hash": hash}}``."""
    d = as_json(data)
    if not isinstance(d, dict):
        return None
    model, h = d.get("Model"), d.get("Model hash")
    if isinstance(model, dict):
        model, h = model.get("Model"), model.get("Model hash", h)
    if not isinstance(model, str) or not model.strip() or not isinstance(h, str):
        return None
    keys = {k.lower().replace(" ", "_"): v for k, v in d.items() if isinstance(k, str)}
    rec = new_record(WEB_DIFFUSERS)
    rec["positive_raw"] = keys.get("prompt") if isinstance(keys.get("prompt"), str) else None
    rec["negative_raw"] = keys.get("negative_prompt") if isinstance(keys.get("negative_prompt"), str) else None
    rec["seed"] = to_int(keys.get("seed"))
    rec["steps"] = to_int(keys.get("num_inference_steps", keys.get("steps")))
    rec["cfg_scale"] = to_float(keys.get("guidance_scale", keys.get("cfg_scale", keys.get("cfg"))))
    for key in ("sampler", "scheduler"):
        if isinstance(keys.get(key), str):
            rec[key] = keys[key]
    rec["width"], rec["height"] = to_int(keys.get("width")), to_int(keys.get("height"))
    if not rec["width"] and keys.get("resolution") is not None:
        set_size(rec, str(keys["resolution"]).replace(" ", ""))
    rec["model_name"] = model.strip()
    h = h.strip()
    rec["model_hash_short"] = h[:10] if len(h) == 64 else h or None  # AutoV2 = SHA256[:10]
    add_resource(rec, "checkpoint", rec["model_name"], h)
    extract_loras(rec)
    return rec
