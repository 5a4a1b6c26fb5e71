"""Sites and apps that write their own parameters beside a ComfyUI graph: Civitai's on-site generator,
TensorArt, Stability Matrix. The graph gives what their own JSON lacks (sampler, scheduler, real seed).

Each ``parse_*`` is pure: decoded text/JSON in, a normalised record (or None) out.
"""
from __future__ import annotations

from typing import Any

from .a1111 import add_civitai_resources, parse_air, parse_infotext
from .comfyui import load_graph, parse_comfy_prompt
from .normalise import add_lora_usage, add_resource, as_json, extract_loras, new_record, to_float, to_int


# ---------------------------------------------------------------- Civitai ComfyUI-JSON
def parse_civitai_comfy(text: Any) -> dict[str, Any] | None:
    """Civitai on-site generator writes a ComfyUI graph plus ``extra``/``extraMetadata``."""
    data = as_json(text)
    if not isinstance(data, dict) or not ("extraMetadata" in data or "extra" in data):
        return None
    nodes = load_graph(data)
    extra_meta = as_json(data.get("extraMetadata")) if isinstance(data.get("extraMetadata"), str) else data.get("extraMetadata")
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
    data = as_json(text)
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
    data = as_json(parameters_json)
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
        named = {x["name"] for x in rec["loras"]}  # a set: a crafted graph of many LoRAs stays linear
        for lo in g["loras"]:
            if lo["name"] not in named:
                named.add(lo["name"])
                rec["loras"].append(dict(lo, position=len(rec["loras"])))
    rec["resources"] = [r for r in rec["resources"] if r["kind"] != "checkpoint"]
    add_resource(rec, "checkpoint", rec.get("model_name"), rec.get("model_hash_short"))
    return rec
